//! Where an `include` may read from: files of the repository, nothing else.
//! `pipe check` runs on pipelines under review, so an include is hostile
//! input: `include "/proc/self/environ"` or `include "../../etc/passwd"` must
//! not put the content of a file outside the repository into a diagnostic.
//! A path is refused before anything is read when it is absolute or leaves
//! the repository as written, and again when it leaves it once symbolic links
//! are followed; included files are bounded in size, named `*.kdl`, and
//! never git's or pipe's own (`include ".secrets.env"` would show a secret
//! in the parse error).

use std::path::{Component, Path, PathBuf};

use super::bounded::{ReadError, read_text};

/// The most bytes an included template may hold.
pub const MAX_INCLUDE_BYTES: u64 = 1 << 20;

/// The directory includes stay inside: the repository's root, canonical.
#[derive(Clone, Debug)]
pub struct Boundary(PathBuf);

/// Why an include was refused, and how to write it instead.
#[derive(Debug)]
pub struct Refusal {
    pub reason: String,
    pub help: Option<String>,
}

impl Boundary {
    /// The git toplevel at or above `dir` (the nearest directory holding a
    /// `.git`), else `fallback` (the directory pipe was run for).
    pub fn around(dir: &Path, fallback: &Path) -> Boundary {
        let dir = canonical(dir);
        match dir.ancestors().find(|d| d.join(".git").symlink_metadata().is_ok()) {
            Some(top) => Boundary(top.to_path_buf()),
            None => Boundary(canonical(fallback)),
        }
    }

    /// Reads the file that `path` (as written in the include) names, relative
    /// to `from_dir`. Returns where it is, canonical, and its text.
    pub fn read(&self, from_dir: &Path, path: &str) -> Result<(PathBuf, String), Refusal> {
        let relative = Some("an include names a file of the repository, relative to the including file".to_string());
        if Path::new(path).is_absolute() {
            return Err(Refusal { reason: "an absolute path is not a file of the repository".into(), help: relative });
        }
        let outside = || Refusal { reason: "the path leads outside the repository".into(), help: relative.clone() };
        // Refused as written first, so nothing outside is even looked at.
        let written = normalize(&canonical(from_dir).join(path));
        if !written.starts_with(&self.0) {
            return Err(outside());
        }
        let file = std::fs::canonicalize(&written)
            .map_err(|e| Refusal { reason: format!("{e} ({})", written.display()), help: None })?;
        if !file.starts_with(&self.0) {
            return Err(Refusal {
                reason: "a symbolic link on the path leads outside the repository".into(),
                help: relative.clone(),
            });
        }
        // Inside the repository are files no pipeline is made of: a secrets
        // file (`.secrets.env`), git's own, pipe's state. Only templates are.
        if file.extension().is_none_or(|e| e != "kdl") {
            return Err(Refusal {
                reason: "an included file is a pipeline template, named *.kdl".into(),
                help: relative.clone(),
            });
        }
        let inside = file.strip_prefix(&self.0).unwrap_or(&file);
        if inside.components().any(|c| c.as_os_str() == ".git" || c.as_os_str() == ".pipe") {
            return Err(Refusal {
                reason: "the file is git's or pipe's own (under .git/ or .pipe/), not a template".into(),
                help: relative.clone(),
            });
        }
        let too_big = |len: u64| Refusal {
            reason: format!("the file holds {len} bytes; an included file holds at most {MAX_INCLUDE_BYTES}"),
            help: Some("split the template, or include fewer of them in one file".into()),
        };
        let text = read_text(&file, MAX_INCLUDE_BYTES).map_err(|e| match e {
            ReadError::Io(e) => Refusal { reason: format!("{e} ({})", file.display()), help: None },
            ReadError::NotAFile => Refusal { reason: "not a regular file".into(), help: relative.clone() },
            ReadError::TooLarge(len) => too_big(len),
            ReadError::NotUtf8 => Refusal { reason: "the file is not UTF-8 text".into(), help: None },
        })?;
        Ok((file, text))
    }
}

/// The path itself when it exists, else an absolute form of it.
fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf())
}

/// `a/b/../c` -> `a/c` without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(b: &Boundary, from: &Path, path: &str) -> String {
        match b.read(from, path) {
            Ok((file, _)) => panic!("{path} was read: {}", file.display()),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn only_files_inside_the_repository_are_read() {
        let outer = tempfile::tempdir().expect("tempdir");
        let repo = outer.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).expect("git dir");
        std::fs::create_dir_all(repo.join("services/a")).expect("mkdir");
        std::fs::create_dir_all(repo.join("templates")).expect("mkdir");
        std::fs::write(repo.join("templates/t.kdl"), "template {}").expect("write");
        std::fs::write(outer.path().join("secret.txt"), "password=hunter2").expect("write");
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), repo.join("templates/link.kdl")).expect("link");
        std::fs::write(repo.join("templates/big.kdl"), vec![b' '; MAX_INCLUDE_BYTES as usize + 1]).expect("write");
        let from = repo.join("services/a");
        let b = Boundary::around(&from, &from);
        assert_eq!(b.read(&from, "../../templates/t.kdl").expect("inside").1, "template {}");
        assert!(refused(&b, &from, "/proc/self/environ").contains("absolute"));
        assert!(refused(&b, &from, "../../../secret.txt").contains("outside the repository"));
        assert!(refused(&b, &from, "../../templates/link.kdl").contains("symbolic link"));
        assert!(refused(&b, &from, "../../templates/big.kdl").contains("at most 1048576"));
        assert!(refused(&b, &from, "../../templates").contains("named *.kdl"));
        std::fs::write(repo.join(".secrets.env"), "TOKEN=hunter2").expect("write");
        std::fs::create_dir_all(repo.join(".pipe/cache")).expect("mkdir");
        std::fs::write(repo.join(".pipe/cache/x.kdl"), "x").expect("write");
        std::fs::write(repo.join(".git/config.kdl"), "x").expect("write");
        assert!(refused(&b, &from, "../../.secrets.env").contains("named *.kdl"));
        assert!(refused(&b, &from, "../../.pipe/cache/x.kdl").contains("pipe's own"));
        assert!(refused(&b, &from, "../../.git/config.kdl").contains("git's"));
    }
}
