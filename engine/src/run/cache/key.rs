//! The cache key of a step: what must be equal for a stored result to stand
//! in for a run.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::CacheJob;
use crate::run::executor::Invocation;

/// What a step's cache key is made of, part by part. Kept beside each entry
/// and as the step's last key, so that a miss can say which part changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    pub step: String,
    /// SHA-256 of the rendered command: program, arguments, working
    /// directory, environment (a secret's value enters only through this hash).
    pub command: String,
    /// The declared output paths: a new one must miss, a hit would not restore it.
    pub outputs: Vec<String>,
    /// A container step's image digest.
    pub image: Option<String>,
    /// Every input file, relative to the pipeline's directory, and the SHA-256 of its contents.
    pub inputs: BTreeMap<String, String>,
}

/// At most this many changes are named; the rest are counted.
const NAMED_CHANGES: usize = 5;

impl KeyParts {
    /// The key: a hash of every part, in order.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"pipe-cache-v2\0");
        part(&mut h, &self.step);
        part(&mut h, &self.command);
        h.update((self.outputs.len() as u64).to_le_bytes());
        for output in &self.outputs {
            part(&mut h, output);
        }
        part(&mut h, self.image.as_deref().unwrap_or(""));
        h.update((self.inputs.len() as u64).to_le_bytes());
        for (path, digest) in &self.inputs {
            part(&mut h, path);
            part(&mut h, digest);
        }
        hex(&h.finalize())
    }

    /// What differs from an earlier key of the same step, in words.
    pub fn changes_since(&self, before: &KeyParts) -> Vec<String> {
        let mut changes = Vec::new();
        if self.command != before.command {
            changes.push("the command or its environment changed".to_string());
        }
        if self.outputs != before.outputs {
            changes.push(format!("the outputs changed ({} → {})", before.outputs.join(" "), self.outputs.join(" ")));
        }
        if self.image != before.image {
            changes.push("the image changed".to_string());
        }
        let mut files = Vec::new();
        for (path, digest) in &self.inputs {
            match before.inputs.get(path) {
                None => files.push(format!("input {path} is new")),
                Some(d) if d != digest => files.push(format!("input {path} changed")),
                Some(_) => {}
            }
        }
        files.extend(
            before.inputs.keys().filter(|p| !self.inputs.contains_key(*p)).map(|p| format!("input {p} is gone")),
        );
        if files.len() > NAMED_CHANGES {
            let more = files.len() - NAMED_CHANGES;
            files.truncate(NAMED_CHANGES);
            files.push(format!("{more} more input(s)"));
        }
        changes.extend(files);
        changes
    }
}

impl CacheJob {
    /// The step's key, or why it has none (an image not yet on this machine).
    pub async fn key(&self, step: &str, invocation: &Invocation) -> Result<KeyParts, String> {
        let fingerprint = invocation.fingerprint().ok_or("this step kind is never cached")?;
        let image = match invocation.image() {
            Some(image) => Some(image_digest(image).await.ok_or(format!("image {image} is not on this machine yet"))?),
            None => None,
        };
        let (dir, globs) = (self.dir.clone(), self.spec.inputs.iter().map(|g| g.value.clone()).collect::<Vec<_>>());
        let inputs =
            tokio::task::spawn_blocking(move || hash_inputs(&dir, &globs)).await.map_err(|e| e.to_string())??;
        Ok(KeyParts {
            step: step.to_string(),
            command: hex(&Sha256::digest(fingerprint.as_bytes())),
            outputs: self.spec.outputs.iter().map(|o| o.value.clone()).collect(),
            image,
            inputs,
        })
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

/// Every input file: its path (relative to `dir`) and the hash of its contents.
fn hash_inputs(dir: &Path, globs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let filter = crate::plan::PathFilter::new(dir, globs);
    let mut bases: Vec<PathBuf> = globs
        .iter()
        .filter(|g| !g.starts_with('!'))
        .map(|g| literal_base(&crate::plan::normalize(&dir.join(g))))
        .collect();
    // Only exclusions: everything under the directory but them.
    if bases.is_empty() && !globs.is_empty() {
        bases.push(dir.to_path_buf());
    }
    let mut files = std::collections::BTreeSet::new();
    for base in bases {
        if base.is_file() {
            if filter.is_match(&base) {
                files.insert(base);
            }
            continue;
        }
        let walk = ignore::WalkBuilder::new(&base)
            .standard_filters(false)
            .hidden(false)
            .filter_entry(|e| e.file_name() != ".pipe" && e.file_name() != ".git")
            .build();
        for entry in walk.flatten() {
            if entry.file_type().is_some_and(|t| t.is_file()) && filter.is_match(entry.path()) {
                files.insert(entry.path().to_path_buf());
            }
        }
    }
    let mut hashed = BTreeMap::new();
    for f in files {
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
        hashed.insert(pathdiff(&f, dir), hex(&content.finalize()));
    }
    Ok(hashed)
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
