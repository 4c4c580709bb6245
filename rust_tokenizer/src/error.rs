//! The core's error type. `py.rs` turns each variant into a Python exception at the boundary.

use std::fmt;

/// Everything that can go wrong in the tokenizer core, with a message that says what to do.
#[derive(Debug)]
pub enum Error {
    /// A file could not be read or written.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A file or string is not valid JSON, or not JSON of a shape we understand.
    Format(String),
    /// A caller passed a value we cannot accept (the message names it and what is accepted).
    Input(String),
    /// An output too large to allocate (the message says which and what to lower).
    Memory(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Format(msg) | Error::Input(msg) | Error::Memory(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
