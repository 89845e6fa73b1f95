//! The language: KDL text -> typed [`model::Pipeline`], every item keeping its span.
//! Knows nothing about graphs, processes or tokio.

mod approvers;
mod blocks;
mod bounded;
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

use bounded::ReadError;
pub use error::{Errors, LangError};
use include_path::Boundary;
pub use model::Pipeline;
pub use plugin_step::parse_size;
pub use source::{Loc, Source};

/// Reads and parses one pipeline file. `name` is how diagnostics call it;
/// `root` is the directory pipe runs for: includes stay inside the git
/// repository holding the file, or inside `root` when there is none.
pub fn load_file(path: &Path, name: &str, root: &Path) -> Result<Vec<Pipeline>, Errors> {
    let text = read_bounded(path)?;
    let src = Source::new(name, path, text);
    parser::parse_source(&src, Boundary::around(src.dir(), root))
}

/// The most bytes a pipeline file may hold. Real ones hold kilobytes; the
/// parser takes about 250 bytes of memory per byte of KDL, so this keeps
/// `pipe check` of a hostile file within a few hundred megabytes.
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;

/// A pipeline file's text, refused unread past [`MAX_PIPELINE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, Errors> {
    let shown = path.display().to_string();
    let io = |source| LangError::Io { path: shown.clone(), source };
    bounded::read_text(path, MAX_PIPELINE_BYTES).map_err(|e| {
        Errors(vec![match e {
            ReadError::Io(source) => io(source),
            ReadError::NotAFile => io(std::io::Error::other("not a regular file")),
            ReadError::NotUtf8 => io(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")),
            ReadError::TooLarge(len) => LangError::TooLarge { path: shown.clone(), len, max: MAX_PIPELINE_BYTES },
        }])
    })
}

/// Parses text that is already in memory (tests, the fuzzer, `pipe check -`);
/// includes stay inside the git repository around the source's directory,
/// or inside that directory.
pub fn parse(src: &Arc<Source>) -> Result<Vec<Pipeline>, Errors> {
    parser::parse_source(src, Boundary::around(src.dir(), src.dir()))
}
