//! The files of a cache entry, both ways (workspace -> entry when storing,
//! entry -> workspace when restoring): listed without following links,
//! measured from the files themselves, and written through a [`Tree`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::nofollow::{RelPath, Tree, is_link_on_the_way};

pub enum Kind {
    Dir,
    File { len: u64, mode: u32 },
}

pub struct Item {
    pub rel: RelPath,
    pub kind: Kind,
}

/// Lists `outputs` below `base`, parents before children: directories and
/// regular files only. A symbolic link or any other kind of file is an error
/// that names it, as is a missing output.
pub fn list(base: &Path, outputs: &[RelPath]) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut todo: Vec<RelPath> = outputs.iter().rev().cloned().collect();
    while let Some(rel) = todo.pop() {
        let path = rel.under(base);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(format!("`{rel}` is missing")),
            Err(e) => return Err(format!("cannot read `{rel}`: {e}")),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(format!("`{rel}` is a symbolic link"));
        } else if kind.is_dir() {
            let mut names = Vec::new();
            for e in std::fs::read_dir(&path).map_err(|e| format!("cannot read `{rel}`: {e}"))? {
                names.push(e.map_err(|e| format!("cannot read `{rel}`: {e}"))?.file_name());
            }
            names.sort();
            todo.extend(names.iter().rev().map(|n| rel.join(n)));
            items.push(Item { rel, kind: Kind::Dir });
        } else if kind.is_file() {
            items.push(Item { rel, kind: Kind::File { len: meta.len(), mode: meta.permissions().mode() } });
        } else {
            return Err(format!("`{rel}` is neither a regular file nor a directory"));
        }
    }
    Ok(items)
}

/// Fails naming the first symbolic link that stands at or above an item in
/// `dir`. [`copy`] would refuse to write through it anyway; this says where.
pub fn no_links_on_the_way(dir: &Path, items: &[Item]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for item in items {
        for depth in 1..=item.rel.parts().len() {
            let prefix = &item.rel.parts()[..depth];
            if !seen.insert(prefix.to_vec()) {
                continue;
            }
            let mut path = dir.to_path_buf();
            path.extend(prefix);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let shown: Vec<_> = prefix.iter().map(|p| p.to_string_lossy()).collect();
                    return Err(format!("`{}` in the workspace is a symbolic link", shown.join("/")));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// Copies the listed items from `base` into `to`. Returns the bytes copied:
/// each file contributes what was read from it, never more than its listed
/// length (a file growing meanwhile is cut there).
pub fn copy(base: &Path, items: &[Item], to: &Tree) -> Result<u64, String> {
    let mut bytes = 0;
    for item in items {
        let rel = &item.rel;
        let written = |e: io::Error| {
            if is_link_on_the_way(&e) {
                format!("a symbolic link stands on the way to `{rel}`")
            } else {
                format!("cannot write `{rel}`: {e}")
            }
        };
        match item.kind {
            Kind::Dir => {
                to.dir(rel.parts()).map_err(written)?;
            }
            Kind::File { len, mode } => {
                let path = rel.under(base);
                let from = File::options()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| format!("cannot read `{rel}`: {e}"))?;
                if !from.metadata().is_ok_and(|m| m.is_file()) {
                    return Err(format!("`{rel}` is no longer a regular file"));
                }
                let mut dest = to.create_file(rel, mode).map_err(written)?;
                bytes += io::copy(&mut from.take(len), &mut dest).map_err(written)?;
            }
        }
    }
    Ok(bytes)
}
