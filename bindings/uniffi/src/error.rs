//! `CodexPoolError`: the one error every exported call raises, one variant per kind of failure
//! in core and gateway, carrying the Rust message (`str(e)` in Python, `message` in Kotlin and
//! Swift). Variants are kinds, not causes: the message says what happened and what to do.

use codexpool_core::auth::AuthError;
use codexpool_core::store::StoreError;

/// Anything an exported call can fail with.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum CodexPoolError {
    /// No account, key or sign-in matches the id (or id prefix, or state).
    #[error("{0}")]
    NotFound(String),
    /// A value given by the caller is not acceptable: a setting, a field, an ambiguous prefix.
    #[error("{0}")]
    InvalidInput(String),
    /// The record already exists.
    #[error("{0}")]
    Conflict(String),
    /// No account can serve now (none, all disabled, exhausted, cooling down, busy).
    #[error("{0}")]
    NoAccountAvailable(String),
    /// A platform key was refused, or a sign-in or token refresh failed.
    #[error("{0}")]
    Auth(String),
    /// The database failed.
    #[error("{0}")]
    Store(String),
    /// A file or socket could not be read, written or bound.
    #[error("{0}")]
    Io(String),
    /// A bug or an unexpected state (a panicked task, a runtime that would not start, a process
    /// forked after the library was used).
    #[error("{0}")]
    Internal(String),
}

impl From<codexpool_core::Error> for CodexPoolError {
    fn from(e: codexpool_core::Error) -> Self {
        use codexpool_core::Error as E;
        let message = e.to_string();
        match e {
            E::NotFound { .. } => Self::NotFound(message),
            E::Ambiguous { .. } | E::InvalidInput { .. } | E::Config(_) => {
                Self::InvalidInput(message)
            }
            E::Conflict(_) => Self::Conflict(message),
            E::Io { .. } => Self::Io(message),
            E::Store(s) => s.into(),
            E::Pool(_) => Self::NoAccountAvailable(message),
            E::Key(_) => Self::Auth(message),
            E::Auth(a) => a.into(),
            // An import's take-over refresh failed; the message names the source.
            E::TakeOver { .. } => Self::Auth(message),
            _ => Self::Internal(message),
        }
    }
}

impl From<StoreError> for CodexPoolError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } => Self::NotFound(message),
            StoreError::Conflict { .. } => Self::Conflict(message),
            _ => Self::Store(message),
        }
    }
}

impl From<AuthError> for CodexPoolError {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::UnknownAccount { .. } | AuthError::UnknownState => Self::NotFound(message),
            AuthError::Invalid { .. } | AuthError::InvalidRedirect { .. } => {
                Self::InvalidInput(message)
            }
            AuthError::Store { .. } => Self::Store(message),
            _ => Self::Auth(message),
        }
    }
}

impl From<codexpool_core::keys::KeyError> for CodexPoolError {
    fn from(e: codexpool_core::keys::KeyError) -> Self {
        Self::Auth(e.to_string())
    }
}

impl From<codexpool_core::config::ConfigError> for CodexPoolError {
    fn from(e: codexpool_core::config::ConfigError) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

impl From<codexpool_gateway::ServerError> for CodexPoolError {
    fn from(e: codexpool_gateway::ServerError) -> Self {
        server_error(&e)
    }
}

/// A server's failure to start or stop, by kind.
pub(crate) fn server_error(e: &codexpool_gateway::ServerError) -> CodexPoolError {
    use CodexPoolError as C;
    use codexpool_gateway::ServerError as E;
    let message = e.to_string();
    match e {
        E::Bind { .. } | E::TokenFile { .. } | E::Workers(_) => C::Io(message),
        E::NonLoopback { .. } => C::InvalidInput(message),
        E::Flush(_) | E::ReadOnly { .. } => C::Store(message),
        _ => C::Internal(message),
    }
}
