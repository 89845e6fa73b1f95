//! Writing below a directory without ever following a symbolic link. Each
//! component is opened relative to its parent's descriptor with `O_NOFOLLOW`,
//! so a link planted anywhere on the way, before the restore or while it
//! runs, makes the write fail instead of landing outside.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, Permissions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// A plain relative path: only normal components (no `..`, no root, no
/// prefix), at least one of them. `.` components are dropped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelPath(Vec<OsString>);

impl RelPath {
    pub fn parse(text: &str) -> Option<RelPath> {
        let mut parts = Vec::new();
        for c in Path::new(text).components() {
            match c {
                Component::Normal(name) => parts.push(name.to_os_string()),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        if parts.is_empty() { None } else { Some(RelPath(parts)) }
    }

    pub fn join(&self, name: &OsStr) -> RelPath {
        let mut parts = self.0.clone();
        parts.push(name.to_os_string());
        RelPath(parts)
    }

    pub fn parts(&self) -> &[OsString] {
        &self.0
    }

    /// The path below `base`.
    pub fn under(&self, base: &Path) -> PathBuf {
        let mut path = base.to_path_buf();
        path.extend(&self.0);
        path
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<_> = self.0.iter().map(|p| p.to_string_lossy()).collect();
        f.write_str(&parts.join("/"))
    }
}

/// A directory opened once; everything below it is reached through descriptors.
pub struct Tree {
    root: OwnedFd,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

impl Tree {
    /// Opens `root` itself the ordinary way: it is pipe's own choice (the
    /// workspace, or the cache's temporary directory), not a stored path.
    pub fn open(root: &Path) -> io::Result<Tree> {
        let fd = open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Tree { root: fd })
    }

    /// The directory at `rel` (every component of it), created as needed.
    pub fn dir(&self, rel: &[OsString]) -> io::Result<OwnedFd> {
        let mut fd = self.root.try_clone()?;
        for name in rel {
            fd = child_dir(&fd, name)?;
        }
        Ok(fd)
    }

    /// The directory at `rel`, created as needed, as a tree of its own.
    pub fn sub(&self, rel: &[OsString]) -> io::Result<Tree> {
        Ok(Tree { root: self.dir(rel)? })
    }

    /// Creates the file at `rel` afresh with `mode` (permission bits only).
    /// A file already there is unlinked first, never truncated: it may be a
    /// hard link to a file outside, whose content a truncation would replace.
    pub fn create_file(&self, rel: &RelPath, mode: u32) -> io::Result<File> {
        let (name, parents) = rel.parts().split_last().ok_or_else(|| io::Error::other("an empty path"))?;
        let dir = self.dir(parents)?;
        match unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let mode = mode & 0o777;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&dir, name.as_os_str(), flags, Mode::from_bits_truncate(mode))?;
        let file = File::from(fd);
        // The umask narrowed O_CREAT's mode; outputs keep theirs (an executable stays one).
        file.set_permissions(Permissions::from_mode(mode))?;
        Ok(file)
    }
}

fn child_dir(parent: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Err(Errno::ENOENT) => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(openat(parent, name, DIR_FLAGS, Mode::empty())?)
        }
        opened => Ok(opened?),
    }
}

/// Whether an error from [`Tree`] means a symbolic link (or a file where a
/// directory belongs) stood on the way.
pub fn is_link_on_the_way(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == Errno::ELOOP as i32 || code == Errno::ENOTDIR as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_parse() {
        assert_eq!(RelPath::parse("./out//app/").map(|p| p.to_string()).as_deref(), Some("out/app"));
        for bad in ["../x", "out/../../x", "/etc/passwd", "", ".", "./"] {
            assert!(RelPath::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_link_anywhere_on_the_way_stops_the_write() {
        let work = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("f"), "keep").expect("write");
        std::os::unix::fs::symlink(outside.path(), work.path().join("dir")).expect("link");
        std::os::unix::fs::symlink(outside.path().join("f"), work.path().join("f")).expect("link");
        std::fs::write(outside.path().join("hard"), "keep").expect("write");
        std::fs::hard_link(outside.path().join("hard"), work.path().join("hard")).expect("hard link");
        let tree = Tree::open(work.path()).expect("open");
        for rel in ["dir/f", "dir/new/g"] {
            let e = tree.create_file(&RelPath::parse(rel).expect("rel"), 0o644).expect_err(rel);
            assert!(is_link_on_the_way(&e), "{rel}: {e}");
        }
        for rel in ["f", "hard"] {
            let mut f = tree.create_file(&RelPath::parse(rel).expect("rel"), 0o644).expect(rel);
            io::Write::write_all(&mut f, b"new").expect("write");
        }
        assert!(!work.path().join("f").symlink_metadata().expect("f").is_symlink(), "the link was replaced");
        assert_eq!(std::fs::read_to_string(outside.path().join("f")).expect("read"), "keep");
        assert_eq!(std::fs::read_to_string(outside.path().join("hard")).expect("read"), "keep");
        assert!(!outside.path().join("new").exists());
        let mut f = tree.create_file(&RelPath::parse("a/b/c").expect("rel"), 0o755).expect("create");
        io::Write::write_all(&mut f, b"x").expect("write");
        assert_eq!(std::fs::read(work.path().join("a/b/c")).expect("read"), b"x");
    }
}
