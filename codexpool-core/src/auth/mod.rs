//! Sign-in and token lifecycle (PROTOCOL.md §1). This module owns everything that talks to the
//! OAuth issuer: the browser sign-in (PKCE, the authorize URL, the loopback callback listener,
//! manual completion from a pasted redirect URL), the device-code sign-in, the code exchange, the
//! token refresh (single-flight per account across tasks and processes, with error
//! classification) and the background refresher. [`Auth`] is the handle; get one with
//! [`Pool::auth`](crate::Pool::auth).
//!
//! Login sessions live in the store, so a sign-in started by one process can be finished by
//! another (a redirect URL pasted into `codexpool account complete`). Refresh tokens are single
//! use: a refresh runs under a lease row in the store and re-reads the stored tokens after taking
//! it, so two processes never spend the same refresh token; rotated tokens the database will not
//! take are rescued beside it rather than dropped (see the `refresh` module's docs).
//!
//! ```no_run
//! use codexpool_core::{Pool, auth::LoginOptions};
//!
//! # async fn run(pool: Pool) -> Result<(), codexpool_core::auth::AuthError> {
//! let login = pool.auth().login_start(LoginOptions::default().label("work")).await?;
//! println!("open {}", login.url());
//! let done = login.wait().await?;
//! println!("signed in {}", done.account.label);
//! # Ok(()) }
//! ```

mod callback;
mod client;
mod device;
mod holder;
pub mod jwt;
mod login;
mod pkce;
mod refresh;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub use callback::{CallbackPage, render_callback_page};
pub use client::{CODEX_VERSION, codex_user_agent};
pub(crate) use client::{describe, excerpt};
pub use device::DeviceLogin;
pub use jwt::{Claims, decode_claims};
pub use login::{
    LOGIN_SESSION_TTL, LoginCompleted, LoginHandle, LoginInfo, LoginOptions, LoginStart,
};
pub use pkce::{Pkce, pkce_challenge};
pub use refresh::{
    OTHER_HOLDER_WAIT, REFRESH_AHEAD, REFRESH_LEASE_TTL, REFRESH_POST_TIMEOUT, REFRESH_WITHOUT_EXP,
    RefreshAttempt, RefresherOptions, UNAUTHORIZED_WAIT, refresh_due_at, spawn_refresher,
    spawn_refresher_with,
};

use crate::Pool;
use crate::secret::Secret;

/// A sign-in or token problem. Messages say what happened and what to do; they never contain a
/// token, code or verifier.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A token is not a JWT we can read.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The redirect URL carries a `state` that no sign-in of this database started.
    #[error(
        "this sign-in link does not belong to any sign-in started here (unknown state); start a new \
         sign-in with `codexpool account login`"
    )]
    UnknownState,
    /// The sign-in was started more than 15 minutes ago.
    #[error("this sign-in has expired (sign-ins last 15 minutes); start a new one")]
    Expired,
    /// The sign-in was already completed (or is being completed right now).
    #[error("this sign-in was already completed{}", account_id.as_ref().map(|a| format!(" (account {a})")).unwrap_or_default())]
    AlreadyCompleted {
        /// The account it signed in, when known.
        account_id: Option<String>,
    },
    /// The sign-in was cancelled.
    #[error("this sign-in was cancelled")]
    Cancelled,
    /// The sign-in failed earlier (as recorded in the store).
    #[error("the sign-in failed: {message}")]
    LoginFailed {
        /// Why, as recorded when it failed.
        message: String,
    },
    /// A pasted redirect URL (or a callback request) lacks what a sign-in needs.
    #[error("not a sign-in redirect URL: {message}")]
    InvalidRedirect {
        /// What is missing or wrong.
        message: String,
    },
    /// The issuer redirected back with `error=…`.
    #[error("the sign-in was refused: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        /// The OAuth `error`.
        error: String,
        /// The `error_description`, if any.
        description: Option<String>,
    },
    /// The issuer said `missing_codex_entitlement`.
    #[error(
        "this ChatGPT account has no Codex access on its plan or workspace (missing_codex_entitlement); \
         use an account or workspace whose plan includes Codex"
    )]
    MissingEntitlement,
    /// The code exchange failed.
    #[error("the issuer refused the sign-in code{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Exchange {
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        /// What the issuer said (or what was wrong with its answer).
        message: String,
    },
    /// The refresh token is dead (expired, reused, revoked): the account needs a new sign-in.
    #[error(
        "the sign-in of account {account_id} is no longer valid ({code}); sign in again with \
         `codexpool account login`"
    )]
    RefreshDead {
        /// The local account id.
        account_id: String,
        /// The issuer's error code (`refresh_token_expired`, `refresh_token_reused`, …).
        code: String,
    },
    /// A network problem, a 5xx or an unreadable answer: try again later.
    #[error("temporary sign-in problem: {message}")]
    Transient {
        /// What happened.
        message: String,
    },
    /// The callback listener's address is taken.
    #[error(
        "cannot listen for the sign-in callback on {addr}: the address is in use. Set \
         CODEXPOOL_{setting} to a free host:port (and CODEXPOOL_REDIRECT_URI to match), or sign \
         in without the listener and finish with the URL the browser lands on: `codexpool \
         account login --no-listen` then `codexpool account complete <URL>`, or in the Python \
         bindings `login_start(listen=False)` then `accounts.login_complete(url)`"
    )]
    AddrInUse {
        /// The address.
        addr: String,
        /// The setting that names it, without its `CODEXPOOL_` prefix: `LOGIN_ADDR`.
        setting: &'static str,
    },
    /// The callback listener would be reachable from other machines.
    #[error(
        "CODEXPOOL_LOGIN_ADDR={addr} is not a loopback address; the sign-in callback would be \
         reachable from other machines. Use 127.0.0.1 or localhost, or set \
         CODEXPOOL_ALLOW_NON_LOOPBACK_LOGIN_ADDR=1"
    )]
    NonLoopback {
        /// The address.
        addr: String,
    },
    /// The callback listener could not start for another reason.
    #[error("cannot listen for the sign-in callback on {addr} (CODEXPOOL_LOGIN_ADDR): {message}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The device code was not approved within 15 minutes.
    #[error("the device code was not approved within 15 minutes; start a new device sign-in")]
    DeviceExpired,
    /// The device-code endpoints refused.
    #[error("the device sign-in failed (HTTP {status}): {message}")]
    Device {
        /// HTTP status.
        status: u16,
        /// What the issuer said.
        message: String,
    },
    /// No such account.
    #[error("no account matches {id:?}")]
    UnknownAccount {
        /// The id asked for.
        id: String,
    },
    /// A value given by the caller is not acceptable.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error("the database failed during sign-in: {message}")]
    Store {
        /// What failed.
        message: String,
    },
}

impl AuthError {
    /// Whether trying again later may work (network, 5xx, a busy lease).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
        }
    }

    /// Converts a crate error met during a sign-in step.
    pub(crate) fn from_crate(e: crate::Error) -> Self {
        match e {
            crate::Error::Auth(a) => a,
            crate::Error::NotFound {
                what: "account",
                id,
            } => Self::UnknownAccount { id },
            crate::Error::InvalidInput { field, message } => Self::Invalid { field, message },
            other => Self::Store {
                message: other.to_string(),
            },
        }
    }
}

impl From<crate::store::StoreError> for AuthError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store {
            message: e.to_string(),
        }
    }
}

/// The sign-in and token handle of a [`Pool`]. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    pub(crate) pool: Pool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// Where one refresh (possibly shared by several callers) stands.
#[derive(Clone, Default)]
pub(crate) struct Flight {
    /// Since when it has been waiting for another holder's lease, if it is.
    pub(crate) waiting_since: Option<tokio::time::Instant>,
    /// How it ended.
    pub(crate) result: Option<Result<Secret, AuthError>>,
}

/// Per-pool sign-in state: the HTTP client, the lease-holder id, refreshes in flight and the
/// backoff of accounts whose refresh failed transiently.
pub(crate) struct AuthState {
    http: OnceLock<reqwest::Client>,
    /// Names this pool in refresh leases (unique per process and pool).
    pub(crate) holder: String,
    /// Account id → the refresh in flight in this process.
    pub(crate) flights: Mutex<HashMap<String, tokio::sync::watch::Receiver<Flight>>>,
    /// The refresh's time limits (fixed outside tests).
    pub(crate) timing: Mutex<refresh::Timing>,
    /// Account id → (consecutive transient failures, do not retry before).
    pub(crate) backoff: Mutex<HashMap<String, (u32, crate::Timestamp)>>,
    /// Account id → when a 401 last had its token refreshed, and the access token that gave (see
    /// [`refresh::UNAUTHORIZED_REFRESH_GAP`]); entries older than the gap go at the next insert.
    pub(crate) refreshed_for_401: Mutex<HashMap<String, (crate::Timestamp, crate::Secret)>>,
    /// Woken whenever this process changes a login session.
    pub(crate) login_changed: tokio::sync::Notify,
    /// Login state → whether it created its account, for logins completed in this process.
    pub(crate) created: Mutex<HashMap<String, bool>>,
    /// The callback listeners this process started: their login state, and `true` once stopped.
    pub(crate) listeners: Mutex<Vec<(String, tokio::sync::watch::Receiver<bool>)>>,
}

impl AuthState {
    pub(crate) fn new() -> Self {
        Self {
            http: OnceLock::new(),
            holder: holder::this_process(),
            flights: Mutex::new(HashMap::new()),
            timing: Mutex::new(refresh::Timing::default()),
            backoff: Mutex::new(HashMap::new()),
            refreshed_for_401: Mutex::new(HashMap::new()),
            login_changed: tokio::sync::Notify::new(),
            created: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
        }
    }
}

impl Auth {
    /// The shared HTTP client (built on first use).
    pub(crate) fn http(&self) -> Result<reqwest::Client, AuthError> {
        let state = &self.pool.shared.auth;
        if let Some(c) = state.http.get() {
            return Ok(c.clone());
        }
        let c = client::build(&self.pool.shared.config)?;
        Ok(state.http.get_or_init(|| c).clone())
    }

    pub(crate) fn config(&self) -> &crate::Config {
        &self.pool.shared.config
    }

    pub(crate) fn now(&self) -> crate::Timestamp {
        self.pool.shared.clock.now()
    }
}
