//! `codexpool-testkit`: [`FakeOpenAi`], one real HTTP server on `127.0.0.1` that plays
//! auth.openai.com (authorization code + PKCE, refresh-token rotation with reuse detection,
//! device code), chatgpt.com's usage endpoint, the Codex backend (SSE replies, `x-codex-*`
//! headers, scripted failures) and a plain OpenAI-compatible API, as described in the project's
//! PROTOCOL.md. Every protocol fact the project relies on is encoded here once.
//!
//! The server runs on its own tokio runtime in a background thread, so it is used the same way
//! from sync code, from `#[tokio::test]` (also with paused time) and from benchmarks. Every
//! scripting and inspection method is a plain `&self` call that can be made while it runs.
//! Dropping the handle (or [`FakeOpenAi::shutdown`]) stops it and joins the thread.
//!
//! ```
//! use codexpool_testkit::{FakeAccount, FakeOpenAi, FakeUsage, Reply};
//!
//! let fake = FakeOpenAi::start().unwrap();
//! let tokens = fake.add_account(FakeAccount::new("acct-1").plan("pro"));
//! fake.set_usage("acct-1", FakeUsage::new(25.0, 80.0));
//! fake.push_reply("acct-1", Reply::text("Hi there"));
//! fake.push_reply("acct-1", Reply::UsageLimit429 { resets_in_secs: 600 });
//!
//! // Point the code under test at the fake:
//! let issuer = fake.issuer();                 // http://127.0.0.1:PORT
//! let codex = fake.codex_base_url();          // http://127.0.0.1:PORT/backend-api/codex
//! let auth_json = fake.auth_json("acct-1");   // a Codex CLI ~/.codex/auth.json
//! assert_eq!(auth_json["tokens"]["access_token"], tokens.access_token.as_str());
//! # let _ = (issuer, codex);
//!
//! // … run it, then look at what it sent:
//! assert_eq!(fake.count("/backend-api/codex/responses"), 0);
//! ```
//!
//! # Endpoints
//!
//! | path | plays |
//! |---|---|
//! | `GET /oauth/authorize` | the browser sign-in: `302` to `redirect_uri?code=…&state=…` |
//! | `POST /oauth/token` | code exchange (form) and refresh (JSON) |
//! | `POST /api/accounts/deviceauth/usercode`, `…/token` | device-code sign-in |
//! | `GET /backend-api/wham/usage` | usage windows |
//! | `POST /backend-api/codex/responses` | the Codex backend (SSE); encrypted reasoning is bound to the account that made it (another account answers `400 invalid_encrypted_content`); nothing is stored (`store: false`), so an `item_reference` or a `reasoning` item with an `id` but no `encrypted_content` answers `404 Item with id '…' not found` |
//! | `POST /backend-api/codex/responses/compact` | history compaction, bound to accounts as `/responses` is; its summary names the account |
//! | `GET /backend-api/codex/models` | the model list |
//! | `POST /v1/chat/completions`, `POST /v1/responses`, `GET /v1/models` | a plain OpenAI API |
//!
//! # Binary
//!
//! `codexpool-fake` starts one from the command line and prints its URLs as one JSON line; see
//! the crate README.

mod auth;
mod codex;
mod instant;
mod jwt;
mod openai;
mod record;
mod reply;
mod responses;
mod server;
mod state;
mod stream;
mod usage;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use auth::{
    DEFAULT_CLIENT_ID, DeviceInterval, FakeAccount, FakeRefreshFailure, FakeTokens, pkce_challenge,
};
pub use codex::FakeModel;
pub use instant::{INSTANT_DELTAS, INSTANT_HOLD_PREFIX, INSTANT_MAX_HOLD_SECS, INSTANT_MODEL};
pub use jwt::{AUTH_CLAIM, PROFILE_CLAIM, decode_claims};
pub use record::{RecordedRequest, StreamStatus};
pub use reply::{FakeTokenUsage, OutputItem, Reply};
pub use usage::{FIVE_HOURS_MINUTES, FakeUsage, FakeWindow, WEEK_MINUTES};

use crate::server::Running;
use crate::state::{Config, Shared};

/// The default key of the plain OpenAI API mode.
pub const DEFAULT_OPENAI_API_KEY: &str = "sk-fake";

/// Options of a [`FakeOpenAi`]; [`FakeOpenAiBuilder::start`] binds and starts it.
#[derive(Debug, Clone)]
pub struct FakeOpenAiBuilder {
    addr: SocketAddr,
    worker_threads: usize,
    instant: bool,
    openai_api_key: String,
    client_id: String,
    strict_requests: bool,
    device_interval: DeviceInterval,
    models: Vec<FakeModel>,
    accounts: Vec<FakeAccount>,
}

impl Default for FakeOpenAiBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            worker_threads: 1,
            instant: false,
            openai_api_key: DEFAULT_OPENAI_API_KEY.to_owned(),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            strict_requests: true,
            device_interval: DeviceInterval::default(),
            models: FakeModel::defaults(),
            accounts: Vec::new(),
        }
    }
}

impl FakeOpenAiBuilder {
    /// Where to listen. Default `127.0.0.1:0` (a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Worker threads of the fake's own runtime. Default 1.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }

    /// Bench mode: the Codex `/responses`, `/v1/chat/completions` and `/v1/responses` endpoints
    /// answer pre-rendered bytes (a ~1 KB text in 20 deltas), accept any bearer token, ignore
    /// scripts and record nothing but counters; the model listings are not recorded either. A
    /// model named `instant-hold-<SECS>` ([`INSTANT_HOLD_PREFIX`]) holds a streamed answer open
    /// for `SECS` seconds halfway through. Default off.
    pub fn instant(mut self, on: bool) -> Self {
        self.instant = on;
        self
    }

    /// The API key the plain OpenAI mode (`/v1`) requires. Default `sk-fake`.
    pub fn openai_api_key(mut self, key: impl Into<String>) -> Self {
        self.openai_api_key = key.into();
        self
    }

    /// The OAuth client id the auth endpoints require. Default [`DEFAULT_CLIENT_ID`].
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Whether the Codex backend rejects requests the real one rejects, with 400
    /// `{"detail":…}`: bodies whose `stream` is not `true`, whose `store` is not `false` (a
    /// missing `store` means `true`), without a string `model`, whose `input` is not a list,
    /// without `instructions` (the Codex CLI's own requests may: they carry the prompt in
    /// `input`) or with an empty or non-string one, with a top-level field outside PROTOCOL.md
    /// §4's list (`Unsupported parameter: temperature`), with a `system` input message (the
    /// system prompt is `instructions`), asking for `json_object` output without the word
    /// "json" in an input message (as OpenAI's Responses API), or with a Chat Completions
    /// shape where a Responses one belongs (input parts of another role's kind, a
    /// `function_call` without `call_id`, `name` and `arguments`, a `function_call_output`
    /// answering no call of the same input, a function tool or `tool_choice` without its
    /// top-level `name`, a `json_schema` format without its `name` and `schema`); and requests
    /// without the headers of §4
    /// (`Accept: text/event-stream`, `originator`, `ChatGPT-Account-ID`, `session_id` or
    /// `session-id`, and `User-Agent`, `version` and `OpenAI-Beta: responses=experimental`
    /// unless a `x-codex-*` header marks the Codex CLI's own request), e.g. `Missing required header: version`. The issuer likewise takes the code
    /// exchange only as a form and a refresh only as JSON (§1). Default on.
    pub fn strict_requests(mut self, on: bool) -> Self {
        self.strict_requests = on;
        self
    }

    /// How the device-code endpoint sends `interval`. Default the string `"1"`.
    pub fn device_interval(mut self, interval: DeviceInterval) -> Self {
        self.device_interval = interval;
        self
    }

    /// The model list. Default [`FakeModel::defaults`].
    pub fn models(mut self, models: Vec<FakeModel>) -> Self {
        self.models = models;
        self
    }

    /// An account to add at start (same as [`FakeOpenAi::add_account`] afterwards).
    pub fn account(mut self, account: FakeAccount) -> Self {
        self.accounts.push(account);
        self
    }

    /// Binds the listener and starts the server thread; returns once it accepts connections.
    /// A bind error names the address.
    pub fn start(self) -> io::Result<FakeOpenAi> {
        let listener = TcpListener::bind(self.addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", self.addr))
        })?;
        let addr = listener.local_addr()?;
        let config = Config {
            origin: format!("http://{addr}"),
            client_id: self.client_id,
            openai_api_key: self.openai_api_key,
            instant: self.instant,
            strict: self.strict_requests,
        };
        let instant_bodies = self.instant.then(instant::InstantBodies::render);
        let shared = Arc::new(Shared::new(
            config,
            self.models,
            self.device_interval,
            instant_bodies,
        ));
        for account in self.accounts {
            let mut inner = shared.inner();
            if inner.index.contains_key(&account.id) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("account `{}` given twice", account.id),
                ));
            }
            inner.add_account(&shared, account);
        }
        let running = Running::spawn(
            listener,
            server::app(Arc::clone(&shared)),
            self.worker_threads,
        )?;
        Ok(FakeOpenAi {
            shared,
            addr,
            running,
        })
    }
}

/// The fake server. See the [crate documentation](crate).
///
/// Methods that name an account panic (with the id) when no such account was added: in a test
/// that is a bug worth a loud failure.
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Running,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("url", &self.url())
            .field("instant", &self.shared.config.instant)
            .finish()
    }
}

impl FakeOpenAi {
    /// Starts a fake with default options on a free port.
    pub fn start() -> io::Result<FakeOpenAi> {
        Self::builder().start()
    }

    /// Options.
    pub fn builder() -> FakeOpenAiBuilder {
        FakeOpenAiBuilder::default()
    }

    /// Stops the server and joins its thread (dropping does the same).
    pub fn shutdown(mut self) {
        self.running.stop();
    }

    // ----- addresses -------------------------------------------------------------------------

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.config.origin.clone()
    }

    /// The OAuth issuer (same origin): `/oauth/authorize`, `/oauth/token`,
    /// `/api/accounts/deviceauth/usercode`, `/api/accounts/deviceauth/token` live under it.
    pub fn issuer(&self) -> String {
        self.url()
    }

    /// The usage base URL (same origin); clients append `/backend-api/wham/usage`.
    pub fn usage_base_url(&self) -> String {
        self.url()
    }

    /// `{url}/backend-api/codex`; clients append `/responses`, `/models`.
    pub fn codex_base_url(&self) -> String {
        format!("{}/backend-api/codex", self.url())
    }

    /// `{url}/v1`, the plain OpenAI-compatible API.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// `{issuer}/codex/device`, the page a device-code sign-in tells the user to open.
    pub fn device_verification_url(&self) -> String {
        format!("{}/codex/device", self.url())
    }

    /// `{issuer}/deviceauth/callback`, the `redirect_uri` of a device-code exchange.
    pub fn device_redirect_uri(&self) -> String {
        format!("{}/deviceauth/callback", self.url())
    }

    /// The OAuth client id the fake requires.
    pub fn client_id(&self) -> &str {
        &self.shared.config.client_id
    }

    /// The key the plain OpenAI mode requires.
    pub fn openai_api_key(&self) -> &str {
        &self.shared.config.openai_api_key
    }

    // ----- accounts --------------------------------------------------------------------------

    /// Adds an account, signed in once; returns that sign-in's tokens.
    ///
    /// # Panics
    /// When an account with the same id exists.
    #[track_caller]
    pub fn add_account(&self, account: FakeAccount) -> FakeTokens {
        self.shared.inner().add_account(&self.shared, account)
    }

    /// The accounts, in the order they were added.
    pub fn accounts(&self) -> Vec<FakeAccount> {
        let inner = self.shared.inner();
        inner.accounts.iter().map(|a| a.account.clone()).collect()
    }

    /// Whether an account exists.
    pub fn has_account(&self, account_id: &str) -> bool {
        self.shared.inner().index.contains_key(account_id)
    }

    /// The current tokens of the account's newest sign-in (they change with each refresh).
    #[track_caller]
    pub fn current_tokens(&self, account_id: &str) -> FakeTokens {
        let inner = self.shared.inner();
        let s = inner.latest_session(account_id);
        FakeTokens {
            id_token: s.id_token.clone(),
            access_token: s.access_token.clone(),
            refresh_token: s.refresh_token.clone(),
        }
    }

    /// A Codex CLI `~/.codex/auth.json` (PROTOCOL.md §2) with the current tokens of the
    /// account's newest sign-in.
    #[track_caller]
    pub fn auth_json(&self, account_id: &str) -> serde_json::Value {
        self.shared.inner().auth_json(account_id)
    }

    /// The current access tokens of the account answer 401 (`token_expired`) until a refresh.
    #[track_caller]
    pub fn expire_access_token(&self, account_id: &str) {
        let mut inner = self.shared.inner();
        for s in &mut inner.account_mut(account_id).sessions {
            s.access_forced_expired = true;
        }
    }

    /// Every sign-in of the account is revoked: access tokens answer 401, refresh tokens answer
    /// `refresh_token_invalidated`. Only a new sign-in helps.
    #[track_caller]
    pub fn revoke_sessions(&self, account_id: &str) {
        let mut inner = self.shared.inner();
        for s in &mut inner.account_mut(account_id).sessions {
            s.revoked = true;
        }
    }

    // ----- sign-in ---------------------------------------------------------------------------

    /// The next `GET /oauth/authorize` signs in this account (else the first account added).
    #[track_caller]
    pub fn set_next_login(&self, account_id: &str) {
        let mut inner = self.shared.inner();
        inner.account_index(account_id);
        inner.next_login = Some(account_id.to_owned());
    }

    /// The next `GET /oauth/authorize` redirects with `?error=…&error_description=…&state=…`
    /// (e.g. `missing_codex_entitlement`).
    pub fn fail_next_authorize(&self, error: &str, description: &str) {
        self.shared.inner().authorize_failure = Some((error.to_owned(), description.to_owned()));
    }

    /// The query of the last `GET /oauth/authorize`, in order, percent-decoded.
    pub fn last_authorize_query(&self) -> Option<Vec<(String, String)>> {
        self.shared.inner().last_authorize_query.clone()
    }

    /// The next refresh of this account fails this way (one failure per call; they queue). The
    /// refresh token presented stays valid.
    #[track_caller]
    pub fn fail_next_refresh(&self, account_id: &str, failure: FakeRefreshFailure) {
        let mut inner = self.shared.inner();
        inner
            .account_mut(account_id)
            .refresh_failures
            .push_back(failure);
    }

    /// Every refresh waits this long before it is processed (to widen race windows). Default 0.
    /// A request takes the delay in force when its handling begins, a moment after it is
    /// recorded: wait for [`FakeOpenAi::refreshes_held`] before changing the delay under it.
    pub fn refresh_delay(&self, delay: Duration) {
        self.shared.inner().refresh_delay = delay;
    }

    /// Holds every usage answer back this long after its figures were read (they describe the
    /// moment it was asked, as the backend's do).
    pub fn usage_delay(&self, delay: Duration) {
        self.shared.inner().usage_delay = delay;
    }

    /// How many refresh requests have begun waiting out a [`FakeOpenAi::refresh_delay`].
    pub fn refreshes_held(&self) -> usize {
        self.shared.inner().refreshes_held
    }

    /// Whether refreshes rotate the refresh token (default `true`). When `false` a refresh
    /// answers without `refresh_token` and the old one stays valid (PROTOCOL.md §1 allows both).
    pub fn set_refresh_rotates(&self, rotates: bool) {
        self.shared.inner().refresh_rotates = rotates;
    }

    /// Whether refresh answers carry an `id_token` (default `true`; PROTOCOL.md §1 makes it
    /// optional). Without one, the sign-in's id token stays what it was.
    pub fn set_refresh_returns_id_token(&self, returns: bool) {
        self.shared.inner().refresh_id_token = returns;
    }

    /// Whether a usage-limit answer (a 429, a `response.failed`, the notice text) leaves the
    /// account's figures where they were (default `false`: they go to 100 % until the reset).
    /// PROTOCOL.md §3: the backend refuses before 100 % on some plans, and then only the
    /// refusal says the limit is reached, not the answer's `x-codex-*` headers nor the usage
    /// endpoint.
    pub fn set_limit_before_full(&self, on: bool) {
        self.shared.inner().limit_before_full = on;
    }

    /// Whether the Codex backend's event-stream frames carry an `event:` line before `data:`
    /// (default `true`). PROTOCOL.md §4 makes the line optional: the type is the JSON's `type`.
    pub fn set_event_lines(&self, on: bool) {
        self.shared.inner().event_lines = on;
    }

    /// The status a device code not yet approved is answered with: 403 (the default) or 404,
    /// both "pending" (PROTOCOL.md §1).
    pub fn set_device_pending_status(&self, status: u16) {
        self.shared.inner().device_pending_status = status;
    }

    /// How many refreshes were attempted for the account (failed ones included).
    #[track_caller]
    pub fn refresh_count(&self, account_id: &str) -> usize {
        let mut inner = self.shared.inner();
        inner.account_mut(account_id).refresh_count
    }

    /// How the device-code endpoint sends `interval` from now on.
    pub fn set_device_interval(&self, interval: DeviceInterval) {
        self.shared.inner().device_interval = interval;
    }

    /// Approves the device code `user_code` as `account_id`; `false` when no such code exists.
    #[track_caller]
    pub fn approve_device(&self, user_code: &str, account_id: &str) -> bool {
        let mut inner = self.shared.inner();
        let account = inner.account_index(account_id);
        let Some(device) = inner.devices.iter().position(|d| d.user_code == user_code) else {
            return false;
        };
        inner.approve_device(
            &self.shared.config.client_id,
            &self.shared.config.origin,
            device,
            account,
        );
        true
    }

    /// Approves the most recently issued device code; `false` when there is none.
    #[track_caller]
    pub fn approve_latest_device(&self, account_id: &str) -> bool {
        match self.latest_user_code() {
            Some(code) => self.approve_device(&code, account_id),
            None => false,
        }
    }

    /// From now on, a device code is approved as `account_id` on its `after_polls`-th poll.
    #[track_caller]
    pub fn auto_approve_device(&self, after_polls: u32, account_id: &str) {
        let mut inner = self.shared.inner();
        inner.account_index(account_id);
        inner.device_auto_approve = Some((after_polls.max(1), account_id.to_owned()));
    }

    /// The user code most recently issued.
    pub fn latest_user_code(&self) -> Option<String> {
        let inner = self.shared.inner();
        inner.devices.last().map(|d| d.user_code.clone())
    }

    // ----- usage -----------------------------------------------------------------------------

    /// Sets the account's usage (usage endpoint and `x-codex-*` headers).
    #[track_caller]
    pub fn set_usage(&self, account_id: &str, usage: FakeUsage) {
        self.shared.inner().account_mut(account_id).usage = usage;
    }

    /// The account's usage as the fake currently reports it.
    #[track_caller]
    pub fn usage(&self, account_id: &str) -> FakeUsage {
        let mut inner = self.shared.inner();
        let usage = &mut inner.account_mut(account_id).usage;
        usage.roll();
        usage.clone()
    }

    /// When `true`, the usage endpoint answers 200 with a Cloudflare HTML page for this account.
    #[track_caller]
    pub fn usage_challenge(&self, account_id: &str, on: bool) {
        self.shared.inner().account_mut(account_id).usage_challenge = on.then_some(200);
    }

    /// The usage endpoint answers `status` with a Cloudflare HTML page for this account (a 403
    /// with `cf-mitigated: challenge`, as Cloudflare's edge sends it); `None` ends it.
    #[track_caller]
    pub fn usage_challenge_status(&self, account_id: &str, status: Option<u16>) {
        self.shared.inner().account_mut(account_id).usage_challenge = status;
    }

    /// Forces the usage endpoint's status for this account (`None` = normal answers).
    #[track_caller]
    pub fn usage_status(&self, account_id: &str, status: Option<u16>) {
        self.shared.inner().account_mut(account_id).usage_status = status;
    }

    /// The account's next usage request (after authentication) answers `status` with a JSON
    /// `{"detail": …}` body, once; calls queue, one status per request, and take precedence
    /// over [`FakeOpenAi::usage_status`]. For "refresh once and retry" paths (401/403).
    #[track_caller]
    pub fn usage_status_once(&self, account_id: &str, status: u16) {
        self.shared
            .inner()
            .account_mut(account_id)
            .usage_status_once
            .push_back(status);
    }

    // ----- Codex backend ---------------------------------------------------------------------

    /// Queues a reply for the account's next Codex request (FIFO, one per request).
    #[track_caller]
    pub fn push_reply(&self, account_id: &str, reply: Reply) {
        self.shared
            .inner()
            .account_mut(account_id)
            .replies
            .push_back(reply);
    }

    /// Queues a reply for the account's next `/responses/compact` request: one that is not a
    /// stream (a 429, a status, a challenge, a 401); a compaction with nothing queued answers
    /// its summary.
    pub fn push_compact_reply(&self, account_id: &str, reply: Reply) {
        self.shared
            .inner()
            .account_mut(account_id)
            .compact_replies
            .push_back(reply);
    }

    /// Queues a reply for the next Codex request of ANY account whose own queue is empty.
    pub fn push_reply_any(&self, reply: Reply) {
        self.shared.inner().any_replies.push_back(reply);
    }

    /// The reply for the account when nothing is queued (`None` restores the fallbacks).
    #[track_caller]
    pub fn set_default_reply(&self, account_id: &str, reply: impl Into<Option<Reply>>) {
        self.shared.inner().account_mut(account_id).default_reply = reply.into();
    }

    /// The reply for every account without a queued reply or its own default (`None` restores
    /// the built-in one: `"Hello from <account id>."` in a few deltas, or, when the request's last
    /// input item is a `function_call_output`, `"The tool returned: <output>"`).
    pub fn set_global_default_reply(&self, reply: impl Into<Option<Reply>>) {
        self.shared.inner().global_default = reply.into();
    }

    /// Replies still queued for the account.
    #[track_caller]
    pub fn pending_replies(&self, account_id: &str) -> usize {
        self.shared.inner().account_mut(account_id).replies.len()
    }

    /// Replaces the model list (`/backend-api/codex/models` and `/v1/models`).
    pub fn set_models(&self, models: Vec<FakeModel>) {
        self.shared.inner().models = models;
    }

    /// Answers (Codex and `/v1` model calls) currently in flight: from the handler's start until
    /// the body is fully sent or dropped.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    /// The most Codex answers `account_id` ever had open at once: each counted from when its
    /// handler answers until its last byte is handed over (so inside the client's request,
    /// whatever the scheduling), or until it ended otherwise.
    pub fn peak_open_streams(&self, account_id: &str) -> usize {
        self.shared
            .account_streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(account_id)
            .map_or(0, |(_, peak)| *peak)
    }

    /// Answers whose client went away before the end (the upstream was cancelled).
    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled_streams.load(Ordering::SeqCst)
    }

    // ----- plain OpenAI API ------------------------------------------------------------------

    /// Queues a reply for the next `/v1/chat/completions` or `/v1/responses` request.
    pub fn push_openai_reply(&self, reply: Reply) {
        self.shared.inner().openai_replies.push_back(reply);
    }

    /// The `/v1` reply when nothing is queued (`None` restores the built-in
    /// "Hello from FakeOpenAi." / tool-result quote).
    pub fn set_openai_default_reply(&self, reply: impl Into<Option<Reply>>) {
        self.shared.inner().openai_default = reply.into();
    }

    // ----- inspection ------------------------------------------------------------------------

    /// Every recorded request, oldest first. (Instant mode records no hot-path requests.)
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.records().list.clone()
    }

    /// The recorded requests to `path` (no query), oldest first.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        let records = self.shared.records();
        records
            .list
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests `path` received (instant-mode hits included).
    pub fn count(&self, path: &str) -> usize {
        let recorded = {
            let records = self.shared.records();
            records.list.iter().filter(|r| r.path == path).count()
        };
        let instant = match path {
            "/backend-api/codex/responses" => &self.shared.instant_codex,
            "/v1/chat/completions" => &self.shared.instant_chat,
            "/v1/responses" => &self.shared.instant_responses,
            _ => return recorded,
        };
        recorded + instant.load(Ordering::Relaxed)
    }

    /// The newest request to `path`.
    pub fn last_request(&self, path: &str) -> Option<RecordedRequest> {
        let records = self.shared.records();
        records.list.iter().rev().find(|r| r.path == path).cloned()
    }

    /// Forgets the recorded requests and the instant-mode counters.
    pub fn clear_requests(&self) {
        self.shared.records().list.clear();
        self.shared.instant_codex.store(0, Ordering::Relaxed);
        self.shared.instant_chat.store(0, Ordering::Relaxed);
        self.shared.instant_responses.store(0, Ordering::Relaxed);
    }

    /// Blocks until `cond` holds or `timeout` passes (real time); whether it held. For sync
    /// tests; in async tests use [`FakeOpenAi::wait_until_async`], which does not block the
    /// runtime the code under test may need.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&FakeOpenAi) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `cond` holds or `timeout` passes (real time, also under tokio's paused
    /// time); whether it held. Re-checks whenever a request arrives or an answer ends.
    pub async fn wait_until_async(
        &self,
        timeout: Duration,
        cond: impl Fn(&FakeOpenAi) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // The timer only bounds a lost wake-up; real progress comes through `notified`.
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
}

/// Runs `then` on a thread of its own once stdin reaches EOF, when stdin is something a parent
/// holds open for us (a pipe or socket); a terminal or `/dev/null` is not watched, its EOF means
/// nothing. The testkit's binaries stop this way, so a parent that dies takes them with it.
pub fn on_stdin_eof(then: impl FnOnce() + Send + 'static) {
    use std::io::Read as _;
    if !stdin_is_a_lifeline() {
        return;
    }
    std::thread::spawn(move || {
        let mut sink = [0u8; 1024];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        then();
    });
}

fn stdin_is_a_lifeline() -> bool {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsFd as _;
        use std::os::unix::fs::FileTypeExt as _;
        let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
            return false;
        };
        let file = std::fs::File::from(fd);
        match file.metadata() {
            Ok(m) => m.file_type().is_fifo() || m.file_type().is_socket(),
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    {
        false
    }
}
