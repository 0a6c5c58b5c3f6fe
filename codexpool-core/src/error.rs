//! The crate's error type. Subsystems with errors of their own ([`StoreError`],
//! [`PoolError`], [`KeyError`], [`ConfigError`]) convert into [`Error`] so that a front-end
//! handles one type, and can still match the subsystem's facts.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::keys::KeyError;
use crate::pool::PoolError;
use crate::store::StoreError;

/// Anything that can go wrong in codexpool-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No record with that id, id prefix or name.
    #[error("no {what} matches {id:?}")]
    NotFound {
        /// `account`, `key`, `login session`, …
        what: &'static str,
        /// The id or prefix asked for.
        id: String,
    },
    /// An id prefix, or a name, matches more than one record.
    #[error("{what} {by} {prefix:?} is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// `account` or `key`.
        what: &'static str,
        /// What was matched: `id` (a prefix), `name` (a key's), `label or email` (an account's).
        by: &'static str,
        /// The prefix or name asked for.
        prefix: String,
        /// The matching ids.
        candidates: Vec<String>,
    },
    /// A value supplied by the caller is not acceptable.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The field (or parameter) at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The record already exists.
    #[error("{0}")]
    Conflict(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No account can serve.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A platform key was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Sign-in or token refresh failed.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// [`AccountPool::take_over`](crate::AccountPool::take_over) could not refresh an imported
    /// Codex CLI sign-in (the first that failed; each failed result has `take_over_error`): the
    /// account stays imported, its refresh token still shared with that CLI.
    #[error("could not take over {input}: {cause}")]
    TakeOver {
        /// The import result's source (a path, `stdin`, with `#N` for the N-th account).
        input: String,
        /// The account it was imported as.
        account_id: String,
        /// Why the refresh failed.
        #[source]
        cause: crate::auth::AuthError,
    },
}

impl Error {
    /// An [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A store failure on one record, its `NotFound` named the way the caller asked for it.
    pub(crate) fn from_store(e: StoreError, what: &'static str, id: &str) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::NotFound {
                what,
                id: id.to_string(),
            },
            StoreError::Refused { field, message } => Self::invalid(field, message),
            other => other.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
