//! The one error type of radint-core. Every variant says where, what was expected and what was found.

use std::fmt;

/// A place in a text file, for messages like `parameters.txt:14`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter that could not be parsed or has an invalid value.
    #[error("{location}: {key}: {message}")]
    Parameter {
        location: Location,
        key: String,
        message: String,
    },
    /// A required parameter that is absent.
    #[error("{file}: missing required parameter {key} ({hint})")]
    MissingParameter {
        file: String,
        key: String,
        hint: String,
    },
    /// A binary file (Map.bin, mask, distortion map, ...) with the wrong size or content.
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    /// Array shapes or lengths that do not fit together.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An argument outside its valid range (not from a file).
    #[error("{0}")]
    Invalid(String),
    /// Memory for a call's arrays could not be had (a failed allocation would abort).
    #[error("{0}")]
    OutOfMemory(String),
}

/// Whether `bytes` more can be allocated now, asked by reserving them once: a failed
/// allocation aborts a Rust process, so calls that size their arrays from the caller's frames
/// and bins ask first and report instead (under an 8 GiB `ulimit -v` a 16M detector's fine
/// cake aborted the Python process). The probe reserves address space: a cgroup's limit (a
/// container's, a scheduler's `--mem`) is met only when pages are touched, past any check.
/// `what` says what the memory is for.
pub fn check_room(bytes: usize, what: impl FnOnce() -> String) -> Result<()> {
    if Vec::<u8>::new().try_reserve_exact(bytes).is_ok() {
        return Ok(());
    }
    Err(Error::OutOfMemory(format!(
        "{} need {:.2} GB, which cannot be allocated (an address-space limit such as ulimit \
         -v, or more than the machine has): integrate fewer frames per call or coarser bins",
        what(),
        bytes as f64 / 1e9
    )))
}

impl Error {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn format(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn shape(
        what: impl Into<String>,
        expected: impl fmt::Display,
        got: impl fmt::Display,
    ) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
