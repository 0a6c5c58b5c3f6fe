//! Argument conventions shared by the wrappers: keyword changes for `update` methods (an
//! omitted keyword leaves a field as it is, `None` clears an optional one), durations in seconds,
//! and listen addresses.

use std::net::SocketAddr;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::invalid;

/// The `**changes` of an update call, checked against the accepted names, in call order.
pub(crate) fn keyword_changes<'py>(
    method: &str,
    kwargs: Option<&Bound<'py, PyDict>>,
    accepted: &[&str],
) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let Some(kwargs) = kwargs else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(kwargs.len());
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        if !accepted.contains(&name.as_str()) {
            return Err(PyTypeError::new_err(format!(
                "{method}() got an unexpected keyword argument {name:?} (accepted: {})",
                accepted.join(", ")
            )));
        }
        out.push((name, v));
    }
    Ok(out)
}

/// A non-negative number of seconds.
pub(crate) fn seconds(py: Python<'_>, field: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        invalid(
            py,
            field,
            format!("{secs} is not a non-negative number of seconds"),
        )
    })
}

/// A listen address as the CLI's `serve --addr` takes it (core's `parse_listen_addr`):
/// `IP:port`, or `host:port` with `localhost` as 127.0.0.1 and another name resolved now (with
/// the GIL released); port 0 picks a free port.
pub(crate) fn listen_addr(py: Python<'_>, field: &str, addr: &str) -> PyResult<SocketAddr> {
    py.detach(|| codexpool_core::config::parse_listen_addr(addr))
        .map_err(|e| invalid(py, field, format!("{addr:?}: {e}")))
}
