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
    let text = read_bounded(path)?;
    let src = Source::new(name, path, text);
    parser::parse_source(&src, Boundary::around(src.dir(), root))
}

/// The most bytes a pipeline file may hold. Real ones hold kilobytes; the
/// parser takes about 250 bytes of memory per byte of KDL, so this keeps
/// `pipe check` of a hostile file within a few hundred megabytes.
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;

/// A pipeline file's text, refused unread past [`MAX_PIPELINE_BYTES`] (and
/// read no further than that if it grows while read).
fn read_bounded(path: &Path) -> Result<String, Errors> {
    use std::io::Read;
    let io = |source| Errors(vec![LangError::Io { path: path.display().to_string(), source }]);
    let too_large =
        |len| Errors(vec![LangError::TooLarge { path: path.display().to_string(), len, max: MAX_PIPELINE_BYTES }]);
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_PIPELINE_BYTES {
        return Err(too_large(len));
    }
    let mut text = String::new();
    file.take(MAX_PIPELINE_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > MAX_PIPELINE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

/// Parses text that is already in memory (tests, the fuzzer, `pipe check -`);
/// includes stay inside the git repository around the source's directory,
/// or inside that directory.
pub fn parse(src: &Arc<Source>) -> Result<Vec<Pipeline>, Errors> {
    parser::parse_source(src, Boundary::around(src.dir(), src.dir()))
}
