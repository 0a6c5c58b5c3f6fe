//! `UsageTracker`: per account, the latest reading of the 5-hour and weekly windows with its
//! provenance, fed by polling, response headers and 429s; and the token ledger.
//!
//! Readings land in memory at once (selection sees them on the next request) and reach the store
//! through the batched writer, so recording never blocks the caller.

mod ledger;
mod parse;
mod window;

pub use ledger::{LedgerEntry, LedgerGroup, LedgerQuery, LedgerRow, TokenCounts, group_value};
pub use parse::{UsageLimit, parse_usage_headers, parse_usage_json, parse_usage_limit};
pub use window::{
    AccountUsage, Credits, ReadingSource, UsageSnapshot, WEEKLY_THRESHOLD_MINUTES, WindowKind,
    WindowReading,
};

use crate::Pool;
use crate::error::{Error, Result};
use crate::sync;
use crate::time::Timestamp;

/// Handle to the usage figures of a [`Pool`]. Cheap to clone.
#[derive(Clone)]
pub struct UsageTracker {
    pub(crate) pool: Pool,
}

impl UsageTracker {
    /// Records a parsed snapshot (windows and credits) for an account. Unknown accounts are
    /// ignored (it may have been removed meanwhile).
    pub fn record(&self, account_id: &str, snapshot: &UsageSnapshot) {
        self.record_readings(
            account_id,
            snapshot.windows.clone(),
            snapshot.credits.clone(),
        );
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
                self.record(account_id, &snap);
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
        let mut changed = Vec::new();
        {
            let mut u = sync::lock(&state.usage);
            for r in readings {
                if u.merge(r.clone()) {
                    changed.push(r);
                }
            }
            if let Some(c) = &credits {
                u.credits = Some(c.clone());
            }
            state.sync_cells(&u);
        }
        for r in changed {
            shared.writer.window(account_id.to_string(), r);
        }
        if let Some(c) = credits {
            shared.writer.credits(account_id.to_string(), c);
        }
    }

    /// What is known of one account's usage.
    pub fn get(&self, account_id: &str) -> Result<AccountUsage> {
        let t = sync::read(&self.pool.shared.accounts);
        let id = crate::id::resolve_prefix("account", account_id, t.ids())?;
        let s = t.get(&id).ok_or(Error::NotFound {
            what: "account",
            id: id.clone(),
        })?;
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
        self.pool.flush().await?;
        Ok(self.pool.shared.store.ledger_summary(q).await?)
    }
}
