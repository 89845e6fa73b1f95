//! Compiled plugin code on disk, keyed by the component's sha256 and the engine
//! build, so that every run after the first instantiates without compiling.
//!
//! Native code is loaded with `unsafe` deserialization, so an entry must be
//! one nobody else could have written. CI systems share and restore cache
//! directories, so ownership alone is not enough: each entry carries a keyed
//! BLAKE3 tag under a key that lives outside the cache (in pipe's data
//! directory, readable only by its owner). A restored or planted entry has no
//! valid tag and is compiled again. Anything wrong with an entry means
//! compiling again, never a failure.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use wasmtime::Engine;
use wasmtime::component::Component;

const TAG: usize = 32;

pub struct Cache {
    /// The directory and the tagging key; `None` when either cannot be trusted.
    disk: Option<(PathBuf, [u8; 32])>,
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
        let disk = match (cache_dir(), key_path()) {
            (Some(dir), Some(key)) => match (private_dir(&dir), load_key(&key)) {
                (Ok(()), Ok(k)) => Some((dir, k)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "not caching compiled plugins on disk");
                    None
                }
            },
            _ => None,
        };
        Cache { disk, engine_key: format!("{:016x}", h.finish()), loaded: Mutex::default() }
    }

    pub fn load(&self, engine: &Engine, sha256: &str, bytes: &[u8]) -> wasmtime::Result<(Component, Origin)> {
        if let Some(c) = self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(sha256) {
            return Ok((c.clone(), Origin::Memory));
        }
        let entry = self.disk.as_ref().map(|(d, key)| (d.join(format!("{sha256}-{}.cwasm", self.engine_key)), key));
        let from_disk = entry.as_ref().and_then(|(p, key)| read_trusted(engine, p, key));
        let (component, origin) = match from_disk {
            Some(c) => (c, Origin::Disk),
            None => {
                let compiled = engine.precompile_component(bytes)?;
                if let Some((p, key)) = &entry {
                    store(p, key, &compiled);
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

/// An entry whose file is ours, not writable by others, and whose tag checks
/// out under our key; anything else is ignored (and removed when it is ours).
fn read_trusted(engine: &Engine, path: &Path, key: &[u8; 32]) -> Option<Component> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        tracing::warn!(path = %path.display(), "ignoring a plugin cache entry that someone else could have written");
        return None;
    }
    let data = std::fs::read(path).ok()?;
    let (tag, code) = data.split_at_checked(TAG)?;
    let tag = blake3::Hash::from_bytes(tag.try_into().ok()?);
    // `Hash` compares in constant time.
    if blake3::keyed_hash(key, code) != tag {
        tracing::warn!(path = %path.display(), "ignoring a plugin cache entry with a bad tag");
        let _ = std::fs::remove_file(path);
        return None;
    }
    // SAFETY: the bytes are native code that this user's pipe compiled with
    // this engine build (the file name holds the source's sha256 and the
    // engine's compatibility hash) and tagged with a key only this user can
    // read; the tag was just checked over exactly these bytes. wasmtime also
    // checks the header and version before using them.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine, code) };
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable plugin cache entry");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn store(path: &Path, key: &[u8; 32], code: &[u8]) {
    let mut data = Vec::with_capacity(TAG + code.len());
    data.extend_from_slice(blake3::keyed_hash(key, code).as_bytes());
    data.extend_from_slice(code);
    if let Err(e) = crate::state::write_atomic(path, &data) {
        tracing::warn!(error = %e, "cannot cache compiled plugin code");
    }
}

/// The cache directory, created private (0700) and refused when someone else
/// owns it or can write to it.
fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("{} belongs to another user", dir.display()));
    }
    if meta.mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{} is writable by others and cannot be made private: {e}", dir.display()))?;
    }
    Ok(())
}

/// The tagging key: 32 random bytes, created on first use, readable only by
/// its owner; refused if anyone else could have read or written it.
fn load_key(path: &Path) -> Result<[u8; 32], String> {
    let shown = path.display();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            let mut key = [0u8; 32];
            getrandom(&mut key).map_err(|e| format!("cannot make a key: {e}"))?;
            f.write_all(&key).and_then(|()| f.sync_all()).map_err(|e| format!("cannot write {shown}: {e}"))?;
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {shown}: {e}")),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(format!("{shown} is not a private file of this user"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    bytes.try_into().map_err(|_| format!("{shown} is not a key"))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// `$PIPE_CACHE_DIR/plugins`, else `$XDG_CACHE_HOME/pipe/plugins`, else `~/.cache/pipe/plugins`.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("PIPE_CACHE_DIR").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|x| PathBuf::from(x).join("pipe"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("pipe")))
    })?;
    Some(base.join("plugins"))
}

/// `$XDG_DATA_HOME/pipe/cache.key`, else `~/.local/share/pipe/cache.key`: never
/// inside the cache directory, which may be shared.
pub fn key_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))?;
    Some(base.join("pipe").join("cache.key"))
}
