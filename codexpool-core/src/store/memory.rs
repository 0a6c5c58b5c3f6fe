//! `MemoryStore`: everything in one mutex-guarded struct. For tests and throwaway pools; it
//! behaves like the SQLite store (the conformance suite checks), but nothing survives the
//! process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    LeaseTake, LoginSession, LoginStatus, RecordBatch, RefreshedTokens, Store, StoreError,
    TokenSave,
};
use crate::account::{Account, AccountPatch};
use crate::keys::{KeyPatch, PlatformKey};
use crate::request_log::{RequestLogEntry, RequestLogQuery};
use crate::sync::lock;
use crate::time::Timestamp;
use crate::usage::{
    Credits, DayFold, LedgerEntry, LedgerQuery, LedgerRow, TokenCounts, WindowKind, WindowReading,
    at_day_start, day_start, group_value,
};

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    keys: BTreeMap<String, PlatformKey>,
    windows: HashMap<(String, WindowKind), WindowReading>,
    credits: HashMap<String, Credits>,
    /// Entries with the requests each counts (more than one once a day is folded).
    ledger: Vec<(LedgerEntry, u64)>,
    log: Vec<RequestLogEntry>,
    sessions: HashMap<String, LoginSession>,
    leases: HashMap<String, (String, Timestamp)>,
    version: u64,
}

impl State {
    fn identity_taken(&self, a: &Account) -> bool {
        a.identity().is_some()
            && self
                .accounts
                .values()
                .any(|o| o.id != a.id && o.identity() == a.identity())
    }

    fn changed(&mut self) {
        self.version += 1;
    }
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        Ok(lock(&self.state).accounts.values().cloned().collect())
    }

    async fn get_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        Ok(lock(&self.state).accounts.get(id).cloned())
    }

    async fn insert_account(&self, account: &Account) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if s.accounts.contains_key(&account.id) || s.identity_taken(account) {
            return Err(StoreError::Conflict {
                what: "a record with the same id or identity".into(),
            });
        }
        s.accounts.insert(account.id.clone(), account.clone());
        s.changed();
        Ok(())
    }

    async fn patch_account(
        &self,
        id: &str,
        patch: &AccountPatch,
        now: Timestamp,
    ) -> Result<Account, StoreError> {
        let mut s = lock(&self.state);
        let mut a = s
            .accounts
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                what: "account",
                id: id.into(),
            })?;
        patch.apply_to(&mut a, now);
        if s.identity_taken(&a) {
            return Err(StoreError::Conflict {
                what: "a record with the same id or identity".into(),
            });
        }
        s.accounts.insert(a.id.clone(), a.clone());
        s.changed();
        Ok(a)
    }

    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        let found = s.accounts.remove(id).is_some();
        s.windows.retain(|(a, _), _| a != id);
        s.credits.remove(id);
        s.leases.remove(id);
        s.changed();
        Ok(found)
    }

    async fn set_sort_orders(
        &self,
        orders: &[(String, i64)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if let Some((id, _)) = orders.iter().find(|(id, _)| !s.accounts.contains_key(id)) {
            return Err(StoreError::NotFound {
                what: "account",
                id: id.clone(),
            });
        }
        for (id, sort) in orders {
            if let Some(a) = s.accounts.get_mut(id) {
                a.sort = *sort;
                a.updated_at = now;
            }
        }
        s.changed();
        Ok(())
    }

    async fn touch_accounts(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for (id, t) in used {
            if let Some(a) = s.accounts.get_mut(id) {
                a.last_used_at = Some(a.last_used_at.map_or(*t, |o| o.max(*t)));
            }
        }
        Ok(())
    }

    async fn list_keys(&self) -> Result<Vec<PlatformKey>, StoreError> {
        Ok(lock(&self.state).keys.values().cloned().collect())
    }

    async fn insert_key(&self, key: &PlatformKey) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if s.keys.contains_key(&key.id) || s.keys.values().any(|k| k.secret_hash == key.secret_hash)
        {
            return Err(StoreError::Conflict {
                what: "a key with the same id or secret".into(),
            });
        }
        s.keys.insert(key.id.clone(), key.clone());
        s.changed();
        Ok(())
    }

    async fn patch_key(
        &self,
        id: &str,
        patch: &KeyPatch,
        now: Timestamp,
    ) -> Result<PlatformKey, StoreError> {
        let mut s = lock(&self.state);
        let stored = s.keys.get_mut(id).ok_or_else(|| StoreError::NotFound {
            what: "key",
            id: id.into(),
        })?;
        let mut k = stored.clone();
        patch.apply_to(&mut k, now)?;
        *stored = k.clone();
        s.changed();
        Ok(k)
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        let found = s.keys.remove(id).is_some();
        s.changed();
        Ok(found)
    }

    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for (id, t) in used {
            if let Some(k) = s.keys.get_mut(id) {
                k.last_used_at = Some(k.last_used_at.map_or(*t, |o| o.max(*t)));
            }
        }
        Ok(())
    }

    async fn list_windows(&self) -> Result<Vec<(String, WindowReading)>, StoreError> {
        Ok(lock(&self.state)
            .windows
            .iter()
            .map(|((a, _), r)| (a.clone(), r.clone()))
            .collect())
    }

    async fn save_windows(
        &self,
        readings: &[(String, WindowReading)],
        now: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for (id, r) in readings {
            if !s.accounts.contains_key(id) {
                continue;
            }
            let k = (id.clone(), r.kind);
            if s.windows.get(&k).is_none_or(|old| {
                old.observed_at <= r.observed_at || now.is_some_and(|n| old.observed_at > n)
            }) {
                s.windows.insert(k, r.clone());
            }
        }
        Ok(())
    }

    async fn list_credits(&self) -> Result<Vec<(String, Credits)>, StoreError> {
        Ok(lock(&self.state)
            .credits
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect())
    }

    async fn save_credits(&self, credits: &[(String, Credits)]) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for (id, c) in credits {
            if s.accounts.contains_key(id) {
                s.credits.insert(id.clone(), c.clone());
            }
        }
        Ok(())
    }

    async fn append_ledger(&self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        lock(&self.state)
            .ledger
            .extend(entries.iter().map(|e| (e.clone(), 1)));
        Ok(())
    }

    async fn ledger_summary(&self, q: &LedgerQuery) -> Result<Vec<LedgerRow>, StoreError> {
        let s = lock(&self.state);
        let mut groups: BTreeMap<String, (u64, TokenCounts)> = BTreeMap::new();
        for (e, requests) in s
            .ledger
            .iter()
            .filter(|(e, _)| q.since.is_none_or(|t| e.at >= t))
        {
            let g = groups.entry(group_value(e, q.group_by)).or_default();
            g.0 = g.0.saturating_add(*requests);
            g.1.add(&e.tokens);
        }
        let mut rows: Vec<LedgerRow> = groups
            .into_iter()
            .map(|(group, (requests, tokens))| LedgerRow {
                group,
                requests,
                total_tokens: tokens.total(),
                tokens,
            })
            .collect();
        super::sort_ledger(&mut rows);
        Ok(rows)
    }

    async fn fold_ledger(&self, before: Timestamp, max_rows: usize) -> Result<u64, StoreError> {
        let before = day_start(before);
        let mut s = lock(&self.state);
        // The oldest unfolded entries, then what their days were folded into before.
        let mut unfolded: Vec<usize> = (0..s.ledger.len())
            .filter(|&i| s.ledger[i].0.at < before && !at_day_start(s.ledger[i].0.at))
            .collect();
        unfolded.sort_by_key(|&i| s.ledger[i].0.at);
        unfolded.truncate(max_rows);
        let days: BTreeSet<Timestamp> = unfolded
            .iter()
            .map(|&i| day_start(s.ledger[i].0.at))
            .collect();
        let mut take = vec![false; s.ledger.len()];
        for &i in &unfolded {
            take[i] = true;
        }
        for (i, (e, _)) in s.ledger.iter().enumerate() {
            take[i] |= days.contains(&e.at);
        }
        let mut fold = DayFold::default();
        let mut kept = Vec::with_capacity(s.ledger.len());
        for ((e, requests), take) in std::mem::take(&mut s.ledger).into_iter().zip(take) {
            if take {
                fold.add(e, requests);
            } else {
                kept.push((e, requests));
            }
        }
        kept.extend(fold.into_entries());
        s.ledger = kept;
        Ok(unfolded.len() as u64)
    }

    async fn append_request_log(&self, entries: &[RequestLogEntry]) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        for e in entries {
            let mut e = e.clone();
            e.id = s.log.last().map_or(0, |l| l.id) + 1;
            s.log.push(e);
        }
        Ok(())
    }

    async fn write_records(&self, batch: Arc<RecordBatch>) -> Result<(), StoreError> {
        // Nothing here can fail halfway.
        self.save_windows(&batch.windows, batch.now).await?;
        self.save_credits(&batch.credits).await?;
        self.append_ledger(&batch.ledger).await?;
        self.append_request_log(&batch.request_log).await
    }

    async fn list_request_log(
        &self,
        q: &RequestLogQuery,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        let s = lock(&self.state);
        let rows: Box<dyn Iterator<Item = &RequestLogEntry>> = if q.oldest_first {
            Box::new(s.log.iter())
        } else {
            Box::new(s.log.iter().rev())
        };
        Ok(rows
            .filter(|e| q.matches(e))
            .take(q.limit)
            .cloned()
            .collect())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn prune_request_log(
        &self,
        before: Timestamp,
        max_rows: usize,
    ) -> Result<u64, StoreError> {
        let mut s = lock(&self.state);
        // Never the newest row; of the others, the oldest `max_rows` before the cutoff.
        let last = s.log.len().saturating_sub(1);
        let mut old: Vec<(Timestamp, usize)> = s.log[..last]
            .iter()
            .enumerate()
            .filter(|(_, e)| e.at < before)
            .map(|(i, e)| (e.at, i))
            .collect();
        old.sort_unstable();
        old.truncate(max_rows);
        let mut gone = vec![false; s.log.len()];
        for &(_, i) in &old {
            gone[i] = true;
        }
        let mut i = 0;
        s.log.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        Ok(old.len() as u64)
    }

    async fn insert_login_session(&self, session: &LoginSession) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if s.sessions.contains_key(&session.state) {
            return Err(StoreError::Conflict {
                what: "a login session with the same state".into(),
            });
        }
        s.sessions.insert(session.state.clone(), session.clone());
        Ok(())
    }

    async fn get_login_session(&self, state: &str) -> Result<Option<LoginSession>, StoreError> {
        Ok(lock(&self.state).sessions.get(state).cloned())
    }

    async fn claim_login_session(
        &self,
        state: &str,
        now: Timestamp,
    ) -> Result<Option<LoginSession>, StoreError> {
        let mut s = lock(&self.state);
        match s.sessions.get_mut(state) {
            Some(sess) if sess.status == LoginStatus::Pending && sess.expires_at > now => {
                sess.status = LoginStatus::Claimed;
                Ok(Some(sess.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn set_login_status(&self, state: &str, status: &LoginStatus) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        let sess = s
            .sessions
            .get_mut(state)
            .ok_or_else(|| StoreError::NotFound {
                what: "login session",
                id: state.into(),
            })?;
        sess.status = status.clone();
        Ok(())
    }

    async fn purge_login_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut s = lock(&self.state);
        let n = s.sessions.len();
        s.sessions.retain(|_, v| v.expires_at >= before);
        Ok((n - s.sessions.len()) as u64)
    }

    async fn acquire_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        replace: Option<&str>,
    ) -> Result<LeaseTake, StoreError> {
        let mut s = lock(&self.state);
        let left_behind = match s.leases.get(account_id) {
            Some((h, exp)) if h != holder && *exp > now && Some(h.as_str()) != replace => {
                return Ok(LeaseTake::Held {
                    holder: h.clone(),
                    until: *exp,
                });
            }
            Some((h, _)) => Some(h.clone()),
            None => None,
        };
        s.leases
            .insert(account_id.to_string(), (holder.to_string(), now.plus(ttl)));
        Ok(LeaseTake::Taken { left_behind })
    }

    async fn renew_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        _wait: Duration,
    ) -> Result<bool, StoreError> {
        let mut s = lock(&self.state);
        match s.leases.get_mut(account_id) {
            Some((h, exp)) if h == holder => {
                *exp = now.plus(ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let mut s = lock(&self.state);
        if s.leases.get(account_id).is_some_and(|(h, _)| h == holder) {
            s.leases.remove(account_id);
        }
        Ok(())
    }

    async fn save_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
        now: Timestamp,
        _wait: Duration,
    ) -> Result<TokenSave, StoreError> {
        let mut s = lock(&self.state);
        let mut a = s
            .accounts
            .get(account_id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                what: "account",
                id: account_id.into(),
            })?;
        if !refreshed.writes_over(&a.tokens) {
            return Ok(TokenSave::Superseded(a));
        }
        refreshed.apply_to(&mut a, now);
        s.accounts.insert(a.id.clone(), a.clone());
        s.changed();
        Ok(TokenSave::Saved(a))
    }

    async fn rescue_refreshed_tokens(
        &self,
        _account_id: &str,
        _refreshed: &RefreshedTokens,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn data_version(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.state).version)
    }
}
