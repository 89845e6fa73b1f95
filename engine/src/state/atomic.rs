use std::io::Write;
use std::path::Path;

use super::StateError;

/// Writes through a temporary file in the same directory and renames it into
/// place, so a reader sees the old content or the new one, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(StateError::io("create", dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(StateError::io("create a file in", dir))?;
    tmp.write_all(bytes).map_err(StateError::io("write", path))?;
    tmp.as_file().sync_data().map_err(StateError::io("sync", path))?;
    tmp.persist(path).map_err(|e| StateError::Io { action: "replace", path: path.to_path_buf(), source: e.error })?;
    Ok(())
}
