//! Compiled plugin code on disk, keyed by the component's sha256 and the engine
//! build, so that every run after the first instantiates without compiling.
//! Anything wrong with a cache entry means compiling again, never a failure.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use wasmtime::Engine;
use wasmtime::component::Component;

pub struct Cache {
    dir: Option<PathBuf>,
    engine_key: String,
    /// Components already loaded by this process.
    loaded: Mutex<HashMap<String, Component>>,
}

/// How a component was obtained, for the benchmark and for `--verbose` logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Memory,
    Disk,
    Compiled,
}

impl Cache {
    pub fn new(engine: &Engine) -> Cache {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Cache { dir: cache_dir(), engine_key: format!("{:016x}", h.finish()), loaded: Mutex::default() }
    }

    pub fn load(&self, engine: &Engine, sha256: &str, bytes: &[u8]) -> wasmtime::Result<(Component, Origin)> {
        if let Some(c) = self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(sha256) {
            return Ok((c.clone(), Origin::Memory));
        }
        let path = self.dir.as_ref().map(|d| d.join(format!("{sha256}-{}.cwasm", self.engine_key)));
        let from_disk = path.as_ref().and_then(|p| deserialize(engine, p));
        let (component, origin) = match from_disk {
            Some(c) => (c, Origin::Disk),
            None => {
                let compiled = engine.precompile_component(bytes)?;
                if let Some(p) = &path {
                    store(p, &compiled);
                }
                // SAFETY: `compiled` was produced just now by this engine.
                #[allow(unsafe_code)]
                let c = unsafe { Component::deserialize(engine, &compiled)? };
                (c, Origin::Compiled)
            }
        };
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).insert(sha256.to_string(), component.clone());
        Ok((component, origin))
    }

    /// Drops this process's loaded components, to measure the disk path.
    pub fn forget(&self) {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

fn deserialize(engine: &Engine, path: &std::path::Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file is native code that only this cache writes, always whole
    // (written to a temporary file and renamed), named after the source
    // component's sha256 and the engine's compatibility hash, so it is the
    // output of `precompile_component` for exactly this input and engine.
    // wasmtime additionally checks the header and version before mapping it.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize_file(engine, path) };
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable plugin cache entry");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn store(path: &std::path::Path, bytes: &[u8]) {
    if let Err(e) = crate::state::write_atomic(path, bytes) {
        tracing::warn!(error = %e, "cannot cache compiled plugin code");
    }
}

/// `$PIPE_CACHE_DIR`, else `$XDG_CACHE_HOME/pipe`, else `~/.cache/pipe`.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("PIPE_CACHE_DIR").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|x| PathBuf::from(x).join("pipe"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("pipe")))
    })?;
    Some(base.join("plugins"))
}
