//! What can go wrong with a plugin: finding it, trusting it, loading it, and
//! (for the step that runs it) what it did.

use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum PluginError {
    #[error("no plugin `{name}`")]
    #[diagnostic(code(plugin::not_found))]
    NotFound {
        name: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not a built-in plugin, nor in .pipe/plugins/ or $PIPE_PLUGIN_PATH")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("plugin `{name}` changed: pipe.lock pins sha256 {pinned}, found {found}")]
    #[diagnostic(
        code(plugin::digest_mismatch),
        help("if the change is intended, run `pipe plugin lock` to pin the new digest")
    )]
    DigestMismatch {
        name: String,
        pinned: String,
        found: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("resolves to a different file than the one pinned")]
        span: SourceSpan,
    },

    #[error("{plugin} was built for plugin interface {found}; this pipe speaks {served}")]
    #[diagnostic(code(plugin::incompatible), help("rebuild the plugin against a pipe-sdk that speaks one of {served}"))]
    Incompatible {
        plugin: String,
        found: String,
        served: String,
        #[source_code]
        src: Option<NamedSource<Arc<str>>>,
        #[label("built for interface {found}")]
        span: Option<SourceSpan>,
    },

    #[error("{plugin} cannot be used as `{node}`: it is a plugin for {roles}")]
    #[diagnostic(code(plugin::wrong_role))]
    WrongRole {
        plugin: String,
        node: &'static str,
        roles: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("not a `{node}` plugin")]
        span: SourceSpan,
    },

    #[error("`{grant}` reaches pipe's own files: {why}")]
    #[diagnostic(
        code(plugin::grant_too_wide),
        help(
            "grant a directory that holds only what the plugin needs (run records, state, the lockfile, secrets and pipelines stay out of every grant)"
        )
    )]
    GrantTooWide {
        grant: String,
        why: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("reaches pipe's own files")]
        span: SourceSpan,
    },

    #[error("{plugin} is not a pipe plugin: {reason}")]
    #[diagnostic(code(plugin::invalid))]
    Invalid { plugin: String, reason: String },

    #[error("step `{step}` uses {plugin}, which needs the `{capability}` capability")]
    #[diagnostic(code(plugin::capability_not_granted))]
    NotGranted {
        step: String,
        plugin: String,
        capability: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("grants no `{grant}`")]
        span: SourceSpan,
        grant: String,
        #[help]
        help: Option<String>,
    },

    #[error("{plugin}: {problem}")]
    #[diagnostic(code(plugin::config))]
    Config {
        plugin: String,
        problem: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("{problem}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("cannot {action} {path}: {source}")]
    #[diagnostic(code(plugin::io))]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{plugin}: {message}")]
    #[diagnostic(code(plugin::engine))]
    Engine { plugin: String, message: String },
}
