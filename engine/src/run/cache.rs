//! The step cache: a step with `cache { inputs …; outputs … }` whose key is
//! unchanged is not run again; its output files and step outputs are
//! restored. The key is a SHA-256 of the step's id, its rendered command
//! (program, arguments, working directory; a container's image digest and
//! settings; a plugin's digest and settings), its environment (secret values
//! enter only through the hash) and the contents of its input files.
//!
//! Entries live in `.pipe/cache/<key>/` (`entry.json` and `files/`), are
//! written under a temporary name and renamed into place, are bounded in
//! total size (`PIPE_CACHE_SIZE`, default 2 GiB) with the least recently used
//! evicted first, and an entry that cannot be read is a miss, never a failure.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::executor::Invocation;
use crate::lang::model::Cache;

const DEFAULT_MAX: u64 = 2 << 30;

/// The cache of one repository.
#[derive(Clone, Debug)]
pub struct StepCache {
    dir: PathBuf,
    max_bytes: u64,
    /// A more trusted branch's cache: looked up, never written, touched or pruned.
    read_only: bool,
}

/// What a cached run of a step left.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub step: String,
    /// How long the step took when it ran: what a hit saves.
    pub duration_ms: u64,
    pub outputs: BTreeMap<String, String>,
    /// Output paths stored, relative to the pipeline's directory.
    pub files: Vec<String>,
    pub bytes: u64,
}

/// A step's cache settings, resolved for one run.
#[derive(Clone, Debug)]
pub struct CacheJob {
    pub store: StepCache,
    pub spec: Cache,
    /// The pipeline's directory: inputs and outputs are relative to it.
    pub dir: PathBuf,
}

impl StepCache {
    pub fn open(root: &Path) -> StepCache {
        let max_bytes =
            std::env::var("PIPE_CACHE_SIZE").ok().and_then(|v| crate::lang::parse_size(&v)).unwrap_or(DEFAULT_MAX);
        StepCache { dir: root.join(".pipe").join("cache"), max_bytes, read_only: false }
    }

    /// Another root's cache, to read only (`pipe watch`: a feature branch's
    /// run reads the main branch's, and never writes it).
    pub fn open_read_only(root: &Path) -> StepCache {
        StepCache { read_only: true, ..StepCache::open(root) }
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The entry for `key`, or `None` (missing, or unreadable: then removed).
    pub fn lookup(&self, key: &str) -> Option<Entry> {
        let dir = self.entry_dir(key);
        let text = std::fs::read(dir.join("entry.json")).ok()?;
        match serde_json::from_slice::<Entry>(&text) {
            Ok(entry) if entry.files.iter().all(|f| dir.join("files").join(f).exists()) => {
                // Touched: the least recently used go first.
                if !self.read_only {
                    let _ = touch(&dir.join("entry.json"));
                }
                Some(entry)
            }
            _ => {
                tracing::warn!(key, "a corrupt cache entry is a miss; removing it");
                if !self.read_only {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                None
            }
        }
    }

    /// Puts the entry's files back under `dir`.
    pub fn restore(&self, key: &str, entry: &Entry, dir: &Path) -> std::io::Result<()> {
        let from = self.entry_dir(key).join("files");
        for f in &entry.files {
            copy_tree(&from.join(f), &dir.join(f))?;
        }
        Ok(())
    }

    /// Stores the step's result under `key`: its declared outputs (copied from
    /// `dir`) and step outputs. Says why when it cannot.
    pub fn store(
        &self,
        key: &str,
        step: &str,
        spec: &Cache,
        dir: &Path,
        outputs: &BTreeMap<String, String>,
        took: Duration,
    ) -> Result<(), String> {
        let missing: Vec<&str> =
            spec.outputs.iter().map(|o| o.value.as_str()).filter(|o| !dir.join(o).exists()).collect();
        if !missing.is_empty() {
            return Err(format!("its declared output {} was not written", missing.join(", ")));
        }
        if self.read_only {
            return Err("the cache is another branch's, read only".into());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let tmp = self.dir.join(format!(".tmp-{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let written = (|| -> std::io::Result<u64> {
            let mut bytes = 0;
            for o in &spec.outputs {
                bytes += copy_tree(&dir.join(&o.value), &tmp.join("files").join(&o.value))?;
            }
            let entry = Entry {
                step: step.to_string(),
                duration_ms: took.as_millis() as u64,
                outputs: outputs.clone(),
                files: spec.outputs.iter().map(|o| o.value.clone()).collect(),
                bytes,
            };
            std::fs::create_dir_all(&tmp)?;
            std::fs::write(tmp.join("entry.json"), serde_json::to_vec(&entry).unwrap_or_default())?;
            Ok(bytes)
        })();
        let result = written.and_then(|_| {
            let target = self.entry_dir(key);
            let _ = std::fs::remove_dir_all(&target);
            std::fs::rename(&tmp, &target)
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(format!("cannot write the cache entry: {e}"));
        }
        self.evict();
        Ok(())
    }

    /// Entries and their total size.
    pub fn usage(&self) -> (usize, u64) {
        let entries = self.entries();
        (entries.len(), entries.iter().map(|e| e.2).sum())
    }

    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// (dir, last used, bytes) of every entry.
    fn entries(&self) -> Vec<(PathBuf, SystemTime, u64)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        dir.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let meta = std::fs::metadata(e.path().join("entry.json")).ok()?;
                let bytes = std::fs::read(e.path().join("entry.json"))
                    .ok()
                    .and_then(|t| serde_json::from_slice::<Entry>(&t).ok())
                    .map_or(0, |en| en.bytes);
                Some((e.path(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), bytes))
            })
            .collect()
    }

    fn evict(&self) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.2).sum();
        entries.sort_by_key(|e| e.1);
        for (dir, _, bytes) in entries {
            if total <= self.max_bytes {
                break;
            }
            let _ = std::fs::remove_dir_all(&dir);
            total = total.saturating_sub(bytes);
        }
    }
}

impl CacheJob {
    /// The step's key, or why it has none (an image not yet on this machine).
    pub async fn key(&self, step: &str, invocation: &Invocation) -> Result<String, String> {
        let mut h = Sha256::new();
        h.update(b"pipe-cache-v1\0");
        part(&mut h, step);
        let fingerprint = invocation.fingerprint().ok_or("this step kind is never cached")?;
        part(&mut h, &fingerprint);
        if let Some(image) = invocation.image() {
            let digest = image_digest(image).await.ok_or(format!("image {image} is not on this machine yet"))?;
            part(&mut h, &digest);
        }
        let (dir, globs) = (self.dir.clone(), self.spec.inputs.iter().map(|g| g.value.clone()).collect::<Vec<_>>());
        let files =
            tokio::task::spawn_blocking(move || hash_inputs(&dir, &globs)).await.map_err(|e| e.to_string())??;
        h.update(files);
        Ok(hex(&h.finalize()))
    }
}

fn part(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn image_digest(image: &str) -> Option<String> {
    let docker = crate::docker::client().await.ok()?;
    docker.inspect_image(image).await.ok()?.id
}

/// A hash of every input file: its path (relative to `dir`) and contents, in path order.
fn hash_inputs(dir: &Path, globs: &[String]) -> Result<[u8; 32], String> {
    let mut set = globset::GlobSetBuilder::new();
    let mut bases = Vec::new();
    for g in globs {
        let absolute = crate::plan::normalize(&dir.join(g));
        let text = absolute.to_string_lossy().to_string();
        set.add(globset::GlobBuilder::new(&text).literal_separator(true).build().map_err(|e| e.to_string())?);
        bases.push(literal_base(&absolute));
    }
    let set = set.build().map_err(|e| e.to_string())?;
    let mut files = std::collections::BTreeSet::new();
    for base in bases {
        if base.is_file() {
            files.insert(base);
            continue;
        }
        let walk = ignore::WalkBuilder::new(&base)
            .standard_filters(false)
            .hidden(false)
            .filter_entry(|e| e.file_name() != ".pipe" && e.file_name() != ".git")
            .build();
        for entry in walk.flatten() {
            if entry.file_type().is_some_and(|t| t.is_file()) && set.is_match(entry.path()) {
                files.insert(entry.path().to_path_buf());
            }
        }
    }
    let mut h = Sha256::new();
    for f in files {
        let rel = pathdiff(&f, dir);
        part(&mut h, &rel);
        let mut file = std::fs::File::open(&f).map_err(|e| format!("cannot read input {}: {e}", f.display()))?;
        let mut content = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut buf).map_err(|e| format!("cannot read input {}: {e}", f.display()))?;
            if n == 0 {
                break;
            }
            content.update(&buf[..n]);
        }
        h.update(content.finalize());
    }
    Ok(h.finalize().into())
}

/// The directories before a glob's first wildcard: where to walk.
fn literal_base(glob: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    for c in glob.components() {
        if c.as_os_str().to_string_lossy().contains(['*', '?', '[', '{']) {
            break;
        }
        base.push(c);
    }
    base
}

fn pathdiff(path: &Path, base: &Path) -> String {
    match path.strip_prefix(base) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => path.to_string_lossy().into_owned(),
    }
}

/// Copies a file or a directory tree; returns the bytes copied.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        let mut bytes = 0;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            bytes += copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        return Ok(bytes);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(target, to)?;
        return Ok(0);
    }
    std::fs::copy(from, to)
}

fn touch(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::options().write(true).open(path)?;
    f.set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::reader::Spanned;

    fn spec(inputs: &[&str], outputs: &[&str]) -> Cache {
        let loc = crate::lang::Loc::new(&crate::lang::Source::new("t", "t", "x"), (0..1).into());
        let s = |v: &&str| Spanned { value: v.to_string(), loc: loc.clone() };
        Cache { inputs: inputs.iter().map(s).collect(), outputs: outputs.iter().map(s).collect() }
    }

    fn process(program: &str, env: &[(&str, &str)], dir: &Path) -> Invocation {
        Invocation::Process(super::super::process::ProcessSpec {
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
        assert_ne!(base, changed, "an input's contents");
        std::fs::write(repo.path().join("shared/lib.rs"), "pub fn g() {}").expect("write");
        assert_ne!(changed, key(process("sh", &[("A", "1")], &dir)).await, "shared code reached with ../");
        std::fs::write(dir.join("src/new.rs"), "").expect("write");
        let added = key(process("sh", &[("A", "1")], &dir)).await;
        std::fs::rename(dir.join("src/new.rs"), dir.join("src/renamed.rs")).expect("rename");
        assert_ne!(added, key(process("sh", &[("A", "1")], &dir)).await, "a renamed input");
        let other = CacheJob { spec: spec(&["src/**"], &[]), ..job.clone() };
        assert_ne!(other.key("build.other", &process("sh", &[], &dir)).await.expect("key"), base, "the step");
    }

    #[test]
    fn entries_round_trip_corrupt_ones_are_misses_and_the_oldest_go_first() {
        let repo = tempfile::tempdir().expect("tempdir");
        let dir = repo.path().to_path_buf();
        std::fs::create_dir_all(dir.join("target/app")).expect("mkdir");
        std::fs::write(dir.join("target/app/bin"), vec![7u8; 1000]).expect("write");
        let store = StepCache { max_bytes: 2500, ..StepCache::open(&dir) };
        let s = spec(&["src/**"], &["target/app"]);
        let outputs = BTreeMap::from([("version".to_string(), "1.2".to_string())]);
        store.store("k1", "build.app", &s, &dir, &outputs, Duration::from_secs(3)).expect("store");
        std::fs::remove_dir_all(dir.join("target")).expect("clean");
        let entry = store.lookup("k1").expect("hit");
        assert_eq!((entry.duration_ms, entry.outputs.get("version").map(String::as_str)), (3000, Some("1.2")));
        store.restore("k1", &entry, &dir).expect("restore");
        assert_eq!(std::fs::read(dir.join("target/app/bin")).expect("restored").len(), 1000);

        std::fs::write(store.entry_dir("k1").join("entry.json"), b"{ not json").expect("corrupt");
        assert!(store.lookup("k1").is_none(), "a corrupt entry is a miss");
        assert!(!store.entry_dir("k1").exists(), "and is removed");

        for k in ["a", "b", "c"] {
            store.store(k, "build.app", &s, &dir, &outputs, Duration::ZERO).expect("store");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(store.usage(), (2, 2000), "bounded: the least recently used went first");
        assert!(store.lookup("a").is_none() && store.lookup("c").is_some());
        assert!(store.store("d", "x", &spec(&["src/**"], &["nope"]), &dir, &outputs, Duration::ZERO).is_err());
    }
}
