//! The exception hierarchy under `codexpool.CodexPoolError`, and the one mapping from the core's
//! and the gateway's errors to it. The message is always the Rust error's own text; a few facts
//! ride along as attributes (`NotFound.what/id`, `InvalidInput.field`, `Ambiguous.candidates`,
//! `NoAccountAvailable.retry_at`, `FileError.path`, `AuthError.report` of a failed take-over).
//! Warnings (an import that shares a sign-in with the Codex CLI, a setting that was adjusted) go
//! through Python's `warnings` module as `codexpool.CodexPoolWarning`.

use codexpool_core::Error;
use codexpool_core::auth::AuthError as CoreAuthError;
use codexpool_core::store::StoreError as CoreStoreError;
use pyo3::PyTypeInfo;
use pyo3::exceptions::{PyException, PyUserWarning};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::time::to_datetime;

pyo3::create_exception!(
    codexpool,
    CodexPoolError,
    PyException,
    "Base class of every codexpool error."
);
pyo3::create_exception!(
    codexpool,
    NotFound,
    CodexPoolError,
    "No account, key or sign-in matches the id (or id prefix)."
);
pyo3::create_exception!(
    codexpool,
    InvalidInput,
    CodexPoolError,
    "A value (an argument or a setting) is not acceptable; `field` names it."
);
pyo3::create_exception!(
    codexpool,
    Ambiguous,
    InvalidInput,
    "An id prefix matches more than one record; `candidates` lists them."
);
pyo3::create_exception!(
    codexpool,
    Conflict,
    CodexPoolError,
    "The record already exists."
);
pyo3::create_exception!(
    codexpool,
    NoAccountAvailable,
    CodexPoolError,
    "No account can serve (none, none active, all exhausted, cooling down or busy)."
);
pyo3::create_exception!(
    codexpool,
    KeyRefused,
    CodexPoolError,
    "A platform key was refused (missing, unknown, disabled, expired, model not allowed)."
);
pyo3::create_exception!(
    codexpool,
    AuthError,
    CodexPoolError,
    "Sign-in or token refresh failed; from an import's `take_over`, `report` is the import's \
     report (the failed results have `take_over_error`)."
);
pyo3::create_exception!(
    codexpool,
    StoreError,
    CodexPoolError,
    "The database failed."
);
pyo3::create_exception!(
    codexpool,
    FileError,
    CodexPoolError,
    "A file could not be read or written; `path` names it."
);
pyo3::create_exception!(
    codexpool,
    ServerError,
    CodexPoolError,
    "The server could not start or stop cleanly (e.g. the address is in use)."
);
pyo3::create_exception!(
    codexpool,
    Timeout,
    CodexPoolError,
    "A wait with a timeout ran out."
);
pyo3::create_exception!(
    codexpool,
    CodexPoolWarning,
    PyUserWarning,
    "Something to know that is not an error: an imported sign-in still shared with the Codex \
     CLI, a setting that was adjusted."
);

/// Adds the exceptions to the module, with `None` class defaults for their attributes.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let none = py.None();
    let defaults: [(Bound<'_, PyType>, &[&str]); 12] = [
        (py.get_type::<CodexPoolError>(), &[]),
        (py.get_type::<NotFound>(), &["what", "id"]),
        (py.get_type::<InvalidInput>(), &["field"]),
        (py.get_type::<Ambiguous>(), &["candidates"]),
        (py.get_type::<Conflict>(), &[]),
        (py.get_type::<NoAccountAvailable>(), &["retry_at"]),
        (py.get_type::<KeyRefused>(), &[]),
        (py.get_type::<AuthError>(), &["report"]),
        (py.get_type::<StoreError>(), &[]),
        (py.get_type::<FileError>(), &["path"]),
        (py.get_type::<ServerError>(), &[]),
        (py.get_type::<Timeout>(), &[]),
    ];
    for (ty, attrs) in defaults {
        for a in attrs {
            ty.setattr(*a, &none)?;
        }
        m.add(ty.name()?, ty)?;
    }
    m.add("CodexPoolWarning", py.get_type::<CodexPoolWarning>())?;
    Ok(())
}

/// Issues each message once as a `CodexPoolWarning` (`warnings.warn`, attributed to the
/// caller's line); raises when the warnings filter turns them into errors.
pub(crate) fn warn_all<'a>(
    py: Python<'_>,
    messages: impl IntoIterator<Item = &'a str>,
) -> PyResult<()> {
    let category = py.get_type::<CodexPoolWarning>();
    let mut seen: Vec<&str> = Vec::new();
    for m in messages {
        if seen.contains(&m) {
            continue;
        }
        seen.push(m);
        // A NUL cannot cross into C; none is expected in a message.
        let text = std::ffi::CString::new(m.replace('\0', "")).unwrap_or_default();
        PyErr::warn(py, category.as_any(), &text, 1)?;
    }
    Ok(())
}

/// A new exception of type `T` with `message` and attributes.
fn raise<T: PyTypeInfo>(py: Python<'_>, message: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let err = PyErr::new::<T, _>(message);
    let value = err.value(py);
    for (name, v) in attrs {
        // Setting an attribute on a fresh exception instance cannot fail in practice; the
        // message is what matters if it did.
        let _ = value.setattr(*name, v);
    }
    err
}

fn text(py: Python<'_>, s: &str) -> Py<PyAny> {
    pyo3::types::PyString::new(py, s).into_any().unbind()
}

/// The Python exception for a core error.
pub(crate) fn core_error(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::NotFound { what, id } => raise::<NotFound>(
            py,
            message,
            &[("what", text(py, what)), ("id", text(py, &id))],
        ),
        Error::Ambiguous { candidates, .. } => {
            let list = pyo3::types::PyList::new(py, candidates)
                .map(|l| l.into_any().unbind())
                .unwrap_or_else(|_| py.None());
            raise::<Ambiguous>(py, message, &[("candidates", list)])
        }
        Error::InvalidInput { field, .. } => {
            raise::<InvalidInput>(py, message, &[("field", text(py, &field))])
        }
        Error::Config(c) => raise::<InvalidInput>(py, message, &[("field", text(py, &c.var))]),
        Error::Conflict(_) => raise::<Conflict>(py, message, &[]),
        Error::Io { path, .. } => {
            raise::<FileError>(py, message, &[("path", text(py, &path.to_string_lossy()))])
        }
        Error::Store(CoreStoreError::NotFound { what, id }) => raise::<NotFound>(
            py,
            message,
            &[("what", text(py, what)), ("id", text(py, &id))],
        ),
        Error::Store(CoreStoreError::Conflict { .. }) => raise::<Conflict>(py, message, &[]),
        Error::Store(_) => raise::<StoreError>(py, message, &[]),
        Error::Pool(p) => {
            let at = p
                .retry_at()
                .and_then(|t| to_datetime(py, t).ok())
                .map_or_else(|| py.None(), |d| d.into_any().unbind());
            raise::<NoAccountAvailable>(py, message, &[("retry_at", at)])
        }
        Error::Key(_) => raise::<KeyRefused>(py, message, &[]),
        Error::Auth(a) => auth_error(py, a),
        // A refresh failed; the message names the import source it was for.
        Error::TakeOver { .. } => raise::<AuthError>(py, message, &[]),
        _ => raise::<CodexPoolError>(py, message, &[]),
    }
}

/// The Python exception for a sign-in error.
pub(crate) fn auth_error(py: Python<'_>, e: CoreAuthError) -> PyErr {
    let message = e.to_string();
    match e {
        CoreAuthError::UnknownAccount { id } => raise::<NotFound>(
            py,
            message,
            &[("what", text(py, "account")), ("id", text(py, &id))],
        ),
        // No sign-in of this database has that `state`; the error does not carry it.
        CoreAuthError::UnknownState => {
            raise::<NotFound>(py, message, &[("what", text(py, "sign-in"))])
        }
        CoreAuthError::Invalid { field, .. } => {
            raise::<InvalidInput>(py, message, &[("field", text(py, &field))])
        }
        // A string that is not a sign-in redirect: the caller's argument, as in codexpool_ffi.
        CoreAuthError::InvalidRedirect { .. } => {
            raise::<InvalidInput>(py, message, &[("field", text(py, "redirect_url"))])
        }
        CoreAuthError::Store { .. } => raise::<StoreError>(py, message, &[]),
        _ => raise::<AuthError>(py, message, &[]),
    }
}

/// `Result` → `PyResult` with the mapping above.
pub(crate) trait OrRaise<T> {
    /// The value, or the matching Python exception.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T, E: Into<Error>> OrRaise<T> for Result<T, E> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| core_error(py, e.into()))
    }
}

/// An [`InvalidInput`] for a bad argument.
pub(crate) fn invalid(py: Python<'_>, field: &str, message: impl std::fmt::Display) -> PyErr {
    core_error(py, Error::invalid(field, message.to_string()))
}
