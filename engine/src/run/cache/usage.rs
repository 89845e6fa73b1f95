//! What `.pipe/cache` holds, measured on disk: nothing an entry says about
//! its own size is believed. Temporary directories of stores count too; those
//! of a store that died (its process is gone, or it is older than any store
//! takes) are removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A temporary directory older than this belongs to no store still running.
const STALE_TMP: Duration = Duration::from_secs(30 * 60);

pub const TMP_PREFIX: &str = ".tmp-";

/// One thing in the cache directory.
pub struct Item {
    pub path: PathBuf,
    pub last_used: SystemTime,
    pub bytes: u64,
    /// A store in progress: counted, never evicted.
    pub in_progress: bool,
}

/// Everything in `dir`, measured; stale temporary directories are removed on the way.
pub fn scan(dir: &Path) -> Vec<Item> {
    let Ok(children) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut items = Vec::new();
    for child in children.flatten() {
        let path = child.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let name = child.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(TMP_PREFIX) {
            if is_stale(rest, modified) {
                tracing::debug!(path = %path.display(), "removing a dead store's temporary directory");
                let _ = remove(&path);
                continue;
            }
            items.push(Item { path: path.clone(), last_used: modified, bytes: measure(&path), in_progress: true });
            continue;
        }
        // An entry was last used when its entry.json was last touched.
        let last_used =
            std::fs::symlink_metadata(path.join("entry.json")).and_then(|m| m.modified()).unwrap_or(modified);
        items.push(Item { path: path.clone(), last_used, bytes: measure(&path), in_progress: false });
    }
    items
}

/// `.tmp-<key>-<pid>`: stale when the process is gone or the directory is old.
fn is_stale(rest: &str, modified: SystemTime) -> bool {
    let old = SystemTime::now().duration_since(modified).is_ok_and(|age| age > STALE_TMP);
    let pid = rest.rsplit_once('-').and_then(|(_, pid)| pid.parse::<i32>().ok()).filter(|p| *p > 0);
    let alive = pid.is_some_and(|p| {
        matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None), Ok(()) | Err(nix::errno::Errno::EPERM))
    });
    old || !alive
}

/// The bytes of every regular file at or below `path`, links not followed.
/// Iterative: a directory nested a million deep must not overflow the stack.
pub fn measure(path: &Path) -> u64 {
    let mut bytes = 0u64;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            if let Ok(children) = std::fs::read_dir(&p) {
                todo.extend(children.flatten().map(|c| c.path()));
            }
        } else {
            bytes = bytes.saturating_add(meta.len());
        }
    }
    bytes
}

/// Removes a directory tree or a single file (a link is removed, not followed).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}
