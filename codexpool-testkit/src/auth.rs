//! The auth.openai.com part of the fake (PROTOCOL.md §1 and §2): fake accounts and their sign-in
//! sessions, the browser step of the authorization-code flow (`GET /oauth/authorize`), the token
//! endpoint (`POST /oauth/token`: code exchange with PKCE, refresh with single-use rotation and reuse
//! detection), the device-code endpoints, the access-token check the other endpoints share, and
//! the Codex CLI `auth.json` document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::jwt::{self, Mint, TokenKind};
use crate::record::Seq;
use crate::state::{
    AccountState, DeviceApproval, DeviceCode, Inner, PendingCode, RefreshEntry, Session, Shared,
    TokenRef, now_secs, random_bytes, random_hex,
};
use crate::usage::FakeUsage;

/// The client id the Codex CLI uses (PROTOCOL.md §1); the fake requires it unless the builder's
/// `client_id` says otherwise.
pub const DEFAULT_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// How long an authorization code can be exchanged.
const CODE_TTL: Duration = Duration::from_secs(600);

/// A fake ChatGPT account, the input of [`crate::FakeOpenAi::add_account`].
///
/// Every field has a default derived from the id; the chainable setters override them.
///
/// ```
/// use std::time::Duration;
/// use codexpool_testkit::FakeAccount;
/// let account = FakeAccount::new("acct-1")
///     .email("dev@example.com")
///     .plan("pro")
///     .access_ttl(Duration::from_secs(3600))
///     .label("work");
/// assert_eq!(account.user_id, "user-acct-1");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FakeAccount {
    /// The `chatgpt_account_id` (also the `ChatGPT-Account-ID` header the backend expects).
    pub id: String,
    /// `email` claim. Default `<id>@example.com`.
    pub email: String,
    /// `chatgpt_plan_type` claim (`free|plus|pro|team|business|enterprise|edu|go`). Default `plus`.
    pub plan: String,
    /// `chatgpt_user_id` claim. Default `user-<id>`.
    pub user_id: String,
    /// `sub` claim. Default `auth0|<user_id>`.
    pub subject: String,
    /// The default organization's id. Default `org-<id>`.
    pub org_id: String,
    /// Lifetime of access tokens (their `exp` is `iat` + this). Default 10 days.
    pub access_ttl: Duration,
    /// A free-form label tests may use when importing the account. Default none.
    pub label: Option<String>,
}

impl FakeAccount {
    /// An account with the given `chatgpt_account_id` and defaults for everything else.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        let user_id = format!("user-{id}");
        Self {
            email: format!("{id}@example.com"),
            plan: "plus".to_owned(),
            subject: format!("auth0|{user_id}"),
            org_id: format!("org-{id}"),
            user_id,
            access_ttl: Duration::from_secs(10 * 24 * 3600),
            label: None,
            id,
        }
    }

    /// Sets the `email` claim.
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = email.into();
        self
    }

    /// Sets the `chatgpt_plan_type` claim (and the plan the usage endpoint reports by default).
    pub fn plan(mut self, plan: impl Into<String>) -> Self {
        self.plan = plan.into();
        self
    }

    /// Sets the `chatgpt_user_id` claim (the `sub` claim keeps its own value).
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = user_id.into();
        self
    }

    /// Sets the `sub` claim.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Sets the default organization's id.
    pub fn org_id(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = org_id.into();
        self
    }

    /// Sets the lifetime of access tokens. `Duration::ZERO` mints tokens that are already expired.
    pub fn access_ttl(mut self, ttl: Duration) -> Self {
        self.access_ttl = ttl;
        self
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// The three tokens of a sign-in. They are fakes, so they are plain strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTokens {
    /// A JWT with the account claims.
    pub id_token: String,
    /// A JWT with the account claims; what the usage and Codex endpoints accept.
    pub access_token: String,
    /// An opaque `rt_…` string, valid for exactly one refresh.
    pub refresh_token: String,
}

/// A scripted failure of the next refresh of an account (see
/// [`crate::FakeOpenAi::fail_next_refresh`]). The refresh token presented is NOT consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FakeRefreshFailure {
    /// 401 `{"error":{"code":"refresh_token_expired",…}}`.
    Expired,
    /// 401 `{"error":{"code":"refresh_token_reused",…}}`.
    Reused,
    /// 401 `{"error":{"code":"refresh_token_invalidated",…}}`.
    Invalidated,
    /// 400 `{"error":"invalid_grant","error_description":…}`.
    InvalidGrant,
    /// 401 `{"error":{"code":"app_session_terminated",…}}`.
    SessionTerminated,
    /// That HTTP status with an OpenAI-shaped `server_error` body (a transient failure).
    ServerError(u16),
    /// That status with `{"error":{"code":<code>,"message":…}}`.
    Custom {
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
    },
    /// That status with the OAuth shape, `{"error":<code>,"error_description":…}` (PROTOCOL.md
    /// §1: the code comes as `error` or `error.code`).
    OAuth {
        /// HTTP status.
        status: u16,
        /// `error`.
        error: String,
    },
}

/// How the device-code endpoint sends `interval` (PROTOCOL.md §1 allows both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceInterval {
    /// A JSON number, e.g. `"interval": 5`.
    Number(u64),
    /// A JSON string, e.g. `"interval": "5"` (what the real service sends).
    String(String),
}

impl Default for DeviceInterval {
    /// `"1"` (a string, like the real service, but short so tests stay fast).
    fn default() -> Self {
        DeviceInterval::String("1".to_owned())
    }
}

impl DeviceInterval {
    fn to_json(&self) -> Value {
        match self {
            DeviceInterval::Number(n) => json!(n),
            DeviceInterval::String(s) => json!(s),
        }
    }
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessDenied {
    Missing,
    Unknown,
    Stale,
    Expired,
    Revoked,
    AccountMismatch,
}

impl AccessDenied {
    /// The 401 the usage and Codex endpoints answer.
    pub(crate) fn into_response(self) -> Response {
        let (code, message) = match self {
            AccessDenied::Missing => ("missing_authorization", "Missing bearer token."),
            AccessDenied::Unknown => ("invalid_token", "Invalid authentication token."),
            AccessDenied::Stale => (
                "token_invalidated",
                "Your authentication token has been invalidated. Please try signing in again.",
            ),
            AccessDenied::Expired => (
                "token_expired",
                "Provided authentication token is expired. Please try signing in again.",
            ),
            AccessDenied::Revoked => (
                "token_revoked",
                "Encountered invalidated oauth token for user, failing request",
            ),
            AccessDenied::AccountMismatch => (
                "account_mismatch",
                "The ChatGPT-Account-ID header does not match the authentication token.",
            ),
        };
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {
                "message": message, "type": "invalid_request_error", "code": code, "param": null
            }})),
        )
            .into_response()
    }
}

/// `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A header as a string.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Inner {
    /// Checks an access token and the `ChatGPT-Account-ID` header; the account's index if both
    /// are right.
    pub(crate) fn check_access(
        &self,
        bearer: Option<&str>,
        account_header: Option<&str>,
    ) -> Result<usize, AccessDenied> {
        let token = bearer.ok_or(AccessDenied::Missing)?;
        let at = *self.access_index.get(token).ok_or(AccessDenied::Unknown)?;
        let account = &self.accounts[at.account];
        let session = &account.sessions[at.session];
        if session.revoked {
            return Err(AccessDenied::Revoked);
        }
        if session.access_token != token {
            return Err(AccessDenied::Stale);
        }
        if session.access_forced_expired || session.access_exp <= now_secs() {
            return Err(AccessDenied::Expired);
        }
        if account_header != Some(account.account.id.as_str()) {
            return Err(AccessDenied::AccountMismatch);
        }
        Ok(at.account)
    }

    /// The account an access token was issued to (current or stale), for the request log.
    pub(crate) fn account_of_access_token(&self, token: &str) -> Option<String> {
        self.access_index
            .get(token)
            .map(|at| self.accounts[at.account].account.id.clone())
    }

    /// Adds an account with its first session.
    #[track_caller]
    pub(crate) fn add_account(&mut self, shared: &Shared, account: FakeAccount) -> FakeTokens {
        if self.index.contains_key(&account.id) {
            panic!("FakeOpenAi: account `{}` was already added", account.id);
        }
        let idx = self.accounts.len();
        self.index.insert(account.id.clone(), idx);
        self.accounts.push(AccountState {
            account,
            sessions: Vec::new(),
            usage: FakeUsage::default(),
            usage_challenge: None,
            usage_status: None,
            usage_status_once: Default::default(),
            replies: Default::default(),
            compact_replies: Default::default(),
            default_reply: None,
            refresh_failures: Default::default(),
            refresh_count: 0,
        });
        self.new_session(shared, idx)
    }

    /// Signs an account in again: a new, independent session with fresh tokens.
    pub(crate) fn new_session(&mut self, shared: &Shared, idx: usize) -> FakeTokens {
        let (id_token, access_token, access_exp) = mint_pair(shared, &self.accounts[idx].account);
        let refresh_token = new_refresh_token();
        let state = &mut self.accounts[idx];
        let at = TokenRef {
            account: idx,
            session: state.sessions.len(),
        };
        state.sessions.push(Session {
            id_token: id_token.clone(),
            access_token: access_token.clone(),
            refresh_token: refresh_token.clone(),
            access_exp,
            issued_at: SystemTime::now(),
            access_forced_expired: false,
            revoked: false,
            refresh_revoked: false,
        });
        self.access_index.insert(access_token.clone(), at);
        self.refresh_index
            .insert(refresh_token.clone(), RefreshEntry { at, used: false });
        FakeTokens {
            id_token,
            access_token,
            refresh_token,
        }
    }

    /// The newest session of an account.
    #[track_caller]
    pub(crate) fn latest_session(&self, account_id: &str) -> &Session {
        let idx = self.account_index(account_id);
        match self.accounts[idx].sessions.last() {
            Some(s) => s,
            None => panic!("FakeOpenAi: account `{account_id}` has no session"),
        }
    }

    /// Approves a device code for an account: mints the PKCE pair and the authorization code the
    /// poll answers with.
    pub(crate) fn approve_device(
        &mut self,
        client_id: &str,
        origin: &str,
        device: usize,
        account: usize,
    ) {
        if self.devices[device].approved.is_some() {
            return;
        }
        let code_verifier = URL_SAFE_NO_PAD.encode(random_bytes::<64>());
        let code_challenge = pkce_challenge(&code_verifier);
        let authorization_code = format!("ac_{}", random_hex::<24>());
        self.codes.insert(
            authorization_code.clone(),
            PendingCode {
                challenge: code_challenge.clone(),
                redirect_uri: format!("{origin}/deviceauth/callback"),
                client_id: client_id.to_owned(),
                account,
                issued: SystemTime::now(),
                used: false,
            },
        );
        self.devices[device].approved = Some(DeviceApproval {
            authorization_code,
            code_verifier,
            code_challenge,
        });
    }

    /// The Codex CLI `auth.json` of an account's newest session.
    #[track_caller]
    pub(crate) fn auth_json(&self, account_id: &str) -> Value {
        let session = self.latest_session(account_id);
        let last_refresh = time::OffsetDateTime::from(session.issued_at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": session.id_token,
                "access_token": session.access_token,
                "refresh_token": session.refresh_token,
                "account_id": account_id,
            },
            "last_refresh": last_refresh,
        })
    }
}

/// Mints an id token and an access token; returns them with the access token's `exp`.
fn mint_pair(shared: &Shared, account: &FakeAccount) -> (String, String, i64) {
    let iat = now_secs();
    let exp = iat.saturating_add(i64::try_from(account.access_ttl.as_secs()).unwrap_or(i64::MAX));
    let mut m = Mint {
        account,
        issuer: &shared.config.origin,
        client_id: &shared.config.client_id,
        iat,
        exp,
        jti: String::new(),
    };
    m.jti = format!("jti-{}-{}", shared.next_counter(), random_hex::<8>());
    let id_token = jwt::mint(TokenKind::Id, &m);
    m.jti = format!("jti-{}-{}", shared.next_counter(), random_hex::<8>());
    let access_token = jwt::mint(TokenKind::Access, &m);
    (id_token, access_token, exp)
}

fn new_refresh_token() -> String {
    format!("rt_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// base64url-no-pad(SHA-256(verifier)), the S256 PKCE challenge.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An OAuth-style error body (`{"error","error_description"}`).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// An OpenAI-style error body (`{"error":{"message","type","code"}}`).
fn openai_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {
            "message": message, "type": "invalid_request_error", "param": null, "code": code
        }})),
    )
        .into_response()
}

fn parse_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `GET /oauth/authorize`: the user signs in in a browser and is sent back to `redirect_uri`.
pub(crate) async fn authorize(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = parse_pairs(query.as_deref().unwrap_or(""));
    let params: BTreeMap<&str, &str> = pairs
        .iter()
        .rev()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut inner = shared.inner();
    inner.last_authorize_query = Some(pairs.clone());
    let get = |k: &str| params.get(k).copied().filter(|v| !v.is_empty());

    let Some(redirect_uri) = get("redirect_uri") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is required",
        );
    };
    let Ok(mut target) = url::Url::parse(redirect_uri) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is not an absolute URL",
        );
    };
    if get("client_id") != Some(shared.config.client_id.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "unknown or missing client_id",
        );
    }
    let checks = [
        (
            get("response_type") == Some("code"),
            "response_type must be `code`",
        ),
        (
            get("code_challenge").is_some(),
            "code_challenge is required",
        ),
        // RFC 7636: base64url of a SHA-256, without padding.
        (
            get("code_challenge").is_none_or(|c| {
                c.len() == 43
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }),
            "code_challenge must be 43 base64url characters",
        ),
        (
            get("code_challenge_method") == Some("S256"),
            "code_challenge_method must be `S256`",
        ),
        (get("state").is_some(), "state is required"),
    ];
    if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why);
    }
    let state = get("state").unwrap_or_default();
    let challenge = get("code_challenge").unwrap_or_default();

    let redirect_error = |target: &mut url::Url, error: &str, description: &str| {
        target
            .query_pairs_mut()
            .append_pair("error", error)
            .append_pair("error_description", description)
            .append_pair("state", state);
        found(target.as_str())
    };
    if let Some((error, description)) = inner.authorize_failure.take() {
        return redirect_error(&mut target, &error, &description);
    }
    let account = match inner.next_login.take() {
        Some(id) => inner.index.get(&id).copied(),
        None => (!inner.accounts.is_empty()).then_some(0),
    };
    let Some(account) = account else {
        return redirect_error(
            &mut target,
            "access_denied",
            "FakeOpenAi has no account to sign in (call add_account first)",
        );
    };
    if let Some(workspace) = get("allowed_workspace_id")
        && workspace != inner.accounts[account].account.id
    {
        return redirect_error(
            &mut target,
            "access_denied",
            "the signed-in user is not a member of the allowed workspace",
        );
    }
    let code = format!("ac_{}", random_hex::<24>());
    inner.codes.insert(
        code.clone(),
        PendingCode {
            challenge: challenge.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            client_id: shared.config.client_id.clone(),
            account,
            issued: SystemTime::now(),
            used: false,
        },
    );
    drop(inner);
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    found(target.as_str())
}

fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

/// Whether a token-endpoint request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type").is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

/// Reads a token-endpoint body: JSON when the content type says so, else a form.
fn token_params(headers: &HeaderMap, body: &[u8]) -> Option<BTreeMap<String, String>> {
    if is_json(headers) {
        let value: Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        Some(
            object
                .iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.clone(), s.clone())),
                    Value::Null => None,
                    other => Some((k.clone(), other.to_string())),
                })
                .collect(),
        )
    } else {
        let text = std::str::from_utf8(body).ok()?;
        Some(parse_pairs(text).into_iter().rev().collect())
    }
}

/// `POST /oauth/token`.
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    Extension(seq): Extension<Seq>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(params) = token_params(&headers, &body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is neither a form nor a JSON object",
        );
    };
    if params.get("client_id") != Some(&shared.config.client_id) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown or missing client_id",
        );
    }
    let grant = params.get("grant_type").map(String::as_str);
    // PROTOCOL.md §1: the code exchange is a form, the refresh a JSON body.
    let json_expected = grant == Some("refresh_token");
    if shared.config.strict && grant.is_some() && is_json(&headers) != json_expected {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            if json_expected {
                "a refresh is sent as JSON"
            } else {
                "a code exchange is sent as application/x-www-form-urlencoded"
            },
        );
    }
    match grant {
        Some("authorization_code") => exchange(&shared, seq, &params),
        Some("refresh_token") => {
            let delay = {
                let mut inner = shared.inner();
                if !inner.refresh_delay.is_zero() {
                    inner.refreshes_held += 1;
                }
                inner.refresh_delay
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            refresh(&shared, seq, &params)
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

/// A token answer: `access_token`, with `refresh_token` and `id_token` when said.
fn tokens_body(tokens: &FakeTokens, with_refresh: bool, with_id: bool) -> Response {
    let mut body = json!({"access_token": tokens.access_token});
    if with_id {
        body["id_token"] = json!(tokens.id_token);
    }
    if with_refresh {
        body["refresh_token"] = json!(tokens.refresh_token);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn exchange(shared: &Shared, seq: Seq, params: &BTreeMap<String, String>) -> Response {
    let invalid_grant = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
    let Some(code) = params.get("code") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is required",
        );
    };
    let mut inner = shared.inner();
    let Some(pending) = inner.codes.get_mut(code) else {
        return invalid_grant("unknown authorization code");
    };
    // A code names one attempt: whatever the outcome, it cannot be presented again.
    if std::mem::replace(&mut pending.used, true) {
        return invalid_grant("authorization code already used");
    }
    let pending = pending.clone();
    let account_id = inner.accounts[pending.account].account.id.clone();
    shared.update_record(seq.0, |r| r.account_id = Some(account_id));
    if pending.issued.elapsed().unwrap_or_default() > CODE_TTL {
        return invalid_grant("authorization code expired");
    }
    if params.get("redirect_uri") != Some(&pending.redirect_uri) {
        return invalid_grant("redirect_uri does not match the authorization request");
    }
    if pending.client_id != shared.config.client_id {
        return invalid_grant("code was issued to another client");
    }
    let Some(verifier) = params.get("code_verifier") else {
        return invalid_grant("code_verifier is required");
    };
    // RFC 7636: 43 to 128 unreserved characters.
    if !(43..=128).contains(&verifier.len())
        || !verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return invalid_grant("code_verifier must be 43 to 128 unreserved characters");
    }
    if pkce_challenge(verifier) != pending.challenge {
        return invalid_grant("PKCE verification failed");
    }
    let tokens = inner.new_session(shared, pending.account);
    tokens_body(&tokens, true, true)
}

fn refresh_failure_response(failure: &FakeRefreshFailure) -> Response {
    let reuse = "Your refresh token has already been used to generate a new access token. \
                 Please try signing in again.";
    match failure {
        FakeRefreshFailure::Expired => openai_error(
            StatusCode::UNAUTHORIZED,
            "refresh_token_expired",
            "Your refresh token has expired. Please try signing in again.",
        ),
        FakeRefreshFailure::Reused => {
            openai_error(StatusCode::UNAUTHORIZED, "refresh_token_reused", reuse)
        }
        FakeRefreshFailure::Invalidated => openai_error(
            StatusCode::UNAUTHORIZED,
            "refresh_token_invalidated",
            "Your refresh token has been invalidated. Please try signing in again.",
        ),
        FakeRefreshFailure::InvalidGrant => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid refresh token",
        ),
        FakeRefreshFailure::SessionTerminated => openai_error(
            StatusCode::UNAUTHORIZED,
            "app_session_terminated",
            "Your session has been terminated. Please try signing in again.",
        ),
        FakeRefreshFailure::ServerError(status) => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(json!({"error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error", "param": null, "code": null
            }})),
        )
            .into_response(),
        FakeRefreshFailure::Custom { status, code } => openai_error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            "Scripted refresh failure.",
        ),
        FakeRefreshFailure::OAuth { status, error } => oauth_error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            error,
            "Scripted refresh failure.",
        ),
    }
}

fn refresh(shared: &Shared, seq: Seq, params: &BTreeMap<String, String>) -> Response {
    let Some(token) = params.get("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let mut inner = shared.inner();
    let Some(entry) = inner.refresh_index.get(token).copied() else {
        return refresh_failure_response(&FakeRefreshFailure::Invalidated);
    };
    let at = entry.at;
    let account_id = inner.accounts[at.account].account.id.clone();
    shared.update_record(seq.0, |r| r.account_id = Some(account_id));
    let (rotates, with_id_token) = (inner.refresh_rotates, inner.refresh_id_token);
    let state = &mut inner.accounts[at.account];
    state.refresh_count += 1;
    if let Some(failure) = state.refresh_failures.pop_front() {
        return refresh_failure_response(&failure);
    }
    let session = &mut state.sessions[at.session];
    if session.revoked || session.refresh_revoked {
        return refresh_failure_response(&FakeRefreshFailure::Invalidated);
    }
    if entry.used {
        // Reuse detection: the whole refresh-token family of this sign-in dies, so the holder
        // of the newest refresh token has to sign in again too (access tokens already issued
        // stay valid until they expire).
        session.refresh_revoked = true;
        return refresh_failure_response(&FakeRefreshFailure::Reused);
    }
    let (id_token, access_token, access_exp) = mint_pair(shared, &state.account);
    let session = &mut state.sessions[at.session];
    if with_id_token {
        session.id_token = id_token.clone();
    }
    session.access_token = access_token.clone();
    session.access_exp = access_exp;
    session.access_forced_expired = false;
    session.issued_at = SystemTime::now();
    let refresh_token = if rotates {
        let fresh = new_refresh_token();
        session.refresh_token = fresh.clone();
        fresh
    } else {
        token.clone()
    };
    inner.access_index.insert(access_token.clone(), at);
    if rotates {
        if let Some(old) = inner.refresh_index.get_mut(token) {
            old.used = true;
        }
        inner
            .refresh_index
            .insert(refresh_token.clone(), RefreshEntry { at, used: false });
    }
    let tokens = FakeTokens {
        id_token,
        access_token,
        refresh_token,
    };
    tokens_body(&tokens, rotates, with_id_token)
}

/// `POST /api/accounts/deviceauth/usercode`.
pub(crate) async fn device_usercode(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let client_id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("client_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if client_id.as_deref() != Some(shared.config.client_id.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "unknown or missing client_id",
        );
    }
    let device_auth_id = format!("deviceauth_{}", random_hex::<16>());
    let user_code = user_code();
    let mut inner = shared.inner();
    inner.devices.push(DeviceCode {
        device_auth_id: device_auth_id.clone(),
        user_code: user_code.clone(),
        polls: 0,
        approved: None,
    });
    let interval = inner.device_interval.to_json();
    drop(inner);
    (
        StatusCode::OK,
        axum::Json(json!({
            "device_auth_id": device_auth_id,
            "user_code": user_code,
            "interval": interval,
        })),
    )
        .into_response()
}

/// `ABCD-EFGH` from an alphabet without look-alike characters.
fn user_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = random_bytes::<8>();
    let mut out = String::with_capacity(9);
    for (i, b) in bytes.iter().enumerate() {
        if i == 4 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
    }
    out
}

/// `POST /api/accounts/deviceauth/token`.
pub(crate) async fn device_token(
    State(shared): State<Arc<Shared>>,
    Extension(seq): Extension<Seq>,
    body: Bytes,
) -> Response {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or_default();
    let (device_auth_id, code) = (field("device_auth_id"), field("user_code"));
    let mut inner = shared.inner();
    let Some(device) = inner
        .devices
        .iter()
        .position(|d| d.device_auth_id == device_auth_id && d.user_code == code)
    else {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown device_auth_id or user_code",
        );
    };
    inner.devices[device].polls += 1;
    if let Some((after, account_id)) = inner.device_auto_approve.clone()
        && inner.devices[device].polls >= after
        && let Some(&account) = inner.index.get(&account_id)
    {
        inner.approve_device(
            &shared.config.client_id,
            &shared.config.origin,
            device,
            account,
        );
    }
    match inner.devices[device].approved.clone() {
        Some(approval) => {
            let account = inner
                .codes
                .get(&approval.authorization_code)
                .map(|c| c.account);
            if let Some(account) = account {
                let id = inner.accounts[account].account.id.clone();
                shared.update_record(seq.0, |r| r.account_id = Some(id));
            }
            (
                StatusCode::OK,
                axum::Json(json!({
                    "authorization_code": approval.authorization_code,
                    "code_verifier": approval.code_verifier,
                    "code_challenge": approval.code_challenge,
                })),
            )
                .into_response()
        }
        None => oauth_error(
            StatusCode::from_u16(inner.device_pending_status).unwrap_or(StatusCode::FORBIDDEN),
            "authorization_pending",
            "the user has not approved this device code yet",
        ),
    }
}

/// `GET /codex/device`: the page a person would open to type the code.
pub(crate) async fn device_page() -> Html<&'static str> {
    Html(
        "<!DOCTYPE html><html><head><title>Enter code</title></head><body>\
         <h1>FakeOpenAi device sign-in</h1><p>Enter the code shown in your terminal. \
         (In tests, call FakeOpenAi::approve_device.)</p></body></html>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_example() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn user_codes_look_right() {
        let code = user_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer   ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
