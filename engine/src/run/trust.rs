//! What the one who starts a run knows of it that the checkout must not
//! decide. `pipe watch` knows the branch and commit it runs (from the trigger,
//! not from git in a detached worktree nor from `PIPE_GIT_*`), the secrets the
//! trusted branch's pipelines withhold from this branch, and where the trusted
//! branch's cache is, which a less trusted run may read and never write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::git::GitInfo;

#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The run's git facts, given; `None`: asked of git (and `PIPE_GIT_*`).
    pub git: Option<GitInfo>,
    /// Secrets withheld from the run, besides those its own pipeline
    /// withholds: name, and the branches that may have it.
    pub withheld: BTreeMap<String, String>,
    /// The root (`.pipe/`'s parent) of a more trusted branch whose step cache
    /// this run may read.
    pub trusted_root: Option<PathBuf>,
}
