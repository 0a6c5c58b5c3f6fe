//! Time across the boundary: core [`Timestamp`]s become timezone-aware UTC `datetime.datetime`
//! objects (millisecond precision); arguments accept an aware or naive `datetime` (naive means
//! local time, as `datetime.timestamp()` has it), an RFC 3339 string, or seconds since the epoch.
//! Times beyond what `datetime` holds (a garbage reset time from upstream) become
//! `datetime.max` / `datetime.min` in UTC rather than an `OverflowError`; as arguments, epoch
//! seconds beyond it are refused (`InvalidInput`).

use codexpool_core::Timestamp;
use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDateTime, PyDelta, PyFloat, PyInt, PyString, PyTzInfo};

use crate::errors::invalid;

static EPOCH: PyOnceLock<Py<PyDateTime>> = PyOnceLock::new();

/// `datetime.max` in milliseconds since the epoch (9999-12-31T23:59:59.999Z).
const MAX_MILLIS: i64 = 253_402_300_799_999;
/// `datetime.min` in milliseconds since the epoch (0001-01-01T00:00:00Z).
const MIN_MILLIS: i64 = -62_135_596_800_000;

/// `1970-01-01T00:00:00Z` + the timestamp, as an aware `datetime`; clamped to `datetime.max`
/// and `datetime.min` (in UTC).
pub(crate) fn to_datetime(py: Python<'_>, t: Timestamp) -> PyResult<Bound<'_, PyDateTime>> {
    let ms = t.as_millis();
    if ms > MAX_MILLIS {
        let utc = PyTzInfo::utc(py)?;
        return PyDateTime::new(py, 9999, 12, 31, 23, 59, 59, 999_999, Some(&utc));
    }
    if ms < MIN_MILLIS {
        let utc = PyTzInfo::utc(py)?;
        return PyDateTime::new(py, 1, 1, 1, 0, 0, 0, 0, Some(&utc));
    }
    let epoch = EPOCH.get_or_try_init(py, || {
        let utc = PyTzInfo::utc(py)?;
        PyDateTime::new(py, 1970, 1, 1, 0, 0, 0, 0, Some(&utc)).map(Bound::unbind)
    })?;
    let days = ms.div_euclid(86_400_000);
    let rest = ms.rem_euclid(86_400_000);
    let delta = PyDelta::new(
        py,
        i32::try_from(days).map_err(|_| invalid(py, "timestamp", "out of range"))?,
        i32::try_from(rest / 1000).unwrap_or(0),
        i32::try_from((rest % 1000) * 1000).unwrap_or(0),
        false,
    )?;
    Ok(epoch.bind(py).add(delta)?.cast_into::<PyDateTime>()?)
}

/// A timestamp that converts to an aware UTC `datetime`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Time(pub Timestamp);

impl<'py> IntoPyObject<'py> for Time {
    type Target = PyDateTime;
    type Output = Bound<'py, PyDateTime>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        to_datetime(py, self.0)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A `repr()` shows what the attribute holds, clamped the same way.
        match self.0.as_millis() {
            ms if ms > MAX_MILLIS => f.write_str("9999-12-31T23:59:59.999999Z"),
            ms if ms < MIN_MILLIS => f.write_str("0001-01-01T00:00:00Z"),
            _ => f.write_str(&self.0.to_rfc3339()),
        }
    }
}

/// `Some(Time)` from an optional timestamp.
pub(crate) fn opt(t: Option<Timestamp>) -> Option<Time> {
    t.map(Time)
}

/// Reads a time argument (`datetime`, RFC 3339 string, or epoch seconds) named `field`.
pub(crate) fn from_arg(v: &Bound<'_, PyAny>, field: &str) -> PyResult<Timestamp> {
    let py = v.py();
    if v.is_instance_of::<PyDateTime>() {
        // Within a day of `datetime`'s range (a time zone's offset): far from i64's ends. A
        // naive time near either end (local time) can fall outside it: Python's ValueError.
        use pyo3::exceptions::{PyOSError, PyValueError};
        let secs: f64 = match v.call_method0("timestamp") {
            Ok(secs) => secs.extract()?,
            Err(e)
                if e.is_instance_of::<PyValueError>(py)
                    || e.is_instance_of::<PyOverflowError>(py)
                    || e.is_instance_of::<PyOSError>(py) =>
            {
                return Err(invalid(py, field, format!("{v}: {}", e.value(py))));
            }
            Err(e) => return Err(e),
        };
        return Ok(from_secs(secs));
    }
    if v.is_instance_of::<PyString>() {
        let s: String = v.extract()?;
        return Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| invalid(py, field, format!("{s:?} is not an RFC 3339 time")));
    }
    if !v.is_instance_of::<PyBool>()
        && (v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>())
    {
        let secs: f64 = match v.extract() {
            Ok(secs) => secs,
            // An int too large for a float.
            Err(e) if e.is_instance_of::<PyOverflowError>(py) => {
                return Err(invalid(
                    py,
                    field,
                    "that many seconds since the epoch is outside the years 1 to 9999 (what \
                     datetime holds)",
                ));
            }
            Err(e) => return Err(e),
        };
        if secs.is_finite() {
            // Refused rather than clamped: a clamped time would reach core as one of i64's
            // ends, where day arithmetic (a ledger cutoff's day) has no room.
            #[allow(clippy::cast_precision_loss)] // both ends are below 2^53
            let range = MIN_MILLIS as f64..=MAX_MILLIS as f64;
            let ms = (secs * 1000.0).round();
            if !range.contains(&ms) {
                let hint = if ms > 0.0 {
                    "; was a time in milliseconds given as seconds?"
                } else {
                    ""
                };
                return Err(invalid(
                    py,
                    field,
                    format!(
                        "{secs} seconds since the epoch is outside the years 1 to 9999 (what \
                         datetime holds{hint})"
                    ),
                ));
            }
            return Ok(from_secs(secs));
        }
    }
    Err(invalid(
        py,
        field,
        "expected a datetime, an RFC 3339 string or seconds since the epoch",
    ))
}

#[allow(clippy::cast_possible_truncation)]
fn from_secs(secs: f64) -> Timestamp {
    Timestamp::from_millis((secs * 1000.0).round() as i64)
}
