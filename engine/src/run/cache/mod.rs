//! The step cache: a step with `cache { inputs …; outputs … }` whose key is
//! unchanged is not run again; its output files and step outputs are
//! restored. The key is a SHA-256 of the step's id, its rendered command
//! (program, arguments, working directory; a container's image digest and
//! settings; a plugin's digest and settings), its environment (secret values
//! enter only through the hash) and the contents of its input files.
//!
//! Entries live in `.pipe/cache/<key>/` (`entry.json` and `files/`), are
//! written under a temporary name and renamed into place, are bounded in
//! total size (`PIPE_CACHE_SIZE`, default 2 GiB, measured on disk) with the
//! least recently used evicted first. Whoever can write `.pipe/` can forge an
//! entry, so an entry is checked before use ([`check`]) and written back
//! without following links ([`nofollow`]); one that fails is a miss whose
//! reason the step's log shows, never a failure.

mod check;
mod files;
mod key;
mod nofollow;
mod usage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::lang::model::Cache;
use crate::step::Masker;
pub use check::Refused;
pub use key::KeyParts;
use nofollow::Tree;

const DEFAULT_MAX: u64 = 2 << 30;

/// The cache of one repository.
#[derive(Clone, Debug)]
pub struct StepCache {
    dir: PathBuf,
    max_bytes: u64,
    /// A more trusted branch's cache: looked up, never written, touched or pruned.
    read_only: bool,
    /// The cache's size as this process knows it: measured in full by the
    /// first store (and whenever the sum passes the bound), then added to by
    /// this process's own stores, counted as they are copied. Measuring in
    /// full after every store read every entry N times for N stores.
    measured: Arc<Mutex<Option<u64>>>,
}

/// What a cached run of a step left.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub step: String,
    /// How long the step took when it ran: what a hit saves.
    pub duration_ms: u64,
    pub outputs: BTreeMap<String, String>,
    /// Output paths stored, relative to the pipeline's directory: exactly
    /// the step's declared outputs.
    pub files: Vec<String>,
    /// For people reading the entry; eviction measures the files instead.
    pub bytes: u64,
}

/// One entry as `pipe cache` shows it; what could not be read is `None`.
pub struct Listed {
    pub key: String,
    pub entry: Option<Entry>,
    pub parts: Option<KeyParts>,
    pub bytes: u64,
    pub last_used: SystemTime,
}

/// Where an entry keeps what its key is made of.
const KEY_FILE: &str = "key.json";
/// A key lists its input files: a few hundred bytes each.
const MAX_KEY_JSON: u64 = 64 << 20;

/// A step's cache settings, resolved for one run.
#[derive(Clone)]
pub struct CacheJob {
    pub store: StepCache,
    pub spec: Cache,
    /// The pipeline's directory: inputs and outputs are relative to it.
    pub dir: PathBuf,
    /// The run's secrets: an output holding one is never written to an entry.
    pub masker: Masker,
}

impl StepCache {
    pub fn open(root: &Path) -> StepCache {
        let max_bytes =
            std::env::var("PIPE_CACHE_SIZE").ok().and_then(|v| crate::lang::parse_size(&v)).unwrap_or(DEFAULT_MAX);
        StepCache { dir: root.join(".pipe").join("cache"), max_bytes, read_only: false, measured: Arc::default() }
    }

    /// Another root's cache, to read only (`pipe watch`: a feature branch's
    /// run reads the trusted branch's, and never writes, touches or prunes it).
    pub fn open_read_only(root: &Path) -> StepCache {
        StepCache { read_only: true, ..StepCache::open(root) }
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Puts back what the entry for `key` holds, under `job.dir`, and returns
    /// it; `None` when there is no entry. An entry that fails a check is
    /// removed and refused, and nothing of it is written before every check
    /// that can be made up front has passed.
    pub fn restore(&self, key: &str, step: &str, job: &CacheJob) -> Result<Option<Entry>, Refused> {
        let dir = self.entry_dir(key);
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Refused(format!("cannot read the entry: {e}"))),
            Ok(m) if !m.is_dir() => {
                if !self.read_only {
                    let _ = usage::remove(&dir);
                }
                return Err(Refused("the entry is not a directory".into()));
            }
            Ok(_) => {}
        }
        let result = (|| -> Result<Entry, Refused> {
            let entry = check::read(&dir)?;
            let outputs = check::against(&entry, step, &job.spec, &job.masker)?;
            let stored = dir.join("files");
            // Read through a link, `files` would restore another directory's content.
            match std::fs::symlink_metadata(&stored) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(Refused("the entry's `files` is not a directory".into())),
                Err(e) => return Err(Refused(format!("cannot read the entry's files: {e}"))),
            }
            let items = files::list(&stored, &outputs).map_err(|e| Refused(format!("the stored {e}")))?;
            files::no_links_on_the_way(&job.dir, &items).map_err(Refused)?;
            let tree = Tree::open(&job.dir).map_err(|e| Refused(format!("cannot open {}: {e}", job.dir.display())))?;
            files::copy(&stored, &items, &tree).map_err(Refused)?;
            Ok(entry)
        })();
        match result {
            Ok(entry) => {
                // Touched: the least recently used go first.
                if !self.read_only {
                    let _ = touch(&dir.join("entry.json"));
                }
                Ok(Some(entry))
            }
            Err(refused) => {
                tracing::warn!(key, reason = %refused.0, "refusing a cache entry");
                if !self.read_only {
                    let _ = usage::remove(&dir);
                }
                Err(refused)
            }
        }
    }

    /// Stores the step's result under `key`: its declared outputs (copied from
    /// `job.dir`) and step outputs. Says why when it cannot.
    pub fn store(
        &self,
        parts: &KeyParts,
        job: &CacheJob,
        outputs: &BTreeMap<String, String>,
        took: Duration,
    ) -> Result<(), String> {
        if self.read_only {
            return Err("the cache is another branch's, read only".into());
        }
        let (key, step) = (&parts.id(), parts.step.as_str());
        let declared = check::declared(&job.spec)?;
        check::outputs_hold(outputs, &job.masker)?;
        let items = files::list(&job.dir, &declared).map_err(|e| format!("its declared output {e}"))?;
        self.own_dirs()?;
        let tmp = self.dir.join(format!("{}{key}-{}", usage::TMP_PREFIX, std::process::id()));
        let _ = usage::remove(&tmp);
        let written = (|| -> Result<u64, String> {
            std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            let tree = Tree::open(&tmp).map_err(|e| format!("cannot open {}: {e}", tmp.display()))?;
            let files_dir = tree.sub(&["files".into()]).map_err(|e| format!("cannot create the entry: {e}"))?;
            let bytes = files::copy(&job.dir, &items, &files_dir)?;
            let entry = Entry {
                step: step.to_string(),
                duration_ms: took.as_millis() as u64,
                outputs: outputs.clone(),
                files: declared.iter().map(ToString::to_string).collect(),
                bytes,
            };
            let json = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            let name = nofollow::RelPath::parse("entry.json").ok_or("a plain name")?;
            let mut file = tree.create_file(&name, 0o644).map_err(|e| format!("cannot write the entry: {e}"))?;
            std::io::Write::write_all(&mut file, &json).map_err(|e| format!("cannot write the entry: {e}"))?;
            // What the key is made of, beside the entry, for people (`pipe cache`).
            let key_json = serde_json::to_vec_pretty(parts).map_err(|e| e.to_string())?;
            let name = nofollow::RelPath::parse(KEY_FILE).ok_or("a plain name")?;
            let mut file = tree.create_file(&name, 0o644).map_err(|e| format!("cannot write the entry: {e}"))?;
            std::io::Write::write_all(&mut file, &key_json).map_err(|e| format!("cannot write the entry: {e}"))?;
            let target = self.entry_dir(key);
            let _ = usage::remove(&target);
            std::fs::rename(&tmp, &target).map_err(|e| format!("cannot write the cache entry: {e}"))?;
            Ok(bytes.saturating_add(json.len() as u64))
        })();
        match written {
            Ok(bytes) => {
                self.account(bytes);
                if let Err(e) = self.remember(parts) {
                    tracing::warn!(step, error = %e, "cannot record the step's last cache key");
                }
                Ok(())
            }
            Err(e) => {
                let _ = usage::remove(&tmp);
                Err(e)
            }
        }
    }

    /// Adds a store's bytes to the known size; measures and evicts when the
    /// size is not known yet or the sum passes the bound. (An entry replaced
    /// or refused is still counted: the sum errs high, toward measuring.)
    fn account(&self, added: u64) {
        let mut known = self.measured.lock().unwrap_or_else(PoisonError::into_inner);
        *known = match *known {
            Some(total) if total.saturating_add(added) <= self.max_bytes => Some(total + added),
            _ => Some(self.evict()),
        };
    }

    /// `.pipe` and `.pipe/cache` are pipe's own directories, not links to elsewhere.
    fn own_dirs(&self) -> Result<(), String> {
        for d in [self.dir.parent(), Some(self.dir.as_path())].into_iter().flatten() {
            match std::fs::symlink_metadata(d) {
                Ok(m) if m.file_type().is_symlink() => return Err(format!("{} is a symbolic link", d.display())),
                Ok(_) => {}
                Err(_) => std::fs::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?,
            }
        }
        Ok(())
    }

    /// Entries and the total size of the cache directory, measured (a store
    /// in progress counts in the size, not as an entry).
    pub fn usage(&self) -> (usize, u64) {
        let items = usage::scan(&self.dir);
        (items.iter().filter(|i| !i.in_progress).count(), items.iter().map(|i| i.bytes).sum())
    }

    pub fn clear(&self) -> std::io::Result<()> {
        for dir in [&self.dir, &self.keys_dir()] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// `.pipe/cache-keys/`: each step's last stored key, by a hash of its id.
    fn keys_dir(&self) -> PathBuf {
        self.dir.with_file_name("cache-keys")
    }

    fn last_key_path(&self, step: &str) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(step.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.keys_dir().join(format!("{name}.json"))
    }

    /// The parts of the key this step's last stored run had: what a miss is
    /// compared with. Read as hostile (bounded, no link followed, for this
    /// step only); anything else is no earlier key.
    pub fn last_key(&self, step: &str) -> Option<KeyParts> {
        let parts: KeyParts = check::read_json(&self.last_key_path(step), MAX_KEY_JSON).ok()?;
        (parts.step == step).then_some(parts)
    }

    /// Records `parts` as the step's last stored key (written whole, then renamed).
    fn remember(&self, parts: &KeyParts) -> Result<(), String> {
        let dir = self.keys_dir();
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", dir.display())),
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?,
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| e.to_string())?;
        serde_json::to_writer(&mut tmp, parts).map_err(|e| e.to_string())?;
        // A rename replaces a link planted at the name; it never writes through it.
        tmp.persist(self.last_key_path(&parts.step)).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Every entry, most recently used first: its step, size, when it was
    /// last used, and what its key is made of when that was kept.
    pub fn entries(&self) -> Vec<Listed> {
        let mut items = usage::scan(&self.dir);
        items.retain(|i| !i.in_progress);
        items.sort_by_key(|i| std::cmp::Reverse(i.last_used));
        items
            .into_iter()
            .map(|i| Listed {
                key: i.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                entry: check::read(&i.path).ok(),
                parts: check::read_json(&i.path.join(KEY_FILE), MAX_KEY_JSON).ok(),
                bytes: i.bytes,
                last_used: i.last_used,
            })
            .collect()
    }

    /// Measures everything, removes the least recently used entries past the
    /// bound; the size left.
    fn evict(&self) -> u64 {
        let mut items = usage::scan(&self.dir);
        let mut total: u64 = items.iter().map(|i| i.bytes).sum();
        items.retain(|i| !i.in_progress);
        items.sort_by_key(|i| i.last_used);
        for item in items {
            if total <= self.max_bytes {
                break;
            }
            let _ = usage::remove(&item.path);
            total = total.saturating_sub(item.bytes);
        }
        total
    }
}

fn touch(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options().write(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)?;
    f.set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::reader::Spanned;
    use crate::run::executor::Invocation;

    fn spec(inputs: &[&str], outputs: &[&str]) -> Cache {
        let loc = crate::lang::Loc::new(&crate::lang::Source::new("t", "t", "x"), (0..1).into());
        let s = |v: &&str| Spanned { value: v.to_string(), loc: loc.clone() };
        Cache { inputs: inputs.iter().map(s).collect(), outputs: outputs.iter().map(s).collect() }
    }

    /// A key for step `build.app` named by its command.
    fn parts(name: &str) -> KeyParts {
        KeyParts { step: "build.app".into(), command: name.into(), ..KeyParts::default() }
    }

    fn process(program: &str, env: &[(&str, &str)], dir: &Path) -> Invocation {
        Invocation::Process(crate::run::process::ProcessSpec {
            program: program.into(),
            args: vec!["-c".into(), "true".into()],
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            workdir: dir.to_path_buf(),
            unset: Vec::new(),
        })
    }

    #[tokio::test]
    async fn every_part_of_the_key_invalidates_it() {
        let repo = tempfile::tempdir().expect("tempdir");
        let dir = repo.path().join("svc");
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        std::fs::create_dir_all(repo.path().join("shared")).expect("mkdir");
        std::fs::write(dir.join("src/main.rs"), "fn main() {}").expect("write");
        std::fs::write(repo.path().join("shared/lib.rs"), "pub fn f() {}").expect("write");
        std::fs::write(dir.join("README"), "not an input").expect("write");
        let job = CacheJob {
            store: StepCache::open(repo.path()),
            spec: spec(&["src/**", "../shared/**"], &[]),
            dir: dir.clone(),
            masker: Masker::default(),
        };
        let key = |inv: Invocation| {
            let job = job.clone();
            async move { job.key("build.app", &inv).await.expect("key") }
        };
        let base = key(process("sh", &[("A", "1")], &dir)).await;
        assert_eq!(base, key(process("sh", &[("A", "1")], &dir)).await, "stable");
        std::fs::write(dir.join("README"), "changed, but not an input").expect("write");
        assert_eq!(base, key(process("sh", &[("A", "1")], &dir)).await, "files outside the inputs do not count");
        assert_ne!(base, key(process("bash", &[("A", "1")], &dir)).await, "the command");
        assert_ne!(base, key(process("sh", &[("A", "2")], &dir)).await, "the env (a secret's value too)");
        assert_eq!(
            base,
            key(process("sh", &[("A", "1"), ("PIPE_RUN_ID", "other-run")], &dir)).await,
            "what differs in every run does not count"
        );
        std::fs::write(dir.join("src/main.rs"), "fn main() { }").expect("write");
        let changed = key(process("sh", &[("A", "1")], &dir)).await;
        assert_ne!(base.id(), changed.id(), "an input's contents");
        assert_eq!(changed.changes_since(&base), ["input src/main.rs changed"], "a miss says what changed");
        let bash = key(process("bash", &[("A", "1")], &dir)).await;
        assert_eq!(bash.changes_since(&changed), ["the command or its environment changed"]);
        std::fs::write(repo.path().join("shared/lib.rs"), "pub fn g() {}").expect("write");
        assert_ne!(changed, key(process("sh", &[("A", "1")], &dir)).await, "shared code reached with ../");
        // `!` excludes: a generated file under the inputs does not count.
        let excluding = CacheJob { spec: spec(&["src/**", "../shared/**", "!src/gen/**"], &[]), ..job.clone() };
        let inv = || process("sh", &[("A", "1")], &dir);
        let before = excluding.key("build.app", &inv()).await.expect("key");
        std::fs::create_dir_all(dir.join("src/gen")).expect("mkdir");
        std::fs::write(dir.join("src/gen/out.rs"), "generated").expect("write");
        assert_eq!(before, excluding.key("build.app", &inv()).await.expect("key"), "an excluded file does not count");
        std::fs::remove_dir_all(dir.join("src/gen")).expect("rm");
        std::fs::write(dir.join("src/new.rs"), "").expect("write");
        let added = key(process("sh", &[("A", "1")], &dir)).await;
        std::fs::rename(dir.join("src/new.rs"), dir.join("src/renamed.rs")).expect("rename");
        let renamed = key(process("sh", &[("A", "1")], &dir)).await;
        assert_ne!(added.id(), renamed.id(), "a renamed input");
        assert_eq!(renamed.changes_since(&added), ["input src/renamed.rs is new", "input src/new.rs is gone"]);
        let outputs = CacheJob { spec: spec(&["src/**", "../shared/**"], &["target/new"]), ..job.clone() };
        let inv = process("sh", &[("A", "1")], &dir);
        let with_output = outputs.key("build.app", &inv).await.expect("key");
        assert_ne!(with_output.id(), key(inv).await.id(), "a new output path");
        let other = CacheJob { spec: spec(&["src/**"], &[]), ..job.clone() };
        assert_ne!(other.key("build.other", &process("sh", &[], &dir)).await.expect("key").id(), base.id(), "the step");
    }

    #[test]
    fn entries_round_trip_corrupt_ones_are_refused_and_the_oldest_go_first() {
        let repo = tempfile::tempdir().expect("tempdir");
        let dir = repo.path().to_path_buf();
        std::fs::create_dir_all(dir.join("target/app")).expect("mkdir");
        std::fs::write(dir.join("target/app/bin"), vec![7u8; 1000]).expect("write");
        let store = StepCache { max_bytes: 2500, ..StepCache::open(&dir) };
        let job = CacheJob {
            store: store.clone(),
            spec: spec(&["src/**"], &["target/app"]),
            dir: dir.clone(),
            masker: Masker::new(["s3cret-value"]),
        };
        let outputs = BTreeMap::from([("version".to_string(), "1.2".to_string())]);
        store.store(&parts("k1"), &job, &outputs, Duration::from_secs(3)).expect("store");
        std::fs::remove_dir_all(dir.join("target")).expect("clean");
        let entry = store.restore(&parts("k1").id(), "build.app", &job).expect("valid").expect("hit");
        assert_eq!((entry.duration_ms, entry.outputs.get("version").map(String::as_str)), (3000, Some("1.2")));
        assert_eq!(std::fs::read(dir.join("target/app/bin")).expect("restored").len(), 1000);
        assert!(store.restore(&parts("nope").id(), "build.app", &job).expect("no entry").is_none());
        assert_eq!(store.last_key("build.app"), Some(parts("k1")), "the step's last key is kept for a miss");
        assert_eq!(store.last_key("other.step"), None);
        let listed = store.entries();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].parts.as_ref(), listed[0].key.as_str()), (Some(&parts("k1")), parts("k1").id().as_str()));

        // `files` swapped for a link to a directory outside: refused, nothing read from there.
        let outside = tempfile::tempdir().expect("outside");
        std::fs::create_dir_all(outside.path().join("target/app")).expect("mkdir");
        std::fs::write(outside.path().join("target/app/bin"), "planted").expect("write");
        store.store(&parts("k3"), &job, &outputs, Duration::ZERO).expect("store");
        std::fs::remove_dir_all(store.entry_dir(&parts("k3").id()).join("files")).expect("rm files");
        std::os::unix::fs::symlink(outside.path(), store.entry_dir(&parts("k3").id()).join("files")).expect("link");
        let refused = store.restore(&parts("k3").id(), "build.app", &job).expect_err("a linked files dir");
        assert!(refused.to_string().contains("`files` is not a directory"), "{refused}");
        assert_eq!(std::fs::read(dir.join("target/app/bin")).expect("kept").len(), 1000);
        assert!(outside.path().join("target/app/bin").exists(), "removing the entry followed its link");

        let refused = store.restore(&parts("k1").id(), "other.step", &job).expect_err("another step's entry");
        assert!(refused.to_string().contains("stored for step `build.app`"), "{refused}");
        assert!(!store.entry_dir(&parts("k1").id()).exists(), "a refused entry is removed");

        let secret = BTreeMap::from([("token".to_string(), "x-s3cret-value-y".to_string())]);
        let why = store.store(&parts("k2"), &job, &secret, Duration::ZERO).expect_err("a secret output");
        assert!(why.contains("`token` holds a secret"), "{why}");

        for k in ["a", "b", "c"] {
            store.store(&parts(k), &job, &outputs, Duration::ZERO).expect("store");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (entries, bytes) = store.usage();
        assert_eq!(entries, 2, "bounded: the least recently used went first");
        assert!((2000..2500).contains(&bytes), "measured on disk: {bytes}");
        assert!(!store.entry_dir(&parts("a").id()).exists() && store.entry_dir(&parts("c").id()).exists());
        let missing = CacheJob { spec: spec(&["src/**"], &["nope"]), ..job.clone() };
        assert!(store.store(&KeyParts { step: "x".into(), ..parts("d") }, &missing, &outputs, Duration::ZERO).is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.join("target/app/link")).expect("link");
        let why = store.store(&parts("e"), &job, &outputs, Duration::ZERO).expect_err("a link in the outputs");
        assert!(why.contains("`target/app/link` is a symbolic link"), "{why}");
    }

    #[test]
    fn a_forged_last_key_is_never_believed() {
        let repo = tempfile::tempdir().expect("tempdir");
        let store = StepCache::open(repo.path());
        let dir = repo.path().to_path_buf();
        std::fs::create_dir_all(dir.join(".pipe/cache")).expect("mkdir");
        let job = CacheJob { store: store.clone(), spec: spec(&[], &[]), dir, masker: Masker::default() };
        store.store(&parts("k1"), &job, &BTreeMap::new(), Duration::ZERO).expect("store");
        let path = store.last_key_path("build.app");
        // Another step's key written under this step's name.
        std::fs::write(&path, serde_json::to_vec(&KeyParts { step: "other".into(), ..parts("k1") }).expect("json"))
            .expect("write");
        assert_eq!(store.last_key("build.app"), None);
        // A link to a key elsewhere is not followed.
        let elsewhere = repo.path().join("planted.json");
        std::fs::write(&elsewhere, serde_json::to_vec(&parts("k9")).expect("json")).expect("write");
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("link");
        assert_eq!(store.last_key("build.app"), None);
        // Storing again replaces the link rather than writing through it.
        store.store(&parts("k2"), &job, &BTreeMap::new(), Duration::ZERO).expect("store");
        assert_eq!(store.last_key("build.app"), Some(parts("k2")));
        assert_eq!(std::fs::read(&elsewhere).expect("kept"), serde_json::to_vec(&parts("k9")).expect("json"));
        store.clear().expect("clear");
        assert_eq!(store.last_key("build.app"), None, "clear forgets the last keys too");
    }
}
