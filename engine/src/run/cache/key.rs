//! The cache key of a step: what must be equal for a stored result to stand
//! in for a run.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::CacheJob;
use crate::run::executor::Invocation;

impl CacheJob {
    /// The step's key, or why it has none (an image not yet on this machine).
    pub async fn key(&self, step: &str, invocation: &Invocation) -> Result<String, String> {
        let mut h = Sha256::new();
        h.update(b"pipe-cache-v1\0");
        part(&mut h, step);
        let fingerprint = invocation.fingerprint().ok_or("this step kind is never cached")?;
        part(&mut h, &fingerprint);
        // A new output path must miss: a hit would not restore it.
        for output in &self.spec.outputs {
            part(&mut h, &output.value);
        }
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
