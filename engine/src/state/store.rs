//! The persistent key-value state of one pipeline (`.pipe/state/<pipeline>.json`):
//! small facts that outlive a run, such as which deployment slot is live.
//! Each change is a locked read-modify-write with an atomic replace.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::{StateError, file_safe, write_atomic};

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
        let _guard = self.lock()?;
        self.read()
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
        let _guard = self.lock()?;
        let mut map = self.read()?;
        change(&mut map);
        let json = serde_json::to_vec_pretty(&map)
            .map_err(|source| StateError::Corrupt { path: self.path.clone(), source })?;
        write_atomic(&self.path, &json)
    }

    fn read(&self) -> Result<StateMap, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path: self.path.clone(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateMap::new()),
            Err(e) => Err(StateError::io("read", &self.path)(e)),
        }
    }

    /// Held for the whole read-modify-write; released when dropped.
    fn lock(&self) -> Result<File, StateError> {
        if let Some(dir) = self.lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(StateError::io("create", dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(StateError::io("open", &self.lock_path))?;
        file.lock().map_err(StateError::io("lock", &self.lock_path))?;
        Ok(file)
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
}
