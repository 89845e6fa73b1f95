/// How one attempt of a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Cancelled,
    /// The step ran and reported a failure (a plugin's error).
    Failed(String),
    /// The step could not be run at all, or broke its sandbox's limits.
    Error(String),
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(*c),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::Cancelled => "cancelled".into(),
            Exit::Failed(e) | Exit::Error(e) => e.clone(),
        }
    }

    /// An error that names what could not be done, from any typed error.
    pub fn error(e: impl std::fmt::Display) -> Exit {
        Exit::Error(e.to_string())
    }
}
