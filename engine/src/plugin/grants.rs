//! What a plugin may touch: the grants a step wrote, the grants its typed
//! settings imply, the files of pipe's own that no grant may reach, and the
//! symbolic links a plugin must not leave behind pointing out of its grants.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// What a step granted, resolved to absolute paths and exact values.
#[derive(Clone, Debug, Default)]
pub struct Granted {
    /// `host:port` for outgoing HTTP.
    pub net: Vec<String>,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    /// Commands: the program, then argument patterns (`*` matches any one).
    pub exec: Vec<Vec<String>>,
    /// Environment variables handed to the plugin and to the commands it runs.
    pub env: Vec<(String, String)>,
    /// `ip:port` for plain TCP.
    pub connect: Vec<String>,
    /// State namespaces of others the plugin may use besides its own.
    pub state: Vec<String>,
}

/// The kind of value a typed setting holds (the WIT `field-kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    Text,
    FileRead,
    FileWrite,
    Command,
    Url,
    Address,
}

impl FieldKind {
    /// What the kind grants, for `pipe plugin inspect`.
    pub fn grants(self) -> &'static str {
        match self {
            FieldKind::Text => "",
            FieldKind::FileRead => "grants reading its directory",
            FieldKind::FileWrite => "grants writing its directory",
            FieldKind::Command => "grants running exactly that command",
            FieldKind::Url => "grants HTTP to its host:port",
            FieldKind::Address => "grants TCP to that ip:port",
        }
    }
}

impl Granted {
    /// Adds what the call's typed settings imply. A file setting that is
    /// relative is made absolute against `dir` (the pipeline's directory),
    /// as its grant is, so that the plugin opens what was granted.
    pub fn with_settings(
        mut self,
        config: &mut [(String, String)],
        fields: &[super::contract::FieldInfo],
        dir: &Path,
    ) -> Result<Granted, String> {
        for (key, value) in config.iter_mut() {
            let Some(f) = fields.iter().find(|f| f.name == *key) else { continue };
            self.derive(f.kind, value, dir).map_err(|e| format!("setting `{key}`: {e}"))?;
            if matches!(f.kind, FieldKind::FileRead | FieldKind::FileWrite) {
                *value = absolute(&dir.join(&*value)).display().to_string();
            }
        }
        Ok(self)
    }

    /// Refuses grants that reach pipe's own files.
    pub fn check(&self, protected: &Protected) -> Result<(), String> {
        for (dirs, write, node) in [(&self.read, false, "allow-read"), (&self.write, true, "allow-write")] {
            for d in dirs {
                protected
                    .check(d, write)
                    .map_err(|why| format!("`{node} {}` reaches pipe's own files: {why}", d.display()))?;
            }
        }
        Ok(())
    }

    /// Adds what a typed setting's value implies. `dir` resolves relative paths.
    pub fn derive(&mut self, kind: FieldKind, value: &str, dir: &Path) -> Result<(), String> {
        match kind {
            FieldKind::Text => {}
            FieldKind::FileRead | FieldKind::FileWrite => {
                let file = absolute(&dir.join(value));
                let parent = file.parent().map(Path::to_path_buf).ok_or(format!("`{value}` has no directory"))?;
                if kind == FieldKind::FileRead { self.read.push(parent) } else { self.write.push(parent) }
            }
            FieldKind::Command => {
                let words = shell_words::split(value).map_err(|e| format!("cannot split `{value}`: {e}"))?;
                if words.is_empty() {
                    return Err("the command is empty".into());
                }
                self.exec.push(words);
            }
            FieldKind::Url => {
                let uri: http::Uri = value.parse().map_err(|e| format!("`{value}` is not a URL: {e}"))?;
                let https = uri.scheme_str() == Some("https");
                let authority = uri.authority().ok_or(format!("`{value}` has no host"))?;
                let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
                self.net.push(format!("{}:{port}", authority.host()));
            }
            FieldKind::Address => {
                value.parse::<std::net::SocketAddr>().map_err(|_| format!("`{value}` is not an ip:port address"))?;
                self.connect.push(value.to_string());
            }
        }
        Ok(())
    }
}

/// Paths of pipe's own that no grant may contain or lie inside: run records
/// and state, the lockfile, secrets files, the repository's metadata, the
/// pipeline files themselves (writing one is running code next time), and the
/// compiled-plugin cache with its key.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    /// The repository root, to name paths below it as the user knows them.
    root: PathBuf,
    /// Never readable nor writable through a grant.
    secret: Vec<PathBuf>,
    /// Readable, never writable.
    owned: Vec<PathBuf>,
}

impl Protected {
    pub fn new(root: &Path, secrets_files: &[PathBuf], pipeline_files: &[PathBuf]) -> Protected {
        let mut secret = vec![root.join(".pipe")];
        secret.extend(secrets_files.iter().cloned());
        secret.extend(super::cache::key_path());
        let mut owned = vec![root.join("pipe.lock"), root.join(".git")];
        owned.extend(pipeline_files.iter().cloned());
        owned.extend(super::cache::cache_dir());
        Protected {
            root: absolute(root),
            secret: secret.iter().map(|p| absolute(p)).collect(),
            owned: owned.iter().map(|p| absolute(p)).collect(),
        }
    }

    /// The paths no grant may reach at all (the state root, secrets files,
    /// the plugin cache key), resolved.
    pub fn private(&self) -> &[PathBuf] {
        &self.secret
    }

    /// Why granting `dir` (for writing, or only reading) would reach pipe's own files.
    pub fn check(&self, dir: &Path, write: bool) -> Result<(), String> {
        let dir = absolute(dir);
        let reached = self.secret.iter().chain(self.owned.iter().filter(|_| write));
        let shown = |p: &Path| match p.strip_prefix(&self.root) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
            _ => p.display().to_string(),
        };
        for p in reached {
            if p.starts_with(&dir) {
                return Err(format!("it holds {}", shown(p)));
            }
            if dir.starts_with(p) {
                return Err(format!("it lies inside {}", shown(p)));
            }
        }
        Ok(())
    }
}

/// An absolute path with symlinks resolved where the path exists, and `.`/`..`
/// removed where it does not, so that comparisons see what the OS will see.
pub fn absolute(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // The longest existing ancestor, resolved, then the rest cleaned.
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    for part in rest.iter().rev() {
        out.push(part);
    }
    crate::plan::normalize(&out)
}

/// The symbolic links below `dirs` that point outside their directory: before
/// a plugin runs, to know which it did not make; after, to remove the ones it did.
pub fn escaping_links(dirs: &[PathBuf]) -> BTreeSet<(PathBuf, PathBuf)> {
    const MAX_ENTRIES: usize = 100_000;
    let mut found = BTreeSet::new();
    for dir in dirs {
        let root = absolute(dir);
        let walk = ignore::WalkBuilder::new(&root).standard_filters(false).follow_links(false).build();
        for entry in walk.filter_map(Result::ok).take(MAX_ENTRIES) {
            if !entry.path_is_symlink() {
                continue;
            }
            let link = entry.path().to_path_buf();
            let Ok(target) = std::fs::read_link(&link) else { continue };
            let parent = link.parent().unwrap_or(&root);
            let lexically = crate::plan::normalize(&parent.join(&target));
            let resolved = std::fs::canonicalize(&link).ok();
            if !lexically.starts_with(&root) || resolved.is_some_and(|r| !r.starts_with(&root)) {
                found.insert((link, target));
            }
        }
    }
    found
}

/// Removes links that escape their grant and were not there before; returns
/// a note per link removed.
pub fn remove_new_escaping_links(dirs: &[PathBuf], before: &BTreeSet<(PathBuf, PathBuf)>) -> Vec<String> {
    let known: HashSet<&(PathBuf, PathBuf)> = before.iter().collect();
    let mut notes = Vec::new();
    for (link, target) in escaping_links(dirs) {
        if known.contains(&(link.clone(), target.clone())) {
            continue;
        }
        let done = match std::fs::remove_file(&link) {
            Ok(()) => "removed",
            Err(_) => "could not remove",
        };
        notes.push(format!(
            "{done} the symbolic link {} -> {} the plugin left: it points outside the granted directory",
            link.display(),
            target.display()
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_may_not_reach_pipes_own_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join(".pipe/state")).expect("mkdir");
        std::fs::create_dir_all(r.join("nginx")).expect("mkdir");
        let p = Protected::new(r, &[r.join(".secrets.env")], &[r.join("pipe.kdl")]);
        assert!(p.check(r, false).is_err(), "reading the root exposes .pipe and the secrets");
        assert!(p.check(&r.join(".pipe/state"), false).is_err());
        assert!(p.check(&r.join("nginx"), true).is_ok());
        assert!(p.check(&r.join("nginx/../."), true).is_err(), "`..` does not hide the root");
        let outside = tempfile::tempdir().expect("tempdir");
        assert!(p.check(outside.path(), true).is_ok());
    }

    #[test]
    fn escaping_links_are_found_and_new_ones_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink("../sub", d.join("sub/inside")).expect("link");
        std::os::unix::fs::symlink("../../../../etc/passwd", d.join("sub/old")).expect("link");
        let before = escaping_links(std::slice::from_ref(&d));
        assert_eq!(before.len(), 1, "{before:?}");
        std::os::unix::fs::symlink("../../../etc/shadow", d.join("new")).expect("link");
        let notes = remove_new_escaping_links(std::slice::from_ref(&d), &before);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            !d.join("new").exists() && d.join("sub/old").symlink_metadata().is_ok() && d.join("sub/inside").exists()
        );
    }

    #[test]
    fn typed_settings_grant_exactly_their_value() {
        let mut g = Granted::default();
        let dir = Path::new("/srv/app");
        g.derive(FieldKind::FileWrite, "nginx/app.inc", dir).expect("file");
        g.derive(FieldKind::Command, "nginx -p '/srv/my nginx' -s reload", dir).expect("command");
        g.derive(FieldKind::Url, "https://hooks.example.com/x", dir).expect("url");
        g.derive(FieldKind::Address, "127.0.0.1:9999", dir).expect("address");
        assert_eq!(g.write, vec![PathBuf::from("/srv/app/nginx")]);
        assert_eq!(g.exec, vec![vec!["nginx", "-p", "/srv/my nginx", "-s", "reload"]]);
        assert_eq!(g.net, vec!["hooks.example.com:443"]);
        assert_eq!(g.connect, vec!["127.0.0.1:9999"]);
        assert!(g.derive(FieldKind::Address, "localhost:1", dir).is_err());
    }
}
