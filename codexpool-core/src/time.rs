//! Time as the pool sees it: [`Timestamp`] (milliseconds since the Unix epoch) and the injectable
//! [`Clock`], so that windows, cooldowns and expiries are tested without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// Serialized as an RFC 3339 string with milliseconds ([`to_rfc3339_millis`](Self::to_rfc3339_millis));
/// shown (`Display`) without them when they are zero; deserialized from an RFC 3339 string or a number of
/// seconds since the epoch (the shape of many upstream fields).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// From seconds since the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This time plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// This time minus a duration (saturating).
    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// How long from `earlier` to `self`; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// RFC 3339 text in UTC, e.g. `2026-11-26T12:30:00Z` (milliseconds shown when non-zero).
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| self.0.to_string()),
            Err(_) => self.0.to_string(),
        }
    }

    /// RFC 3339 text in UTC with milliseconds always, e.g. `2026-11-26T12:30:00.000Z`: every
    /// time the same width, so that the texts sort as the times do. What JSON carries.
    pub fn to_rfc3339_millis(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) if (0..=9999).contains(&t.year()) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            _ => self.0.to_string(),
        }
    }

    /// Parses RFC 3339 text (any offset).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let t = time::OffsetDateTime::parse(
            text.trim(),
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Self)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339_millis())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => Timestamp::parse_rfc3339(&t)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {t:?}"))),
            #[allow(clippy::cast_possible_truncation)]
            Raw::Secs(s) if s.is_finite() => Ok(Timestamp::from_millis((s * 1000.0) as i64)),
            Raw::Secs(_) => Err(serde::de::Error::custom("time is not a finite number")),
        }
    }
}

/// Where the pool reads the current time. The default is [`SystemClock`]; tests use
/// [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to. Cheap to clone; clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicI64::new(start.as_millis())))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::from_secs(1_730_947_200);
        assert_eq!(t.to_rfc3339(), "2024-11-07T02:40:00Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2024-11-07T03:40:00+01:00"),
            Some(t),
            "offsets are honoured"
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn json_times_have_one_width_and_sort_as_text() {
        let times = [
            Timestamp::from_millis(1_730_947_200_000),
            Timestamp::from_millis(1_730_947_200_005),
            Timestamp::from_millis(1_730_947_200_500),
            Timestamp::from_millis(1_730_947_201_000),
            Timestamp::from_millis(0),
        ];
        let texts: Vec<String> = times
            .iter()
            .map(|t| {
                serde_json::to_value(t)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(texts[0], "2024-11-07T02:40:00.000Z");
        assert_eq!(texts[1], "2024-11-07T02:40:00.005Z");
        assert_eq!(texts[2], "2024-11-07T02:40:00.500Z");
        assert_eq!(texts[4], "1970-01-01T00:00:00.000Z");
        assert!(texts[..4].windows(2).all(|w| w[0] < w[1]), "{texts:?}");
        for (t, text) in times.iter().zip(&texts) {
            assert_eq!(
                serde_json::from_value::<Timestamp>(text.as_str().into()).unwrap(),
                *t
            );
        }
        // People read them without the zero milliseconds.
        assert_eq!(times[0].to_string(), "2024-11-07T02:40:00Z");
        // Beyond RFC 3339's years: the milliseconds, as before.
        assert_eq!(
            Timestamp::from_millis(i64::MAX).to_rfc3339_millis(),
            i64::MAX.to_string()
        );
    }

    #[test]
    fn deserializes_text_or_seconds() {
        let a: Timestamp = serde_json::from_str("\"2024-11-07T02:40:00Z\"").unwrap();
        let b: Timestamp = serde_json::from_str("1730947200").unwrap();
        assert_eq!(a, b);
        assert!(serde_json::from_str::<Timestamp>("\"soon\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("true").is_err());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp::from_secs(100));
        let c2 = c.clone();
        c.advance(Duration::from_secs(5));
        assert_eq!(c2.now(), Timestamp::from_secs(105));
        assert_eq!(
            c2.now().since(Timestamp::from_secs(100)),
            Duration::from_secs(5)
        );
        assert_eq!(
            Timestamp::from_secs(1).since(Timestamp::from_secs(2)),
            Duration::ZERO
        );
    }
}
