//! `FakeOpenAi` (feature `testing`): codexpool-testkit's fake of auth.openai.com, chatgpt.com's
//! usage endpoint and the Codex backend, one real HTTP server on `127.0.0.1`, so tests in any
//! language run a full round trip with no network and no real account.

use std::collections::HashMap;
use std::sync::Mutex;

use codexpool_testkit::{FakeAccount, FakeUsage};

use crate::CodexPoolError;

/// A running fake upstream. Stops when dropped or on `shutdown`.
#[derive(uniffi::Object)]
pub struct FakeOpenAi {
    inner: Mutex<Option<codexpool_testkit::FakeOpenAi>>,
}

impl FakeOpenAi {
    fn with<T>(
        &self,
        f: impl FnOnce(&codexpool_testkit::FakeOpenAi) -> T,
    ) -> Result<T, CodexPoolError> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| CodexPoolError::Internal("the fake's lock is poisoned".into()))?;
        let fake = guard
            .as_ref()
            .ok_or_else(|| CodexPoolError::InvalidInput("the fake was shut down".into()))?;
        Ok(f(fake))
    }

    fn with_account<T>(
        &self,
        account_id: &str,
        f: impl FnOnce(&codexpool_testkit::FakeOpenAi) -> T,
    ) -> Result<T, CodexPoolError> {
        self.with(|fake| {
            if fake.has_account(account_id) {
                Ok(f(fake))
            } else {
                Err(CodexPoolError::NotFound(format!(
                    "the fake has no account {account_id:?}"
                )))
            }
        })?
    }
}

#[uniffi::export]
impl FakeOpenAi {
    /// Starts a fake on a free port of 127.0.0.1 (its own thread and runtime).
    #[uniffi::constructor]
    pub fn start() -> Result<std::sync::Arc<Self>, CodexPoolError> {
        let fake = codexpool_testkit::FakeOpenAi::start()
            .map_err(|e| CodexPoolError::Io(format!("cannot start the fake: {e}")))?;
        Ok(std::sync::Arc::new(Self {
            inner: Mutex::new(Some(fake)),
        }))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> Result<String, CodexPoolError> {
        self.with(|f| f.url())
    }

    /// The settings that point a pool at this fake: `ISSUER`, `USAGE_BASE_URL`,
    /// `UPSTREAM_BASE_URL`.
    pub fn settings(&self) -> Result<HashMap<String, String>, CodexPoolError> {
        self.with(|f| {
            HashMap::from([
                ("ISSUER".to_string(), f.issuer()),
                ("USAGE_BASE_URL".to_string(), f.usage_base_url()),
                ("UPSTREAM_BASE_URL".to_string(), f.codex_base_url()),
            ])
        })
    }

    /// Adds a signed-in account (`plan` default `plus`). `Conflict` when the id exists.
    #[uniffi::method(default(plan = None))]
    pub fn add_account(
        &self,
        account_id: String,
        plan: Option<String>,
    ) -> Result<(), CodexPoolError> {
        self.with(|f| {
            if f.has_account(&account_id) {
                return Err(CodexPoolError::Conflict(format!(
                    "the fake already has account {account_id:?}"
                )));
            }
            let mut account = FakeAccount::new(account_id);
            if let Some(p) = plan {
                account = account.plan(p);
            }
            f.add_account(account);
            Ok(())
        })?
    }

    /// The account's Codex CLI `auth.json`, as text.
    pub fn auth_json(&self, account_id: String) -> Result<String, CodexPoolError> {
        self.with_account(&account_id, |f| f.auth_json(&account_id).to_string())
    }

    /// Sets the used share (0–100) of the account's 5-hour and weekly windows.
    pub fn set_usage(
        &self,
        account_id: String,
        five_hour_percent: f64,
        weekly_percent: f64,
    ) -> Result<(), CodexPoolError> {
        self.with_account(&account_id, |f| {
            f.set_usage(
                &account_id,
                FakeUsage::new(five_hour_percent, weekly_percent),
            );
        })
    }

    /// Revokes every sign-in of the account: access tokens answer 401, refreshes fail
    /// (`refresh_token_invalidated`) until a new sign-in.
    pub fn revoke_sessions(&self, account_id: String) -> Result<(), CodexPoolError> {
        self.with_account(&account_id, |f| f.revoke_sessions(&account_id))
    }

    /// How many refreshes were attempted for the account (failed ones included).
    pub fn refresh_count(&self, account_id: String) -> Result<u64, CodexPoolError> {
        self.with_account(&account_id, |f| f.refresh_count(&account_id) as u64)
    }

    /// How many requests reached `path` (e.g. `/backend-api/codex/responses`).
    pub fn count(&self, path: String) -> Result<u64, CodexPoolError> {
        self.with(|f| f.count(&path) as u64)
    }

    /// Stops the server and joins its thread. Calling it again does nothing.
    pub fn shutdown(&self) {
        if let Some(fake) = self.inner.lock().ok().and_then(|mut g| g.take()) {
            fake.shutdown();
        }
    }
}
