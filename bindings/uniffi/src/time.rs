//! Time arguments across the FFI: `i64` milliseconds since the epoch, taken within the years 1
//! to 9999 (what Python's `datetime` and most date types hold). Anything beyond is a mistake,
//! refused with `InvalidInput` rather than passed on to core's day arithmetic at i64's ends.

use codexpool_core::Timestamp;

use crate::error::CodexPoolError;

/// 0001-01-01T00:00:00Z in milliseconds since the epoch.
const MIN_MILLIS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in milliseconds since the epoch.
const MAX_MILLIS: i64 = 253_402_300_799_999;

/// The time argument `field` (ms since the epoch), or `InvalidInput` naming it.
pub(crate) fn arg(field: &str, ms: i64) -> Result<Timestamp, CodexPoolError> {
    if (MIN_MILLIS..=MAX_MILLIS).contains(&ms) {
        Ok(Timestamp::from_millis(ms))
    } else {
        Err(CodexPoolError::InvalidInput(format!(
            "invalid {field}: {ms} ms since the epoch is outside the years 1 to 9999"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_beyond_the_years_1_to_9999_are_refused() {
        assert!(arg("before", MIN_MILLIS).is_ok());
        assert!(arg("before", MAX_MILLIS).is_ok());
        for ms in [i64::MIN, MIN_MILLIS - 1, MAX_MILLIS + 1, i64::MAX] {
            let e = arg("before", ms).unwrap_err();
            assert!(
                matches!(&e, CodexPoolError::InvalidInput(m) if m.starts_with("invalid before:")),
                "{e:?}"
            );
        }
    }
}
