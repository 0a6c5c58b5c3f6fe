//! The browser sign-in (authorization code + PKCE, PROTOCOL.md §1): starting a login session
//! (state, verifier, the authorize URL, the optional callback listener and browser), completing
//! it from a callback or a pasted redirect URL (claim the session once, exchange the code, create
//! or update the account), and following, waiting for or cancelling it. The code exchange itself
//! is shared with the device-code flow.
//!
//! Sessions live in the store: any process on the same database can complete a login that
//! another started, and a session completes at most once.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::callback;
use super::client::{describe, excerpt};
use super::pkce::{Pkce, random_state};
use super::{Auth, AuthError, Claims, decode_claims};
use crate::account::{Account, Tokens, check_lengths, normalize_tags};
use crate::import::Candidate;
use crate::secret::Secret;
use crate::store::{LoginKind, LoginSession, LoginStatus};
use crate::time::Timestamp;

/// How long a login session can be completed.
pub const LOGIN_SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// The scope of the browser sign-in.
const SCOPE: &str = "openid profile email offline_access";
/// Sessions that expired longer ago than this are purged when a new one starts (younger ones are
/// kept so that a late callback is told "expired", not "unknown").
const PURGE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often a waiter re-reads a session that another process may complete.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How long a claimed session may stay claimed past its expiry before a waiter gives up (the
/// process exchanging the code died).
const CLAIM_GRACE: Duration = Duration::from_secs(120);

/// What to do with the account a login signs in, and how to run the login.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoginOptions {
    /// Label of the account (default: kept, or the email for a new account).
    pub label: Option<String>,
    /// Group to put the account in (default: kept / none).
    pub group: Option<String>,
    /// Tags to give the account (default: kept / none).
    pub tags: Vec<String>,
    /// Note for the account (default: kept / none).
    pub note: Option<String>,
    /// Pins the sign-in to this workspace (`allowed_workspace_id`). Default none.
    pub allowed_workspace_id: Option<String>,
    /// Try to open the authorize URL in a browser (`xdg-open`, `open`, `rundll32`); never fails
    /// when there is none. Default `false`.
    pub open_browser: bool,
    /// Start the callback listener on `LOGIN_ADDR`. Default `true`; turn it off when the
    /// redirect reaches another listener (a server's own `/auth/callback` route) or the user
    /// will paste the redirect URL.
    pub listen: bool,
}

impl Default for LoginOptions {
    fn default() -> Self {
        Self {
            label: None,
            group: None,
            tags: Vec::new(),
            note: None,
            allowed_workspace_id: None,
            open_browser: false,
            listen: true,
        }
    }
}

impl LoginOptions {
    /// Sets the label.
    pub fn label(mut self, v: impl Into<String>) -> Self {
        self.label = Some(v.into());
        self
    }
    /// Sets the group.
    pub fn group(mut self, v: impl Into<String>) -> Self {
        self.group = Some(v.into());
        self
    }
    /// Sets the tags.
    pub fn tags(mut self, v: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags = v.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the note.
    pub fn note(mut self, v: impl Into<String>) -> Self {
        self.note = Some(v.into());
        self
    }
    /// Pins the workspace.
    pub fn allowed_workspace_id(mut self, v: impl Into<String>) -> Self {
        self.allowed_workspace_id = Some(v.into());
        self
    }
    /// Whether to try to open a browser.
    pub fn open_browser(mut self, on: bool) -> Self {
        self.open_browser = on;
        self
    }
    /// Whether to start the callback listener.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// Trimmed, validated copies of the account fields.
    pub(crate) fn normalized(&self) -> Result<Meta, AuthError> {
        let clean = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let tags = normalize_tags(self.tags.clone()).map_err(AuthError::from_crate)?;
        let meta = Meta {
            label: clean(&self.label),
            group: clean(&self.group),
            tags,
            note: clean(&self.note),
        };
        check_lengths(
            meta.label.as_deref(),
            meta.group.as_deref(),
            meta.note.as_deref(),
        )
        .map_err(AuthError::from_crate)?;
        Ok(meta)
    }
}

/// The account fields of a login, normalized.
pub(crate) struct Meta {
    pub label: Option<String>,
    pub group: Option<String>,
    pub tags: Vec<String>,
    pub note: Option<String>,
}

/// A started browser sign-in: what to show the user.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LoginStart {
    /// The authorize URL to open in a browser.
    pub url: String,
    /// The OAuth `state`, which also names the login session.
    pub state: String,
    /// The redirect URI the issuer will send the browser to.
    pub redirect_uri: String,
    /// When the session expires.
    pub expires_at: Timestamp,
    /// Where the callback listener listens, when one was started.
    pub listen_addr: Option<SocketAddr>,
    /// Whether a browser was launched.
    pub browser_opened: bool,
}

/// A sign-in in progress, as returned by [`Auth::login_start`]. Dropping it does not stop the
/// login: the listener runs until the session completes, fails, is cancelled or expires.
#[derive(Debug, Clone)]
pub struct LoginHandle {
    info: LoginStart,
    auth: Auth,
    /// Turns `true` when the callback listener has stopped (its last page sent).
    listener_done: Option<tokio::sync::watch::Receiver<bool>>,
}

impl LoginHandle {
    /// The authorize URL.
    pub fn url(&self) -> &str {
        &self.info.url
    }
    /// The state (the session's name).
    pub fn state(&self) -> &str {
        &self.info.state
    }
    /// The redirect URI.
    pub fn redirect_uri(&self) -> &str {
        &self.info.redirect_uri
    }
    /// When the session expires.
    pub fn expires_at(&self) -> Timestamp {
        self.info.expires_at
    }
    /// The callback listener's address, when one was started.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.info.listen_addr
    }
    /// The callback listener's port, when one was started.
    pub fn port(&self) -> Option<u16> {
        self.info.listen_addr.map(|a| a.port())
    }
    /// Whether a browser was launched.
    pub fn browser_opened(&self) -> bool {
        self.info.browser_opened
    }
    /// Everything above, serializable.
    pub fn info(&self) -> &LoginStart {
        &self.info
    }
    /// Waits until the sign-in completes (here, through the listener, or in another process),
    /// fails, is cancelled or expires.
    ///
    /// With a callback listener, returns only once the listener has finished sending the
    /// browser its page, so a program may exit right after without cutting the page off.
    pub async fn wait(&self) -> Result<LoginCompleted, AuthError> {
        let result = self.auth.login_wait(&self.info.state).await;
        self.listener_stopped().await;
        result
    }
    /// Cancels the sign-in; `false` when it had already ended. Returns once the callback
    /// listener, if any, has stopped, so its address is free for the next sign-in.
    pub async fn cancel(&self) -> Result<bool, AuthError> {
        let cancelled = self.auth.login_cancel(&self.info.state).await?;
        self.listener_stopped().await;
        Ok(cancelled)
    }
    /// Waits (at most 5 s) until the callback listener has stopped, once the sign-in ended.
    async fn listener_stopped(&self) {
        if let Some(rx) = &self.listener_done {
            let mut rx = rx.clone();
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|done| *done)).await;
        }
    }
}

/// A finished sign-in.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LoginCompleted {
    /// The account created or updated.
    pub account: Account,
    /// Whether the account is new.
    pub created: bool,
}

/// Where a login session stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LoginInfo {
    /// The state.
    pub state: String,
    /// Browser or device.
    pub kind: LoginKind,
    /// Pending, claimed, completed, failed or cancelled.
    pub status: LoginStatus,
    /// When it started.
    pub created_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Still pending but past its expiry.
    pub expired: bool,
}

/// The parameters of a redirect back from the issuer.
#[derive(Debug, Default)]
pub(crate) struct RedirectParams {
    pub code: Option<Secret>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Reads `code`, `state`, `error` and `error_description` from a redirect URL as a user might
/// paste it: a full URL, one without scheme (`localhost:1455/auth/callback?…`), a path
/// (`/auth/callback?…`), or the bare query (`code=…&state=…`).
pub(crate) fn parse_redirect(input: &str) -> Result<RedirectParams, AuthError> {
    let invalid = |m: &str| AuthError::InvalidRedirect {
        message: m.to_string(),
    };
    let s = input
        .trim()
        .trim_matches(|c| matches!(c, '"' | '\'' | '<' | '>'))
        .trim();
    let s = s.split('#').next().unwrap_or_default();
    let query = match s.split_once('?') {
        Some((_, q)) => q,
        None if s.contains('=') && !s.contains('/') => s,
        None => {
            return Err(invalid(
                "it has no query; paste the whole address the browser was sent to \
                 (…/auth/callback?code=…&state=…)",
            ));
        }
    };
    let query = query.replace("&amp;", "&");
    let mut p = RedirectParams::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        match k.as_ref() {
            "code" if p.code.is_none() => p.code = Some(Secret::new(v)),
            "state" if p.state.is_none() => p.state = Some(v.to_string()),
            "error" if p.error.is_none() => p.error = Some(v.to_string()),
            "error_description" if p.error_description.is_none() => {
                p.error_description = Some(v.to_string())
            }
            _ => {}
        }
    }
    if p.state.is_none() {
        return Err(invalid("it has no state parameter"));
    }
    if p.code.is_none() && p.error.is_none() {
        return Err(invalid("it has neither a code nor an error parameter"));
    }
    Ok(p)
}

/// Percent-encodes everything but the RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The tokens and identity a code exchange yields.
pub(crate) struct SignedIn {
    pub tokens: Tokens,
    pub claims: Claims,
    pub chatgpt_account_id: String,
}

/// `(error code, message)` of an OAuth or OpenAI error body: `{"error": "…",
/// "error_description": "…"}` or `{"error": {"code"|"type": "…", "message": "…"}}`.
pub(crate) fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match v.get("error") {
        Some(Value::String(code)) => (Some(code.clone()), s(v.get("error_description"))),
        Some(Value::Object(o)) => (
            s(o.get("code")).or_else(|| s(o.get("type"))),
            s(o.get("message")),
        ),
        _ => (None, s(v.get("detail")).or_else(|| s(v.get("message")))),
    }
}

/// Tries to open `url` in a browser; whether a launcher started.
fn open_browser(url: &str) -> bool {
    use std::process::{Command, Stdio};
    let mut cmd = if cfg!(target_os = "macos") {
        let mut c = Command::new("open");
        c.arg(url);
        c
    } else if cfg!(windows) {
        // `cmd /c start` would read `&` in the URL as a command separator.
        let mut c = Command::new("rundll32");
        c.arg("url.dll,FileProtocolHandler").arg(url);
        c
    } else {
        let mut c = Command::new("xdg-open");
        c.arg(url);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(mut child) => {
            // Reap it whenever it ends, without making the caller wait.
            std::thread::spawn(move || child.wait());
            true
        }
        Err(_) => false,
    }
}

/// Whether `host` (of LOGIN_ADDR or a URL) is a loopback name or address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Auth {
    /// Starts a browser sign-in: stores a login session (state, PKCE verifier, redirect URI and
    /// the account fields of `opts`), starts the callback listener on `LOGIN_ADDR` when
    /// `opts.listen` (loopback only unless `ALLOW_NON_LOOPBACK_LOGIN_ADDR`; with port 0 a free
    /// port is taken and a loopback `REDIRECT_URI` follows it), tries a browser when
    /// `opts.open_browser`, and returns the authorize URL either way.
    pub async fn login_start(&self, opts: LoginOptions) -> Result<LoginHandle, AuthError> {
        let meta = opts.normalized()?;
        let config = self.config().clone();
        let mut redirect_uri = config.redirect_uri.clone();
        let listener = if opts.listen {
            let (listener, addr) = match callback::bind(&config).await {
                // Held by this process's listener of a sign-in that just ended (cancelled in the
                // background when its handle or its `wait` was dropped): free once it stops.
                Err(AuthError::AddrInUse { .. }) if self.ended_listeners_stopped().await => {
                    callback::bind(&config).await?
                }
                other => other?,
            };
            if config.login_addr.ends_with(":0")
                && let Ok(mut u) = url::Url::parse(&redirect_uri)
                && u.host_str().is_some_and(is_loopback_host)
                && u.set_port(Some(addr.port())).is_ok()
            {
                redirect_uri = u.to_string();
            }
            Some((listener, addr))
        } else {
            None
        };
        let now = self.now();
        let store = &self.pool.shared.store;
        if let Err(e) = store.purge_login_sessions(now.minus(PURGE_AFTER)).await {
            tracing::debug!(error = %e, "could not purge old login sessions");
        }
        let pkce = Pkce::generate();
        let state = random_state();
        let session = LoginSession {
            state: state.clone(),
            kind: LoginKind::Browser,
            code_verifier: pkce.verifier.clone(),
            redirect_uri: redirect_uri.clone(),
            label: meta.label,
            group: meta.group,
            tags: meta.tags,
            note: meta.note,
            created_at: now,
            expires_at: now.plus(LOGIN_SESSION_TTL),
            status: LoginStatus::Pending,
        };
        store.insert_login_session(&session).await?;
        let mut url = format!(
            "{}/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&scope={}\
             &code_challenge={}&code_challenge_method=S256&id_token_add_organizations=true\
             &codex_cli_simplified_flow=true&state={}&originator={}",
            config.issuer,
            encode(&config.client_id),
            encode(&redirect_uri),
            encode(SCOPE),
            encode(&pkce.challenge),
            encode(&state),
            encode(&config.originator),
        );
        if let Some(ws) = opts
            .allowed_workspace_id
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            url.push_str("&allowed_workspace_id=");
            url.push_str(&encode(ws));
        }
        let mut listener_done = None;
        let listen_addr = listener.map(|(listener, addr)| {
            let path = url::Url::parse(&redirect_uri)
                .map(|u| u.path().to_string())
                .unwrap_or_else(|_| "/auth/callback".into());
            let done = callback::spawn(self.clone(), listener, state.clone(), path);
            self.running_listeners().push((state.clone(), done.clone()));
            listener_done = Some(done);
            addr
        });
        let browser_opened = opts.open_browser && open_browser(&url);
        Ok(LoginHandle {
            info: LoginStart {
                url,
                state,
                redirect_uri,
                expires_at: session.expires_at,
                listen_addr,
                browser_opened,
            },
            auth: self.clone(),
            listener_done,
        })
    }

    /// This process's callback listeners that have not stopped (the stopped ones are let go).
    fn running_listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(String, tokio::sync::watch::Receiver<bool>)>> {
        let mut listeners = crate::sync::lock(&self.pool.shared.auth.listeners);
        listeners.retain(|(_, done)| !*done.borrow());
        listeners
    }

    /// Waits (at most 5 s each) for this process's callback listeners whose sign-in has ended
    /// but which have not stopped yet; `true` when there was one.
    async fn ended_listeners_stopped(&self) -> bool {
        let running = self.running_listeners().clone();
        let mut waited = false;
        for (state, mut done) in running {
            if callback::login_ended(self, &state).await {
                waited = true;
                let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
            }
        }
        waited
    }

    /// Completes a browser sign-in from the redirect URL (full, without scheme, path only, or
    /// the bare query): claims the session (at most once, across processes), exchanges the code
    /// with the session's verifier and redirect URI, and creates or updates the account with the
    /// session's label, group, tags and note. An `error=` redirect or a failed exchange marks the
    /// session failed and stores no account.
    pub async fn login_complete(&self, redirect_url: &str) -> Result<LoginCompleted, AuthError> {
        let params = parse_redirect(redirect_url)?;
        self.complete_params(params).await
    }

    /// Completes from parsed parameters. The work runs in its own task, so a caller that goes
    /// away (a closed browser tab, a cancelled request) cannot leave a claimed session or an
    /// exchanged code half-done.
    pub(crate) async fn complete_params(
        &self,
        p: RedirectParams,
    ) -> Result<LoginCompleted, AuthError> {
        let auth = self.clone();
        tokio::spawn(async move { auth.complete_params_inner(p).await })
            .await
            .unwrap_or_else(|e| {
                Err(AuthError::transient(format!(
                    "the sign-in task failed: {e}"
                )))
            })
    }

    async fn complete_params_inner(&self, p: RedirectParams) -> Result<LoginCompleted, AuthError> {
        let store = &self.pool.shared.store;
        let state = p.state.clone().unwrap_or_default();
        match store.get_login_session(&state).await? {
            Some(s) if s.kind == LoginKind::Browser => {}
            _ => return Err(AuthError::UnknownState),
        }
        let Some(session) = store.claim_login_session(&state, self.now()).await? else {
            return Err(self.why_unclaimable(&state).await);
        };
        self.login_changed();
        if let Some(error) = p.error {
            let e = if error == "missing_codex_entitlement" {
                AuthError::MissingEntitlement
            } else {
                AuthError::Denied {
                    error,
                    description: p.error_description,
                }
            };
            return Err(self.fail_session(&state, e).await);
        }
        let Some(code) = p.code else {
            let e = AuthError::InvalidRedirect {
                message: "it has neither a code nor an error parameter".into(),
            };
            return Err(self.fail_session(&state, e).await);
        };
        let signed_in = match self
            .exchange_code(
                code.expose(),
                &session.redirect_uri,
                session.code_verifier.expose(),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return Err(self.fail_session(&state, e).await),
        };
        self.finish_signin(&session, signed_in).await
    }

    /// Why a session could not be claimed.
    pub(crate) async fn why_unclaimable(&self, state: &str) -> AuthError {
        match self.pool.shared.store.get_login_session(state).await {
            Err(e) => e.into(),
            Ok(None) => AuthError::UnknownState,
            Ok(Some(s)) => match s.status {
                LoginStatus::Pending => AuthError::Expired,
                LoginStatus::Claimed => AuthError::AlreadyCompleted { account_id: None },
                LoginStatus::Completed { account_id } => AuthError::AlreadyCompleted {
                    account_id: Some(account_id),
                },
                LoginStatus::Failed { error } => AuthError::LoginFailed { message: error },
                LoginStatus::Cancelled => AuthError::Cancelled,
            },
        }
    }

    /// Marks a claimed session failed with `e`'s message; returns `e`.
    pub(crate) async fn fail_session(&self, state: &str, e: AuthError) -> AuthError {
        let status = LoginStatus::Failed {
            error: e.to_string(),
        };
        if let Err(se) = self
            .pool
            .shared
            .store
            .set_login_status(state, &status)
            .await
        {
            tracing::warn!(error = %se, "could not record the failed sign-in");
        }
        self.login_changed();
        e
    }

    pub(crate) fn login_changed(&self) {
        self.pool.shared.auth.login_changed.notify_waiters();
    }

    /// Creates or updates the account of a claimed session and marks it completed.
    pub(crate) async fn finish_signin(
        &self,
        session: &LoginSession,
        s: SignedIn,
    ) -> Result<LoginCompleted, AuthError> {
        let c = Candidate {
            tokens: s.tokens,
            claims: s.claims,
            chatgpt_account_id: s.chatgpt_account_id,
            label: session.label.clone(),
            group: session.group.clone(),
            tags: session.tags.clone(),
            note: session.note.clone(),
            sort: None,
            status: None,
            from_codex_cli: false,
        };
        let (account, created) = match self.pool.accounts().upsert_signin(c, true).await {
            Ok(r) => r,
            Err(e) => {
                return Err(self
                    .fail_session(&session.state, AuthError::from_crate(e))
                    .await);
            }
        };
        {
            let mut map = crate::sync::lock(&self.pool.shared.auth.created);
            if map.len() >= 1024 {
                map.clear();
            }
            map.insert(session.state.clone(), created);
        }
        let status = LoginStatus::Completed {
            account_id: account.id.clone(),
        };
        if let Err(e) = self
            .pool
            .shared
            .store
            .set_login_status(&session.state, &status)
            .await
        {
            tracing::warn!(error = %e, "could not record the completed sign-in");
        }
        self.login_changed();
        tracing::info!(account = %account.id, created, "signed in");
        Ok(LoginCompleted { account, created })
    }

    /// The code exchange: `POST {issuer}/oauth/token` (form) → the three tokens and the claims.
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<SignedIn, AuthError> {
        let config = self.config();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", &config.client_id)
            .append_pair("code_verifier", verifier)
            .finish();
        let exchange =
            |status: Option<u16>, message: String| AuthError::Exchange { status, message };
        let resp = self
            .http()?
            .post(format!("{}/oauth/token", config.issuer))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| exchange(None, describe(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| exchange(Some(status), describe(&e)))?;
        if !(200..300).contains(&status) {
            let (code, message) = error_fields(&bytes);
            if code.as_deref() == Some("missing_codex_entitlement") {
                return Err(AuthError::MissingEntitlement);
            }
            let message = match (code, message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c,
                (None, Some(m)) => m,
                (None, None) => excerpt(&bytes),
            };
            return Err(exchange(Some(status), message));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| exchange(Some(status), "the answer is not JSON".into()))?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| exchange(Some(status), format!("the answer has no {name}")))
        };
        let (id_token, access_token, refresh_token) = (
            field("id_token")?,
            field("access_token")?,
            field("refresh_token")?,
        );
        self.signed_in(id_token, access_token, refresh_token)
            .map_err(|m| exchange(Some(status), m))
    }

    /// Reads the identity from fresh tokens.
    fn signed_in(
        &self,
        id_token: String,
        access_token: String,
        refresh_token: String,
    ) -> Result<SignedIn, String> {
        let mut claims =
            decode_claims(&id_token).map_err(|e| format!("the id token is unreadable: {e}"))?;
        let access = decode_claims(&access_token).ok();
        let chatgpt_account_id = claims
            .chatgpt_account_id
            .clone()
            .or_else(|| access.as_ref().and_then(|a| a.chatgpt_account_id.clone()))
            .ok_or("the tokens name no ChatGPT account (no chatgpt_account_id claim)")?;
        if claims.user_id().is_none()
            && let Some(a) = &access
        {
            claims.chatgpt_user_id = a.user_id().map(str::to_string);
        }
        Ok(SignedIn {
            tokens: Tokens {
                id_token: Secret::new(id_token),
                access_token: Secret::new(access_token),
                refresh_token: Secret::new(refresh_token),
                expires_at: access.and_then(|a| a.expires_at).or(claims.expires_at),
                last_refresh: Some(self.now()),
            },
            claims,
            chatgpt_account_id,
        })
    }

    /// Where a login session stands.
    pub async fn login_status(&self, state: &str) -> Result<LoginInfo, AuthError> {
        let s = self
            .pool
            .shared
            .store
            .get_login_session(state)
            .await?
            .ok_or(AuthError::UnknownState)?;
        Ok(LoginInfo {
            expired: s.status == LoginStatus::Pending && self.now() >= s.expires_at,
            state: s.state,
            kind: s.kind,
            status: s.status,
            created_at: s.created_at,
            expires_at: s.expires_at,
        })
    }

    /// Cancels a pending sign-in (browser or device); `false` when it had already ended.
    pub async fn login_cancel(&self, state: &str) -> Result<bool, AuthError> {
        let store = &self.pool.shared.store;
        if store
            .claim_login_session(state, self.now())
            .await?
            .is_some()
        {
            store
                .set_login_status(state, &LoginStatus::Cancelled)
                .await?;
            self.login_changed();
            return Ok(true);
        }
        match self.why_unclaimable(state).await {
            AuthError::UnknownState => Err(AuthError::UnknownState),
            AuthError::Store { message } => Err(AuthError::Store { message }),
            _ => Ok(false),
        }
    }

    /// Waits until a sign-in (started here or elsewhere) completes, fails, is cancelled or
    /// expires. Sees completions by other processes within a quarter second.
    pub async fn login_wait(&self, state: &str) -> Result<LoginCompleted, AuthError> {
        let notify = &self.pool.shared.auth.login_changed;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let s = self
                .pool
                .shared
                .store
                .get_login_session(state)
                .await?
                .ok_or(AuthError::UnknownState)?;
            let now = self.now();
            match s.status {
                LoginStatus::Completed { account_id } => {
                    let here = crate::sync::lock(&self.pool.shared.auth.created)
                        .get(state)
                        .copied();
                    // Completed by another process: what it wrote (an account this process
                    // holds already has the sign-in's label, group, … only in the store).
                    if here.is_none() {
                        self.pool.reload().await.map_err(AuthError::from_crate)?;
                    }
                    let account = self.account_from_store(&account_id).await?;
                    // Known when completed here; else: an account younger than the login.
                    let created = here.unwrap_or(account.created_at >= s.created_at);
                    return Ok(LoginCompleted { account, created });
                }
                LoginStatus::Failed { error } => {
                    return Err(AuthError::LoginFailed { message: error });
                }
                LoginStatus::Cancelled => return Err(AuthError::Cancelled),
                LoginStatus::Pending if now >= s.expires_at => {
                    return Err(match s.kind {
                        LoginKind::Browser => AuthError::Expired,
                        LoginKind::Device => AuthError::DeviceExpired,
                    });
                }
                LoginStatus::Claimed if now >= s.expires_at.plus(CLAIM_GRACE) => {
                    return Err(AuthError::Expired);
                }
                LoginStatus::Pending | LoginStatus::Claimed => {}
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(WAIT_POLL) => {}
            }
        }
    }

    /// An account, re-reading the store when another process added it.
    pub(crate) async fn account_from_store(&self, id: &str) -> Result<Account, AuthError> {
        if let Ok(a) = self.pool.accounts().get(id) {
            return Ok(a);
        }
        self.pool.reload().await.map_err(AuthError::from_crate)?;
        self.pool
            .accounts()
            .get(id)
            .map_err(|_| AuthError::UnknownAccount { id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_rfc3986() {
        assert_eq!(encode("openid profile"), "openid%20profile");
        assert_eq!(
            encode("http://localhost:1455/auth/callback"),
            "http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback"
        );
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
    }

    #[test]
    fn parses_pasted_redirects() {
        for input in [
            "http://localhost:1455/auth/callback?code=c1&state=s1",
            "  localhost:1455/auth/callback?code=c1&state=s1 ",
            "/auth/callback?code=c1&state=s1#frag",
            "?code=c1&state=s1",
            "code=c1&state=s1",
            "\"http://localhost:1455/auth/callback?code=c1&amp;state=s1\"",
        ] {
            let p = parse_redirect(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.code.as_ref().map(Secret::expose), Some("c1"), "{input}");
            assert_eq!(p.state.as_deref(), Some("s1"), "{input}");
        }
        let p = parse_redirect("x?error=access_denied&error_description=no+way&state=s").unwrap();
        assert_eq!(p.error.as_deref(), Some("access_denied"));
        assert_eq!(p.error_description.as_deref(), Some("no way"));
        assert!(parse_redirect("http://localhost:1455/auth/callback").is_err());
        assert!(parse_redirect("?code=c1").is_err());
        assert!(parse_redirect("?state=s").is_err());
        assert!(parse_redirect("").is_err());
    }

    #[test]
    fn reads_error_bodies() {
        assert_eq!(
            error_fields(br#"{"error":"invalid_grant","error_description":"bad"}"#),
            (Some("invalid_grant".into()), Some("bad".into()))
        );
        assert_eq!(
            error_fields(br#"{"error":{"code":"refresh_token_reused","message":"m"}}"#),
            (Some("refresh_token_reused".into()), Some("m".into()))
        );
        assert_eq!(error_fields(b"<html>"), (None, None));
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "127.0.0.1", "[::1]", "::1", "127.8.0.1"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["0.0.0.0", "example.com", "192.168.1.2", "[::]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
