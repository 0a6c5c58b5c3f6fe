//! `Config`: every setting of codexpool, where each value came from, and the rules for reading
//! them from the environment (DESIGN.md "Configuration").
//!
//! One table, [`SETTINGS`], names each setting once with its default, its help text and its
//! parser; `from_env`, `set` (flags, builder values, Python keyword arguments) and the
//! `codexpool config` listing all go through it, so they cannot disagree.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::Secret;

/// The prefix of every environment variable.
pub const ENV_PREFIX: &str = "CODEXPOOL_";
/// The seed product's prefix, accepted as an alias.
pub const LEGACY_ENV_PREFIX: &str = "GPTTOOLS_";
/// Env file names tried in order, first in the current directory, then beside the executable.
pub const ENV_FILE_NAMES: [&str; 4] = ["codexpool.env", "gpttools.env", "CodexManager.env", ".env"];
/// [`ConfigError::var`] of an env file that cannot be read.
pub const ENV_FILE: &str = "env file";
/// The smallest usage poll interval; smaller values are raised to it with a warning.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// The largest usage poll interval (one day); larger values are refused.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(86_400);

/// Shorter `RPC_TOKEN`s draw a warning (a generated one has 64).
pub const MIN_RPC_TOKEN_CHARS: usize = 32;

/// How the pool picks an account for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteStrategy {
    /// Lowest `sort` first (then label): drain one account before touching the next.
    #[default]
    Ordered,
    /// Take turns across usable accounts.
    RoundRobin,
    /// Most quota left first; ties go to the window that resets earliest.
    Headroom,
}

impl RouteStrategy {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ordered => "ordered",
            Self::RoundRobin => "round-robin",
            Self::Headroom => "headroom",
        }
    }
}

impl std::str::FromStr for RouteStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "ordered" => Ok(Self::Ordered),
            "round-robin" | "roundrobin" => Ok(Self::RoundRobin),
            "headroom" => Ok(Self::Headroom),
            other => Err(format!(
                "unknown strategy {other:?} (expected ordered, round-robin or headroom)"
            )),
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The process environment, under this variable name.
    Env(String),
    /// An env file, under this variable name.
    EnvFile {
        /// The file.
        path: PathBuf,
        /// The variable name inside it.
        var: String,
    },
    /// Set by the program: a command-line flag, a builder call, a Python keyword argument.
    Explicit,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::EnvFile { path, var } => write!(f, "{} ({var})", path.display()),
            Self::Explicit => f.write_str("flag"),
        }
    }
}

/// An invalid setting. The message names the variable and, when the value came from an env
/// file, that file. An env file that cannot be read is one too (`var` is `env file`, `value`
/// its path).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(self))]
#[non_exhaustive]
pub struct ConfigError {
    /// The variable, with its prefix as the user wrote it (or the bare name for `set`); `env
    /// file` for an env file that cannot be read.
    pub var: String,
    /// The offending value (secrets are shown as `*****`).
    pub value: String,
    /// What is wrong with it.
    pub message: String,
    /// The setting (its name without prefix), when the error is about one: not for an env
    /// file that cannot be parsed, nor for an unknown name given to [`Config::set`].
    pub setting: Option<&'static str>,
    /// The env file the value came from, when it came from one.
    pub file: Option<PathBuf>,
}

impl ConfigError {
    /// Where the value came from, when the error is about a setting.
    pub fn origin(&self) -> Option<Source> {
        let setting = self.setting?;
        Some(match &self.file {
            Some(path) => Source::EnvFile {
                path: path.clone(),
                var: self.var.clone(),
            },
            // `set` names the setting itself; the environment names a prefixed variable.
            None if self.var == setting => Source::Explicit,
            None => Source::Env(self.var.clone()),
        })
    }
}

/// `invalid NAME="value" in <file>: why`, or `cannot read <file>: why` for an env file.
fn describe(e: &ConfigError) -> String {
    if e.setting.is_none() && e.var == ENV_FILE {
        return format!("cannot read {}: {}", e.value, e.message);
    }
    let in_file = e
        .file
        .as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default();
    format!("invalid {}={:?}{in_file}: {}", e.var, e.value, e.message)
}

/// All settings. Build with [`Config::default`], [`Config::from_env`] or [`Config::set`].
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `SERVICE_ADDR`: listen address of `serve`.
    pub service_addr: SocketAddr,
    /// `ALLOW_NON_LOOPBACK_SERVICE_ADDR`: let `serve` listen beyond this machine.
    pub allow_non_loopback_service_addr: bool,
    /// `DB_PATH`: the SQLite file.
    pub db_path: PathBuf,
    /// `RPC_TOKEN`: admin token; `None` = the one `serve` makes on its first start and keeps in
    /// `<db dir>/rpc-token`.
    pub rpc_token: Option<Secret>,
    /// `ISSUER`: the OAuth issuer.
    pub issuer: String,
    /// `CLIENT_ID`: the OAuth client id.
    pub client_id: String,
    /// `ORIGINATOR`: sent as `originator` to OpenAI.
    pub originator: String,
    /// `REDIRECT_URI`: the OAuth redirect URI.
    pub redirect_uri: String,
    /// `LOGIN_ADDR`: where the sign-in callback listener binds (`host:port`).
    pub login_addr: String,
    /// `ALLOW_NON_LOOPBACK_LOGIN_ADDR`: allow a non-loopback callback listener.
    pub allow_non_loopback_login_addr: bool,
    /// `USAGE_BASE_URL`: origin of the usage endpoint.
    pub usage_base_url: String,
    /// `USAGE_POLL_INTERVAL_SECS`: background usage poll interval (at least 30 s).
    pub usage_poll_interval: Duration,
    /// `DISABLE_POLLING`: no background usage polling.
    pub disable_polling: bool,
    /// `UPSTREAM_BASE_URL`: the Codex backend base.
    pub upstream_base_url: String,
    /// `UPSTREAM_FALLBACK_BASE_URL`: an OpenAI-compatible upstream used when no account can serve.
    pub upstream_fallback_base_url: Option<String>,
    /// `UPSTREAM_FALLBACK_API_KEY`: the fallback upstream's key.
    pub upstream_fallback_api_key: Option<Secret>,
    /// `UPSTREAM_COOKIE`: a cookie header sent upstream.
    pub upstream_cookie: Option<Secret>,
    /// `UPSTREAM_CONNECT_TIMEOUT_SECS`.
    pub upstream_connect_timeout: Duration,
    /// `UPSTREAM_STREAM_IDLE_TIMEOUT_SECS`: longest silence inside an upstream stream.
    pub upstream_stream_idle_timeout: Duration,
    /// `UPSTREAM_KEEPALIVE_SECS`: how often an upstream connection is checked for life (HTTP/2
    /// pings, TCP keep-alive), and how long a ping may go unanswered.
    pub upstream_keepalive: Duration,
    /// `REQUEST_GATE_WAIT_TIMEOUT_MS`: how long a request may wait for a free account.
    pub request_gate_wait_timeout: Duration,
    /// `ACCOUNT_MAX_INFLIGHT`: per-account concurrent requests (0 = no cap).
    pub account_max_inflight: u32,
    /// `FRONT_PROXY_MAX_BODY_BYTES`: largest accepted request body.
    pub front_proxy_max_body_bytes: usize,
    /// `TRACE_BODY_PREVIEW_MAX_BYTES`: request-log body preview size (0 = none).
    pub trace_body_preview_max_bytes: usize,
    /// `CORS_ALLOW_ORIGINS`: the web origins whose pages may call the API routes from a
    /// browser (`*` for any; empty = none, no CORS headers at all).
    pub cors_allow_origins: Vec<String>,
    /// `ALLOWED_HOSTS`: host names, besides `localhost` and IP addresses, that `/health` and
    /// `/metrics` answer to (`*` for any), lower case.
    pub allowed_hosts: Vec<String>,
    /// `REQUEST_LOG_DAYS`: request-log rows older than this many days are deleted by a serving
    /// process, and the token ledger's days before them summed per day (0 = keep every row).
    pub request_log_days: u32,
    /// `RESPONSES_STORE_MB`: memory for the responses the gateway keeps for
    /// `previous_response_id` and `item_reference`, in MiB (0 = keep none).
    pub responses_store_mb: u32,
    /// `GATEWAY_KEEPALIVE_INTERVAL_SECS`: HTTP keep-alive of client connections.
    pub gateway_keepalive_interval: Duration,
    /// `HTTP_WORKER_FACTOR`: threads serving HTTP connections, per CPU.
    pub http_worker_factor: u32,
    /// `HTTP_WORKER_MIN`: at least this many threads serving HTTP connections.
    pub http_worker_min: u32,
    /// `HTTP_QUEUE_FACTOR`: concurrent requests per worker before shedding load.
    pub http_queue_factor: u32,
    /// `HTTP_QUEUE_MIN`: at least this many concurrent requests before shedding load.
    pub http_queue_min: u32,
    /// `ROUTE_STRATEGY`.
    pub route_strategy: RouteStrategy,
    /// Warnings raised while reading settings (e.g. a clamped value).
    pub warnings: Vec<String>,
    sources: HashMap<&'static str, Source>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        for s in SETTINGS {
            d.field(s.name, &s.shown(self));
        }
        d.finish()
    }
}

/// The default database path: `<data dir>/codexpool/codexpool.db`.
pub fn default_db_path() -> PathBuf {
    directories::BaseDirs::new()
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
        .join("codexpool")
        .join("codexpool.db")
}

impl Default for Config {
    fn default() -> Self {
        let mut c = Self {
            service_addr: SocketAddr::from(([127, 0, 0, 1], 48760)),
            allow_non_loopback_service_addr: false,
            db_path: default_db_path(),
            rpc_token: None,
            issuer: String::new(),
            client_id: String::new(),
            originator: String::new(),
            redirect_uri: String::new(),
            login_addr: String::new(),
            allow_non_loopback_login_addr: false,
            usage_base_url: String::new(),
            usage_poll_interval: Duration::from_secs(600),
            disable_polling: false,
            upstream_base_url: String::new(),
            upstream_fallback_base_url: None,
            upstream_fallback_api_key: None,
            upstream_cookie: None,
            upstream_connect_timeout: Duration::from_secs(15),
            upstream_keepalive: Duration::from_secs(30),
            upstream_stream_idle_timeout: Duration::from_secs(300),
            request_gate_wait_timeout: Duration::from_millis(300),
            account_max_inflight: 0,
            front_proxy_max_body_bytes: 16 * 1024 * 1024,
            trace_body_preview_max_bytes: 0,
            cors_allow_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            request_log_days: 30,
            responses_store_mb: 64,
            gateway_keepalive_interval: Duration::from_secs(180),
            http_worker_factor: 1,
            http_worker_min: 1,
            http_queue_factor: 1024,
            http_queue_min: 1024,
            route_strategy: RouteStrategy::Ordered,
            warnings: Vec::new(),
            sources: HashMap::new(),
        };
        // Defaults that are plain text are applied through the table, so the documented default
        // and the effective one are the same string.
        for s in SETTINGS {
            if let Some(default) = s.default_value {
                // The defaults are constants checked by a test; a failure here is a bug in
                // this table, and the value keeps its in-code default.
                let _ = (s.apply)(&mut c, default);
            }
        }
        c.warnings.clear();
        c
    }
}

/// One setting: its name (without prefix), default, help, and how to parse and show it.
pub struct Setting {
    /// The name without prefix, e.g. `SERVICE_ADDR`.
    pub name: &'static str,
    /// The default as text (`None` when it is computed or absent).
    pub default_value: Option<&'static str>,
    /// How the default reads in docs when it is computed.
    pub default_doc: &'static str,
    /// Whether the value is a secret (shown as `*****`).
    pub secret: bool,
    /// One line on what it does.
    pub help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
    show: fn(&Config) -> String,
}

impl Setting {
    /// The effective value for people (listings, `Debug`): secrets as `*****`, and a password
    /// in any URL hidden, in this one place.
    fn shown(&self, c: &Config) -> String {
        without_password(&(self.show)(c))
    }
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setting")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An empty value is `false`: a blank `NAME=` line in an env template must not switch a safety
/// check off. (`DISABLE_POLLING` alone means "set = off" and reads empty as true.)
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 1/true/yes/on or 0/false/no/off".into()),
    }
}

/// A whole number in `range`; the error says which.
fn parse_in<T>(v: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    v.trim()
        .parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

fn parse_u32(v: &str) -> Result<u32, String> {
    parse_in(v, 0..=u32::MAX)
}

/// A path with a leading `~` replaced by the home directory, as a shell does: the paths people
/// copy from docs (`~/.codex/auth.json`) would otherwise name a folder called `~`. `~user` and
/// every other path are kept as given. (The bindings use it for path arguments.)
pub fn expand_home(path: impl Into<PathBuf>) -> PathBuf {
    let path = path.into();
    let mut parts = path.components();
    if parts.next() != Some(std::path::Component::Normal("~".as_ref())) {
        return path;
    }
    match std::env::home_dir() {
        Some(home) => home.join(parts.as_path()),
        None => path,
    }
}

/// Whether a URL's host is on loopback (`localhost`, `127.0.0.0/8`, `::1`). Such addresses
/// never go through a proxy from the environment: a proxy elsewhere could not reach them.
pub fn is_loopback_url(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            Some(match u.host()? {
                url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
                url::Host::Ipv4(ip) => ip.is_loopback(),
                url::Host::Ipv6(ip) => ip.is_loopback(),
            })
        })
        .unwrap_or(false)
}

/// A listen address: `IP:port`, or `host:port` with the host resolved now (`localhost` is
/// 127.0.0.1, as for `LOGIN_ADDR`; another name takes its first address). A bare port is
/// refused with the address it most likely meant. (`SERVICE_ADDR` and `serve --addr` use it.)
pub fn parse_listen_addr(v: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let v = v.trim();
    // `--addr '"127.0.0.1:0"'`: said for what it is, not as a bad port.
    if quoted(v) {
        return Err(IN_QUOTES.into());
    }
    if let Ok(addr) = v.parse() {
        return Ok(addr);
    }
    if let Ok(port) = v.parse::<u16>() {
        return Err(format!(
            "expected host:port; did you mean 127.0.0.1:{port}?"
        ));
    }
    let (host, port) = v
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or("expected host:port, e.g. 127.0.0.1:48760")?;
    let port = port
        .parse::<u16>()
        .map_err(|_| "the port must be a number from 0 to 65535")?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// Why a value in quotes is refused where nothing takes them off (the environment, a flag).
const IN_QUOTES: &str = "the value is in quotes, which would be part of it here: remove them";

/// Whether a value is wrapped in a pair of quotes.
fn quoted(v: &str) -> bool {
    let v = v.trim();
    v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
}

fn parse_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    let u = url::Url::parse(v).map_err(|e| format!("not a URL ({e})"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err("expected an http:// or https:// URL".into());
    }
    Ok(v.trim_end_matches('/').to_string())
}

fn opt(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

/// `*`, or web origins (`scheme://host[:port]`, no path), comma-separated; blank is none.
fn parse_origins(v: &str) -> Result<Vec<String>, String> {
    let mut origins = Vec::new();
    for o in v.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if o == "*" {
            origins.push(o.to_string());
            continue;
        }
        let u = url::Url::parse(o).map_err(|e| format!("`{o}` is not an origin: {e}"))?;
        let origin = u.origin();
        if !origin.is_tuple() || !matches!(u.scheme(), "http" | "https") {
            return Err(format!("`{o}` is not an http(s) origin"));
        }
        if u.host_str().is_some_and(|h| h.contains('*')) {
            return Err(format!(
                "`{o}`: origins are matched whole, not by pattern (name each, or `*` for all)"
            ));
        }
        // An origin is scheme, host and port: nothing else (a browser sends nothing else).
        let serialized = origin.ascii_serialization();
        let more = u.path() != "/"
            || u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
            || u.password().is_some();
        if more {
            return Err(format!("`{o}` is not an origin: write `{serialized}`"));
        }
        origins.push(serialized);
    }
    if origins.len() > 1 && origins.iter().any(|o| o == "*") {
        return Err("`*` allows every origin: give it alone".into());
    }
    Ok(origins)
}

fn parse_hosts(v: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if h == "*" {
            hosts.push(h.to_string());
            continue;
        }
        let name = h.trim_end_matches('.').to_ascii_lowercase();
        let plain = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !plain {
            return Err(format!(
                "`{h}` is not a host name: give the name alone, as in `gateway.lan` (no scheme, port or pattern)"
            ));
        }
        hosts.push(name);
    }
    if hosts.len() > 1 && hosts.iter().any(|h| h == "*") {
        return Err("`*` allows every host: give it alone".into());
    }
    Ok(hosts)
}

/// Where env files are looked for: the working directory, then the executable's.
fn env_file_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs
}

/// `https://chatgpt.com` or `https://chat.openai.com` alone mean the Codex backend under them.
fn normalize_upstream(v: &str) -> Result<String, String> {
    let v = parse_url(v)?;
    let u = url::Url::parse(&v).map_err(|e| e.to_string())?;
    let host = u.host_str().unwrap_or_default();
    if (host == "chatgpt.com" || host == "chat.openai.com") && u.path().trim_matches('/').is_empty()
    {
        return Ok(format!("{v}/backend-api/codex"));
    }
    Ok(v)
}

fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

fn show_opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_default()
}

/// A value as shown to people (listings, errors): a password in a URL
/// (`https://user:pw@host/…`) becomes `*****`.
fn without_password(v: &str) -> String {
    let masked = || {
        // Also a URL whose scheme was forgotten (`user:pw@host:8080`).
        let start = v.find("://").map_or(0, |i| i + 3);
        let rest = &v[start..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let at = authority.rfind('@')?;
        let colon = authority[..at].find(':')?;
        Some(format!(
            "{}*****{}",
            &v[..start + colon + 1],
            &v[start + at..]
        ))
    };
    masked().unwrap_or_else(|| v.to_string())
}

fn show_secret(v: &Option<Secret>) -> String {
    if v.is_some() {
        "*****".into()
    } else {
        String::new()
    }
}

/// Every setting, in the order the docs list them.
pub static SETTINGS: &[Setting] = &[
    Setting {
        name: "SERVICE_ADDR",
        default_value: Some("127.0.0.1:48760"),
        default_doc: "127.0.0.1:48760",
        secret: false,
        help: "listen address of `serve`",
        apply: |c, v| {
            c.service_addr = parse_listen_addr(v)?;
            Ok(())
        },
        show: |c| c.service_addr.to_string(),
    },
    Setting {
        name: "ALLOW_NON_LOOPBACK_SERVICE_ADDR",
        default_value: Some("false"),
        default_doc: "false",
        secret: false,
        help: "let `serve` listen on a non-loopback address (other machines reach the gateway; \
               the admin API still answers this machine only)",
        apply: |c, v| {
            c.allow_non_loopback_service_addr = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.allow_non_loopback_service_addr.to_string(),
    },
    Setting {
        name: "DB_PATH",
        default_value: None,
        default_doc: "<data dir>/codexpool/codexpool.db",
        secret: false,
        help: "the SQLite database file (created on first use; a leading `~` is the home \
               directory; a relative path in an env file is relative to the file's folder)",
        apply: |c, v| {
            c.db_path = expand_home(opt(v).ok_or("expected a file path")?);
            Ok(())
        },
        show: |c| c.db_path.display().to_string(),
    },
    Setting {
        name: "RPC_TOKEN",
        default_value: None,
        default_doc: "random, made on the first start and kept in <db dir>/rpc-token (shared by \
                      every server on the database)",
        secret: true,
        help: "token for the admin /rpc endpoint",
        apply: |c, v| {
            c.rpc_token = opt(v).map(Secret::from);
            let len = c
                .rpc_token
                .as_ref()
                .map_or(usize::MAX, |t| t.expose().chars().count());
            if len < MIN_RPC_TOKEN_CHARS {
                c.warnings.push(format!(
                    "{ENV_PREFIX}RPC_TOKEN is short ({len} characters): it opens every account's \
                     tokens to whoever guesses it; use {MIN_RPC_TOKEN_CHARS} or more random \
                     characters, or unset it to get a generated one"
                ));
            }
            Ok(())
        },
        show: |c| show_secret(&c.rpc_token),
    },
    Setting {
        name: "ISSUER",
        default_value: Some("https://auth.openai.com"),
        default_doc: "https://auth.openai.com",
        secret: false,
        help: "OAuth issuer for sign-in and token refresh",
        apply: |c, v| {
            c.issuer = parse_url(v)?;
            Ok(())
        },
        show: |c| c.issuer.clone(),
    },
    Setting {
        name: "CLIENT_ID",
        default_value: Some("app_EMoamEEZ73f0CkXaXp7hrann"),
        default_doc: "app_EMoamEEZ73f0CkXaXp7hrann",
        secret: false,
        help: "OAuth client id",
        apply: |c, v| {
            c.client_id = opt(v).ok_or("must not be empty")?.to_string();
            Ok(())
        },
        show: |c| c.client_id.clone(),
    },
    Setting {
        name: "ORIGINATOR",
        default_value: Some("codex_cli_rs"),
        default_doc: "codex_cli_rs",
        secret: false,
        help: "the `originator` sent to OpenAI",
        apply: |c, v| {
            c.originator = opt(v).ok_or("must not be empty")?.to_string();
            Ok(())
        },
        show: |c| c.originator.clone(),
    },
    Setting {
        name: "REDIRECT_URI",
        default_value: Some("http://localhost:1455/auth/callback"),
        default_doc: "http://localhost:1455/auth/callback",
        secret: false,
        help: "OAuth redirect URI of the browser sign-in",
        apply: |c, v| {
            c.redirect_uri = parse_url(v)?;
            Ok(())
        },
        show: |c| c.redirect_uri.clone(),
    },
    Setting {
        name: "LOGIN_ADDR",
        default_value: Some("localhost:1455"),
        default_doc: "localhost:1455",
        secret: false,
        help: "where the sign-in callback listener binds",
        apply: |c, v| {
            let v = v.trim();
            let (host, port) = v
                .rsplit_once(':')
                .ok_or("expected host:port, e.g. localhost:1455")?;
            if host.is_empty() {
                return Err("expected host:port, e.g. localhost:1455".into());
            }
            port.parse::<u16>()
                .map_err(|_| "the port must be a number from 0 to 65535")?;
            c.login_addr = v.to_string();
            Ok(())
        },
        show: |c| c.login_addr.clone(),
    },
    Setting {
        name: "ALLOW_NON_LOOPBACK_LOGIN_ADDR",
        default_value: Some("false"),
        default_doc: "false",
        secret: false,
        help: "let the callback listener bind a non-loopback address",
        apply: |c, v| {
            c.allow_non_loopback_login_addr = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.allow_non_loopback_login_addr.to_string(),
    },
    Setting {
        name: "USAGE_BASE_URL",
        default_value: Some("https://chatgpt.com"),
        default_doc: "https://chatgpt.com",
        secret: false,
        help: "origin of /backend-api/wham/usage",
        apply: |c, v| {
            c.usage_base_url = parse_url(v)?;
            Ok(())
        },
        show: |c| c.usage_base_url.clone(),
    },
    Setting {
        name: "USAGE_POLL_INTERVAL_SECS",
        default_value: Some("600"),
        default_doc: "600",
        secret: false,
        help: "background usage poll interval in seconds (30–86400; less is raised to 30)",
        apply: |c, v| {
            let n = parse_in(v, 0..=MAX_POLL_INTERVAL.as_secs()).map_err(|_| {
                format!(
                    "expected a whole number from {} to {} (less is raised to {0})",
                    MIN_POLL_INTERVAL.as_secs(),
                    MAX_POLL_INTERVAL.as_secs()
                )
            })?;
            let d = Duration::from_secs(n);
            if d < MIN_POLL_INTERVAL {
                c.warnings.push(format!(
                    "{ENV_PREFIX}USAGE_POLL_INTERVAL_SECS={n} is below the minimum; using {}",
                    MIN_POLL_INTERVAL.as_secs()
                ));
                c.usage_poll_interval = MIN_POLL_INTERVAL;
            } else {
                c.usage_poll_interval = d;
            }
            Ok(())
        },
        show: |c| secs(c.usage_poll_interval),
    },
    Setting {
        name: "DISABLE_POLLING",
        default_value: Some("false"),
        default_doc: "false (set = off)",
        secret: false,
        help: "turn off background usage polling",
        apply: |c, v| {
            c.disable_polling = v.trim().is_empty() || parse_bool(v)?;
            Ok(())
        },
        show: |c| c.disable_polling.to_string(),
    },
    Setting {
        name: "UPSTREAM_BASE_URL",
        default_value: Some("https://chatgpt.com/backend-api/codex"),
        default_doc: "https://chatgpt.com/backend-api/codex",
        secret: false,
        help: "the Codex backend",
        apply: |c, v| {
            c.upstream_base_url = normalize_upstream(v)?;
            Ok(())
        },
        show: |c| c.upstream_base_url.clone(),
    },
    Setting {
        name: "UPSTREAM_FALLBACK_BASE_URL",
        default_value: None,
        default_doc: "(none)",
        secret: false,
        help: "OpenAI-compatible upstream used when no account can serve",
        apply: |c, v| {
            c.upstream_fallback_base_url = opt(v).map(parse_url).transpose()?;
            Ok(())
        },
        show: |c| show_opt(&c.upstream_fallback_base_url),
    },
    Setting {
        name: "UPSTREAM_FALLBACK_API_KEY",
        default_value: None,
        default_doc: "(none)",
        secret: true,
        help: "API key of the fallback upstream",
        apply: |c, v| {
            c.upstream_fallback_api_key = opt(v).map(Secret::from);
            Ok(())
        },
        show: |c| show_secret(&c.upstream_fallback_api_key),
    },
    Setting {
        name: "UPSTREAM_COOKIE",
        default_value: None,
        default_doc: "(none)",
        secret: true,
        help: "Cookie header sent to the Codex backend",
        apply: |c, v| {
            c.upstream_cookie = opt(v).map(Secret::from);
            Ok(())
        },
        show: |c| show_secret(&c.upstream_cookie),
    },
    Setting {
        name: "UPSTREAM_CONNECT_TIMEOUT_SECS",
        default_value: Some("15"),
        default_doc: "15",
        secret: false,
        help: "upstream connect timeout in seconds",
        apply: |c, v| {
            c.upstream_connect_timeout = Duration::from_secs(parse_in(v, 1..=3600)?);
            Ok(())
        },
        show: |c| secs(c.upstream_connect_timeout),
    },
    Setting {
        name: "UPSTREAM_STREAM_IDLE_TIMEOUT_SECS",
        default_value: Some("300"),
        default_doc: "300",
        secret: false,
        help: "longest silence allowed inside an upstream stream, in seconds",
        apply: |c, v| {
            c.upstream_stream_idle_timeout = Duration::from_secs(parse_in(v, 1..=86_400)?);
            Ok(())
        },
        show: |c| secs(c.upstream_stream_idle_timeout),
    },
    Setting {
        name: "UPSTREAM_KEEPALIVE_SECS",
        default_value: Some("30"),
        default_doc: "30",
        secret: false,
        help: "how often an upstream connection is checked for life (HTTP/2 ping, TCP keep-alive), \
               and how long a ping may go unanswered before it is dropped, in seconds",
        apply: |c, v| {
            c.upstream_keepalive = Duration::from_secs(parse_in(v, 1..=3600)?);
            Ok(())
        },
        show: |c| secs(c.upstream_keepalive),
    },
    Setting {
        name: "REQUEST_GATE_WAIT_TIMEOUT_MS",
        default_value: Some("300"),
        default_doc: "300",
        secret: false,
        help: "how long a request may wait for a free account, in ms",
        apply: |c, v| {
            // Ten minutes at most: a value in seconds ×1000 would hold requests for days.
            c.request_gate_wait_timeout = Duration::from_millis(parse_in(v, 0..=600_000)?);
            Ok(())
        },
        show: |c| c.request_gate_wait_timeout.as_millis().to_string(),
    },
    Setting {
        name: "ACCOUNT_MAX_INFLIGHT",
        default_value: Some("0"),
        default_doc: "0 (no cap)",
        secret: false,
        help: "concurrent requests per account",
        apply: |c, v| {
            c.account_max_inflight = parse_u32(v)?;
            Ok(())
        },
        show: |c| c.account_max_inflight.to_string(),
    },
    Setting {
        name: "FRONT_PROXY_MAX_BODY_BYTES",
        default_value: Some("16777216"),
        default_doc: "16777216 (16 MiB)",
        secret: false,
        help: "largest accepted request body",
        apply: |c, v| {
            c.front_proxy_max_body_bytes = parse_in(v, 1..=usize::MAX)?;
            Ok(())
        },
        show: |c| c.front_proxy_max_body_bytes.to_string(),
    },
    Setting {
        name: "TRACE_BODY_PREVIEW_MAX_BYTES",
        default_value: Some("0"),
        default_doc: "0 (off)",
        secret: false,
        help: "request-log body preview size (redacted)",
        apply: |c, v| {
            c.trace_body_preview_max_bytes = parse_in(v, 0..=usize::MAX)?;
            Ok(())
        },
        show: |c| c.trace_body_preview_max_bytes.to_string(),
    },
    Setting {
        name: "CORS_ALLOW_ORIGINS",
        default_value: None,
        default_doc: "(none: browsers may not call the API)",
        secret: false,
        help: "web origins whose pages may call /v1 from a browser: `*` or a comma-separated list like `http://localhost:3000`",
        apply: |c, v| {
            c.cors_allow_origins = parse_origins(v)?;
            Ok(())
        },
        show: |c| c.cors_allow_origins.join(","),
    },
    Setting {
        name: "ALLOWED_HOSTS",
        default_value: None,
        default_doc: "(none: localhost, IP addresses and this machine's name)",
        secret: false,
        help: "host names `/health` and `/metrics` also answer to (they refuse others: a web page could pose as one by DNS rebinding): `*` or a comma-separated list like `gateway.lan`",
        apply: |c, v| {
            c.allowed_hosts = parse_hosts(v)?;
            Ok(())
        },
        show: |c| c.allowed_hosts.join(","),
    },
    Setting {
        name: "REQUEST_LOG_DAYS",
        default_value: Some("30"),
        default_doc: "30 (0 = keep every row)",
        secret: false,
        help: "days a serving process keeps request-log rows and per-request token-ledger rows (older ledger days are kept as day sums)",
        apply: |c, v| {
            c.request_log_days = parse_in(v, 0..=36_500)?;
            Ok(())
        },
        show: |c| c.request_log_days.to_string(),
    },
    Setting {
        name: "RESPONSES_STORE_MB",
        default_value: Some("64"),
        default_doc: "64 (0 = off)",
        secret: false,
        help: "memory (MiB) for responses kept for previous_response_id / item_reference",
        apply: |c, v| {
            c.responses_store_mb = parse_in(v, 0..=1_048_576)?;
            Ok(())
        },
        show: |c| c.responses_store_mb.to_string(),
    },
    Setting {
        name: "GATEWAY_KEEPALIVE_INTERVAL_SECS",
        default_value: Some("180"),
        default_doc: "180",
        secret: false,
        help: "TCP keep-alive of client connections, in seconds (0 = off)",
        apply: |c, v| {
            // Linux takes at most 32767 s (TCP_KEEPIDLE); more would silently be its 2 h default.
            c.gateway_keepalive_interval = Duration::from_secs(parse_in(v, 0..=32_767)?);
            Ok(())
        },
        show: |c| secs(c.gateway_keepalive_interval),
    },
    Setting {
        name: "HTTP_WORKER_FACTOR",
        default_value: Some("1"),
        default_doc: "1",
        secret: false,
        help: "threads serving HTTP connections, per CPU",
        apply: |c, v| {
            c.http_worker_factor = parse_in(v, 0..=64)?;
            Ok(())
        },
        show: |c| c.http_worker_factor.to_string(),
    },
    Setting {
        name: "HTTP_WORKER_MIN",
        default_value: Some("1"),
        default_doc: "1",
        secret: false,
        help: "at least this many threads serving HTTP connections",
        apply: |c, v| {
            c.http_worker_min = parse_in(v, 1..=1024)?;
            Ok(())
        },
        show: |c| c.http_worker_min.to_string(),
    },
    Setting {
        name: "HTTP_QUEUE_FACTOR",
        default_value: Some("1024"),
        default_doc: "1024",
        secret: false,
        help: "concurrent requests per worker before load shedding (503)",
        apply: |c, v| {
            c.http_queue_factor = parse_u32(v)?;
            Ok(())
        },
        show: |c| c.http_queue_factor.to_string(),
    },
    Setting {
        name: "HTTP_QUEUE_MIN",
        default_value: Some("1024"),
        default_doc: "1024",
        secret: false,
        help: "at least this many concurrent requests before load shedding",
        apply: |c, v| {
            c.http_queue_min = parse_in(v, 1..=u32::MAX)?;
            Ok(())
        },
        show: |c| c.http_queue_min.to_string(),
    },
    Setting {
        name: "ROUTE_STRATEGY",
        default_value: Some("ordered"),
        default_doc: "ordered",
        secret: false,
        help: "ordered | round-robin | headroom",
        apply: |c, v| {
            c.route_strategy = v.parse()?;
            Ok(())
        },
        show: |c| c.route_strategy.as_str().to_string(),
    },
];

/// One line of `codexpool config`: the effective value and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SettingView {
    /// The name without prefix.
    pub name: &'static str,
    /// The effective value (`*****` for secrets that are set).
    pub value: String,
    /// Where it came from, e.g. `default`, `env CODEXPOOL_DB_PATH`.
    pub source: String,
    /// The documented default.
    pub default: &'static str,
    /// One line on what it does.
    pub help: &'static str,
    /// Why the value as given is invalid (absent when it is valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Values read from an env file.
#[derive(Clone, Default)]
pub struct EnvFile {
    /// The file.
    pub path: PathBuf,
    /// Its variables.
    pub vars: HashMap<String, String>,
}

/// The path and the variables' names: the values may be secrets.
impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("EnvFile")
            .field("path", &self.path)
            .field("vars", &names)
            .finish()
    }
}

impl EnvFile {
    /// Reads an env file (dotenv syntax).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let error = |e: dotenvy::Error| ConfigError {
            var: ENV_FILE.into(),
            value: path.display().to_string(),
            message: env_file_message(path, &e),
            setting: None,
            file: None,
        };
        let mut vars = HashMap::new();
        for item in dotenvy::from_path_iter(path).map_err(error)? {
            let (k, v) = item.map_err(error)?;
            vars.insert(k, v);
        }
        Ok(Self {
            path: path.to_path_buf(),
            vars,
        })
    }

    /// The first env file among [`ENV_FILE_NAMES`] in `dirs`, in order. A `.env` that names
    /// none of our variables belongs to another tool and is passed over (it neither hides a
    /// `codexpool.env` further on nor breaks us with syntax we do not need).
    pub fn discover(dirs: &[PathBuf]) -> Result<Option<Self>, ConfigError> {
        for dir in dirs {
            for name in ENV_FILE_NAMES {
                let p = dir.join(name);
                if !p.is_file() || (name == ".env" && !mentions_our_variables(&p)) {
                    continue;
                }
                return Self::read(&p).map(Some);
            }
        }
        Ok(None)
    }
}

fn mentions_our_variables(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|text| text.contains(ENV_PREFIX) || text.contains(LEGACY_ENV_PREFIX))
}

/// dotenvy's own message quotes the bad line, and everything after it when a quote is left
/// open: it may hold secrets. Ours names the line number and the variable only.
fn env_file_message(path: &Path, e: &dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(text, _) = e else {
        return e.to_string();
    };
    // dotenvy quotes the rest of the file from the line, or from the place in it, it stopped at.
    let first = text.lines().next().unwrap_or_default();
    let all = std::fs::read_to_string(path).unwrap_or_default();
    let (number, whole) = match all.find(first) {
        Some(at) => {
            let n = all[..at].matches('\n').count();
            (Some(n + 1), all.lines().nth(n).unwrap_or(first))
        }
        None => (None, first),
    };
    let (name, value) = match whole.split_once('=') {
        Some((k, v)) => (
            Some(k.trim().trim_start_matches("export ").trim()),
            v.trim(),
        ),
        None => (None, ""),
    };
    let name =
        name.filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let at = match (number, name) {
        (Some(n), Some(k)) => format!("line {n} ({k})"),
        (Some(n), None) => format!("line {n}"),
        (None, Some(k)) => format!("the line of {k}"),
        (None, None) => "a line".into(),
    };
    let why = if !value.starts_with(['"', '\'']) && value.contains(char::is_whitespace) {
        "a value with spaces needs quotes"
    } else {
        "an unclosed quote?"
    };
    format!("{at} cannot be parsed ({why}); the value is not shown")
}

/// Settings read as far as they go: [`Config::load_env`] and [`Config::load`] apply every
/// valid value and collect the invalid ones (their settings keep the default), so that a
/// listing can show them all; [`Loaded::into_config`] turns any of them into an error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded {
    /// The settings, with the defaults where a value was invalid.
    pub config: Config,
    /// Every invalid value, in the order of [`SETTINGS`].
    pub invalid: Vec<ConfigError>,
}

impl Loaded {
    /// The settings, or the first invalid value.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        match self.invalid.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.config),
        }
    }
}

/// Variables with our prefix that are not settings: the key the README's Codex CLI setup reads
/// (`env_key = "CODEXPOOL_KEY"`) and the test scripts' own. They draw no "unknown" warning.
const OTHER_VARIABLES: [&str; 4] = [
    "CODEXPOOL_KEY",
    "CODEXPOOL_CODEX_BIN",
    "CODEXPOOL_FFI_DIR",
    "CODEXPOOL_TEST_CHILD_DB",
];

/// The number of one-character edits between two names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The setting a mistyped bare name most likely meant: the nearest within two edits (one for
/// short names), compared without regard to case.
fn nearest_setting(bare: &str) -> Option<&'static str> {
    let bare = bare.to_ascii_uppercase();
    let most = if bare.len() < 6 { 1 } else { 2 };
    SETTINGS
        .iter()
        .map(|s| (edit_distance(&bare, s.name), s.name))
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// The warning for a variable that looks meant for us but is no setting, or `None`. `ours`
/// says the variable sits in one of our own env files (not the process environment, not a
/// generic `.env`): there a bare setting name, or a near miss of a prefixed one, is ours too.
fn unknown_variable(name: &str, place: &str, ours: bool) -> Option<String> {
    if OTHER_VARIABLES.contains(&name) {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    let prefixed = [ENV_PREFIX, LEGACY_ENV_PREFIX]
        .into_iter()
        .find_map(|p| upper.strip_prefix(p).map(|bare| (p, bare)));
    if let Some((prefix, bare)) = prefixed {
        if name.starts_with(prefix) && SETTINGS.iter().any(|s| s.name == bare) {
            return None;
        }
        let hint = nearest_setting(bare)
            .map(|s| format!(" (did you mean {prefix}{s}?)"))
            .unwrap_or_default();
        return Some(format!(
            "unknown variable {name} in {place} is ignored{hint}"
        ));
    }
    if !ours {
        return None;
    }
    if let Some(s) = SETTINGS.iter().find(|s| s.name == upper) {
        return Some(format!(
            "{name} in {place} is ignored: settings need the {ENV_PREFIX} prefix \
             ({ENV_PREFIX}{})",
            s.name
        ));
    }
    // A misspelt prefix: `CODEXPOL_ROUTE_STRATEGY`.
    SETTINGS
        .iter()
        .map(|s| format!("{ENV_PREFIX}{}", s.name))
        .find(|full| edit_distance(&upper, full) <= 2)
        .map(|full| format!("unknown variable {name} in {place} is ignored (did you mean {full}?)"))
}

/// Warnings for the variables in the process environment that carry our prefix but name no
/// setting (sorted, so the order does not depend on the environment's).
fn unknown_in_environment(names: impl IntoIterator<Item = String>) -> Vec<String> {
    // Windows looks variables up without regard to case: `codexpool_db_path` is read there.
    let mut names: Vec<String> = names
        .into_iter()
        .map(|n| {
            if cfg!(windows) {
                n.to_ascii_uppercase()
            } else {
                n
            }
        })
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| unknown_variable(n, "the environment", false))
        .collect()
}

impl EnvFile {
    /// Warnings for this file's variables that look meant for us but name no setting. A
    /// generic `.env` may hold other tools' variables: only prefixed names are checked there.
    fn unknown_variables(&self) -> Vec<String> {
        let ours = self
            .path
            .file_name()
            .is_some_and(|n| n != std::ffi::OsStr::new(".env"));
        let place = self.path.display().to_string();
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| unknown_variable(n, &place, ours))
            .collect()
    }
}

impl Config {
    /// Settings from the process environment, then the first env file found in the current
    /// directory or beside the executable, then the defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load_env()?.into_config()
    }

    /// [`Config::from_env`] that goes on past invalid values and collects them. Fails only
    /// when an env file cannot be parsed. Variables with our prefix that name no setting (and
    /// bare setting names in our own env files) become [`Config::warnings`].
    pub fn load_env() -> Result<Loaded, ConfigError> {
        Ok(Self::load_env_with(
            EnvFile::discover(&env_file_dirs())?.as_ref(),
        ))
    }

    /// [`Config::load_env`] that goes on past an env file that cannot be parsed too: the
    /// settings are then the environment's alone, and the file's error is the first of
    /// [`Loaded::invalid`] (for a listing of every setting, as `codexpool config` shows).
    pub fn load_env_listing() -> Loaded {
        match EnvFile::discover(&env_file_dirs()) {
            Ok(file) => Self::load_env_with(file.as_ref()),
            Err(e) => {
                let mut loaded = Self::load_env_with(None);
                loaded.invalid.insert(0, e);
                loaded
            }
        }
    }

    fn load_env_with(file: Option<&EnvFile>) -> Loaded {
        let mut loaded = Self::load(|k| std::env::var(k).ok(), file);
        // A value that is not Unicode cannot be read: an error naming its variable, not the
        // default in its place (a `DB_PATH` read so would be another database).
        for s in SETTINGS {
            for var in [
                format!("{ENV_PREFIX}{}", s.name),
                format!("{LEGACY_ENV_PREFIX}{}", s.name),
            ] {
                if std::env::var_os(&var).is_some_and(|v| v.to_str().is_none()) {
                    loaded.invalid.push(ConfigError {
                        var,
                        value: "*****".into(),
                        message: "not valid UTF-8 text".into(),
                        setting: Some(s.name),
                        file: None,
                    });
                }
            }
        }
        let names = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned());
        loaded.config.warnings.extend(unknown_in_environment(names));
        loaded
    }

    /// Settings from a variable lookup (the process environment in production, a map in tests)
    /// and an optional env file that fills only what the lookup lacks.
    pub fn from_lookup(
        env: impl Fn(&str) -> Option<String>,
        file: Option<&EnvFile>,
    ) -> Result<Self, ConfigError> {
        Self::load(env, file).into_config()
    }

    /// [`Config::from_lookup`] that goes on past invalid values and collects them; the env
    /// file's unknown variables become warnings.
    pub fn load(env: impl Fn(&str) -> Option<String>, file: Option<&EnvFile>) -> Loaded {
        let mut c = Self::default();
        let mut invalid = Vec::new();
        for s in SETTINGS {
            let names = [
                format!("{ENV_PREFIX}{}", s.name),
                format!("{LEGACY_ENV_PREFIX}{}", s.name),
            ];
            let found = names
                .iter()
                .find_map(|n| env(n).map(|v| (v, Source::Env(n.clone()))))
                .or_else(|| {
                    let f = file?;
                    names.iter().find_map(|n| {
                        f.vars.get(n).map(|v| {
                            (
                                v.clone(),
                                Source::EnvFile {
                                    path: f.path.clone(),
                                    var: n.clone(),
                                },
                            )
                        })
                    })
                });
            if let Some((value, source)) = found {
                let var = match &source {
                    Source::Env(v) | Source::EnvFile { var: v, .. } => v.clone(),
                    _ => s.name.to_string(),
                };
                if let Err(e) = c.apply(s, &value, source, var) {
                    invalid.push(e);
                }
            }
        }
        if let Some(f) = file {
            c.warnings.extend(f.unknown_variables());
        }
        Loaded { config: c, invalid }
    }

    /// Sets one setting by name (with or without prefix, any case), as a flag would.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let upper = name.trim().to_ascii_uppercase().replace('-', "_");
        let bare = upper
            .strip_prefix(ENV_PREFIX)
            .or_else(|| upper.strip_prefix(LEGACY_ENV_PREFIX))
            .unwrap_or(&upper);
        let setting = SETTINGS
            .iter()
            .find(|s| s.name == bare)
            .ok_or_else(|| ConfigError {
                var: name.to_string(),
                // A misspelt secret's name must not show its value.
                value: "*****".into(),
                message: match nearest_setting(bare) {
                    Some(near) => format!("unknown setting (did you mean {near}?)"),
                    None => "unknown setting".into(),
                },
                setting: None,
                file: None,
            })?;
        self.apply(setting, value, Source::Explicit, setting.name.to_string())
    }

    /// Sets the database file from a path a program was given as an argument (the bindings'
    /// `db_path`): a leading `~` is the home directory, as for `DB_PATH`; the rest is taken as
    /// given. Unlike [`Config::set`], quotes are part of the path (an argument is not a line of
    /// an env file, where they would be taken off), as any other file API takes them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) naming `db_path` when the path is
    /// empty or only spaces.
    pub fn set_db_path(&mut self, path: impl Into<PathBuf>) -> crate::Result<()> {
        let path = path.into();
        if path.as_os_str().to_string_lossy().trim().is_empty() {
            return Err(crate::Error::invalid(
                "db_path",
                "expected a file path, not an empty one",
            ));
        }
        self.db_path = expand_home(path);
        self.sources.insert("DB_PATH", Source::Explicit);
        Ok(())
    }

    /// Builder-style [`Config::set`].
    pub fn with(mut self, name: &str, value: &str) -> Result<Self, ConfigError> {
        self.set(name, value)?;
        Ok(self)
    }

    fn apply(
        &mut self,
        s: &Setting,
        value: &str,
        source: Source,
        var: String,
    ) -> Result<(), ConfigError> {
        // Only an env file's reader takes quotes off; elsewhere (a shell's `export`, docker's
        // --env-file, a manifest) they would be part of the value: a DB_PATH of `"/srv/x.db"`
        // is a relative path and a new, empty pool.
        let checked = if matches!(source, Source::EnvFile { .. }) || !quoted(value) {
            (s.apply)(self, value)
        } else {
            Err(IN_QUOTES.to_owned())
        };
        if let Err(message) = checked {
            let file = match source {
                Source::EnvFile { path, .. } => Some(path),
                _ => None,
            };
            return Err(ConfigError {
                var,
                value: if s.secret {
                    "*****".into()
                } else {
                    without_password(value)
                },
                message,
                setting: Some(s.name),
                file,
            });
        }
        // A relative database path in an env file is relative to the file, not to wherever
        // the program was started: an env file beside the executable names the same database
        // from every working directory (a service's is often `/`).
        if let Source::EnvFile { path, .. } = &source
            && s.name == "DB_PATH"
            && self.db_path.is_relative()
            && let Some(dir) = path.parent()
        {
            self.db_path = dir.join(&self.db_path);
        }
        self.sources.insert(s.name, source);
        Ok(())
    }

    /// Where a setting's value came from.
    pub fn source_of(&self, name: &str) -> Source {
        self.sources.get(name).cloned().unwrap_or(Source::Default)
    }

    /// Every setting with its effective value and source; secrets hidden.
    pub fn describe(&self) -> Vec<SettingView> {
        self.describe_with_errors(&[])
    }

    /// [`Config::describe`], where each setting that has an error in `invalid` shows the value
    /// as given (secrets and passwords hidden), where it came from, and the error.
    pub fn describe_with_errors(&self, invalid: &[ConfigError]) -> Vec<SettingView> {
        SETTINGS
            .iter()
            .map(|s| {
                let bad = invalid.iter().find(|e| e.setting == Some(s.name));
                SettingView {
                    name: s.name,
                    value: bad.map_or_else(|| s.shown(self), |e| e.value.clone()),
                    source: bad
                        .and_then(ConfigError::origin)
                        .unwrap_or_else(|| self.source_of(s.name))
                        .to_string(),
                    default: s.default_doc,
                    help: s.help,
                    error: bad.map(|e| e.message.clone()),
                }
            })
            .collect()
    }

    /// The directory holding the database (and the RPC token file).
    pub fn db_dir(&self) -> PathBuf {
        self.db_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned(), None)
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = Config::default();
        assert_eq!(c.service_addr.to_string(), "127.0.0.1:48760");
        assert_eq!(c.issuer, "https://auth.openai.com");
        assert_eq!(c.client_id, "app_EMoamEEZ73f0CkXaXp7hrann");
        assert_eq!(c.originator, "codex_cli_rs");
        assert_eq!(c.redirect_uri, "http://localhost:1455/auth/callback");
        assert_eq!(c.login_addr, "localhost:1455");
        assert_eq!(c.upstream_base_url, "https://chatgpt.com/backend-api/codex");
        assert_eq!(c.usage_poll_interval, Duration::from_secs(600));
        assert_eq!(c.request_gate_wait_timeout, Duration::from_millis(300));
        assert_eq!(c.front_proxy_max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(c.route_strategy, RouteStrategy::Ordered);
        assert!(c.db_path.ends_with("codexpool/codexpool.db"));
        assert!(c.warnings.is_empty());
        // Every textual default parses.
        for s in SETTINGS {
            if let Some(d) = s.default_value {
                let mut c = Config::default();
                assert!((s.apply)(&mut c, d).is_ok(), "{}", s.name);
            }
        }
    }

    #[test]
    fn cors_origins_are_origins() {
        let origins = |v: &str| {
            let mut c = Config::default();
            c.set("CORS_ALLOW_ORIGINS", v)
                .map(|()| c.cors_allow_origins)
        };
        assert_eq!(origins("*").unwrap(), ["*"]);
        assert_eq!(
            origins(" http://localhost:3000 , https://Chat.Example.com/ ").unwrap(),
            ["http://localhost:3000", "https://chat.example.com"]
        );
        assert!(origins("").unwrap().is_empty());
        for bad in [
            "localhost:3000",
            "http://localhost:3000/app",
            "file:///tmp/x.html",
            "*, http://a.example",
            "http://",
            "https://*.example.com",
        ] {
            let e = origins(bad).unwrap_err().to_string();
            assert!(e.contains("CORS_ALLOW_ORIGINS"), "{bad}: {e}");
        }
    }

    #[test]
    fn allowed_hosts_are_names() {
        let hosts = |v: &str| {
            let mut c = Config::default();
            c.set("ALLOWED_HOSTS", v).map(|()| c.allowed_hosts)
        };
        assert_eq!(hosts("*").unwrap(), ["*"]);
        assert_eq!(
            hosts(" Gateway.LAN. , my_box ").unwrap(),
            ["gateway.lan", "my_box"]
        );
        assert!(hosts("").unwrap().is_empty());
        for bad in [
            "http://gateway.lan",
            "gateway.lan:48760",
            "*.example.com",
            "a..b",
            "*, gateway.lan",
            "gate way",
        ] {
            let e = hosts(bad).unwrap_err().to_string();
            assert!(e.contains("ALLOWED_HOSTS"), "{bad}: {e}");
        }
    }

    #[test]
    fn reads_prefixed_names_and_legacy_aliases() {
        let c = from(&[
            ("CODEXPOOL_SERVICE_ADDR", "127.0.0.1:9000"),
            ("GPTTOOLS_ACCOUNT_MAX_INFLIGHT", "3"),
            ("GPTTOOLS_SERVICE_ADDR", "127.0.0.1:1"),
        ])
        .unwrap();
        assert_eq!(
            c.service_addr.port(),
            9000,
            "CODEXPOOL_ wins over GPTTOOLS_"
        );
        assert_eq!(c.account_max_inflight, 3);
        assert_eq!(
            c.source_of("ACCOUNT_MAX_INFLIGHT"),
            Source::Env("GPTTOOLS_ACCOUNT_MAX_INFLIGHT".into())
        );
        assert_eq!(c.source_of("ISSUER"), Source::Default);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = from(&[("CODEXPOOL_ACCOUNT_MAX_INFLIGHT", "lots")]).unwrap_err();
        assert_eq!(e.var, "CODEXPOOL_ACCOUNT_MAX_INFLIGHT");
        assert!(
            e.to_string().contains("CODEXPOOL_ACCOUNT_MAX_INFLIGHT"),
            "{e}"
        );
        let e = from(&[("GPTTOOLS_ROUTE_STRATEGY", "random")]).unwrap_err();
        assert!(e.to_string().contains("GPTTOOLS_ROUTE_STRATEGY"), "{e}");
        // Too large is said so, with the bounds, not "not a number".
        let e = from(&[("CODEXPOOL_ACCOUNT_MAX_INFLIGHT", "99999999999")]).unwrap_err();
        assert!(e.to_string().contains("from 0 to 4294967295"), "{e}");
        // A setting that starts at 1 says so, also when the value is too large.
        for v in ["0", "99999999999999999999"] {
            let e = from(&[("CODEXPOOL_FRONT_PROXY_MAX_BODY_BYTES", v)]).unwrap_err();
            assert!(e.to_string().contains("from 1 to "), "{e}");
        }
        for (k, v) in [
            ("CODEXPOOL_SERVICE_ADDR", "nowhere"),
            ("CODEXPOOL_ISSUER", "ftp://x"),
            ("CODEXPOOL_USAGE_BASE_URL", "not a url"),
            ("CODEXPOOL_DISABLE_POLLING", "maybe"),
            ("CODEXPOOL_LOGIN_ADDR", "localhost"),
            ("CODEXPOOL_LOGIN_ADDR", "localhost:99999"),
            ("CODEXPOOL_FRONT_PROXY_MAX_BODY_BYTES", "0"),
            ("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "-5"),
            // Beyond a day: a bound, as for the other durations (the poller's jitter once
            // overflowed on such values and stopped polling).
            ("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "86401"),
            ("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "18446744073709551615"),
            // 0 is not "no limit" here: a zero timeout would cut every stream.
            ("CODEXPOOL_UPSTREAM_STREAM_IDLE_TIMEOUT_SECS", "0"),
            ("CODEXPOOL_UPSTREAM_CONNECT_TIMEOUT_SECS", "0"),
            ("CODEXPOOL_HTTP_WORKER_FACTOR", "4000000000"),
            ("CODEXPOOL_HTTP_WORKER_MIN", "0"),
            ("CODEXPOOL_HTTP_QUEUE_MIN", "0"),
            ("CODEXPOOL_GATEWAY_KEEPALIVE_INTERVAL_SECS", "86400"),
            // Seconds typed into a millisecond setting (×1000).
            ("CODEXPOOL_REQUEST_GATE_WAIT_TIMEOUT_MS", "300000000"),
            (
                "CODEXPOOL_REQUEST_GATE_WAIT_TIMEOUT_MS",
                "18446744073709551615",
            ),
            // Quotes outside an env file are part of the value.
            ("CODEXPOOL_DB_PATH", "\"/tmp/x.db\""),
            ("CODEXPOOL_RPC_TOKEN", "'tok-1234567890'"),
        ] {
            let e = from(&[(k, v)]).unwrap_err();
            assert_eq!(e.var, k, "{v}");
        }
    }

    #[test]
    fn listen_addresses_take_host_names_and_hint_at_a_bare_port() {
        let addr = |v: &str| parse_listen_addr(v).map(|a| a.to_string());
        assert_eq!(addr("127.0.0.1:48760").unwrap(), "127.0.0.1:48760");
        assert_eq!(addr(" [::1]:80 ").unwrap(), "[::1]:80");
        // `localhost` is IPv4 loopback, as for LOGIN_ADDR, whatever the resolver puts first.
        assert_eq!(addr("localhost:0").unwrap(), "127.0.0.1:0");
        assert_eq!(addr("LocalHost:9").unwrap(), "127.0.0.1:9");
        assert_eq!(
            addr("48761").unwrap_err(),
            "expected host:port; did you mean 127.0.0.1:48761?"
        );
        assert_eq!(
            addr("nowhere").unwrap_err(),
            "expected host:port, e.g. 127.0.0.1:48760"
        );
        assert_eq!(
            addr("localhost:99999").unwrap_err(),
            "the port must be a number from 0 to 65535"
        );
        assert!(addr("no-such-host.invalid:80").is_err());
        // Quotes a shell or unit file kept (`--addr '"…"'`) are named, not a bad port.
        for quoted in ["\"127.0.0.1:0\"", "'localhost:80'"] {
            assert_eq!(addr(quoted).unwrap_err(), IN_QUOTES);
        }
        let c = Config::default()
            .with("SERVICE_ADDR", "localhost:7000")
            .unwrap();
        assert_eq!(c.service_addr.to_string(), "127.0.0.1:7000");
    }

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let home = std::env::home_dir().unwrap();
        assert_eq!(
            expand_home("~/.codex/auth.json"),
            home.join(".codex/auth.json")
        );
        assert_eq!(expand_home("~"), home);
        for kept in ["~bob/x", "/tmp/~/x", "rel/~", "x.json"] {
            assert_eq!(expand_home(kept), PathBuf::from(kept));
        }
    }

    #[test]
    fn passwords_in_urls_are_hidden_in_listings_and_errors() {
        let c = from(&[(
            "CODEXPOOL_UPSTREAM_FALLBACK_BASE_URL",
            "https://user:p4ssw0rd@example.com/v1",
        )])
        .unwrap();
        let listing = format!("{:?}", c.describe());
        assert!(!listing.contains("p4ssw0rd"), "{listing}");
        assert!(!format!("{c:?}").contains("p4ssw0rd"));
        assert!(
            listing.contains("https://user:*****@example.com/v1"),
            "{listing}"
        );
        let e = from(&[("CODEXPOOL_ISSUER", "ftp://user:p4ssw0rd@example.com")]).unwrap_err();
        assert!(!e.to_string().contains("p4ssw0rd"), "{e}");
        assert_eq!(
            without_password("https://example.com/a@b:c"),
            "https://example.com/a@b:c"
        );
        assert_eq!(without_password("http://user@host"), "http://user@host");
    }

    #[test]
    fn loopback_urls() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://127.8.0.1",
            "http://localhost:1455/cb",
            "http://[::1]:80/",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "https://chatgpt.com",
            "http://10.0.0.1",
            "not a url",
            "http://localhost.example.com",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn an_empty_flag_is_off_except_disable_polling() {
        let c = from(&[
            ("CODEXPOOL_ALLOW_NON_LOOPBACK_LOGIN_ADDR", ""),
            ("CODEXPOOL_DISABLE_POLLING", ""),
        ])
        .unwrap();
        assert!(!c.allow_non_loopback_login_addr, "blank keeps the check on");
        assert!(c.disable_polling, "DISABLE_POLLING: set = off");
        let c = from(&[("CODEXPOOL_ALLOW_NON_LOOPBACK_LOGIN_ADDR", "yes")]).unwrap();
        assert!(c.allow_non_loopback_login_addr);
        let e = from(&[("CODEXPOOL_HTTP_WORKER_FACTOR", "65")]).unwrap_err();
        assert!(e.to_string().contains("from 0 to 64"), "{e}");
    }

    #[test]
    fn secrets_are_hidden_in_errors_listings_and_debug() {
        let c = from(&[
            ("CODEXPOOL_RPC_TOKEN", "tok-123"),
            ("CODEXPOOL_UPSTREAM_COOKIE", "c=1"),
        ])
        .unwrap();
        assert_eq!(c.rpc_token.as_ref().map(Secret::expose), Some("tok-123"));
        let listing = format!("{:?}", c.describe());
        assert!(
            !listing.contains("tok-123") && !listing.contains("c=1"),
            "{listing}"
        );
        assert!(!format!("{c:?}").contains("tok-123"));
    }

    /// A misspelt name, a URL without its scheme, an env file in `Debug`: no value shown.
    #[test]
    fn errors_and_debug_output_show_no_values_that_may_be_secrets() {
        let e = Config::default()
            .set("RPC_TOKN", "hunter2-secret")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("did you mean RPC_TOKEN?"), "{e}");
        let e = from(&[(
            "CODEXPOOL_UPSTREAM_FALLBACK_BASE_URL",
            "user:hunter2@host:8080",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("user:*****@host"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "CODEXPOOL_RPC_TOKEN=tok-xyz-secret\n").unwrap();
        let file = EnvFile::read(&path).unwrap();
        let shown = format!("{file:?}");
        assert!(
            !shown.contains("tok-xyz") && shown.contains("CODEXPOOL_RPC_TOKEN"),
            "{shown}"
        );
    }

    /// Quotes are taken off only in an env file; elsewhere they make the value an error.
    #[test]
    fn quoted_values_outside_an_env_file_are_refused() {
        let e = from(&[("CODEXPOOL_DB_PATH", "'/tmp/x.db'")]).unwrap_err();
        assert!(e.to_string().contains("remove them"), "{e}");
        let e = Config::default()
            .set("upstream_cookie", "\"a=b\"")
            .unwrap_err();
        assert_eq!(e.setting, Some("UPSTREAM_COOKIE"));
        assert!(!e.to_string().contains("a=b"), "secret: {e}");
        // Inner quotes, or one alone, are values like any other.
        let c = from(&[("CODEXPOOL_UPSTREAM_COOKIE", "a=\"b\"; c=d")]).unwrap();
        assert!(c.upstream_cookie.is_some());
        assert!(from(&[("CODEXPOOL_DB_PATH", "\"")]).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "CODEXPOOL_DB_PATH=\"/tmp/y.db\"\n").unwrap();
        let file = EnvFile::read(&path).unwrap();
        let c = Config::load(|_| None, Some(&file)).into_config().unwrap();
        assert_eq!(c.db_path, std::path::Path::new("/tmp/y.db"));
    }

    /// A relative `DB_PATH` is relative to the env file that says it (found beside the
    /// executable, say), and to the working directory everywhere else.
    #[test]
    fn a_relative_db_path_in_an_env_file_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codexpool.env");
        std::fs::write(&path, "CODEXPOOL_DB_PATH=data/pool.db\n").unwrap();
        let file = EnvFile::read(&path).unwrap();
        let c = Config::load(|_| None, Some(&file)).into_config().unwrap();
        assert_eq!(c.db_path, dir.path().join("data/pool.db"));
        let c = from(&[("CODEXPOOL_DB_PATH", "data/pool.db")]).unwrap();
        assert_eq!(c.db_path, std::path::Path::new("data/pool.db"));
        // A leading `~` is still the home directory.
        std::fs::write(&path, "CODEXPOOL_DB_PATH=~/pool.db\n").unwrap();
        let file = EnvFile::read(&path).unwrap();
        let c = Config::load(|_| None, Some(&file)).into_config().unwrap();
        assert_eq!(c.db_path, expand_home("~/pool.db"));
    }

    #[test]
    fn a_short_rpc_token_draws_a_warning_without_its_value() {
        let c = from(&[("CODEXPOOL_RPC_TOKEN", "hunter2")]).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("RPC_TOKEN is short (7 characters)"));
        assert!(!c.warnings[0].contains("hunter2"));
        let c = from(&[("CODEXPOOL_RPC_TOKEN", &"x".repeat(32))]).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn poll_interval_is_clamped_with_a_warning() {
        let c = from(&[("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "5")]).unwrap();
        assert_eq!(c.usage_poll_interval, MIN_POLL_INTERVAL);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("USAGE_POLL_INTERVAL_SECS"));
        let c = from(&[("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "86400")]).unwrap();
        assert_eq!(c.usage_poll_interval, MAX_POLL_INTERVAL);
        let e = from(&[("CODEXPOOL_USAGE_POLL_INTERVAL_SECS", "86401")]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("from 30 to 86400 (less is raised to 30)"), "{e}");
    }

    #[test]
    fn chatgpt_origin_normalises_to_the_codex_backend() {
        let c = from(&[("CODEXPOOL_UPSTREAM_BASE_URL", "https://chat.openai.com/")]).unwrap();
        assert_eq!(
            c.upstream_base_url,
            "https://chat.openai.com/backend-api/codex"
        );
        let c = from(&[(
            "CODEXPOOL_UPSTREAM_BASE_URL",
            "http://127.0.0.1:9/backend-api/codex/",
        )])
        .unwrap();
        assert_eq!(c.upstream_base_url, "http://127.0.0.1:9/backend-api/codex");
    }

    #[test]
    fn env_file_fills_only_what_the_environment_lacks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "CODEXPOOL_ACCOUNT_MAX_INFLIGHT=9\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("gpttools.env"),
            "GPTTOOLS_ACCOUNT_MAX_INFLIGHT=4\nCODEXPOOL_SERVICE_ADDR=127.0.0.1:7000\n# comment\n",
        )
        .unwrap();
        let file = EnvFile::discover(&[dir.path().to_path_buf()])
            .unwrap()
            .unwrap();
        assert!(
            file.path.ends_with("gpttools.env"),
            "gpttools.env comes before .env"
        );
        let env: HashMap<String, String> = [(
            "CODEXPOOL_SERVICE_ADDR".to_string(),
            "127.0.0.1:8000".to_string(),
        )]
        .into();
        let c = Config::from_lookup(|k| env.get(k).cloned(), Some(&file)).unwrap();
        assert_eq!(c.service_addr.port(), 8000, "the environment wins");
        assert_eq!(c.account_max_inflight, 4);
        assert!(matches!(
            c.source_of("ACCOUNT_MAX_INFLIGHT"),
            Source::EnvFile { .. }
        ));
        let described = c.describe();
        let row = described
            .iter()
            .find(|r| r.name == "ACCOUNT_MAX_INFLIGHT")
            .unwrap();
        assert!(row.source.contains("gpttools.env"), "{}", row.source);
    }

    #[test]
    fn malformed_env_file_is_an_error_that_shows_no_value() {
        let dir = tempfile::tempdir().unwrap();
        // What reading an env file of `text` says.
        let error_for = |text: &str| {
            std::fs::write(dir.path().join("codexpool.env"), text).unwrap();
            let e = EnvFile::discover(&[dir.path().to_path_buf()]).unwrap_err();
            e.to_string()
        };
        let shown = error_for(
            "# settings\nCODEXPOOL_ROUTE_STRATEGY='ordered\nCODEXPOOL_RPC_TOKEN=tok-secret-1\n",
        );
        assert_eq!(
            shown,
            format!(
                "cannot read {}: line 2 (CODEXPOOL_ROUTE_STRATEGY) cannot be parsed (an \
                 unclosed quote?); the value is not shown",
                dir.path().join("codexpool.env").display()
            )
        );
        assert!(
            !shown.contains("tok-secret-1") && !shown.contains("ordered"),
            "{shown}"
        );
        // A space outside quotes is said as such.
        let shown = error_for(
            "CODEXPOOL_LOGIN_ADDR=127.0.0.1:1455\nCODEXPOOL_ROUTE_STRATEGY=round robin\n",
        );
        assert!(
            shown.ends_with(
                "line 2 (CODEXPOOL_ROUTE_STRATEGY) cannot be parsed (a value with spaces needs \
                 quotes); the value is not shown"
            ),
            "{shown}"
        );
        assert!(!shown.contains("robin"), "{shown}");
    }

    #[test]
    fn another_tools_dot_env_is_passed_over() {
        let cwd = tempfile::tempdir().unwrap();
        let beside_exe = tempfile::tempdir().unwrap();
        // Not ours, and not even valid dotenv syntax.
        std::fs::write(
            cwd.path().join(".env"),
            "NODE_ENV=development\nJSON={\"a\": 1}\n",
        )
        .unwrap();
        std::fs::write(
            beside_exe.path().join("codexpool.env"),
            "CODEXPOOL_ACCOUNT_MAX_INFLIGHT=2\n",
        )
        .unwrap();
        let dirs = [cwd.path().to_path_buf(), beside_exe.path().to_path_buf()];
        let file = EnvFile::discover(&dirs).unwrap().unwrap();
        assert!(file.path.ends_with("codexpool.env"), "{:?}", file.path);
        // A `.env` that does set our variables is read (and its errors are reported).
        std::fs::write(
            cwd.path().join(".env"),
            "CODEXPOOL_ACCOUNT_MAX_INFLIGHT=\"3\n",
        )
        .unwrap();
        assert!(EnvFile::discover(&dirs).is_err());
    }

    #[test]
    fn invalid_values_are_collected_and_listed_as_given() {
        let map: HashMap<String, String> = [
            ("CODEXPOOL_ROUTE_STRATEGY", "bogus"),
            ("CODEXPOOL_ACCOUNT_MAX_INFLIGHT", "2"),
            ("CODEXPOOL_ISSUER", "ftp://user:p4ssw0rd@example.com"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let loaded = Config::load(|k| map.get(k).cloned(), None);
        assert_eq!(loaded.invalid.len(), 2);
        assert_eq!(loaded.config.account_max_inflight, 2, "valid values apply");
        assert_eq!(loaded.config.route_strategy, RouteStrategy::Ordered);
        let rows = loaded.config.describe_with_errors(&loaded.invalid);
        let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap().clone();
        let strategy = row("ROUTE_STRATEGY");
        assert_eq!(strategy.value, "bogus");
        assert_eq!(strategy.source, "env CODEXPOOL_ROUTE_STRATEGY");
        assert!(strategy.error.unwrap().contains("unknown strategy"));
        let issuer = row("ISSUER");
        assert_eq!(issuer.value, "ftp://user:*****@example.com");
        assert!(issuer.error.is_some());
        assert_eq!(row("ACCOUNT_MAX_INFLIGHT").error, None);
        let first = loaded.into_config().unwrap_err();
        assert_eq!(
            first.var, "CODEXPOOL_ISSUER",
            "the first in the table's order"
        );
        assert_eq!(first.setting, Some("ISSUER"));
    }

    #[test]
    fn an_invalid_value_from_an_env_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codexpool.env");
        std::fs::write(&path, "CODEXPOOL_ROUTE_STRATEGY=bogus\n").unwrap();
        let file = EnvFile::read(&path).unwrap();
        let loaded = Config::load(|_| None, Some(&file));
        let rows = loaded.config.describe_with_errors(&loaded.invalid);
        let row = rows.iter().find(|r| r.name == "ROUTE_STRATEGY").unwrap();
        assert_eq!(
            row.source,
            format!("{} (CODEXPOOL_ROUTE_STRATEGY)", path.display())
        );
        let e = loaded.into_config().unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "invalid CODEXPOOL_ROUTE_STRATEGY=\"bogus\" in {}: ",
                path.display()
            )),
            "{shown}"
        );
        // From the environment, no file is named.
        let e = from(&[("CODEXPOOL_ROUTE_STRATEGY", "bogus")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid CODEXPOOL_ROUTE_STRATEGY=\"bogus\": "),
            "{e}"
        );
    }

    #[test]
    fn unknown_variables_are_warned_about_with_a_suggestion() {
        let env = unknown_in_environment(
            [
                "CODEXPOOL_ROUTE_STRATEGI",
                "CODEXPOOL_ROUTE_STRATEGY",
                "GPTTOOLS_DB_PATHS",
                "CODEXPOOL_WHATEVER",
                "CODEXPOOL_KEY",
                "ROUTE_STRATEGY",
                "PATH",
            ]
            .map(String::from),
        );
        assert_eq!(
            env,
            [
                "unknown variable CODEXPOOL_ROUTE_STRATEGI in the environment is ignored (did \
                 you mean CODEXPOOL_ROUTE_STRATEGY?)",
                "unknown variable CODEXPOOL_WHATEVER in the environment is ignored",
                "unknown variable GPTTOOLS_DB_PATHS in the environment is ignored (did you \
                 mean GPTTOOLS_DB_PATH?)",
            ]
        );

        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("codexpool.env");
        std::fs::write(
            &ours,
            "ROUTE_STRATEGY=headroom\nCODEXPOOL_ACOUNT_MAX_INFLIGHT=2\nCODEXPOL_DB_PATH=x\n\
             RUST_LOG=debug\nCODEXPOOL_ISSUER=https://example.com\n",
        )
        .unwrap();
        let file = EnvFile::read(&ours).unwrap();
        let c = Config::from_lookup(|_| None, Some(&file)).unwrap();
        let at = ours.display();
        assert_eq!(
            c.warnings,
            [
                format!(
                    "unknown variable CODEXPOL_DB_PATH in {at} is ignored (did you mean \
                     CODEXPOOL_DB_PATH?)"
                ),
                format!(
                    "unknown variable CODEXPOOL_ACOUNT_MAX_INFLIGHT in {at} is ignored (did \
                     you mean CODEXPOOL_ACCOUNT_MAX_INFLIGHT?)"
                ),
                format!(
                    "ROUTE_STRATEGY in {at} is ignored: settings need the CODEXPOOL_ prefix \
                     (CODEXPOOL_ROUTE_STRATEGY)"
                ),
            ]
        );
        assert_eq!(c.route_strategy, RouteStrategy::Ordered);

        // A generic `.env` may hold anything of other tools: only our prefix is checked.
        let generic = dir.path().join(".env");
        std::fs::write(
            &generic,
            "ROUTE_STRATEGY=x\nCODEXPOL_DB_PATH=x\nCODEXPOOL_ROUTE_STRATEGI=headroom\n",
        )
        .unwrap();
        let file = EnvFile::read(&generic).unwrap();
        let c = Config::from_lookup(|_| None, Some(&file)).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("CODEXPOOL_ROUTE_STRATEGI"));
    }

    #[test]
    fn set_accepts_any_spelling_and_rejects_unknown_names() {
        let mut c = Config::default();
        c.set("route-strategy", "round_robin").unwrap();
        assert_eq!(c.route_strategy, RouteStrategy::RoundRobin);
        c.set("CODEXPOOL_DB_PATH", "/tmp/x.db").unwrap();
        assert_eq!(c.source_of("DB_PATH"), Source::Explicit);
        assert!(c.set("NOPE", "1").is_err());
    }

    /// A path given as an argument: blank is refused by its name, quotes are part of it.
    #[test]
    fn set_db_path_takes_a_path_as_given() {
        let mut c = Config::default();
        for blank in ["", "  "] {
            let e = c.set_db_path(blank).unwrap_err();
            assert!(
                matches!(&e, crate::Error::InvalidInput { field, .. } if field == "db_path"),
                "{e}"
            );
        }
        assert_eq!(
            c.source_of("DB_PATH"),
            Source::Default,
            "a refused path sets nothing"
        );
        c.set_db_path("'/tmp/q.db'").unwrap();
        assert_eq!(c.db_path, Path::new("'/tmp/q.db'"));
        assert_eq!(c.source_of("DB_PATH"), Source::Explicit);
        if let Some(home) = std::env::home_dir() {
            c.set_db_path("~/x.db").unwrap();
            assert_eq!(c.db_path, home.join("x.db"));
        }
    }
}
