//! Source text and locations: every model item remembers where it was written,
//! so later stages (the planner, the runner) can point back at the line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

/// One file's text, shared by every location that points into it.
pub struct Source {
    /// The name shown in diagnostics (the path as the user knows it).
    pub name: String,
    /// The file on disk; its directory is the base for relative paths.
    pub path: PathBuf,
    pub text: Arc<str>,
}

impl Source {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, text: impl Into<Arc<str>>) -> Arc<Self> {
        Arc::new(Source { name: name.into(), path: path.into(), text: text.into() })
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn named(&self) -> NamedSource<Arc<str>> {
        NamedSource::new(&self.name, self.text.clone())
    }
}

/// A place in a source file.
#[derive(Clone)]
pub struct Loc {
    pub src: Arc<Source>,
    pub span: SourceSpan,
}

impl Loc {
    pub fn new(src: &Arc<Source>, span: SourceSpan) -> Self {
        Loc { src: src.clone(), span }
    }

    /// The exact text at this location.
    pub fn text(&self) -> &str {
        let start = self.span.offset();
        self.src.text.get(start..start + self.span.len()).unwrap_or("")
    }

    /// A narrower location for `needle` inside this one, or this one when it is not found.
    pub fn narrow(&self, needle: &str) -> Loc {
        match self.text().find(needle) {
            Some(at) => Loc::new(&self.src, (self.span.offset() + at, needle.len()).into()),
            None => self.clone(),
        }
    }
}

impl fmt::Debug for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}+{}", self.src.name, self.span.offset(), self.span.len())
    }
}
