//! Everything a user can write wrong in a pipeline file.

use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

use super::source::Loc;

#[derive(Debug, Error, Diagnostic)]
pub enum LangError {
    #[error("{message}")]
    #[diagnostic(code(lang::syntax))]
    Syntax {
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("unknown node `{name}` in {context}")]
    #[diagnostic(code(lang::unknown_node))]
    UnknownNode {
        name: String,
        context: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not expected here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown property `{name}` on `{node}`")]
    #[diagnostic(code(lang::unknown_property))]
    UnknownProperty {
        name: String,
        node: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("unknown property")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{what}` expects {expected}, found {found}")]
    #[diagnostic(code(lang::wrong_type))]
    WrongType {
        what: String,
        expected: &'static str,
        found: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("expected {expected}")]
        span: SourceSpan,
    },

    #[error("`{node}` is missing {what}")]
    #[diagnostic(code(lang::missing))]
    Missing {
        node: String,
        what: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("needs {what}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("invalid {what}: {reason}")]
    #[diagnostic(code(lang::invalid_value))]
    InvalidValue {
        what: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("bad duration `{value}`: {reason}")]
    #[diagnostic(code(lang::bad_duration), help("write durations like \"500ms\", \"30s\", \"10m\" or \"1h 30m\""))]
    BadDuration {
        value: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not a duration")]
        span: SourceSpan,
    },

    #[error("duplicate {kind} `{name}`")]
    #[diagnostic(code(lang::duplicate))]
    Duplicate {
        kind: &'static str,
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("defined again here")]
        span: SourceSpan,
        #[label("first defined here")]
        first: Option<SourceSpan>,
    },

    #[error("pipeline `{name}` has no stages")]
    #[diagnostic(
        code(lang::empty_pipeline),
        help("add a stage: stage \"build\" {{ step \"compile\" {{ run \"make\" }} }}")
    )]
    EmptyPipeline {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("empty")]
        span: SourceSpan,
    },

    #[error("stage `{name}` has no steps")]
    #[diagnostic(code(lang::empty_stage))]
    EmptyStage {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("empty")]
        span: SourceSpan,
    },

    #[error("cannot interpolate `{reference}`: {reason}")]
    #[diagnostic(code(lang::bad_interpolation))]
    BadInterpolation {
        reference: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{reason}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("cannot include `{path}`: {reason}")]
    #[diagnostic(code(lang::include))]
    Include {
        path: String,
        reason: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("included here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("cannot read {path}: {source}")]
    #[diagnostic(code(lang::io))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} holds {len} bytes; a pipeline file holds at most {max}")]
    #[diagnostic(code(lang::too_large), help("split it: one pipeline a file, shared parts in `include`d templates"))]
    TooLarge { path: String, len: u64, max: u64 },

    #[error("more than {max} problems in this file; the rest are not shown")]
    #[diagnostic(code(lang::too_many), help("fix these first, then check again"))]
    TooMany { max: usize },

    #[error("no pipeline found under {root}")]
    #[diagnostic(code(lang::no_pipeline), help("commit a pipe.kdl, pipelines/*.kdl or services/*/pipe.kdl"))]
    NoPipeline { root: String },
}

/// Errors collected over one pass, reported together.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<LangError>);

/// The most problems one file reports. Each diagnostic shows its place in
/// the file, found from the start: a file of half a million wrong lines took
/// `pipe check` hours to report every one.
pub const MAX_ERRORS: usize = 100;

impl Errors {
    /// Keeps the first [`MAX_ERRORS`], then one line saying the rest were left out.
    pub fn push(&mut self, e: LangError) {
        match self.0.len() {
            n if n < MAX_ERRORS => self.0.push(e),
            MAX_ERRORS => self.0.push(LangError::TooMany { max: MAX_ERRORS }),
            _ => {}
        }
    }

    /// The errors of another pass, under the same bound.
    pub fn extend(&mut self, other: Errors) {
        other.0.into_iter().for_each(|e| self.push(e));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn syntax(&mut self, at: &Loc, message: impl Into<String>, label: impl Into<String>) {
        self.push(LangError::Syntax {
            message: message.into(),
            src: at.src.named(),
            span: at.span,
            label: label.into(),
            help: None,
        });
    }

    pub fn invalid(&mut self, at: &Loc, what: impl Into<String>, reason: impl Into<String>, help: Option<String>) {
        self.push(LangError::InvalidValue {
            what: what.into(),
            reason: reason.into(),
            src: at.src.named(),
            span: at.span,
            help,
        });
    }
}

/// "did you mean" for a misspelt name among the known ones: similar enough
/// (Jaro-Winkler), or one typo away — a letter wrong, missing, extra, or two
/// swapped (`rnu` for `run`), which short names score low on.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .filter_map(|k| {
            let typo = name.chars().count() >= 3 && strsim::osa_distance(name, k) <= 1;
            let similar = strsim::jaro_winkler(name, k);
            (typo || similar > 0.8).then_some((typo, similar, k))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .map(|(_, _, k)| format!("did you mean `{k}`?"))
}

pub fn expected_one_of(known: &[&str]) -> String {
    let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    format!("expected one of {}", list.join(", "))
}
