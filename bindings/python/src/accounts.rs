//! `pool.accounts`: the pooled sign-ins (list, organise, enable, remove, import, export) and the
//! sign-in flows (browser with PKCE, device code), over core's `AccountPool` and `Auth`.
//!
//! A browser sign-in's callback listener holds its port (1455 by default) until the sign-in
//! ends, so a `LoginStart` whose caller gave up cancels it: when `wait` ends by timeout or
//! Ctrl-C, when a `with` block ends, and when a handle with a listener is garbage-collected.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use codexpool_core::auth::{self, LoginOptions};
use codexpool_core::import::{ImportOutcome, ImportReport as CoreImportReport};
use codexpool_core::{AccountFilter, AccountPatch, AccountStatus};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::args::{keyword_changes, seconds};
use crate::errors::{CodexPoolError, OrRaise, Timeout, core_error, invalid, warn_all};
use crate::json;
use crate::record::{quote, record};
use crate::runtime::{Home, HomeExt, runtime};
use crate::time::{Time, opt};

record! {
    /// A pooled ChatGPT sign-in (no tokens: those never leave the pool except through `export`).
    Account as "Account" {
        id: String,
        label: String,
        email: Option<String>,
        chatgpt_account_id: Option<String>,
        chatgpt_user_id: Option<String>,
        plan_type: Option<String>,
        group: Option<String>,
        tags: Vec<String>,
        sort: i64,
        note: Option<String>,
        status: String,
        status_reason: Option<String>,
        token_expires_at: Option<Time>,
        token_refreshed_at: Option<Time>,
        created_at: Time,
        updated_at: Time,
        last_used_at: Option<Time>,
    }
}

impl From<codexpool_core::Account> for Account {
    fn from(a: codexpool_core::Account) -> Self {
        Self {
            status: a.status.as_str().to_string(),
            token_expires_at: opt(a.tokens.expires_at),
            token_refreshed_at: opt(a.tokens.last_refresh),
            created_at: Time(a.created_at),
            updated_at: Time(a.updated_at),
            last_used_at: opt(a.last_used_at),
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
            status_reason: a.status_reason,
        }
    }
}

record! {
    /// Runtime state of an account: requests in flight, cooldown, exhaustion.
    AccountRuntime as "AccountRuntime" {
        inflight: u32,
        cooldown_until: Option<Time>,
        exhausted_until: Option<Time>,
        usable: bool,
    }
}

record! {
    /// What happened to one imported account: `status` is `imported`, `updated`, `unchanged`
    /// (the stored sign-in is the same or newer), `skipped` (not a usable sign-in) or `failed`
    /// (the database refused it), with `reason` for the last three; `taken_over` when an
    /// import with `take_over` refreshed this Codex CLI sign-in, `take_over_error` (why) when
    /// that refresh failed, and `sign_in_dead` when it failed because the issuer declared the
    /// sign-in dead (it needs a new one; trying again cannot help).
    ImportResult as "ImportResult" {
        source: String,
        status: String,
        reason: Option<String>,
        account_id: Option<String>,
        label: Option<String>,
        warning: Option<String>,
        codex_cli: bool,
        taken_over: bool,
        take_over_error: Option<String>,
        sign_in_dead: bool,
    }
}

record! {
    /// The results of an import, one per account found (or per unreadable file).
    ImportReport as "ImportReport" {
        results: Vec<ImportResult>,
        imported: usize,
        updated: usize,
        unchanged: usize,
        skipped: usize,
        failed: usize,
    }
}

impl From<CoreImportReport> for ImportReport {
    fn from(r: CoreImportReport) -> Self {
        Self {
            imported: r.imported(),
            updated: r.updated(),
            unchanged: r.unchanged(),
            skipped: r.skipped(),
            failed: r.failed(),
            results: r
                .results
                .into_iter()
                .map(|x| {
                    let (status, reason) = match x.outcome {
                        ImportOutcome::Imported => ("imported", None),
                        ImportOutcome::Updated => ("updated", None),
                        ImportOutcome::Unchanged(why) => ("unchanged", Some(why)),
                        ImportOutcome::Skipped(why) => ("skipped", Some(why)),
                        ImportOutcome::Failed(why) => ("failed", Some(why)),
                    };
                    ImportResult {
                        source: x.source,
                        status: status.into(),
                        reason,
                        account_id: x.account_id,
                        label: x.label,
                        warning: x.warning,
                        codex_cli: x.codex_cli,
                        taken_over: x.taken_over,
                        take_over_error: x.take_over_error,
                        sign_in_dead: x.sign_in_dead,
                    }
                })
                .collect(),
        }
    }
}

record! {
    /// A finished sign-in: the account created or updated.
    LoginCompleted as "LoginCompleted" {
        account: Account,
        created: bool,
    }
}

impl From<auth::LoginCompleted> for LoginCompleted {
    fn from(c: auth::LoginCompleted) -> Self {
        Self {
            account: c.account.into(),
            created: c.created,
        }
    }
}

record! {
    /// Where a sign-in stands: `status` is `pending`, `claimed`, `completed` (with
    /// `account_id`), `failed` (with `error`) or `cancelled`; `kind` is `browser` or `device`.
    LoginInfo as "LoginInfo" {
        state: String,
        kind: String,
        status: String,
        account_id: Option<String>,
        error: Option<String>,
        created_at: Time,
        expires_at: Time,
        expired: bool,
    }
}

impl From<auth::LoginInfo> for LoginInfo {
    fn from(i: auth::LoginInfo) -> Self {
        // The status is a tagged enum; its serialized form names the state and carries the
        // facts, whatever variants it grows.
        let status = serde_json::to_value(&i.status).unwrap_or_default();
        let kind = serde_json::to_value(i.kind).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        Self {
            state: i.state,
            kind: text(&kind).unwrap_or_default(),
            status: text(&status["state"]).unwrap_or_default(),
            account_id: text(&status["account_id"]),
            error: text(&status["error"]),
            created_at: Time(i.created_at),
            expires_at: Time(i.expires_at),
            expired: i.expired,
        }
    }
}

/// The import report for Python, its warnings issued as `CodexPoolWarning`s.
fn reported(py: Python<'_>, report: CoreImportReport) -> PyResult<ImportReport> {
    warn_all(
        py,
        report.results.iter().filter_map(|r| r.warning.as_deref()),
    )?;
    Ok(report.into())
}

/// The `timeout` argument of a wait, checked.
fn limit(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout.map(|secs| seconds(py, "timeout", secs)).transpose()
}

/// Waits for a sign-in to end, at most `limit` when given. The outer error is the wait ending
/// first (`Timeout`, or `KeyboardInterrupt` from Ctrl-C); the inner result is how the sign-in
/// ended.
fn wait_for<F>(
    py: Python<'_>,
    home: Home,
    fut: F,
    limit: Option<Duration>,
) -> PyResult<Result<auth::LoginCompleted, auth::AuthError>>
where
    F: std::future::Future<Output = Result<auth::LoginCompleted, auth::AuthError>> + Send,
{
    match limit {
        None => home.run(py, fut),
        Some(limit) => home
            .run(py, async move { tokio::time::timeout(limit, fut).await })?
            .map_err(|_| {
                Timeout::new_err(format!(
                    "the sign-in did not finish within {} s",
                    limit.as_secs_f64()
                ))
            }),
    }
}

/// Waits for a sign-in, at most `timeout` seconds when given.
fn wait_login<F>(
    py: Python<'_>,
    home: Home,
    fut: F,
    timeout: Option<f64>,
) -> PyResult<LoginCompleted>
where
    F: std::future::Future<Output = Result<auth::LoginCompleted, auth::AuthError>> + Send,
{
    let limit = limit(py, timeout)?;
    wait_for(py, home, fut, limit)?.map(Into::into).or_raise(py)
}

/// A started browser sign-in: open `url`; the sign-in finishes through the callback listener
/// (when `listen`), `accounts.login_complete(redirect_url)`, or another process.
///
/// A context manager: leaving `with accounts.login_start() as ls:` cancels the sign-in unless
/// it ended. A `wait` that ends by timeout or Ctrl-C cancels it too, and so does garbage
/// collection of a handle with a listener, so the listener's port is free for the next one.
#[pyclass(frozen, module = "codexpool")]
pub struct LoginStart {
    inner: auth::LoginHandle,
    home: Home,
}

impl LoginStart {
    /// Cancels the sign-in in a task of its own on the runtime, which runs to its end whoever
    /// waits for it.
    fn cancel_task(&self) -> PyResult<tokio::task::JoinHandle<Result<bool, auth::AuthError>>> {
        self.home.ensure()?;
        let h = self.inner.clone();
        Ok(runtime()?.spawn(async move { h.cancel().await }))
    }

    /// After a wait gave up: cancels the sign-in and waits for its listener to stop, without
    /// looking for Ctrl-C (that takes a store write and a moment). Errors are dropped: the
    /// caller sees why the wait ended.
    fn cancel_after_wait(&self, py: Python<'_>) {
        // Inside a codexpool callback the wait was refused before it began: nothing to undo.
        if tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        if let (Ok(task), Ok(rt)) = (self.cancel_task(), runtime()) {
            let _ = py.detach(|| rt.block_on(task));
        }
    }
}

impl Drop for LoginStart {
    fn drop(&mut self) {
        // Nobody can wait for this sign-in any more, but its listener would hold the port
        // until it expires. Without a listener the sign-in stays open, for `login_complete`
        // from anywhere (a web app keeps only the state between two requests).
        // In a forked child the listener is the parent's.
        if self.inner.listen_addr().is_some() && self.home.is_here() {
            let _ = self.cancel_task();
        }
    }
}

#[pymethods]
impl LoginStart {
    /// The authorize URL to open in a browser.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }
    /// The OAuth state, which also names the sign-in.
    #[getter]
    fn state(&self) -> &str {
        self.inner.state()
    }
    /// The redirect URI the issuer sends the browser to.
    #[getter]
    fn redirect_uri(&self) -> &str {
        self.inner.redirect_uri()
    }
    /// When the sign-in expires.
    #[getter]
    fn expires_at(&self) -> Time {
        Time(self.inner.expires_at())
    }
    /// `host:port` of the callback listener, when one was started.
    #[getter]
    fn listen_addr(&self) -> Option<String> {
        self.inner.listen_addr().map(|a| a.to_string())
    }
    /// Whether a browser was launched.
    #[getter]
    fn browser_opened(&self) -> bool {
        self.inner.browser_opened()
    }
    /// Waits until the sign-in completes (raises `AuthError` when it fails or is cancelled).
    /// When the wait itself ends first, by `Timeout` after `timeout` seconds or by Ctrl-C
    /// (`KeyboardInterrupt`), the sign-in is cancelled and its listener's port freed.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<LoginCompleted> {
        let limit = limit(py, timeout)?;
        let h = self.inner.clone();
        match wait_for(py, self.home, async move { h.wait().await }, limit) {
            Ok(ended) => ended.map(Into::into).or_raise(py),
            Err(gave_up) => {
                self.cancel_after_wait(py);
                Err(gave_up)
            }
        }
    }
    /// Cancels the sign-in; `False` when it had already ended. Returns once the callback
    /// listener has stopped (its port is free); a `wait` blocked in another thread raises
    /// `AuthError` at once.
    fn cancel(&self, py: Python<'_>) -> PyResult<bool> {
        let h = self.inner.clone();
        // Spawned, so that Ctrl-C (which only drops the waiting) cannot cut the cancel short.
        let cancel = async move { tokio::spawn(async move { h.cancel().await }).await };
        self.home
            .run(py, cancel)?
            .map_err(|e| CodexPoolError::new_err(format!("the cancel task failed: {e}")))?
            .or_raise(py)
    }
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    /// Cancels the sign-in unless it ended.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.cancel(py)?;
        Ok(false)
    }
    fn __repr__(&self) -> String {
        format!(
            "LoginStart(state={}, listen_addr={}, expires_at={})",
            quote(self.inner.state()),
            self.inner
                .listen_addr()
                .map_or_else(|| "None".to_string(), |a| quote(&a.to_string())),
            Time(self.inner.expires_at()),
        )
    }
}

/// A started device-code sign-in: show `verification_url` and `user_code`, then `wait()`.
#[pyclass(frozen, module = "codexpool")]
pub struct DeviceLogin {
    inner: auth::DeviceLogin,
    home: Home,
}

#[pymethods]
impl DeviceLogin {
    /// The page where the user types the code.
    #[getter]
    fn verification_url(&self) -> &str {
        &self.inner.verification_url
    }
    /// The code to type.
    #[getter]
    fn user_code(&self) -> &str {
        &self.inner.user_code
    }
    /// Seconds between polls.
    #[getter]
    fn interval_secs(&self) -> u64 {
        self.inner.interval_secs
    }
    /// The sign-in's name (for `login_status` / `login_cancel`).
    #[getter]
    fn state(&self) -> &str {
        &self.inner.state
    }
    /// When the code stops being polled.
    #[getter]
    fn expires_at(&self) -> Time {
        Time(self.inner.expires_at)
    }
    /// Polls until the user approved the code, then signs the account in.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<LoginCompleted> {
        let d = self.inner.clone();
        wait_login(py, self.home, async move { d.wait().await }, timeout)
    }
    fn __repr__(&self) -> String {
        format!(
            "DeviceLogin(verification_url={}, user_code={}, state={}, expires_at={})",
            quote(&self.inner.verification_url),
            quote(&self.inner.user_code),
            quote(&self.inner.state),
            Time(self.inner.expires_at),
        )
    }
}

/// The accounts of a pool (`pool.accounts`).
#[pyclass(frozen, module = "codexpool")]
pub struct AccountPool {
    inner: codexpool_core::AccountPool,
    auth: codexpool_core::Auth,
    home: Home,
}

impl AccountPool {
    pub(crate) fn new(pool: &codexpool_core::Pool, home: Home) -> Self {
        Self {
            inner: pool.accounts(),
            auth: pool.auth(),
            home,
        }
    }
}

fn filter(
    py: Python<'_>,
    group: Option<String>,
    tag: Option<String>,
    status: Option<&str>,
    text: Option<String>,
) -> PyResult<AccountFilter> {
    let mut f = AccountFilter::default();
    f.group = group;
    f.tag = tag;
    f.text = text;
    if let Some(s) = status {
        f.status = Some(s.parse::<AccountStatus>().or_raise(py)?);
    }
    Ok(f)
}

#[allow(clippy::too_many_arguments)]
fn login_options(
    label: Option<String>,
    group: Option<String>,
    tags: Option<Vec<String>>,
    note: Option<String>,
    workspace_id: Option<String>,
    listen: bool,
    open_browser: bool,
) -> LoginOptions {
    let mut o = LoginOptions::default()
        .listen(listen)
        .open_browser(open_browser);
    o.label = label;
    o.group = group;
    o.tags = tags.unwrap_or_default();
    o.note = note;
    o.allowed_workspace_id = workspace_id;
    o
}

#[pymethods]
impl AccountPool {
    /// Accounts matching every given filter, ordered by sort then label.
    #[pyo3(signature = (*, group=None, tag=None, status=None, text=None))]
    fn list(
        &self,
        py: Python<'_>,
        group: Option<String>,
        tag: Option<String>,
        status: Option<&str>,
        text: Option<String>,
    ) -> PyResult<Vec<Account>> {
        self.home.ensure()?;
        let f = filter(py, group, tag, status, text)?;
        Ok(self.inner.list(&f).into_iter().map(Into::into).collect())
    }

    /// One account by id or unique id prefix.
    fn get(&self, py: Python<'_>, id: &str) -> PyResult<Account> {
        self.home.ensure()?;
        self.inner.get(id).map(Into::into).or_raise(py)
    }

    fn __len__(&self) -> PyResult<usize> {
        self.home.ensure()?;
        Ok(self.inner.len())
    }

    /// Changes an account. Keywords: `label`, `group`, `tags`, `note`, `sort`; an omitted one is
    /// left as it is, `None` clears `group`, `note` and `tags`.
    #[pyo3(
        signature = (id, **changes),
        text_signature = "($self, id, *, label=..., group=..., tags=..., note=..., sort=...)"
    )]
    fn update(
        &self,
        py: Python<'_>,
        id: &str,
        changes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Account> {
        let mut p = AccountPatch::default();
        let accepted = ["label", "group", "tags", "note", "sort"];
        for (name, v) in keyword_changes("update", changes, &accepted)? {
            match name.as_str() {
                "label" => match v.extract::<Option<String>>()? {
                    Some(l) => p.label = Some(l),
                    None => return Err(invalid(py, "label", "must not be None")),
                },
                "group" => p.group = Some(v.extract()?),
                "tags" => p.tags = Some(v.extract::<Option<Vec<String>>>()?.unwrap_or_default()),
                "note" => p.note = Some(v.extract()?),
                _ => match v.extract::<Option<i64>>()? {
                    Some(s) => p.sort = Some(s),
                    None => return Err(invalid(py, "sort", "must not be None")),
                },
            }
        }
        let inner = self.inner.clone();
        let id = id.to_string();
        self.home
            .run(py, async move { inner.update(&id, p).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Sets many sort priorities at once (`{id: sort}`); all or nothing.
    fn set_sort_orders(
        &self,
        py: Python<'_>,
        orders: HashMap<String, i64>,
    ) -> PyResult<Vec<Account>> {
        let inner = self.inner.clone();
        let orders: Vec<(String, i64)> = orders.into_iter().collect();
        let out = self
            .home
            .run(py, async move { inner.set_sort_orders(&orders).await })?
            .or_raise(py)?;
        Ok(out.into_iter().map(Into::into).collect())
    }

    /// Deletes an account and its usage readings; returns it.
    fn remove(&self, py: Python<'_>, id: &str) -> PyResult<Account> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.remove(&id).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Turns an account on (clearing the status reason).
    fn enable(&self, py: Python<'_>, id: &str) -> PyResult<Account> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.enable(&id).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Turns an account off until a person enables it.
    fn disable(&self, py: Python<'_>, id: &str) -> PyResult<Account> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.disable(&id).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Requests in flight, cooldown and exhaustion of an account.
    fn runtime(&self, py: Python<'_>, id: &str) -> PyResult<AccountRuntime> {
        self.home.ensure()?;
        let r = self.inner.runtime(id).or_raise(py)?;
        Ok(AccountRuntime {
            inflight: r.inflight,
            cooldown_until: opt(r.cooldown_until),
            exhausted_until: opt(r.exhausted_until),
            usable: r.usable,
        })
    }

    /// Imports a Codex CLI `auth.json`, a codexpool export, or every such file in a folder
    /// (a leading `~` is the home directory). Results with a warning (a sign-in still shared
    /// with the Codex CLI) are also issued as `CodexPoolWarning`s. With `take_over`, each
    /// Codex CLI sign-in written is refreshed once, so codexpool holds the only live refresh
    /// token (that CLI must sign in again); a failed refresh does not stop the others: each
    /// such result has `take_over_error`, and then `AuthError` is raised naming the first.
    #[pyo3(signature = (path, *, take_over=false))]
    fn import_file(
        &self,
        py: Python<'_>,
        path: PathBuf,
        take_over: bool,
    ) -> PyResult<ImportReport> {
        let (inner, path) = (
            self.inner.clone(),
            codexpool_core::config::expand_home(path),
        );
        self.import(py, take_over, async move { inner.import_path(&path).await })
    }

    /// Imports the accounts in a document (`auth.json` or export) given as bytes (warnings
    /// and `take_over` as for `import_file`).
    #[pyo3(signature = (data, source="bytes", *, take_over=false))]
    fn import_bytes(
        &self,
        py: Python<'_>,
        data: &[u8],
        source: &str,
        take_over: bool,
    ) -> PyResult<ImportReport> {
        self.import_document(py, data.to_vec(), source, take_over)
    }

    /// Imports the accounts in a document given as text (warnings and `take_over` as for
    /// `import_file`).
    #[pyo3(signature = (text, source="text", *, take_over=false))]
    fn import_text(
        &self,
        py: Python<'_>,
        text: &str,
        source: &str,
        take_over: bool,
    ) -> PyResult<ImportReport> {
        self.import_document(py, text.as_bytes().to_vec(), source, take_over)
    }

    /// The accounts with their tokens, as codexpool's export document: a dict, or written to
    /// `path` (readable by the owner only; a leading `~` is the home directory) and the number
    /// of accounts returned.
    #[pyo3(signature = (path=None, *, group=None, tag=None, status=None, text=None))]
    fn export<'py>(
        &self,
        py: Python<'py>,
        path: Option<PathBuf>,
        group: Option<String>,
        tag: Option<String>,
        status: Option<&str>,
        text: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f = filter(py, group, tag, status, text)?;
        match path {
            Some(path) => {
                let (inner, path) = (
                    self.inner.clone(),
                    codexpool_core::config::expand_home(path),
                );
                let n = self
                    .home
                    .run(py, async move { inner.export_to_file(&path, &f).await })?
                    .or_raise(py)?;
                Ok(n.into_pyobject(py)?.into_any())
            }
            None => {
                // Memory in a forked child is a copy: its tokens may be spent since.
                self.home.ensure()?;
                let doc = serde_json::to_value(self.inner.export(&f))
                    .map_err(|e| invalid(py, "export", e))?;
                json::to_py(py, &doc)
            }
        }
    }

    /// Starts a browser sign-in (PKCE). With `listen`, a callback listener on `LOGIN_ADDR`
    /// finishes it; otherwise pass the redirect URL to `login_complete`.
    #[pyo3(signature = (*, label=None, group=None, tags=None, note=None, workspace_id=None, listen=true, open_browser=false))]
    #[allow(clippy::too_many_arguments)]
    fn login_start(
        &self,
        py: Python<'_>,
        label: Option<String>,
        group: Option<String>,
        tags: Option<Vec<String>>,
        note: Option<String>,
        workspace_id: Option<String>,
        listen: bool,
        open_browser: bool,
    ) -> PyResult<LoginStart> {
        let opts = login_options(label, group, tags, note, workspace_id, listen, open_browser);
        let auth = self.auth.clone();
        let inner = self
            .home
            .run(py, async move { auth.login_start(opts).await })?
            .or_raise(py)?;
        Ok(LoginStart {
            inner,
            home: self.home,
        })
    }

    /// Finishes a browser sign-in from the URL the browser was redirected to.
    fn login_complete(&self, py: Python<'_>, redirect_url: &str) -> PyResult<LoginCompleted> {
        let (auth, url) = (self.auth.clone(), redirect_url.to_string());
        self.home
            .run(py, async move { auth.login_complete(&url).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Where a sign-in (started by any process on this database) stands.
    fn login_status(&self, py: Python<'_>, state: &str) -> PyResult<LoginInfo> {
        let (auth, state) = (self.auth.clone(), state.to_string());
        self.home
            .run(py, async move { auth.login_status(&state).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Cancels a sign-in; `False` when it had already ended.
    fn login_cancel(&self, py: Python<'_>, state: &str) -> PyResult<bool> {
        let (auth, state) = (self.auth.clone(), state.to_string());
        self.home
            .run(py, async move { auth.login_cancel(&state).await })?
            .or_raise(py)
    }

    /// Waits for a sign-in started anywhere on this database.
    #[pyo3(signature = (state, timeout=None))]
    fn login_wait(
        &self,
        py: Python<'_>,
        state: &str,
        timeout: Option<f64>,
    ) -> PyResult<LoginCompleted> {
        let (auth, state) = (self.auth.clone(), state.to_string());
        wait_login(
            py,
            self.home,
            async move { auth.login_wait(&state).await },
            timeout,
        )
    }

    /// Starts a device-code sign-in.
    #[pyo3(signature = (*, label=None, group=None, tags=None, note=None, workspace_id=None))]
    fn device_start(
        &self,
        py: Python<'_>,
        label: Option<String>,
        group: Option<String>,
        tags: Option<Vec<String>>,
        note: Option<String>,
        workspace_id: Option<String>,
    ) -> PyResult<DeviceLogin> {
        let opts = login_options(label, group, tags, note, workspace_id, false, false);
        let auth = self.auth.clone();
        let inner = self
            .home
            .run(py, async move { auth.device_start(opts).await })?
            .or_raise(py)?;
        Ok(DeviceLogin {
            inner,
            home: self.home,
        })
    }

    fn __repr__(&self) -> String {
        self.home
            .repr("AccountPool", || format!("len={}", self.inner.len()))
    }
}

impl AccountPool {
    fn import_document(
        &self,
        py: Python<'_>,
        data: Vec<u8>,
        source: &str,
        take_over: bool,
    ) -> PyResult<ImportReport> {
        let (inner, source) = (self.inner.clone(), source.to_string());
        self.import(py, take_over, async move {
            Ok(inner.import_bytes(&source, &data).await)
        })
    }

    /// Runs an import, then the take-over when asked; the report (its warnings issued). A
    /// take-over that fails raises its error with the report as `report`: the import stands,
    /// one failed refresh stops no other, and each result says whether it was taken over.
    fn import(
        &self,
        py: Python<'_>,
        take_over: bool,
        import: impl Future<Output = codexpool_core::Result<codexpool_core::import::ImportReport>>
        + Send
        + 'static,
    ) -> PyResult<ImportReport> {
        let inner = self.inner.clone();
        let (report, failed) = self
            .home
            .run(py, async move {
                let mut report = import.await?;
                let failed = if take_over {
                    inner.take_over(&mut report).await.err()
                } else {
                    None
                };
                Ok::<_, codexpool_core::Error>((report, failed))
            })?
            .or_raise(py)?;
        let report = reported(py, report)?;
        match failed {
            None => Ok(report),
            Some(e) => {
                let err = core_error(py, e);
                err.value(py).setattr("report", Py::new(py, report)?)?;
                Err(err)
            }
        }
    }
}
