//! Finding the component a step `uses`: a path to a `.wasm` file, or a name
//! looked up in `.pipe/plugins/`, then `$PIPE_PLUGIN_PATH`, then the plugins
//! built into `pipe`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::PluginError;
use crate::lang::Loc;

/// The built-in plugins, compiled from `plugins/` by build.rs and embedded.
mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

#[derive(Clone, Debug)]
pub struct Resolved {
    /// As the step wrote it.
    pub name: String,
    pub origin: String,
    pub bytes: Arc<[u8]>,
    pub sha256: String,
}

pub fn builtin_names() -> Vec<&'static str> {
    builtin::PLUGINS.iter().map(|(n, _)| *n).collect()
}

pub fn resolve(uses: &str, at: &Loc, pipeline_dir: &Path, root: &Path) -> Result<Resolved, PluginError> {
    let read = |path: PathBuf| -> Result<Resolved, PluginError> {
        let bytes = std::fs::read(&path).map_err(|source| PluginError::Io {
            action: "read",
            path: path.display().to_string(),
            source,
        })?;
        Ok(resolved(uses, path.display().to_string(), bytes.into()))
    };
    if uses.ends_with(".wasm") || uses.contains('/') {
        let path = pipeline_dir.join(uses);
        if path.is_file() {
            return read(path);
        }
        return Err(not_found(uses, at, Some(format!("no file {}", path.display()))));
    }
    match by_name(uses, root) {
        Some(found) => found,
        None => {
            let help = crate::lang::error::did_you_mean(uses, builtin_names())
                .or_else(|| Some(format!("built-in plugins: {}", builtin_names().join(", "))));
            Err(not_found(uses, at, help))
        }
    }
}

/// Where plugins are looked up by name, in order: `.pipe/plugins/`, then
/// each directory of `$PIPE_PLUGIN_PATH` (the built-ins come last).
fn search_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join(".pipe").join("plugins")];
    if let Some(paths) = std::env::var_os("PIPE_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    dirs
}

/// A plugin by name, as a step's `uses "name"` finds it; `None` when no
/// directory and no built-in has it.
pub fn by_name(name: &str, root: &Path) -> Option<Result<Resolved, PluginError>> {
    let file = format!("{name}.wasm");
    if let Some(path) = search_dirs(root).iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
        let read = std::fs::read(&path).map_err(|source| PluginError::Io {
            action: "read",
            path: path.display().to_string(),
            source,
        });
        return Some(read.map(|bytes| resolved(name, path.display().to_string(), bytes.into())));
    }
    let (_, bytes) = builtin::PLUGINS.iter().find(|(n, _)| *n == name)?;
    Some(Ok(resolved(name, "built-in".into(), Arc::from(*bytes))))
}

/// Every plugin a step can name, with where it comes from; a name found in
/// a directory hides the built-in (and later directories) of that name.
pub fn available(root: &Path) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for dir in search_dirs(root) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<(String, String)> = entries
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let name = path.file_name()?.to_str()?.strip_suffix(".wasm")?.to_string();
                path.is_file().then(|| (name, path.display().to_string()))
            })
            .collect();
        names.sort();
        for (name, origin) in names {
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, origin));
            }
        }
    }
    for name in builtin_names() {
        if !found.iter().any(|(n, _)| n == name) {
            found.push((name.to_string(), "built-in".into()));
        }
    }
    found
}

fn resolved(name: &str, origin: String, bytes: Arc<[u8]>) -> Resolved {
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    Resolved { name: name.to_string(), origin, bytes, sha256 }
}

fn not_found(name: &str, at: &Loc, help: Option<String>) -> PluginError {
    PluginError::NotFound { name: name.to_string(), src: at.src.named(), span: at.span, help }
}
