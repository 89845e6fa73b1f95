//! The persistent key-value state of one pipeline (`.pipe/state/<pipeline>.json`):
//! small facts that outlive a run, such as which deployment slot is live.
//! Each change is a locked read-modify-write with an atomic replace.
//!
//! Keys are `namespace/key`: a plugin's keys live under the name the pipeline
//! uses for it, a deployment's under `deploy.<name>`, and plain keys (no `/`)
//! are the pipeline's own (`pipe state set`). Writes through
//! [`StateStore::set_bounded`] are bounded per namespace, so that no writer can
//! grow the file (and every reader's memory) without limit.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::{StateError, file_safe, write_atomic};

pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_VALUE_BYTES: usize = 64 << 10;
pub const MAX_KEYS_PER_NAMESPACE: usize = 256;
pub const MAX_NAMESPACE_BYTES: usize = 1 << 20;

/// The lock over one pipeline's state, held for a whole read-modify-write.
pub struct StateLock {
    _file: File,
}

#[derive(Clone, Debug)]
pub struct StateStore {
    path: PathBuf,
    lock_path: PathBuf,
}

pub type StateMap = BTreeMap<String, String>;

impl StateStore {
    pub fn open(root: &Path, pipeline: &str) -> StateStore {
        let dir = root.join(".pipe").join("state");
        StateStore {
            path: dir.join(format!("{}.json", file_safe(pipeline))),
            lock_path: dir.join(format!("{}.lock", file_safe(pipeline))),
        }
    }

    pub fn all(&self) -> Result<StateMap, StateError> {
        let guard = self.lock()?;
        self.read_locked(&guard)
    }

    /// The state as it is now, without taking the lock: writes replace the
    /// file whole, so a reader sees one version or the next, never a mix.
    pub fn snapshot(&self) -> Result<StateMap, StateError> {
        self.read_file()
    }

    pub fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.all()?.remove(key))
    }

    pub fn set(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.update(|m| {
            m.insert(key.to_string(), value.to_string());
        })
    }

    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        self.update(|m| {
            m.remove(key);
        })
    }

    pub fn update(&self, change: impl FnOnce(&mut StateMap)) -> Result<(), StateError> {
        let guard = self.lock()?;
        let mut map = self.read_locked(&guard)?;
        change(&mut map);
        self.write_locked(&guard, &map)
    }

    /// Sets `namespace/key`, refusing what would pass the namespace's bounds.
    pub fn set_bounded(&self, guard: &StateLock, key: &str, value: &str) -> Result<(), StateError> {
        let limit = |reason: String| Err(StateError::Limit { key: key.to_string(), reason });
        if key.len() > MAX_KEY_BYTES {
            return limit(format!("the key has {} bytes; at most {MAX_KEY_BYTES}", key.len()));
        }
        if value.len() > MAX_VALUE_BYTES {
            return limit(format!("the value has {} bytes; at most {} KiB", value.len(), MAX_VALUE_BYTES >> 10));
        }
        let mut map = self.read_locked(guard)?;
        let namespace = key.split_once('/').map_or("", |(ns, _)| ns);
        let mut keys = 0;
        let mut bytes = key.len() + value.len();
        for (k, v) in map.iter().filter(|(k, _)| k.split_once('/').map_or("", |(ns, _)| ns) == namespace) {
            if k != key {
                keys += 1;
                bytes += k.len() + v.len();
            }
        }
        if keys >= MAX_KEYS_PER_NAMESPACE {
            return limit(format!("namespace `{namespace}` holds {keys} keys; at most {MAX_KEYS_PER_NAMESPACE}"));
        }
        if bytes > MAX_NAMESPACE_BYTES {
            return limit(format!(
                "namespace `{namespace}` would hold {bytes} bytes; at most {} MiB",
                MAX_NAMESPACE_BYTES >> 20
            ));
        }
        map.insert(key.to_string(), value.to_string());
        self.write_locked(guard, &map)
    }

    pub fn read_locked(&self, _guard: &StateLock) -> Result<StateMap, StateError> {
        self.read_file()
    }

    fn read_file(&self) -> Result<StateMap, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path: self.path.clone(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateMap::new()),
            Err(e) => Err(StateError::io("read", &self.path)(e)),
        }
    }

    pub fn write_locked(&self, _guard: &StateLock, map: &StateMap) -> Result<(), StateError> {
        let json =
            serde_json::to_vec_pretty(map).map_err(|source| StateError::Corrupt { path: self.path.clone(), source })?;
        write_atomic(&self.path, &json)
    }

    /// Held for the whole read-modify-write; released when dropped. Blocks
    /// while another process holds it: call it off async runtime threads.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let file = self.lock_file()?;
        file.lock().map_err(StateError::io("lock", &self.lock_path))?;
        Ok(StateLock { _file: file })
    }

    /// The lock if it is free now: async callers poll this instead of blocking.
    pub fn try_lock(&self) -> Result<Option<StateLock>, StateError> {
        let file = self.lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StateError::io("lock", &self.lock_path)(e)),
        }
    }

    fn lock_file(&self) -> Result<File, StateError> {
        if let Some(dir) = self.lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(StateError::io("create", dir))?;
        }
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(StateError::io("open", &self.lock_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_updates_are_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let store = StateStore::open(&root, "p");
                    for i in 0..25 {
                        store.set(&format!("k{t}-{i}"), "v").expect("set");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(StateStore::open(&root, "p").all().expect("all").len(), 200);
    }

    #[test]
    fn bounded_writes_refuse_what_would_grow_a_namespace_without_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path(), "p");
        let guard = store.lock().expect("lock");
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let err = store.set_bounded(&guard, "a/k", &big).expect_err("too big");
        assert!(err.to_string().contains("at most 64 KiB"), "{err}");
        for i in 0..MAX_KEYS_PER_NAMESPACE {
            store.set_bounded(&guard, &format!("a/k{i}"), "v").expect("within bounds");
        }
        let err = store.set_bounded(&guard, "a/one-more", "v").expect_err("too many");
        assert!(err.to_string().contains("holds 256 keys"), "{err}");
        store.set_bounded(&guard, "a/k0", "changed").expect("replacing a key is not adding one");
        store.set_bounded(&guard, "b/k", "v").expect("another namespace has its own bounds");
        assert!(store.try_lock().expect("try").is_none(), "held by `guard`");
    }
}
