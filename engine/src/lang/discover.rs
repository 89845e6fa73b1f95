//! Finding pipeline files in a repository: `pipe.kdl`, `pipelines/*.kdl` and
//! `**/pipe.kdl`, skipping whatever `.gitignore` ignores.

use std::path::{Path, PathBuf};

use ignore::WalkBuilder;

pub fn discover(root: &Path) -> Vec<PathBuf> {
    let pipelines_dir = root.join("pipelines");
    let mut found: Vec<PathBuf> = WalkBuilder::new(root)
        .hidden(true)
        .git_ignore(true)
        .require_git(false)
        .build()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
        .map(|e| e.into_path())
        .filter(|p| {
            p.file_name().is_some_and(|n| n == "pipe.kdl")
                || (p.parent() == Some(pipelines_dir.as_path()) && p.extension().is_some_and(|x| x == "kdl"))
        })
        .collect();
    found.sort();
    found
}

/// The path as shown to the user: relative to the root when it lies below it.
pub fn display_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}
