//! `pipe.lock`: the sha256 of every plugin a repository's pipelines use, pinned
//! at first use. A plugin whose digest changed is refused until `pipe plugin
//! lock` pins the new one on purpose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{StateError, write_atomic};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Lockfile {
    /// Plugin (as steps write it) -> pinned digest and where it came from.
    pub plugins: BTreeMap<String, Pin>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub sha256: String,
    pub origin: String,
}

pub fn path(root: &Path) -> PathBuf {
    root.join("pipe.lock")
}

impl Lockfile {
    pub fn load(root: &Path) -> Result<Lockfile, StateError> {
        let path = path(root);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lockfile::default()),
            Err(e) => Err(StateError::io("read", &path)(e)),
        }
    }

    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt { path: path(root), source })?;
        json.push(b'\n');
        write_atomic(&path(root), &json)
    }
}
