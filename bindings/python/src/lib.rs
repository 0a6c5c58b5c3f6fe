//! Python bindings for codexpool: the `codexpool._native` extension module behind the
//! `codexpool` package (see `python/codexpool/` and the README).
//!
//! The bindings only convert (STYLE.md 2): each class holds a core handle in `inner` and each
//! method turns Python arguments into a core call and the result into Python values. Blocking
//! calls release the GIL and run on one process-wide tokio runtime ([`runtime`]); errors map to
//! one exception hierarchy ([`errors`]); return values are frozen record classes ([`record`]).

mod accounts;
mod args;
mod errors;
mod json;
mod keys;
mod pool;
mod record;
mod request_log;
mod runtime;
mod server;
mod testing;
mod time;
mod usage;

use pyo3::prelude::*;

/// The native half of the `codexpool` package; import `codexpool` instead.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<pool::Pool>()?;
    m.add_class::<accounts::AccountPool>()?;
    m.add_class::<accounts::Account>()?;
    m.add_class::<accounts::AccountRuntime>()?;
    m.add_class::<accounts::ImportResult>()?;
    m.add_class::<accounts::ImportReport>()?;
    m.add_class::<accounts::LoginStart>()?;
    m.add_class::<accounts::DeviceLogin>()?;
    m.add_class::<accounts::LoginCompleted>()?;
    m.add_class::<accounts::LoginInfo>()?;
    m.add_class::<keys::KeyStore>()?;
    m.add_class::<keys::Key>()?;
    m.add_class::<keys::CreatedKey>()?;
    m.add_class::<usage::UsageTracker>()?;
    m.add_class::<usage::AccountUsage>()?;
    m.add_class::<usage::WindowReading>()?;
    m.add_class::<usage::Credits>()?;
    m.add_class::<usage::PollResult>()?;
    m.add_class::<usage::LedgerRow>()?;
    m.add_class::<usage::TokenCounts>()?;
    m.add_class::<request_log::RequestLog>()?;
    m.add_class::<request_log::RequestLogEntry>()?;
    m.add_class::<server::Server>()?;
    m.add_function(wrap_pyfunction!(server::serve, m)?)?;
    m.add_class::<testing::FakeOpenAi>()?;
    m.add_class::<testing::Reply>()?;
    // Pools still open when the interpreter exits write what they have queued.
    let flush = wrap_pyfunction!(pool::flush_open_pools, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (flush,))?;
    Ok(())
}
