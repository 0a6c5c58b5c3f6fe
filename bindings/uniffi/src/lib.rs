//! codexpool-ffi: uniffi bindings of codexpool for Python, Kotlin and Swift.
//!
//! Small wrappers only (STYLE.md convention 2): each exported type holds core's handle as
//! `inner` and each method converts arguments, calls core or the gateway, and converts the
//! result. Behaviour lives in `codexpool-core` and `codexpool-gateway`.
//!
//! - [`Pool`] (`Pool.open(db_path, settings)`) hands out [`AccountPool`], [`KeyStore`],
//!   [`UsageTracker`] and [`RequestLog`].
//! - [`serve`] starts the gateway service and returns a [`Server`] (`url`, `base_url`,
//!   `rpc_token`, `stop`).
//! - Every failure is a [`CodexPoolError`] variant carrying core's message.
//! - With the `testing` feature, `FakeOpenAi` (codexpool-testkit) is exported too.
//!
//! Conventions across the FFI:
//!
//! - **Async where core is async.** Those methods are `async` in every generated language
//!   (Python coroutines, Kotlin `suspend`, Swift `async`); they run on one module-wide
//!   multi-thread tokio runtime (see `runtime`), never on the caller's executor. Methods that
//!   only read memory (`list`, `get`, `verify`) are plain calls.
//! - **Times are `i64` milliseconds since the Unix epoch (UTC)**, as core stores them; time
//!   arguments outside the years 1 to 9999 are refused (`InvalidInput`).
//! - **Ids** accept any unique prefix, as on the command line.
//! - **Paths** (`Pool.open`'s `db_path`, `import_path`, `export_to_file`) may start with `~`
//!   for the home directory, as in a shell.
//! - **Secrets** cross only where they are meant to: `CreatedKey.secret()` once (an object, so
//!   printing it shows `*****`), and `Server.rpc_token`. Account tokens never do.
//!
//! The bindings are generated from the built library; see the crate README:
//!
//! ```text
//! cargo build -p codexpool-ffi
//! cargo run -p codexpool-uniffi-bindgen --bin uniffi-bindgen -- generate \
//!     --library target/debug/libcodexpool_ffi.so --language python --out-dir bindings/uniffi/generated
//! ```

mod account;
mod error;
mod keys;
mod pool;
mod request_log;
mod runtime;
mod server;
#[cfg(feature = "testing")]
mod testing;
mod time;
mod usage;

pub use account::{
    Account, AccountFilter, AccountPatch, AccountPool, AccountStatus, ImportResult, ImportStatus,
    LoginCompleted, LoginInfo, LoginOptions, LoginStart,
};
pub use error::CodexPoolError;
pub use keys::{CreatedKey, KeyPatch, KeyStore, NewKey, PlatformKey};
pub use pool::{Pool, Setting};
pub use request_log::{RequestLog, RequestLogEntry, RequestLogQuery};
pub use server::{Server, serve};
#[cfg(feature = "testing")]
pub use testing::FakeOpenAi;
pub use usage::{
    AccountUsage, Credits, LedgerGroup, LedgerRow, PollResult, ReadingSource, TokenCounts,
    UsageTracker, WindowKind, WindowReading,
};

uniffi::setup_scaffolding!();

/// A core timestamp as it crosses the FFI.
pub(crate) fn ms(t: codexpool_core::Timestamp) -> i64 {
    t.as_millis()
}
