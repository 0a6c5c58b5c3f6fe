//! Usage readings: one window (5-hour or weekly) as last seen, where the figure came from and
//! when; and what an account's usage looks like as a whole.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Windows longer than this many minutes are weekly (PROTOCOL.md §3: classify by length,
/// never by slot).
pub const WEEKLY_THRESHOLD_MINUTES: u32 = 1443;

/// Which quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The rolling 5-hour window.
    FiveHour,
    /// The 7-day window.
    Weekly,
}

impl WindowKind {
    /// Classifies a window by its length.
    pub fn from_minutes(minutes: u32) -> Self {
        if minutes > WEEKLY_THRESHOLD_MINUTES {
            Self::Weekly
        } else {
            Self::FiveHour
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveHour => "five_hour",
            Self::Weekly => "weekly",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "five_hour" => Some(Self::FiveHour),
            "weekly" => Some(Self::Weekly),
            _ => None,
        }
    }

    /// The quota guard: below this share left, the window is used only when nothing else is
    /// left (PROTOCOL.md §3).
    pub fn guard_percent_left(self) -> f64 {
        match self {
            Self::FiveHour => 5.0,
            Self::Weekly => 10.0,
        }
    }
}

/// Where a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadingSource {
    /// The `wham/usage` endpoint.
    Poll,
    /// `x-codex-*` headers on a backend response.
    Headers,
    /// A 429 `usage_limit_reached`.
    RateLimit,
}

impl ReadingSource {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poll => "poll",
            Self::Headers => "headers",
            Self::RateLimit => "rate-limit",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "poll" => Some(Self::Poll),
            "headers" => Some(Self::Headers),
            "rate-limit" => Some(Self::RateLimit),
            _ => None,
        }
    }
}

impl fmt::Display for ReadingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The latest known state of one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowReading {
    /// 5-hour or weekly.
    pub kind: WindowKind,
    /// Share of the window used, 0–100.
    pub used_percent: f64,
    /// The window's length in minutes.
    pub window_minutes: u32,
    /// When the window resets, if known.
    pub resets_at: Option<Timestamp>,
    /// Where the figure came from.
    pub source: ReadingSource,
    /// When it was observed.
    pub observed_at: Timestamp,
}

impl WindowReading {
    /// Past its reset time: the figure no longer describes the window (treat it as unknown,
    /// probably fresh; never as still exhausted).
    pub fn is_stale(&self, now: Timestamp) -> bool {
        match self.resets_at {
            Some(r) => now >= r,
            // Without a reset time, a reading lasts one window length.
            None => {
                now >= self.observed_at.plus(std::time::Duration::from_secs(
                    u64::from(self.window_minutes) * 60,
                ))
            }
        }
    }

    /// Share left, 0–100, or `None` when stale.
    pub fn percent_left(&self, now: Timestamp) -> Option<f64> {
        (!self.is_stale(now)).then(|| (100.0 - self.used_percent).clamp(0.0, 100.0))
    }

    /// Used up and not yet reset.
    pub fn is_exhausted(&self, now: Timestamp) -> bool {
        self.used_percent >= 100.0 && !self.is_stale(now)
    }

    /// Whether this reading's window resets half a window or more after `other`'s (whose
    /// unknown reset counts as the end of its life): it is about the window that followed. One
    /// that names no reset says nothing of which window it is about.
    fn is_of_a_later_window_than(&self, other: &WindowReading) -> bool {
        let window = std::time::Duration::from_secs(u64::from(other.window_minutes) * 60);
        let other_end = other
            .resets_at
            .unwrap_or_else(|| other.observed_at.plus(window));
        self.resets_at
            .is_some_and(|end| end >= other_end.plus(window / 2))
    }

    /// When the exhaustion ends (the reset time, or the end of the reading's life).
    pub fn exhausted_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.is_exhausted(now).then(|| {
            self.resets_at.unwrap_or_else(|| {
                self.observed_at.plus(std::time::Duration::from_secs(
                    u64::from(self.window_minutes) * 60,
                ))
            })
        })
    }

    /// Below the quota guard (and not stale).
    pub fn is_guarded(&self, now: Timestamp) -> bool {
        self.percent_left(now)
            .is_some_and(|left| left < self.kind.guard_percent_left())
    }
}

/// Credit balance, as the backend reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Credits {
    /// Remaining balance.
    pub balance: Option<f64>,
    /// Whether the account has credits.
    pub has_credits: Option<bool>,
    /// Whether credits are unlimited.
    pub unlimited: Option<bool>,
}

/// One parse of a usage source: the windows found, plus credits and plan when present.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageSnapshot {
    /// Classified windows (at most one per kind).
    pub windows: Vec<WindowReading>,
    /// Credits, when reported.
    pub credits: Option<Credits>,
    /// The plan, when reported.
    pub plan_type: Option<String>,
    /// Parts that were ignored, and why (missing fields, out-of-range values).
    pub problems: Vec<String>,
}

/// What is known of an account's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountUsage {
    /// The account.
    pub account_id: String,
    /// The 5-hour window.
    pub five_hour: Option<WindowReading>,
    /// The weekly window.
    pub weekly: Option<WindowReading>,
    /// Credits.
    pub credits: Option<Credits>,
}

impl AccountUsage {
    /// The reading of a kind.
    pub fn window(&self, kind: WindowKind) -> Option<&WindowReading> {
        match kind {
            WindowKind::FiveHour => self.five_hour.as_ref(),
            WindowKind::Weekly => self.weekly.as_ref(),
        }
    }

    /// Merges a newer reading (older ones are ignored). A reading observed after `now` was
    /// taken while the clock ran ahead (it was set back since): it is taken by no one, and one
    /// already held gives way to what is seen now, or the figures would stay frozen until the
    /// clock caught up (and a usage limit met meanwhile would go unrecorded).
    ///
    /// A usage limit met in a window (a 429, or a poll that said so) holds against the headers of
    /// answers that arrive later but were counted before it (a request sent before the limit):
    /// only a poll, or headers about a later window (their reset half a window or more further
    /// out), replace it. A poll of the same window that finds it within its guard does not undo
    /// a refusal either: the backend refuses before 100 % on some plans, and its poll then
    /// says the limit is not reached (the account would be tried, and refused, at every poll).
    pub fn merge(&mut self, r: WindowReading, now: Timestamp) -> bool {
        if r.observed_at > now {
            return false;
        }
        let slot = match r.kind {
            WindowKind::FiveHour => &mut self.five_hour,
            WindowKind::Weekly => &mut self.weekly,
        };
        match slot {
            Some(old) if old.observed_at > r.observed_at && old.observed_at <= now => false,
            Some(old)
                if r.source == ReadingSource::Headers
                    && r.used_percent < 100.0
                    && old.source != ReadingSource::Headers
                    && old.is_exhausted(now)
                    && !r.is_of_a_later_window_than(old) =>
            {
                false
            }
            Some(old)
                if r.source == ReadingSource::Poll
                    && old.source == ReadingSource::RateLimit
                    && old.is_exhausted(now)
                    && r.is_guarded(now)
                    && !r.is_of_a_later_window_than(old) =>
            {
                false
            }
            _ => {
                *slot = Some(r);
                true
            }
        }
    }

    /// The smallest share left over the fresh windows (`None`: nothing known).
    pub fn percent_left(&self, now: Timestamp) -> Option<f64> {
        [&self.five_hour, &self.weekly]
            .into_iter()
            .flatten()
            .filter_map(|w| w.percent_left(now))
            .reduce(f64::min)
    }

    /// When the account can serve again, if a window is exhausted.
    pub fn exhausted_until(&self, now: Timestamp) -> Option<Timestamp> {
        [&self.five_hour, &self.weekly]
            .into_iter()
            .flatten()
            .filter_map(|w| w.exhausted_until(now))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reading(
        kind: WindowKind,
        used: f64,
        resets_in: Option<u64>,
        now: Timestamp,
    ) -> WindowReading {
        WindowReading {
            kind,
            used_percent: used,
            window_minutes: if kind == WindowKind::Weekly {
                10080
            } else {
                300
            },
            resets_at: resets_in.map(|s| now.plus(Duration::from_secs(s))),
            source: ReadingSource::Poll,
            observed_at: now,
        }
    }

    #[test]
    fn classification_is_by_length() {
        assert_eq!(WindowKind::from_minutes(300), WindowKind::FiveHour);
        assert_eq!(WindowKind::from_minutes(1443), WindowKind::FiveHour);
        assert_eq!(WindowKind::from_minutes(1444), WindowKind::Weekly);
        assert_eq!(WindowKind::from_minutes(10080), WindowKind::Weekly);
    }

    #[test]
    fn a_reading_past_its_reset_is_stale_not_exhausted() {
        let now = Timestamp::from_secs(1_000_000);
        let r = reading(WindowKind::FiveHour, 100.0, Some(60), now);
        assert!(r.is_exhausted(now));
        assert_eq!(r.exhausted_until(now), r.resets_at);
        let later = now.plus(Duration::from_secs(61));
        assert!(r.is_stale(later));
        assert!(!r.is_exhausted(later));
        assert_eq!(r.percent_left(later), None);
    }

    #[test]
    fn guard_thresholds() {
        let now = Timestamp::from_secs(1_000_000);
        assert!(reading(WindowKind::FiveHour, 96.0, Some(60), now).is_guarded(now));
        assert!(!reading(WindowKind::FiveHour, 94.0, Some(60), now).is_guarded(now));
        assert!(reading(WindowKind::Weekly, 91.0, Some(60), now).is_guarded(now));
        assert!(!reading(WindowKind::Weekly, 89.0, Some(60), now).is_guarded(now));
    }

    #[test]
    fn merge_keeps_the_newest() {
        let now = Timestamp::from_secs(1_000_000);
        let mut u = AccountUsage::default();
        assert!(u.merge(reading(WindowKind::FiveHour, 10.0, Some(60), now), now));
        let mut older = reading(WindowKind::FiveHour, 50.0, Some(60), now);
        older.observed_at = now.minus(Duration::from_secs(1));
        assert!(!u.merge(older, now));
        assert_eq!(u.five_hour.as_ref().unwrap().used_percent, 10.0);
        u.merge(reading(WindowKind::Weekly, 80.0, Some(600), now), now);
        assert_eq!(u.percent_left(now), Some(20.0));
    }

    /// The clock was 8 h ahead and was set back: what it saw then neither blocks what is seen
    /// now nor comes back from the store.
    #[test]
    fn readings_from_a_clock_that_ran_ahead_give_way() {
        let now = Timestamp::from_secs(1_000_000);
        let ahead = now.plus(Duration::from_secs(8 * 3600));
        let mut u = AccountUsage::default();
        assert!(u.merge(reading(WindowKind::FiveHour, 40.0, Some(600), ahead), ahead));
        // Set back: a usage limit met now is recorded.
        assert!(u.merge(reading(WindowKind::FiveHour, 100.0, Some(600), now), now));
        assert!(u.exhausted_until(now).is_some());
        // The old reading, read again from the store, does not replace it.
        assert!(!u.merge(reading(WindowKind::FiveHour, 40.0, Some(600), ahead), now));
        assert_eq!(u.five_hour.as_ref().unwrap().used_percent, 100.0);
    }

    /// Headers counted before a usage limit (a request sent before it) arrive after it: they do
    /// not undo it; a poll or the next window's headers do.
    #[test]
    fn a_usage_limit_holds_against_earlier_counted_headers() {
        let now = Timestamp::from_secs(1_000_000);
        let limit = WindowReading {
            source: ReadingSource::RateLimit,
            ..reading(WindowKind::FiveHour, 100.0, Some(3600), now)
        };
        let later = now.plus(Duration::from_secs(1));
        let headers = |used, resets_in| WindowReading {
            source: ReadingSource::Headers,
            ..reading(WindowKind::FiveHour, used, Some(resets_in), later)
        };
        let mut u = AccountUsage::default();
        assert!(u.merge(limit.clone(), now));
        assert!(!u.merge(headers(98.0, 3650), later));
        assert!(u.exhausted_until(later).is_some());
        // The window that followed.
        assert!(u.clone().merge(headers(3.0, 3600 + 5 * 3600), later));
        // Headers that name no reset say nothing of their window.
        let mut no_reset = headers(3.0, 0);
        no_reset.resets_at = None;
        assert!(!u.clone().merge(no_reset, later));
        // A poll that said the limit was reached holds the same way.
        let mut polled = AccountUsage::default();
        assert!(polled.merge(reading(WindowKind::FiveHour, 100.0, Some(3600), now), now));
        assert!(!polled.merge(headers(97.0, 3650), later));
        // A poll of the same window within its guard does not undo a refusal (the backend
        // refuses before 100 % on some plans, and its poll then says the limit is not reached),
        // nor does one of a window no longer known.
        assert!(!u.merge(
            reading(WindowKind::FiveHour, 97.0, Some(3600), later),
            later
        ));
        let mut unknown = reading(WindowKind::FiveHour, 97.0, None, later);
        unknown.resets_at = None;
        assert!(!u.clone().merge(unknown, later));
        assert!(u.exhausted_until(later).is_some());
        // The next window's poll does.
        assert!(u.clone().merge(
            reading(WindowKind::FiveHour, 97.0, Some(3600 + 5 * 3600), later),
            later
        ));
        // A poll far from the limit says what is true now.
        let poll = reading(WindowKind::FiveHour, 40.0, Some(3600), later);
        assert!(u.merge(poll, later));
        assert!(u.exhausted_until(later).is_none());
    }

    #[test]
    fn without_reset_time_a_reading_lives_one_window() {
        let now = Timestamp::from_secs(1_000_000);
        let r = reading(WindowKind::FiveHour, 100.0, None, now);
        assert!(r.is_exhausted(now.plus(Duration::from_secs(299 * 60))));
        assert!(!r.is_exhausted(now.plus(Duration::from_secs(300 * 60))));
    }
}
