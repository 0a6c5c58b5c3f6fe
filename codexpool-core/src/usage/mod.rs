//! `UsageTracker`: per account, the latest reading of the 5-hour and weekly windows with its
//! provenance, fed by polling, response headers and 429s; and the token ledger.
//!
//! Readings land in memory at once (selection sees them on the next request) and reach the store
//! through the batched writer, so recording never blocks the caller.

mod ledger;
mod parse;
mod window;

pub(crate) use ledger::{DAY_MS, DayFold, at_day_start, day_start};
pub use ledger::{LedgerEntry, LedgerGroup, LedgerQuery, LedgerRow, TokenCounts, group_value};
pub use parse::{UsageLimit, parse_usage_headers, parse_usage_json, parse_usage_limit};
pub use window::{
    AccountUsage, Credits, ReadingSource, UsageSnapshot, WEEKLY_THRESHOLD_MINUTES, WindowKind,
    WindowReading,
};

use crate::Pool;
use crate::error::Result;
use crate::request_log::in_chunks;
use crate::sync;
use crate::time::Timestamp;

/// How long a stored reading may lag the in-memory one when nothing moved.
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `new` says something the current `old` does not: another figure, another reset time
/// (beyond the jitter of `reset-after-seconds`) or another source. (Every such change is stored,
/// so the stored reading differs from the current one only in its age.)
fn materially_different(old: &WindowReading, new: &WindowReading) -> bool {
    let reset_moved = match (old.resets_at, new.resets_at) {
        (Some(a), Some(b)) => a.since(b).max(b.since(a)) > std::time::Duration::from_secs(2),
        (a, b) => a.is_some() != b.is_some(),
    };
    old.used_percent != new.used_percent
        || old.window_minutes != new.window_minutes
        || old.source != new.source
        || reset_moved
}

/// Handle to the usage figures of a [`Pool`]. Cheap to clone.
#[derive(Clone)]
pub struct UsageTracker {
    pub(crate) pool: Pool,
}

impl UsageTracker {
    /// Records a snapshot (windows and credits) for an account. Unknown accounts are ignored
    /// (it may have been removed meanwhile).
    ///
    /// Taken as the parsers take a backend's figures: a used share over 100 % is recorded as
    /// 100 % (used up). A snapshot with a used share that is negative or not a number, or a
    /// credit balance that is not a finite number, is refused whole with
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) and nothing is recorded.
    pub fn record(&self, account_id: &str, snapshot: &UsageSnapshot) -> Result<()> {
        let mut windows = snapshot.windows.clone();
        for w in &mut windows {
            let used = w.used_percent;
            if !used.is_finite() || used < 0.0 {
                return Err(crate::Error::invalid(
                    "used_percent",
                    format!(
                        "{} window: {used} is not a share from 0 to 100",
                        w.kind.as_str()
                    ),
                ));
            }
            w.used_percent = used.min(100.0);
        }
        if let Some(b) = snapshot.credits.as_ref().and_then(|c| c.balance)
            && !b.is_finite()
        {
            return Err(crate::Error::invalid(
                "credits.balance",
                format!("{b} is not a number"),
            ));
        }
        self.record_readings(account_id, windows, snapshot.credits.clone());
        Ok(())
    }

    /// Parses the `x-codex-*` headers of a backend response and records them (source
    /// `headers`). Returns whether any were found.
    pub fn record_headers<'a>(
        &self,
        account_id: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> bool {
        match parse_usage_headers(headers, self.pool.shared.clock.now()) {
            Some(snap) => {
                // The parser keeps only finite figures, used shares from 0 to 100.
                self.record_readings(account_id, snap.windows, snap.credits);
                true
            }
            None => false,
        }
    }

    /// Parses a 429 body; when it is a usage limit, records the window as exhausted until the
    /// reset and returns what it said.
    pub fn record_usage_limit(&self, account_id: &str, body: &[u8]) -> Option<UsageLimit> {
        let now = self.pool.shared.clock.now();
        let limit = parse_usage_limit(body, now)?;
        self.record_readings(account_id, vec![limit.to_reading(now)], None);
        Some(limit)
    }

    pub(crate) fn record_readings(
        &self,
        account_id: &str,
        readings: Vec<crate::usage::WindowReading>,
        credits: Option<Credits>,
    ) {
        let shared = &self.pool.shared;
        let state = {
            let t = sync::read(&shared.accounts);
            match t.get(account_id) {
                Some(s) => s.state.clone(),
                None => return,
            }
        };
        // Every backend answer carries the same figures again: memory always takes the newest
        // reading, but the store is written only when a figure moved or the stored one is old.
        let mut persist = Vec::new();
        let mut persist_credits = None;
        let now = shared.clock.now();
        {
            let mut u = sync::lock(&state.usage);
            for r in readings {
                let worth_writing = u
                    .window(r.kind)
                    .is_none_or(|old| materially_different(old, &r))
                    || state.stored_age(r.kind, r.observed_at) >= PERSIST_EVERY;
                if u.merge(r.clone(), now) && worth_writing {
                    state.mark_stored(r.kind, r.observed_at);
                    persist.push(r);
                }
            }
            if let Some(c) = credits {
                if u.credits.as_ref() != Some(&c) {
                    persist_credits = Some(c.clone());
                }
                u.credits = Some(c);
            }
            state.sync_cells(&u);
        }
        for r in persist {
            shared.writer.window(account_id.to_string(), r);
        }
        if let Some(c) = persist_credits {
            shared.writer.credits(account_id.to_string(), c);
        }
    }

    /// What is known of one account's usage.
    pub fn get(&self, account_id: &str) -> Result<AccountUsage> {
        let t = sync::read(&self.pool.shared.accounts);
        let s = t.resolve(account_id)?;
        Ok(sync::lock(&s.state.usage).clone())
    }

    /// Every account's usage, in account order.
    pub fn list(&self) -> Vec<AccountUsage> {
        let t = sync::read(&self.pool.shared.accounts);
        t.order
            .iter()
            .map(|s| sync::lock(&s.state.usage).clone())
            .collect()
    }

    /// The smallest share left over the account's fresh windows (`None`: nothing known).
    pub fn headroom(&self, account_id: &str) -> Result<Option<f64>> {
        Ok(self
            .get(account_id)?
            .percent_left(self.pool.shared.clock.now()))
    }

    /// When the account can serve again, if a window is exhausted.
    pub fn exhausted_until(&self, account_id: &str) -> Result<Option<Timestamp>> {
        Ok(self
            .get(account_id)?
            .exhausted_until(self.pool.shared.clock.now()))
    }

    /// Queues a ledger entry; never blocks.
    pub fn record_tokens(&self, entry: LedgerEntry) {
        self.pool.shared.writer.ledger(entry);
    }

    /// Sums the ledger (after writing what is queued), largest total first.
    pub async fn ledger(&self, q: &LedgerQuery) -> Result<Vec<LedgerRow>> {
        self.pool.write_queued().await?;
        Ok(self.pool.shared.store.ledger_summary(q).await?)
    }

    /// Folds the ledger's entries from the UTC days before the one `before` falls in into one
    /// entry per day, key, account, model and status, stamped with the day's start: every sum by
    /// key, account, model or day stays the same, and a `since` inside a folded day leaves that
    /// day out. A few thousand entries per transaction; how many were folded. A serving process
    /// does this hourly for the days the request log no longer keeps (`REQUEST_LOG_DAYS`).
    /// Any `before` is taken: one in the first day of the `i64` range (whose start cannot be
    /// represented) folds nothing, one in the last folds every earlier day.
    pub async fn fold_ledger(&self, before: Timestamp) -> Result<u64> {
        let store = &self.pool.shared.store;
        in_chunks(|n| store.fold_ledger(before, n)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(used: f64, resets_in: u64, observed: Timestamp) -> WindowReading {
        WindowReading {
            kind: WindowKind::FiveHour,
            used_percent: used,
            window_minutes: 300,
            resets_at: Some(observed.plus(Duration::from_secs(resets_in))),
            source: ReadingSource::Headers,
            observed_at: observed,
        }
    }

    #[test]
    fn only_moved_figures_are_worth_writing() {
        let t = Timestamp::from_secs(1_000_000);
        let old = reading(10.0, 600, t);
        // One second later the headers say the same (the reset moved by the elapsed second).
        let same = reading(10.0, 599, t.plus(Duration::from_secs(1)));
        assert!(!materially_different(&old, &same));
        assert!(materially_different(
            &old,
            &reading(11.0, 599, t.plus(Duration::from_secs(1)))
        ));
        assert!(materially_different(
            &old,
            &reading(10.0, 3600, t.plus(Duration::from_secs(1)))
        ));
        let mut polled = same.clone();
        polled.source = ReadingSource::Poll;
        assert!(materially_different(&old, &polled));
    }
}
