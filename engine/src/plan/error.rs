//! What can be wrong with a pipeline that parses: references that lead nowhere
//! and dependencies that go round in circles.

use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

use crate::lang::Loc;

#[derive(Debug, Error, Diagnostic)]
pub enum PlanError {
    #[error("`{target}` does not name a {expected}")]
    #[diagnostic(code(plan::unknown_target))]
    UnknownTarget {
        target: String,
        expected: &'static str,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("unknown {expected}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("dependency cycle: {path}")]
    #[diagnostic(code(plan::circular_dependency), help("remove one of these `needs` to break the cycle"))]
    CircularDependency {
        path: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("this closes the cycle")]
        span: SourceSpan,
    },

    #[error("cannot resolve `{reference}`: {reason}")]
    #[diagnostic(code(plan::unresolved_reference))]
    UnresolvedReference {
        reference: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{reason}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("pipeline `{pipeline}` has {count} {what} once matrices are expanded (at most {max})")]
    #[diagnostic(code(plan::too_large), help("split it into pipelines, or make its matrices smaller"))]
    TooLarge {
        pipeline: String,
        what: &'static str,
        count: usize,
        max: usize,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("this pipeline")]
        span: SourceSpan,
    },

    #[error("step `{id}` has an id of {len} bytes; it becomes a file name, of at most {max}")]
    #[diagnostic(code(plan::name_too_long), help("shorten the stage's or the step's name (or the matrix values)"))]
    NameTooLong {
        id: String,
        len: usize,
        max: usize,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("this step")]
        span: SourceSpan,
    },

    #[error("stage `{stage}` expands to {count} matrix instances (at most {max})")]
    #[diagnostic(code(plan::matrix_too_large))]
    MatrixTooLarge {
        stage: String,
        count: usize,
        max: usize,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("too many combinations")]
        span: SourceSpan,
    },

    #[error("no stage `{name}` in pipeline `{pipeline}`")]
    #[diagnostic(code(plan::unknown_stage), help("stages: {known}"))]
    UnknownStage { name: String, pipeline: String, known: String },
}

impl PlanError {
    pub fn unresolved(at: &Loc, reference: &str, reason: impl Into<String>, help: Option<String>) -> Self {
        PlanError::UnresolvedReference {
            reference: reference.to_string(),
            reason: reason.into(),
            src: at.src.named(),
            span: at.span,
            help,
        }
    }

    pub fn unknown(at: &Loc, target: &str, expected: &'static str, help: Option<String>) -> Self {
        PlanError::UnknownTarget { target: target.to_string(), expected, src: at.src.named(), span: at.span, help }
    }
}
