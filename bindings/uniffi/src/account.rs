//! `AccountPool`: the pooled ChatGPT sign-ins — list, change, remove, import, export, and the
//! browser sign-in — over core's [`codexpool_core::AccountPool`] and [`codexpool_core::Auth`].
//!
//! A browser sign-in's callback listener holds its port (1455 by default) until the sign-in
//! ends, so a [`LoginStart`] whose caller gave up cancels it: when the caller stops awaiting
//! `wait()`, and when a handle with a listener is freed.

use std::sync::Arc;

use codexpool_core::auth::{
    LoginCompleted as CoreLoginCompleted, LoginHandle, LoginOptions as CoreLoginOptions,
};
use codexpool_core::import::{ImportOutcome, ImportReport, ImportResult as CoreImportResult};
use codexpool_core::store::{LoginKind, LoginStatus};
use codexpool_core::{
    Account as CoreAccount, AccountFilter as CoreFilter, AccountPatch as CorePatch,
    AccountStatus as CoreStatus,
};

use crate::runtime::{Home, HomeExt, runtime};
use crate::{CodexPoolError, ms};

/// Whether an account may serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AccountStatus {
    /// Usable (quota and cooldowns permitting).
    Active,
    /// Turned off by a person.
    Disabled,
    /// The sign-in is dead: sign in again.
    NeedsLogin,
    /// OpenAI deactivated the account or workspace.
    Banned,
}

impl From<CoreStatus> for AccountStatus {
    fn from(s: CoreStatus) -> Self {
        match s {
            CoreStatus::Active => Self::Active,
            CoreStatus::Disabled => Self::Disabled,
            CoreStatus::NeedsLogin => Self::NeedsLogin,
            CoreStatus::Banned => Self::Banned,
        }
    }
}

impl From<AccountStatus> for CoreStatus {
    fn from(s: AccountStatus) -> Self {
        match s {
            AccountStatus::Active => Self::Active,
            AccountStatus::Disabled => Self::Disabled,
            AccountStatus::NeedsLogin => Self::NeedsLogin,
            AccountStatus::Banned => Self::Banned,
        }
    }
}

/// A pooled ChatGPT sign-in (its tokens never cross the FFI). Times are milliseconds since the
/// Unix epoch (UTC).
#[derive(Debug, Clone, uniffi::Record)]
pub struct Account {
    /// Local id (12 hex characters); every call taking an id also takes a unique prefix.
    pub id: String,
    /// A person's name for it (defaults to the email).
    pub label: String,
    /// The sign-in's email.
    pub email: Option<String>,
    /// OpenAI's account (workspace) id.
    pub chatgpt_account_id: Option<String>,
    /// OpenAI's user id within that account.
    pub chatgpt_user_id: Option<String>,
    /// `free`, `plus`, `pro`, `team`, …
    pub plan_type: Option<String>,
    /// At most one group.
    pub group: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Priority: lower first under the `ordered` strategy.
    pub sort: i64,
    /// A person's note.
    pub note: Option<String>,
    /// Whether it may serve.
    pub status: AccountStatus,
    /// Why it has that status.
    pub status_reason: Option<String>,
    /// When its access token expires, if known (ms).
    pub token_expires_at: Option<i64>,
    /// When it was added (ms).
    pub created_at: i64,
    /// When it was last changed (ms).
    pub updated_at: i64,
    /// When it last served a request (ms).
    pub last_used_at: Option<i64>,
}

impl From<CoreAccount> for Account {
    fn from(a: CoreAccount) -> Self {
        Self {
            token_expires_at: a.tokens.expires_at.map(ms),
            id: a.id,
            label: a.label,
            email: a.email,
            chatgpt_account_id: a.chatgpt_account_id,
            chatgpt_user_id: a.chatgpt_user_id,
            plan_type: a.plan_type,
            group: a.group,
            tags: a.tags,
            sort: a.sort,
            note: a.note,
            status: a.status.into(),
            status_reason: a.status_reason,
            created_at: ms(a.created_at),
            updated_at: ms(a.updated_at),
            last_used_at: a.last_used_at.map(ms),
        }
    }
}

/// Which accounts to list or export. Every field left empty matches all.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct AccountFilter {
    /// Only this group.
    #[uniffi(default = None)]
    pub group: Option<String>,
    /// Only accounts with this tag.
    #[uniffi(default = None)]
    pub tag: Option<String>,
    /// Only this status.
    #[uniffi(default = None)]
    pub status: Option<AccountStatus>,
    /// Case-insensitive text in id, label, email, note, group, tags or account id.
    #[uniffi(default = None)]
    pub text: Option<String>,
}

impl From<AccountFilter> for CoreFilter {
    fn from(f: AccountFilter) -> Self {
        let mut out = CoreFilter::default();
        out.group = f.group;
        out.tag = f.tag;
        out.status = f.status.map(Into::into);
        out.text = f.text;
        out
    }
}

/// A change to an account. A field left `None` is kept; an empty `group` or `note` clears it.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct AccountPatch {
    /// New label.
    #[uniffi(default = None)]
    pub label: Option<String>,
    /// New group (empty: none).
    #[uniffi(default = None)]
    pub group: Option<String>,
    /// New tags, replacing all.
    #[uniffi(default = None)]
    pub tags: Option<Vec<String>>,
    /// New sort priority.
    #[uniffi(default = None)]
    pub sort: Option<i64>,
    /// New note (empty: none).
    #[uniffi(default = None)]
    pub note: Option<String>,
}

impl From<AccountPatch> for CorePatch {
    fn from(p: AccountPatch) -> Self {
        // Core's validation turns a blank group or note into "cleared".
        let mut out = CorePatch::default();
        out.label = p.label;
        out.group = p.group.map(Some);
        out.tags = p.tags;
        out.sort = p.sort;
        out.note = p.note.map(Some);
        out
    }
}

/// What happened to an imported account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ImportStatus {
    /// A new account was added.
    Imported,
    /// An existing account (same sign-in) got new tokens.
    Updated,
    /// The account exists with the input's tokens or a newer sign-in: nothing was written.
    Unchanged,
    /// Nothing was written: the input is not a usable sign-in; `reason` says why.
    Skipped,
    /// Nothing was written: the database refused it (full disk, read-only); `reason` says why.
    Failed,
}

/// One input's import result.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ImportResult {
    /// Where it came from: a path or the given source name, `#N` for the N-th account of a
    /// document.
    pub source: String,
    /// What happened.
    pub status: ImportStatus,
    /// Why it was skipped or left unchanged.
    pub reason: Option<String>,
    /// The account, when one was written.
    pub account_id: Option<String>,
    /// Its label.
    pub label: Option<String>,
    /// Something to know (e.g. a refresh token shared with the Codex CLI).
    pub warning: Option<String>,
    /// The input was a Codex CLI sign-in, whose refresh token that CLI still holds.
    pub codex_cli: bool,
    /// An import with `take_over` refreshed this Codex CLI sign-in: codexpool holds the only
    /// live refresh token, and that CLI must sign in again.
    pub taken_over: bool,
    /// An import with `take_over` could not refresh this sign-in (why): it stays imported and
    /// shared with the Codex CLI. The other results were tried all the same.
    pub take_over_error: Option<String>,
    /// That refresh failed because the issuer declared the sign-in dead (expired, revoked,
    /// reused): trying again cannot help; the account needs a new sign-in.
    pub sign_in_dead: bool,
}

impl From<CoreImportResult> for ImportResult {
    fn from(r: CoreImportResult) -> Self {
        let (status, reason) = match r.outcome {
            ImportOutcome::Imported => (ImportStatus::Imported, None),
            ImportOutcome::Updated => (ImportStatus::Updated, None),
            ImportOutcome::Unchanged(why) => (ImportStatus::Unchanged, Some(why)),
            ImportOutcome::Skipped(why) => (ImportStatus::Skipped, Some(why)),
            ImportOutcome::Failed(why) => (ImportStatus::Failed, Some(why)),
        };
        Self {
            source: r.source,
            status,
            reason,
            account_id: r.account_id,
            label: r.label,
            warning: r.warning,
            codex_cli: r.codex_cli,
            taken_over: r.taken_over,
            take_over_error: r.take_over_error,
            sign_in_dead: r.sign_in_dead,
        }
    }
}

/// An import's results, after core's take-over when asked. A refresh that fails stops no other
/// and is put on its result (`take_over_error`) instead of raised, so the caller keeps the
/// results (`CodexPoolError` is a flat uniffi error: it carries only a message).
async fn import_results(
    accounts: &codexpool_core::AccountPool,
    mut report: ImportReport,
    take_over: bool,
) -> Result<Vec<ImportResult>, CodexPoolError> {
    if take_over {
        match accounts.take_over(&mut report).await {
            Ok(_) | Err(codexpool_core::Error::TakeOver { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report.results.into_iter().map(Into::into).collect())
}

/// How to run a browser sign-in, and what to set on the account it signs in.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LoginOptions {
    /// Label (default: kept, or the email for a new account).
    #[uniffi(default = None)]
    pub label: Option<String>,
    /// Group (default: kept / none).
    #[uniffi(default = None)]
    pub group: Option<String>,
    /// Tags (default: kept / none).
    #[uniffi(default = [])]
    pub tags: Vec<String>,
    /// Note (default: kept / none).
    #[uniffi(default = None)]
    pub note: Option<String>,
    /// Pins the sign-in to this workspace.
    #[uniffi(default = None)]
    pub allowed_workspace_id: Option<String>,
    /// Try to open the URL in a browser.
    #[uniffi(default = false)]
    pub open_browser: bool,
    /// Start the callback listener on `LOGIN_ADDR`; turn off when the redirect URL will be
    /// passed to `login_complete` or reaches a served gateway's `/auth/callback`.
    #[uniffi(default = true)]
    pub listen: bool,
}

impl From<LoginOptions> for CoreLoginOptions {
    fn from(o: LoginOptions) -> Self {
        let mut out = CoreLoginOptions::default()
            .tags(o.tags)
            .open_browser(o.open_browser)
            .listen(o.listen);
        if let Some(v) = o.label {
            out = out.label(v);
        }
        if let Some(v) = o.group {
            out = out.group(v);
        }
        if let Some(v) = o.note {
            out = out.note(v);
        }
        if let Some(v) = o.allowed_workspace_id {
            out = out.allowed_workspace_id(v);
        }
        out
    }
}

/// A started browser sign-in: open `url()`, then `wait()`.
///
/// Its callback listener (when `LoginOptions.listen`) holds `LOGIN_ADDR` until the sign-in
/// ends, so the sign-in is cancelled when the caller gives up: when it stops awaiting `wait()`
/// (an asyncio task cancelled or timed out, a Kotlin coroutine cancelled, a Swift task
/// cancelled), and when a handle with a listener is freed before the sign-in ended (garbage
/// collection, Kotlin `close()`/`destroy()`, the last Swift reference). Without a listener a
/// freed handle leaves the sign-in open for `login_complete` from anywhere.
#[derive(uniffi::Object)]
pub struct LoginStart {
    inner: LoginHandle,
    home: Home,
}

/// Cancels a sign-in when dropped while armed: the future of a `wait()` whose caller went away.
struct CancelOnDrop(Option<LoginHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            cancel_in_background(h);
        }
    }
}

/// Cancels a sign-in on the runtime, freeing its listener's port; nobody waits for it.
fn cancel_in_background(h: LoginHandle) {
    if let Ok(rt) = runtime() {
        // Nobody is left to tell when it fails; the sign-in then expires in 15 minutes.
        rt.spawn(async move {
            let _ = h.cancel().await;
        });
    }
}

impl Drop for LoginStart {
    fn drop(&mut self) {
        // In a forked child the listener is the parent's.
        if self.inner.listen_addr().is_some() && self.home.is_here() {
            cancel_in_background(self.inner.clone());
        }
    }
}

#[uniffi::export]
impl LoginStart {
    /// The authorize URL to open in a browser.
    pub fn url(&self) -> String {
        self.inner.url().to_string()
    }

    /// The OAuth `state`; names the sign-in in `login_status`, `login_wait`, `login_cancel`.
    pub fn state(&self) -> String {
        self.inner.state().to_string()
    }

    /// Where the issuer will send the browser.
    pub fn redirect_uri(&self) -> String {
        self.inner.redirect_uri().to_string()
    }

    /// When the sign-in expires (ms).
    pub fn expires_at(&self) -> i64 {
        ms(self.inner.expires_at())
    }

    /// `host:port` of the callback listener, when one was started.
    pub fn listen_addr(&self) -> Option<String> {
        self.inner.listen_addr().map(|a| a.to_string())
    }

    /// Whether a browser was launched.
    pub fn browser_opened(&self) -> bool {
        self.inner.browser_opened()
    }

    /// Waits until the sign-in completes (through the listener, `login_complete`, or another
    /// process); raises `Auth` when it fails, is cancelled or expires. A caller that stops
    /// awaiting (cancelled, timed out) cancels the sign-in.
    pub async fn wait(&self) -> Result<LoginCompleted, CodexPoolError> {
        let h = self.inner.clone();
        let mut abandoned = CancelOnDrop(Some(self.inner.clone()));
        let ended = self
            .home
            .run(async move { Ok(h.wait().await?.into()) })
            .await;
        abandoned.0 = None;
        ended
    }

    /// Cancels the sign-in; `false` when it had already ended. Returns once the callback
    /// listener has stopped (its address is free); a pending `wait()` raises `Auth` at once.
    pub async fn cancel(&self) -> Result<bool, CodexPoolError> {
        let h = self.inner.clone();
        self.home.run(async move { Ok(h.cancel().await?) }).await
    }
}

/// A finished sign-in.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LoginCompleted {
    /// The account created or updated.
    pub account: Account,
    /// Whether the account is new.
    pub created: bool,
}

impl From<CoreLoginCompleted> for LoginCompleted {
    fn from(c: CoreLoginCompleted) -> Self {
        Self {
            account: c.account.into(),
            created: c.created,
        }
    }
}

/// Where a sign-in stands.
#[derive(Debug, Clone, uniffi::Record)]
pub struct LoginInfo {
    /// Its state.
    pub state: String,
    /// `browser` or `device`.
    pub kind: String,
    /// `pending`, `claimed`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The account, once completed.
    pub account_id: Option<String>,
    /// Why it failed, once failed.
    pub error: Option<String>,
    /// When it started (ms).
    pub created_at: i64,
    /// When it expires (ms).
    pub expires_at: i64,
    /// Still pending but past its expiry.
    pub expired: bool,
}

impl From<codexpool_core::auth::LoginInfo> for LoginInfo {
    fn from(i: codexpool_core::auth::LoginInfo) -> Self {
        let (status, account_id, error) = match i.status {
            LoginStatus::Pending => ("pending", None, None),
            LoginStatus::Claimed => ("claimed", None, None),
            LoginStatus::Completed { account_id } => ("completed", Some(account_id), None),
            LoginStatus::Failed { error } => ("failed", None, Some(error)),
            LoginStatus::Cancelled => ("cancelled", None, None),
        };
        Self {
            state: i.state,
            kind: match i.kind {
                LoginKind::Browser => "browser",
                LoginKind::Device => "device",
            }
            .into(),
            status: status.into(),
            account_id,
            error,
            created_at: ms(i.created_at),
            expires_at: ms(i.expires_at),
            expired: i.expired,
        }
    }
}

/// The accounts of a pool. Get it with `Pool.accounts()`.
#[derive(uniffi::Object)]
pub struct AccountPool {
    pub(crate) inner: codexpool_core::Pool,
    pub(crate) home: Home,
}

#[uniffi::export]
impl AccountPool {
    /// Accounts matching `filter` (all when `None`), by sort then label.
    #[uniffi::method(default(filter = None))]
    pub fn list(&self, filter: Option<AccountFilter>) -> Result<Vec<Account>, CodexPoolError> {
        self.home.ensure()?;
        let filter = filter.map(CoreFilter::from).unwrap_or_default();
        let all = self.inner.accounts().list(&filter);
        Ok(all.into_iter().map(Into::into).collect())
    }

    /// One account by id or unique id prefix.
    pub fn get(&self, id: String) -> Result<Account, CodexPoolError> {
        self.home.ensure()?;
        Ok(self.inner.accounts().get(&id)?.into())
    }

    /// Changes label, group, tags, sort or note.
    pub async fn update(&self, id: String, patch: AccountPatch) -> Result<Account, CodexPoolError> {
        let accounts = self.inner.accounts();
        self.home
            .run(async move { Ok(accounts.update(&id, patch.into()).await?.into()) })
            .await
    }

    /// Turns an account on (clearing its status reason).
    pub async fn enable(&self, id: String) -> Result<Account, CodexPoolError> {
        let accounts = self.inner.accounts();
        self.home
            .run(async move { Ok(accounts.enable(&id).await?.into()) })
            .await
    }

    /// Turns an account off until a person enables it.
    pub async fn disable(&self, id: String) -> Result<Account, CodexPoolError> {
        let accounts = self.inner.accounts();
        self.home
            .run(async move { Ok(accounts.disable(&id).await?.into()) })
            .await
    }

    /// Deletes an account and its usage readings; returns it as it was.
    pub async fn remove(&self, id: String) -> Result<Account, CodexPoolError> {
        let accounts = self.inner.accounts();
        self.home
            .run(async move { Ok(accounts.remove(&id).await?.into()) })
            .await
    }

    /// Imports a Codex CLI `auth.json`, a codexpool export, or every `*.json` file of a folder
    /// (a leading `~` is the home directory); one result per account found. Fails only when the
    /// path cannot be read.
    ///
    /// With `take_over`, each Codex CLI sign-in written is refreshed once, so codexpool holds
    /// the only live refresh token (that CLI must sign in again; the result's `taken_over` and
    /// `warning` say so). A refresh that fails is not raised and stops no other: that result's
    /// `take_over_error` says why, and its account stays imported and shared with the Codex CLI.
    #[uniffi::method(default(take_over = false))]
    pub async fn import_path(
        &self,
        path: String,
        take_over: bool,
    ) -> Result<Vec<ImportResult>, CodexPoolError> {
        let (accounts, path) = (
            self.inner.accounts(),
            codexpool_core::config::expand_home(path),
        );
        self.home
            .run(async move {
                let report = accounts.import_path(&path).await?;
                import_results(&accounts, report, take_over).await
            })
            .await
    }

    /// Imports a document held in memory (`source` names it in the results; `take_over` as
    /// for `import_path`).
    #[uniffi::method(default(take_over = false))]
    pub async fn import_text(
        &self,
        source: String,
        text: String,
        take_over: bool,
    ) -> Result<Vec<ImportResult>, CodexPoolError> {
        let accounts = self.inner.accounts();
        self.home
            .run(async move {
                let report = accounts.import_bytes(&source, text.as_bytes()).await;
                import_results(&accounts, report, take_over).await
            })
            .await
    }

    /// Writes the accounts matching `filter` (all when `None`), tokens included, to a file
    /// readable by its owner only (a leading `~` is the home directory); returns how many were
    /// written.
    #[uniffi::method(default(filter = None))]
    pub async fn export_to_file(
        &self,
        path: String,
        filter: Option<AccountFilter>,
    ) -> Result<u64, CodexPoolError> {
        let (accounts, path) = (
            self.inner.accounts(),
            codexpool_core::config::expand_home(path),
        );
        let filter = filter.map(CoreFilter::from).unwrap_or_default();
        self.home
            .run(async move { Ok(accounts.export_to_file(&path, &filter).await? as u64) })
            .await
    }

    /// Starts a browser sign-in: open the handle's `url()`. With `listen` (the default) a
    /// callback listener on `LOGIN_ADDR` completes it; otherwise pass the redirect URL to
    /// `login_complete`. See [`LoginStart`] for when the sign-in is cancelled.
    #[uniffi::method(default(options = None))]
    pub async fn login_start(
        &self,
        options: Option<LoginOptions>,
    ) -> Result<Arc<LoginStart>, CodexPoolError> {
        let auth = self.inner.auth();
        let options = options.map(CoreLoginOptions::from).unwrap_or_default();
        let home = self.home;
        home.run(async move {
            let inner = auth.login_start(options).await?;
            Ok(Arc::new(LoginStart { inner, home }))
        })
        .await
    }

    /// Completes a browser sign-in from the redirect URL (full, without scheme, path only, or
    /// the bare query), creating or updating the account.
    pub async fn login_complete(
        &self,
        redirect_url: String,
    ) -> Result<LoginCompleted, CodexPoolError> {
        let auth = self.inner.auth();
        self.home
            .run(async move { Ok(auth.login_complete(&redirect_url).await?.into()) })
            .await
    }

    /// Where a sign-in stands.
    pub async fn login_status(&self, state: String) -> Result<LoginInfo, CodexPoolError> {
        let auth = self.inner.auth();
        self.home
            .run(async move { Ok(auth.login_status(&state).await?.into()) })
            .await
    }

    /// Waits until a sign-in (started here or in another process) completes, fails, is
    /// cancelled or expires. Cancels nothing when the caller stops awaiting (see
    /// `LoginStart.wait` for that).
    pub async fn login_wait(&self, state: String) -> Result<LoginCompleted, CodexPoolError> {
        let auth = self.inner.auth();
        self.home
            .run(async move { Ok(auth.login_wait(&state).await?.into()) })
            .await
    }

    /// Cancels a pending sign-in; `false` when it had already ended.
    pub async fn login_cancel(&self, state: String) -> Result<bool, CodexPoolError> {
        let auth = self.inner.auth();
        self.home
            .run(async move { Ok(auth.login_cancel(&state).await?) })
            .await
    }
}
