//! The language: KDL text -> typed [`model::Pipeline`], every item keeping its span.
//! Knows nothing about graphs, processes or tokio.

mod approvers;
mod blocks;
mod container;
mod deploy;
mod deploy_parts;
pub mod discover;
pub mod error;
pub mod format;
pub mod include_path;
pub mod interp;
pub mod model;
mod nesting;
mod parser;
mod paths;
mod plugin_step;
pub mod reader;
pub mod source;
mod template;

use std::path::Path;
use std::sync::Arc;

pub use error::{Errors, LangError};
use include_path::Boundary;
pub use model::Pipeline;
pub use plugin_step::parse_size;
pub use source::{Loc, Source};

/// Reads and parses one pipeline file. `name` is how diagnostics call it;
/// `root` is the directory pipe runs for: includes stay inside the git
/// repository holding the file, or inside `root` when there is none.
pub fn load_file(path: &Path, name: &str, root: &Path) -> Result<Vec<Pipeline>, Errors> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| Errors(vec![LangError::Io { path: path.display().to_string(), source }]))?;
    let src = Source::new(name, path, text);
    parser::parse_source(&src, Boundary::around(src.dir(), root))
}

/// Parses text that is already in memory (tests, the fuzzer, `pipe check -`);
/// includes stay inside the git repository around the source's directory,
/// or inside that directory.
pub fn parse(src: &Arc<Source>) -> Result<Vec<Pipeline>, Errors> {
    parser::parse_source(src, Boundary::around(src.dir(), src.dir()))
}
