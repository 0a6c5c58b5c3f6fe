//! The token ledger: one entry per served request (who asked, which account served, how many
//! tokens), and the per-key / per-account / per-model / per-day sums built from it. Days older
//! than the request log keeps are folded into one entry per day, key, account, model and status
//! ([`crate::UsageTracker::fold_ledger`]), so the ledger stops growing with the requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Token counts of one response (`response.completed.usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Input tokens served from the prompt cache.
    pub cached_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

impl TokenCounts {
    /// Input plus output.
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Adds `other` to these, saturating (counts come from the upstream; garbage must not
    /// overflow a sum).
    pub(crate) fn add(&mut self, other: &TokenCounts) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
    }
}

/// One request in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When the request finished.
    pub at: Timestamp,
    /// The platform key that made it.
    pub key_id: Option<String>,
    /// The account that served it.
    pub account_id: Option<String>,
    /// The model.
    pub model: String,
    /// Token counts.
    #[serde(flatten)]
    pub tokens: TokenCounts,
    /// HTTP status the client got.
    pub status: u16,
}

/// What to group ledger sums by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerGroup {
    /// Per platform key.
    Key,
    /// Per account.
    Account,
    /// Per model.
    Model,
    /// Per UTC day (`YYYY-MM-DD`).
    Day,
}

impl std::str::FromStr for LedgerGroup {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, crate::Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "key" => Ok(Self::Key),
            "account" => Ok(Self::Account),
            "model" => Ok(Self::Model),
            "day" => Ok(Self::Day),
            _ => Err(crate::Error::invalid(
                "group_by",
                format!("{s:?} is not one of key, account, model, day"),
            )),
        }
    }
}

/// A ledger query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerQuery {
    /// The grouping.
    pub group_by: LedgerGroup,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
}

impl LedgerQuery {
    /// All entries, grouped.
    pub fn by(group_by: LedgerGroup) -> Self {
        Self {
            group_by,
            since: None,
        }
    }
    /// Only entries at or after `t`.
    pub fn since(mut self, t: Timestamp) -> Self {
        self.since = Some(t);
        self
    }
}

/// One group's sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The group's value (key id, account id, model or day); `-` when absent.
    pub group: String,
    /// Requests counted.
    pub requests: u64,
    /// Summed token counts.
    #[serde(flatten)]
    pub tokens: TokenCounts,
    /// Summed totals.
    pub total_tokens: u64,
}

/// The group value of an entry (shared by every store so they agree).
pub fn group_value(e: &LedgerEntry, g: LedgerGroup) -> String {
    match g {
        LedgerGroup::Key => e.key_id.clone().unwrap_or_else(|| "-".into()),
        LedgerGroup::Account => e.account_id.clone().unwrap_or_else(|| "-".into()),
        LedgerGroup::Model => e.model.clone(),
        LedgerGroup::Day => e.at.to_rfc3339().get(..10).unwrap_or("-").to_string(),
    }
}

/// Milliseconds in a day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The start of the UTC day `t` falls in; the earliest time there is (`i64::MIN` ms, some 292
/// million years ago) for a time in the first, partial day, whose start is out of range. So a
/// `fold_ledger` cutoff that early folds nothing; it used to overflow (a panic in debug builds,
/// and in release a cutoff far in the future that folded every day).
pub(crate) fn day_start(t: Timestamp) -> Timestamp {
    let ms = t.as_millis();
    Timestamp::from_millis(ms.checked_sub(ms.rem_euclid(DAY_MS)).unwrap_or(i64::MIN))
}

/// Whether a stored entry may stand for a folded day (stamped with the day's start). A request
/// that happened to finish on the millisecond is taken for one: folding it again changes no sum.
pub(crate) fn at_day_start(t: Timestamp) -> bool {
    t.as_millis().rem_euclid(DAY_MS) == 0
}

/// The sums a store folds a UTC day's ledger entries into: one entry per day, key, account,
/// model and status, stamped with the day's start, with how many requests it counts. Every sum
/// by key, account, model or day stays what it was.
#[derive(Debug, Default)]
pub(crate) struct DayFold(BTreeMap<FoldKey, (u64, TokenCounts)>);

type FoldKey = (Timestamp, Option<String>, Option<String>, String, u16);

impl DayFold {
    /// Adds an entry that counts `requests` requests.
    pub fn add(&mut self, e: LedgerEntry, requests: u64) {
        let key = (day_start(e.at), e.key_id, e.account_id, e.model, e.status);
        let (n, sum) = self.0.entry(key).or_default();
        *n = n.saturating_add(requests);
        sum.add(&e.tokens);
    }

    /// The folded entries, each with the requests it counts.
    pub fn into_entries(self) -> impl Iterator<Item = (LedgerEntry, u64)> {
        self.0.into_iter().map(
            |((at, key_id, account_id, model, status), (requests, tokens))| {
                let entry = LedgerEntry {
                    at,
                    key_id,
                    account_id,
                    model,
                    tokens,
                    status,
                };
                (entry, requests)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_start_holds_at_the_ends_of_time() {
        let day = |ms: i64| day_start(Timestamp::from_millis(ms)).as_millis();
        assert_eq!(day(DAY_MS + 5), DAY_MS);
        assert_eq!(day(-1), -DAY_MS);
        assert_eq!(
            day(i64::MIN),
            i64::MIN,
            "the first day's start is out of range"
        );
        assert_eq!(day(i64::MAX), i64::MAX - i64::MAX % DAY_MS);
    }
}
