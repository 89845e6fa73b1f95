//! Bounds on what a pipeline may expand to, checked before the steps are
//! made: `pipe check` runs on pipelines under review, and a matrix of a
//! thousand-step stage must not take memory by the gigabyte to be refused.

use super::error::PlanError;
use crate::lang::model::{Pipeline, Stage};

/// The most steps one pipeline may have once matrices are expanded. Real
/// pipelines hold tens to hundreds; at this bound `pipe check` stays in tens
/// of megabytes.
pub const MAX_STEPS: usize = 10_000;

/// The longest file name a step's id becomes, with what pipe adds
/// (`outputs/<stage>.<step>.details.json`, `logs/<stage>.<step>.log`):
/// Linux allows 255 bytes a name.
pub const MAX_ID_BYTES: usize = 255 - ".details.json".len();

/// The most environment variables all steps hold together: each step
/// carries its own copy of the pipeline's and its stage's `env` (its values
/// are rendered per step), so 20,000 variables over a 256-way matrix took
/// `pipe check` past 24 GB.
pub const MAX_STEP_VARS: usize = 500_000;

/// The steps and variables that `stages` (the instances' stages, once
/// matrices are expanded) would make, at most [`MAX_STEPS`] and [`MAX_STEP_VARS`].
pub fn size<'a>(pipeline: &Pipeline, stages: impl Iterator<Item = &'a Stage>) -> Option<PlanError> {
    let (mut steps, mut vars) = (0usize, 0usize);
    for stage in stages {
        steps = steps.saturating_add(stage.steps.len());
        let shared = pipeline.env.0.len() + stage.env.0.len();
        vars = stage.steps.iter().fold(vars, |n, s| n.saturating_add(shared + s.env.0.len()));
    }
    let (what, count, max) = match () {
        () if steps > MAX_STEPS => ("steps", steps, MAX_STEPS),
        () if vars > MAX_STEP_VARS => ("environment variables over all its steps", vars, MAX_STEP_VARS),
        () => return None,
    };
    Some(PlanError::TooLarge {
        pipeline: pipeline.name.clone(),
        what,
        count,
        max,
        src: pipeline.loc.src.named(),
        span: pipeline.loc.span,
    })
}

/// A step id too long to become a file name.
pub fn id(id: &str, step: &crate::lang::model::Step) -> Option<PlanError> {
    (id.len() > MAX_ID_BYTES).then(|| PlanError::NameTooLong {
        id: id.chars().take(60).collect::<String>() + "…",
        len: id.len(),
        max: MAX_ID_BYTES,
        src: step.loc.src.named(),
        span: step.loc.span,
    })
}
