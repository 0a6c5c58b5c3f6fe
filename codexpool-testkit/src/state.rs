//! The shared state of one running fake: the configuration fixed at start, the scriptable world
//! (accounts, their sign-in sessions, usage, queued replies, pending codes) behind one mutex, the
//! request log behind another, and the lock-free counters the hot paths touch. Handlers and the
//! public scripting methods both go through [`Shared`]; no lock is ever held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::auth::{DeviceInterval, FakeAccount, FakeRefreshFailure};
use crate::codex::FakeModel;
use crate::instant::InstantBodies;
use crate::record::{RecordedRequest, StreamStatus};
use crate::reply::Reply;
use crate::usage::FakeUsage;

/// What is fixed when the server starts.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `http://127.0.0.1:PORT`, the origin every endpoint lives under.
    pub(crate) origin: String,
    pub(crate) client_id: String,
    pub(crate) openai_api_key: String,
    pub(crate) instant: bool,
    pub(crate) strict: bool,
}

/// Everything one server shares between its handlers and its [`crate::FakeOpenAi`] handle.
pub(crate) struct Shared {
    pub(crate) config: Config,
    inner: Mutex<Inner>,
    records: Mutex<Records>,
    pub(crate) open_streams: AtomicUsize,
    /// Per account: Codex answers open now, and the most ever open at once.
    pub(crate) account_streams: Mutex<HashMap<String, (usize, usize)>>,
    pub(crate) cancelled_streams: AtomicUsize,
    pub(crate) instant_codex: AtomicUsize,
    pub(crate) instant_chat: AtomicUsize,
    pub(crate) instant_responses: AtomicUsize,
    counter: AtomicU64,
    pub(crate) notify: Notify,
    pub(crate) instant_bodies: Option<InstantBodies>,
}

/// The request log.
#[derive(Default)]
pub(crate) struct Records {
    next_seq: u64,
    pub(crate) list: Vec<RecordedRequest>,
}

/// One sign-in session of an account: what a client holds after a code exchange (or the initial
/// tokens of [`crate::FakeOpenAi::add_account`]), rotated in place by each refresh.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id_token: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    pub(crate) access_exp: i64,
    pub(crate) issued_at: SystemTime,
    /// Set by `expire_access_token`; cleared by the next refresh.
    pub(crate) access_forced_expired: bool,
    /// Set by `revoke_sessions`: nothing of this session works any more.
    pub(crate) revoked: bool,
    /// Set when a refresh token of this session was reused: its refresh token family is dead.
    pub(crate) refresh_revoked: bool,
}

/// One account and everything scripted for it.
pub(crate) struct AccountState {
    pub(crate) account: FakeAccount,
    pub(crate) sessions: Vec<Session>,
    pub(crate) usage: FakeUsage,
    /// The status of the usage endpoint's Cloudflare challenge page (`None`: no challenge).
    pub(crate) usage_challenge: Option<u16>,
    pub(crate) usage_status: Option<u16>,
    /// One-shot statuses for the next usage requests, taken before `usage_status`.
    pub(crate) usage_status_once: VecDeque<u16>,
    pub(crate) replies: VecDeque<Reply>,
    /// Replies for the next `/responses/compact` requests (errors: see `codex::compact`).
    pub(crate) compact_replies: VecDeque<Reply>,
    pub(crate) default_reply: Option<Reply>,
    pub(crate) refresh_failures: VecDeque<FakeRefreshFailure>,
    pub(crate) refresh_count: usize,
}

/// Where an issued access token belongs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenRef {
    pub(crate) account: usize,
    pub(crate) session: usize,
}

/// An issued refresh token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshEntry {
    pub(crate) at: TokenRef,
    pub(crate) used: bool,
}

/// An authorization code waiting for its exchange.
#[derive(Debug, Clone)]
pub(crate) struct PendingCode {
    pub(crate) challenge: String,
    pub(crate) redirect_uri: String,
    pub(crate) client_id: String,
    pub(crate) account: usize,
    pub(crate) issued: SystemTime,
    pub(crate) used: bool,
}

/// A device-code sign-in in progress.
#[derive(Debug, Clone)]
pub(crate) struct DeviceCode {
    pub(crate) device_auth_id: String,
    pub(crate) user_code: String,
    pub(crate) polls: u32,
    pub(crate) approved: Option<DeviceApproval>,
}

/// What the device-token endpoint answers once a device code is approved.
#[derive(Debug, Clone)]
pub(crate) struct DeviceApproval {
    pub(crate) authorization_code: String,
    pub(crate) code_verifier: String,
    pub(crate) code_challenge: String,
}

/// The scriptable world.
pub(crate) struct Inner {
    pub(crate) accounts: Vec<AccountState>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) access_index: HashMap<String, TokenRef>,
    pub(crate) refresh_index: HashMap<String, RefreshEntry>,
    pub(crate) codes: HashMap<String, PendingCode>,
    pub(crate) devices: Vec<DeviceCode>,
    pub(crate) next_login: Option<String>,
    pub(crate) authorize_failure: Option<(String, String)>,
    pub(crate) last_authorize_query: Option<Vec<(String, String)>>,
    pub(crate) device_interval: DeviceInterval,
    pub(crate) device_auto_approve: Option<(u32, String)>,
    /// How a code not yet approved is answered: 403 or 404 (PROTOCOL.md §1 names both).
    pub(crate) device_pending_status: u16,
    pub(crate) refresh_delay: Duration,
    /// How long a usage answer takes to arrive, once its figures are read.
    pub(crate) usage_delay: Duration,
    /// Refresh requests that began waiting out `refresh_delay`.
    pub(crate) refreshes_held: usize,
    pub(crate) refresh_rotates: bool,
    pub(crate) refresh_id_token: bool,
    /// Whether the Codex backend's SSE frames carry `event:` lines.
    pub(crate) event_lines: bool,
    /// Whether a usage-limit answer leaves the account's figures where they were.
    pub(crate) limit_before_full: bool,
    pub(crate) any_replies: VecDeque<Reply>,
    pub(crate) global_default: Option<Reply>,
    pub(crate) openai_replies: VecDeque<Reply>,
    pub(crate) openai_default: Option<Reply>,
    pub(crate) models: Vec<FakeModel>,
    /// Input tokens last seen per (account, prompt cache key), to report cached tokens.
    pub(crate) prompt_cache: HashMap<(String, String), u64>,
}

impl Inner {
    fn new(models: Vec<FakeModel>, device_interval: DeviceInterval) -> Self {
        Self {
            accounts: Vec::new(),
            index: HashMap::new(),
            access_index: HashMap::new(),
            refresh_index: HashMap::new(),
            codes: HashMap::new(),
            devices: Vec::new(),
            next_login: None,
            authorize_failure: None,
            last_authorize_query: None,
            device_interval,
            device_auto_approve: None,
            device_pending_status: 403,
            refresh_delay: Duration::ZERO,
            usage_delay: Duration::ZERO,
            refreshes_held: 0,
            refresh_rotates: true,
            refresh_id_token: true,
            event_lines: true,
            limit_before_full: false,
            any_replies: VecDeque::new(),
            global_default: None,
            openai_replies: VecDeque::new(),
            openai_default: None,
            models,
            prompt_cache: HashMap::new(),
        }
    }

    /// The index of an account.
    ///
    /// # Panics
    /// When no account has that id: scripting an account that was never added is a bug in the
    /// test, and the panic names it.
    #[track_caller]
    pub(crate) fn account_index(&self, account_id: &str) -> usize {
        match self.index.get(account_id) {
            Some(i) => *i,
            None => panic!(
                "FakeOpenAi: unknown account `{account_id}` (add it with FakeOpenAi::add_account first)"
            ),
        }
    }

    /// The state of an account, see [`Inner::account_index`].
    #[track_caller]
    pub(crate) fn account_mut(&mut self, account_id: &str) -> &mut AccountState {
        let i = self.account_index(account_id);
        &mut self.accounts[i]
    }
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        models: Vec<FakeModel>,
        device_interval: DeviceInterval,
        instant_bodies: Option<InstantBodies>,
    ) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::new(models, device_interval)),
            records: Mutex::new(Records::default()),
            open_streams: AtomicUsize::new(0),
            account_streams: Mutex::new(HashMap::new()),
            cancelled_streams: AtomicUsize::new(0),
            instant_codex: AtomicUsize::new(0),
            instant_chat: AtomicUsize::new(0),
            instant_responses: AtomicUsize::new(0),
            counter: AtomicU64::new(1),
            notify: Notify::new(),
            instant_bodies,
        }
    }

    /// Locks the world. A panic in another holder does not poison the fake for later tests.
    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the request log.
    pub(crate) fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A process-unique, increasing number (JWT `jti`, ids).
    pub(crate) fn next_counter(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends a request to the log and returns its sequence number.
    pub(crate) fn push_record(&self, mut request: RecordedRequest) -> u64 {
        let seq = {
            let mut records = self.records();
            let seq = records.next_seq;
            records.next_seq += 1;
            request.seq = seq;
            records.list.push(request);
            seq
        };
        self.notify.notify_waiters();
        seq
    }

    /// Applies `f` to the recorded request `seq`, if it is still in the log.
    pub(crate) fn update_record(&self, seq: u64, f: impl FnOnce(&mut RecordedRequest)) {
        let mut records = self.records();
        if let Ok(i) = records.list.binary_search_by_key(&seq, |r| r.seq) {
            f(&mut records.list[i]);
        }
    }

    /// Records how a streamed answer ended (or that it started).
    pub(crate) fn set_stream_status(&self, seq: u64, status: StreamStatus) {
        self.update_record(seq, |r| r.stream = Some(status));
    }
}

/// Seconds since the Unix epoch, by the wall clock (tokio's paused time does not touch it).
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `n` random bytes.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    bytes
}

/// A random lowercase hex string of 2 × `N` characters.
pub(crate) fn random_hex<const N: usize>() -> String {
    let bytes = random_bytes::<N>();
    let mut out = String::with_capacity(N * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
