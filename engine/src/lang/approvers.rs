//! `approvers "release/allowed_signers"`: who may decide at a gate. Given on
//! the pipeline (every gate), on an `approve` step (`approvers="…"`) or on a
//! canary deploy. The file is read here, when the pipeline is loaded — before
//! any step of a run could change the checkout — and what the run verifies
//! against is this copy.

use std::path::{Component, Path};
use std::sync::Arc;

use super::model::{Action, Approvers, Stage, Step};
use super::parser::Parser;
use super::reader::{Node, Spanned};
use crate::approval::signers::AllowedSigners;

const HELP: &str = "an allowed-signers file in the pipeline's directory: \
                    `alice@example.com namespaces=\"pipe-approval\" ssh-ed25519 AAAA…` per line";

impl Parser {
    /// The `approvers "…"` node of a pipeline or a deploy.
    pub(super) fn approvers_node(&mut self, node: Node, slot: &mut Option<Approvers>) {
        self.leaf(node, &[], 1);
        let Some(path) = node.arg_string("an allowed-signers file", &mut self.errs) else { return };
        if slot.is_some() {
            self.errs.invalid(&path.loc, "approvers", "approvers are given twice here", None);
            return;
        }
        *slot = self.approvers_file(node, &path);
    }

    /// Reads and checks the file `path` names, relative to the pipeline's directory.
    pub(super) fn approvers_file(&mut self, node: Node, path: &Spanned<String>) -> Option<Approvers> {
        let relative = Path::new(&path.value);
        if relative.is_absolute() || relative.components().any(|c| c == Component::ParentDir) {
            self.errs.invalid(&path.loc, "approvers", "a path outside the pipeline's directory", Some(HELP.into()));
            return None;
        }
        let dir = node.src.dir();
        let file = dir.join(relative);
        // A directory symlink on the way must not lead out of the repository.
        let inside = match (std::fs::canonicalize(&file), std::fs::canonicalize(dir)) {
            (Ok(f), Ok(d)) => f.starts_with(d),
            _ => true,
        };
        let read =
            if inside { AllowedSigners::read(&file) } else { Err("it leads outside the pipeline's directory".into()) };
        match read {
            Ok(mut signers) => {
                signers.path = relative.to_path_buf();
                Some(Arc::new(signers))
            }
            Err(reason) => {
                self.errs.invalid(&path.loc, "approvers", format!("{}: {reason}", path.value), Some(HELP.into()));
                None
            }
        }
    }
}

/// Gives the pipeline's approvers to every gate that names none itself.
pub(super) fn inherit(approvers: &Approvers, stages: &mut [Stage], hooks: &mut super::model::Hooks) {
    let steps =
        stages.iter_mut().flat_map(|s| s.steps.iter_mut().chain(hooks_mut(&mut s.hooks))).chain(hooks_mut(hooks));
    for step in steps {
        give(approvers, step);
    }
}

fn hooks_mut(hooks: &mut super::model::Hooks) -> impl Iterator<Item = &mut Step> {
    hooks.on_success.iter_mut().chain(hooks.on_failure.iter_mut()).chain(hooks.always.iter_mut())
}

fn give(approvers: &Approvers, step: &mut Step) {
    match &mut step.action {
        Action::Approve(a) if a.approvers.is_none() => a.approvers = Some(approvers.clone()),
        Action::Deploy(d) if d.approvers.is_none() => d.approvers = Some(approvers.clone()),
        _ => {}
    }
}
