//! A store that can be taken down and brought back, for tests of what the pool does when the
//! database fails for a while (a full disk, a lock held past the busy timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    LeaseTake, LoginSession, LoginStatus, MemoryStore, RecordBatch, RefreshedTokens, Store,
    StoreError, TokenSave,
};
use crate::account::{Account, AccountPatch};
use crate::keys::{KeyPatch, PlatformKey};
use crate::request_log::{RequestLogEntry, RequestLogQuery};
use crate::time::Timestamp;
use crate::usage::{Credits, LedgerEntry, LedgerQuery, LedgerRow, WindowReading};

/// A [`MemoryStore`] whose every call but `data_version` fails while it is down.
#[derive(Default)]
pub(crate) struct FlakyStore {
    pub inner: MemoryStore,
    down: AtomicBool,
    /// Panic (once) when a refresh lease is given back: a store with a bug.
    pub panic_on_release: AtomicBool,
}

impl FlakyStore {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                message: "the test took the store down".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FlakyStore {
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.up()?;
        self.inner.list_accounts().await
    }
    async fn get_account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.up()?;
        self.inner.get_account(id).await
    }
    async fn insert_account(&self, account: &Account) -> Result<(), StoreError> {
        self.up()?;
        self.inner.insert_account(account).await
    }
    async fn patch_account(
        &self,
        id: &str,
        patch: &AccountPatch,
        now: Timestamp,
    ) -> Result<Account, StoreError> {
        self.up()?;
        self.inner.patch_account(id, patch, now).await
    }
    async fn delete_account(&self, id: &str) -> Result<bool, StoreError> {
        self.up()?;
        self.inner.delete_account(id).await
    }
    async fn set_sort_orders(
        &self,
        orders: &[(String, i64)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.up()?;
        self.inner.set_sort_orders(orders, now).await
    }
    async fn touch_accounts(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.up()?;
        self.inner.touch_accounts(used).await
    }
    async fn list_keys(&self) -> Result<Vec<PlatformKey>, StoreError> {
        self.up()?;
        self.inner.list_keys().await
    }
    async fn insert_key(&self, key: &PlatformKey) -> Result<(), StoreError> {
        self.up()?;
        self.inner.insert_key(key).await
    }
    async fn patch_key(
        &self,
        id: &str,
        patch: &KeyPatch,
        now: Timestamp,
    ) -> Result<PlatformKey, StoreError> {
        self.up()?;
        self.inner.patch_key(id, patch, now).await
    }
    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        self.up()?;
        self.inner.delete_key(id).await
    }
    async fn touch_keys(&self, used: &[(String, Timestamp)]) -> Result<(), StoreError> {
        self.up()?;
        self.inner.touch_keys(used).await
    }
    async fn list_windows(&self) -> Result<Vec<(String, WindowReading)>, StoreError> {
        self.up()?;
        self.inner.list_windows().await
    }
    async fn save_windows(
        &self,
        readings: &[(String, WindowReading)],
        now: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.up()?;
        self.inner.save_windows(readings, now).await
    }
    async fn list_credits(&self) -> Result<Vec<(String, Credits)>, StoreError> {
        self.up()?;
        self.inner.list_credits().await
    }
    async fn save_credits(&self, credits: &[(String, Credits)]) -> Result<(), StoreError> {
        self.up()?;
        self.inner.save_credits(credits).await
    }
    async fn append_ledger(&self, entries: &[LedgerEntry]) -> Result<(), StoreError> {
        self.up()?;
        self.inner.append_ledger(entries).await
    }
    async fn ledger_summary(&self, q: &LedgerQuery) -> Result<Vec<LedgerRow>, StoreError> {
        self.up()?;
        self.inner.ledger_summary(q).await
    }
    async fn fold_ledger(&self, before: Timestamp, max_rows: usize) -> Result<u64, StoreError> {
        self.up()?;
        self.inner.fold_ledger(before, max_rows).await
    }
    async fn append_request_log(&self, entries: &[RequestLogEntry]) -> Result<(), StoreError> {
        self.up()?;
        self.inner.append_request_log(entries).await
    }
    async fn write_records(&self, batch: Arc<RecordBatch>) -> Result<(), StoreError> {
        self.up()?;
        self.inner.write_records(batch).await
    }
    async fn list_request_log(
        &self,
        q: &RequestLogQuery,
    ) -> Result<Vec<RequestLogEntry>, StoreError> {
        self.up()?;
        self.inner.list_request_log(q).await
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.up()?;
        self.inner.check_writable().await
    }
    async fn prune_request_log(
        &self,
        before: Timestamp,
        max_rows: usize,
    ) -> Result<u64, StoreError> {
        self.up()?;
        self.inner.prune_request_log(before, max_rows).await
    }
    async fn insert_login_session(&self, s: &LoginSession) -> Result<(), StoreError> {
        self.up()?;
        self.inner.insert_login_session(s).await
    }
    async fn get_login_session(&self, state: &str) -> Result<Option<LoginSession>, StoreError> {
        self.up()?;
        self.inner.get_login_session(state).await
    }
    async fn claim_login_session(
        &self,
        state: &str,
        now: Timestamp,
    ) -> Result<Option<LoginSession>, StoreError> {
        self.up()?;
        self.inner.claim_login_session(state, now).await
    }
    async fn set_login_status(&self, state: &str, status: &LoginStatus) -> Result<(), StoreError> {
        self.up()?;
        self.inner.set_login_status(state, status).await
    }
    async fn purge_login_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.up()?;
        self.inner.purge_login_sessions(before).await
    }
    async fn acquire_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        replace: Option<&str>,
    ) -> Result<LeaseTake, StoreError> {
        self.up()?;
        self.inner
            .acquire_refresh_lease(account_id, holder, now, ttl, replace)
            .await
    }
    async fn renew_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        wait: Duration,
    ) -> Result<bool, StoreError> {
        self.up()?;
        self.inner
            .renew_refresh_lease(account_id, holder, now, ttl, wait)
            .await
    }
    async fn release_refresh_lease(
        &self,
        account_id: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.up()?;
        if self.panic_on_release.swap(false, Ordering::SeqCst) {
            panic!("a store with a bug");
        }
        self.inner.release_refresh_lease(account_id, holder).await
    }
    async fn save_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
        now: Timestamp,
        wait: Duration,
    ) -> Result<TokenSave, StoreError> {
        self.up()?;
        self.inner
            .save_refreshed_tokens(account_id, refreshed, now, wait)
            .await
    }
    async fn rescue_refreshed_tokens(
        &self,
        account_id: &str,
        refreshed: &RefreshedTokens,
    ) -> Result<bool, StoreError> {
        self.up()?;
        self.inner
            .rescue_refreshed_tokens(account_id, refreshed)
            .await
    }
    async fn data_version(&self) -> Result<u64, StoreError> {
        self.inner.data_version().await
    }
}
