//! Files through WASI: only directories the step granted (`allow-read`,
//! `allow-write`) exist for a plugin. These helpers say which grant would
//! allow an access that failed.

use std::path::Path;

pub fn read_to_string(path: impl AsRef<Path>) -> Result<String, String> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|e| denied("read", path, &e, "allow-read"))
}

pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<(), String> {
    let path = path.as_ref();
    std::fs::write(path, contents).map_err(|e| denied("write", path, &e, "allow-write"))
}

pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), String> {
    let (from, to) = (from.as_ref(), to.as_ref());
    std::fs::rename(from, to).map_err(|e| denied("replace", to, &e, "allow-write"))
}

pub fn remove_file(path: impl AsRef<Path>) -> Result<(), String> {
    let path = path.as_ref();
    std::fs::remove_file(path).map_err(|e| denied("remove", path, &e, "allow-write"))
}

fn denied(action: &str, path: &Path, e: &std::io::Error, grant: &str) -> String {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(path);
    format!(
        "cannot {action} {}: {e} (outside the step's grants? allow it with `{grant} \"{}\"`)",
        path.display(),
        dir.display()
    )
}
