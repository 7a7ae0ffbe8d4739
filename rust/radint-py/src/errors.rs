//! The single mapping from radint-core errors to the Python exception tree of `radint.exceptions`.
//!
//! The classes live in Python so they can inherit both `RadintError` and the matching built-in
//! (`ValueError`, `OSError`, `FileNotFoundError`), which `create_exception!` cannot express.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use radint_core::Error;

pub struct CoreError(pub Error);

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        CoreError(e)
    }
}

fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Parameter { .. } | Error::MissingParameter { .. } => "ParameterError",
        Error::Format { .. } => "MapFormatError",
        Error::Shape { .. } => "ShapeError",
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            "RadintFileNotFoundError"
        }
        Error::Io { .. } => "RadintIOError",
        Error::Invalid(_) => "InvalidInputError",
        Error::OutOfMemory(_) => "RadintMemoryError",
    }
}

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> PyErr {
        raise(class_name(&err.0), err.0.to_string())
    }
}

/// Raise a radint exception by class name, from binding-level validation or a core error.
pub fn raise(name: &'static str, message: String) -> PyErr {
    Python::attach(
        |py| match py.import("radint.exceptions").and_then(|m| m.getattr(name)) {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(_) => PyRuntimeError::new_err(message),
        },
    )
}

pub fn shape_error(message: String) -> PyErr {
    raise("ShapeError", message)
}
