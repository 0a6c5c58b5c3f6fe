//! The command line, as clap types: every command, flag and value parser of `codexpool`.
//! Values that can be checked without the database (durations, expiry times, efforts, statuses,
//! blank names, labels, tags, model and group names) are checked here, so a bad one is a usage
//! error (exit 2) naming the flag before anything runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use codexpool_core::keys::MAX_EXPIRY_AHEAD;
use codexpool_core::{AccountStatus, Timestamp};

/// Pool several ChatGPT (Codex) sign-ins behind one local OpenAI-compatible gateway.
#[derive(Debug, Parser)]
#[command(
    name = "codexpool",
    version,
    propagate_version = true,
    args_override_self = true,
    max_term_width = 100,
    after_help = "Settings come from CODEXPOOL_<NAME> variables, the first env file found among \
                  codexpool.env, gpttools.env, CodexManager.env and .env (in the current directory, \
                  then beside the executable), and defaults; `codexpool config` lists them.\n\
                  New here? Run `codexpool demo`."
)]
pub struct Cli {
    /// The SQLite database [default: CODEXPOOL_DB_PATH, else codexpool/codexpool.db in the user
    /// data directory: ~/.local/share on Linux, ~/Library/Application Support on macOS,
    /// %APPDATA% on Windows].
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        value_parser = path,
        help_heading = "Global options"
    )]
    pub db: Option<PathBuf>,

    /// Print JSON instead of tables and messages (stable shapes, for scripts).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Print only errors and what a command exists to output (listings, --json documents, a
    /// new key's secret alone, the URL or code of a sign-in, the base URL of `serve`): no
    /// confirmations, progress, notes or warnings.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    /// Show debug logs on stderr (-vv: trace).
    #[arg(short, long, global = true, action = ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Checks what clap cannot express: an `update` must change something; `logs -n 0` needs
    /// `--follow`. The error is a usage error (exit 2) in clap's format.
    pub fn check(&self) -> Result<(), clap::Error> {
        use clap::error::ErrorKind;
        let (path, kind, message) = match &self.command {
            Command::Account(AccountCommand::Update(a))
                if a.label.is_none()
                    && a.group.is_none()
                    && a.tags.is_empty()
                    && !a.clear_tags
                    && a.note.is_none()
                    && a.sort.is_none() =>
            {
                (
                    &["account", "update"][..],
                    ErrorKind::MissingRequiredArgument,
                    nothing_to_change("--label, --group, --tag, --clear-tags, --note or --sort"),
                )
            }
            Command::Key(KeyCommand::Update(k))
                if k.name.is_none()
                    && k.model.is_none()
                    && k.allow_models.is_empty()
                    && !k.clear_allowed_models
                    && k.allow_groups.is_empty()
                    && !k.clear_allowed_groups
                    && k.effort.is_none()
                    && !k.clear_effort
                    && k.expires.is_none() =>
            {
                (
                    &["key", "update"][..],
                    ErrorKind::MissingRequiredArgument,
                    nothing_to_change(
                        "--name, --model, --allow-model, --clear-allowed-models, --allow-group, \
                         --clear-allowed-groups, --effort, --clear-effort or --expires",
                    ),
                )
            }
            Command::Logs(l) if l.limit == 0 && !l.follow => (
                &["logs"][..],
                ErrorKind::ValueValidation,
                "invalid value '0' for '--limit <N>': 0 shows no request; it is for --follow, \
                 to print only new ones"
                    .to_string(),
            ),
            _ => return Ok(()),
        };
        let mut cmd = <Self as clap::CommandFactory>::command();
        cmd.build();
        let mut sub = &mut cmd;
        for name in path {
            match sub.find_subcommand_mut(name) {
                Some(s) => sub = s,
                None => return Ok(()),
            }
        }
        Err(sub.error(kind, message))
    }
}

fn nothing_to_change(flags: &str) -> String {
    format!("nothing to change: give at least one of {flags}")
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: OpenAI-compatible API, admin /rpc, usage poller, token refresher.
    Serve(ServeArgs),
    /// See the whole product work against a built-in fake OpenAI (temporary database, no account
    /// needed).
    Demo,
    /// Sign in, import, export, list and organise ChatGPT accounts.
    #[command(subcommand, visible_alias = "accounts")]
    Account(AccountCommand),
    /// Create and manage the API keys clients use ("platform keys").
    #[command(subcommand, visible_alias = "keys")]
    Key(KeyCommand),
    /// Each account's 5-hour and weekly usage.
    Usage(UsageArgs),
    /// Tokens used through the gateway, per key, account, model or day.
    Tokens(TokensArgs),
    /// The request log.
    #[command(visible_alias = "log")]
    Logs(LogsArgs),
    /// Every setting with its effective value and where it came from (secrets hidden).
    Config,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address, host:port [default: CODEXPOOL_SERVICE_ADDR, else 127.0.0.1:48760];
    /// localhost is 127.0.0.1; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", value_parser = codexpool_core::config::parse_listen_addr)]
    pub addr: Option<SocketAddr>,
}

/// `account …`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Sign a ChatGPT account in (browser, or --device for a code to type elsewhere).
    Login(LoginArgs),
    /// Finish a sign-in by pasting the URL the browser was redirected to.
    Complete {
        /// The full redirect URL (`http://localhost:1455/auth/callback?code=…&state=…`).
        #[arg(value_name = "REDIRECT_URL")]
        redirect_url: Sensitive,
    },
    /// Import Codex CLI auth.json files or a codexpool export (a file, a folder, or - for stdin).
    Import {
        /// A file, a Codex CLI home (its auth.json), a folder of *.json files (or of Codex CLI
        /// homes, `<dir>/*/auth.json`), or `-` to read stdin.
        #[arg(value_name = "FILE|DIR|-", value_parser = not_blank_as_given)]
        source: String,
        /// For Codex CLI sign-ins: refresh the tokens now, so codexpool alone holds the live
        /// refresh token (that Codex CLI must then sign in again).
        #[arg(long)]
        take_over: bool,
    },
    /// Export accounts with their tokens (JSON; to stdout unless -o).
    Export {
        /// Write to this file (mode 0600) instead of stdout (`-` is stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        filter: AccountFilterArgs,
    },
    /// List accounts with their usage.
    #[command(visible_alias = "ls")]
    List(AccountFilterArgs),
    /// Change an account's label, group, tags, note or sort priority.
    Update(AccountUpdateArgs),
    /// Let an account serve requests again.
    Enable(AccountIdArg),
    /// Stop an account from serving requests (until enabled).
    Disable(AccountIdArg),
    /// Delete an account and its usage readings.
    #[command(visible_alias = "rm")]
    Remove(AccountIdArg),
}

/// A value that `Debug` must not print: a redirect URL carries a one-time sign-in code.
#[derive(Clone)]
pub struct Sensitive(pub String);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("*****")
    }
}

impl std::str::FromStr for Sensitive {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        not_blank(s)?;
        Ok(Self(s.to_string()))
    }
}

/// An account: its id, a unique prefix of it, or its exact label or email.
#[derive(Debug, Args)]
pub struct AccountIdArg {
    /// The account id or a unique prefix of it (else its exact label or email).
    #[arg(value_name = "ID", value_parser = not_blank)]
    pub id: String,
}

/// A key: its id, a unique prefix of it, or its exact name.
#[derive(Debug, Args)]
pub struct KeyIdArg {
    /// The key id or a unique prefix of it (else its exact name).
    #[arg(value_name = "ID", value_parser = not_blank)]
    pub id: String,
}

/// `account login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Sign in with a device code (for machines without a browser).
    #[arg(long)]
    pub device: bool,
    /// Do not try to open a browser; just print the URL.
    #[arg(long)]
    pub no_browser: bool,
    /// Do not listen for the browser's callback (its port is taken, or the browser is on
    /// another machine): finish with `codexpool account complete <URL>` in another terminal.
    #[arg(long, conflicts_with = "device")]
    pub no_listen: bool,
    /// Label of the account [default: its email].
    #[arg(long, value_name = "LABEL", value_parser = label)]
    pub label: Option<String>,
    /// Put the account in this group.
    #[arg(long, value_name = "GROUP", value_parser = group)]
    pub group: Option<String>,
    /// Give the account this tag (repeatable).
    #[arg(long = "tag", value_name = "TAG", value_parser = tag)]
    pub tags: Vec<String>,
    /// A note on the account.
    #[arg(long, value_name = "TEXT", value_parser = note)]
    pub note: Option<String>,
    /// Pin the sign-in to this ChatGPT workspace id.
    #[arg(long, value_name = "ID", value_parser = not_blank)]
    pub workspace: Option<String>,
}

/// Account list filters.
#[derive(Debug, Args, Default)]
pub struct AccountFilterArgs {
    /// Only accounts in this group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Only accounts with this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only accounts with this status.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<StatusArg>,
}

/// An account status on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// Usable.
    Active,
    /// Turned off by a person.
    Disabled,
    /// Needs a new sign-in (the tables say `needs sign-in`).
    #[value(name = "needs_login", aliases = ["needs-login", "needs-sign-in"])]
    NeedsLogin,
    /// Deactivated by OpenAI (the tables say `deactivated`).
    #[value(alias = "deactivated")]
    Banned,
}

impl From<StatusArg> for AccountStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Active => Self::Active,
            StatusArg::Disabled => Self::Disabled,
            StatusArg::NeedsLogin => Self::NeedsLogin,
            StatusArg::Banned => Self::Banned,
        }
    }
}

/// `account update`.
#[derive(Debug, Args)]
pub struct AccountUpdateArgs {
    /// The account id or a unique prefix of it (else its exact label or email).
    #[arg(value_name = "ID", value_parser = not_blank)]
    pub id: String,
    /// New label.
    #[arg(long, value_name = "LABEL", value_parser = label)]
    pub label: Option<String>,
    /// New group (`""` removes it from its group).
    #[arg(long, value_name = "GROUP", value_parser = group)]
    pub group: Option<String>,
    /// New tags, replacing the old ones (repeatable).
    #[arg(long = "tag", value_name = "TAG", value_parser = tag, conflicts_with = "clear_tags")]
    pub tags: Vec<String>,
    /// Remove every tag.
    #[arg(long)]
    pub clear_tags: bool,
    /// New note (`""` removes it).
    #[arg(long, value_name = "TEXT", value_parser = note)]
    pub note: Option<String>,
    /// New sort priority (lower serves first under the `ordered` strategy).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub sort: Option<i64>,
}

/// `key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its secret is printed once.
    Create(KeyCreateArgs),
    /// List keys (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Change a key's name, model binding, allowed models or groups, effort or expiry.
    Update(KeyUpdateArgs),
    /// Accept a key again.
    Enable(KeyIdArg),
    /// Refuse a key (403) until enabled.
    Disable(KeyIdArg),
    /// Delete a key (401 from then on).
    #[command(visible_alias = "rm")]
    Delete(KeyIdArg),
}

/// `key create`.
#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    /// A name for the key (who or what uses it).
    #[arg(long, value_name = "NAME", value_parser = key_name)]
    pub name: String,
    /// Every request with this key uses this model, whatever the client asks.
    #[arg(long, value_name = "MODEL", value_parser = one_word)]
    pub model: Option<String>,
    /// Only these models may be asked for (repeatable) [default: any].
    #[arg(long = "allow-model", value_name = "MODEL", value_parser = one_word)]
    pub allow_models: Vec<String>,
    /// Only accounts in these groups serve this key (repeatable) [default: any].
    #[arg(long = "allow-group", value_name = "GROUP", value_parser = not_blank)]
    pub allow_groups: Vec<String>,
    /// Reasoning effort applied to every request [default: the client's].
    #[arg(long, value_name = "EFFORT", value_parser = effort_parser())]
    pub effort: Option<String>,
    /// When the key stops working: a duration (30d, 12h, 90m, 2w) or a time (RFC 3339 or
    /// YYYY-MM-DD, UTC) [default: never].
    #[arg(long, value_name = "WHEN", value_parser = parse_expiry)]
    pub expires: Option<Expiry>,
}

/// `key update`.
#[derive(Debug, Args)]
pub struct KeyUpdateArgs {
    /// The key id or a unique prefix of it (else its exact name).
    #[arg(value_name = "ID", value_parser = not_blank)]
    pub id: String,
    /// New name.
    #[arg(long, value_name = "NAME", value_parser = key_name)]
    pub name: Option<String>,
    /// Bind this model (`""` unbinds).
    #[arg(long, value_name = "MODEL", value_parser = one_word_or_empty)]
    pub model: Option<String>,
    /// Allowed models, replacing the old list (repeatable).
    #[arg(
        long = "allow-model",
        value_name = "MODEL",
        value_parser = one_word,
        conflicts_with = "clear_allowed_models"
    )]
    pub allow_models: Vec<String>,
    /// Allow every model.
    #[arg(long)]
    pub clear_allowed_models: bool,
    /// Allowed account groups, replacing the old list (repeatable).
    #[arg(
        long = "allow-group",
        value_name = "GROUP",
        value_parser = not_blank,
        conflicts_with = "clear_allowed_groups"
    )]
    pub allow_groups: Vec<String>,
    /// Let accounts of every group serve the key.
    #[arg(long)]
    pub clear_allowed_groups: bool,
    /// New reasoning effort.
    #[arg(long, value_name = "EFFORT", value_parser = effort_parser(), conflicts_with = "clear_effort")]
    pub effort: Option<String>,
    /// Use the client's reasoning effort.
    #[arg(long)]
    pub clear_effort: bool,
    /// New expiry: a duration (30d, 12h), a time (RFC 3339 or YYYY-MM-DD), or `never`.
    #[arg(long, value_name = "WHEN", value_parser = parse_expiry)]
    pub expires: Option<Expiry>,
}

/// `usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Poll every active account's usage first.
    #[arg(long)]
    pub refresh: bool,
}

/// `tokens`.
#[derive(Debug, Args)]
pub struct TokensArgs {
    /// Sum per key, account, model or day (UTC).
    #[arg(long, value_name = "GROUP", default_value = "key",
          value_parser = ["key", "account", "model", "day"])]
    pub by: String,
    /// Only requests since then: 7d, 12h, 2w (that long ago), an RFC 3339 time or a date. Days
    /// older than REQUEST_LOG_DAYS are kept as day sums: a time inside one starts at the next day.
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<Timestamp>,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// How many of the newest requests to show, at most 10000 (with --follow, 0 shows only
    /// new ones).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20, value_parser = log_limit)]
    pub limit: u64,
    /// Only requests made with this key (id, unique prefix or name).
    #[arg(long, value_name = "ID", value_parser = not_blank)]
    pub key: Option<String>,
    /// Only requests that tried this account (id, unique prefix, label or email).
    #[arg(long, value_name = "ID", value_parser = not_blank)]
    pub account: Option<String>,
    /// Keep printing new requests as they arrive (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
}

/// A key's expiry as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This long from now.
    In(Duration),
    /// At this time.
    At(Timestamp),
    /// Never.
    Never,
}

impl Expiry {
    /// The time it names, relative to `now`; `None` for never.
    pub fn resolve(self, now: Timestamp) -> Option<Timestamp> {
        match self {
            Self::In(d) => Some(now.plus(d)),
            Self::At(t) => Some(t),
            Self::Never => None,
        }
    }
}

/// A label or an id: anything but blank (trimmed, as the pool stores it).
fn not_blank(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(t.to_string())
}

/// Text that is not blank, kept as given (spaces may belong to a file name).
fn not_blank_as_given(s: &str) -> Result<String, String> {
    not_blank(s)?;
    Ok(s.to_string())
}

/// `logs -n`: 0 to 10000.
fn log_limit(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= 10_000)
        .ok_or_else(|| "expected a whole number from 0 to 10000".into())
}

/// A path that is not blank (kept as given: spaces may belong to a file name).
fn path(s: &str) -> Result<PathBuf, String> {
    not_blank(s)?;
    Ok(PathBuf::from(s))
}

/// A key's name: not blank, at most 200 characters (the key store's limits).
fn key_name(s: &str) -> Result<String, String> {
    at_most(not_blank(s)?, codexpool_core::keys::MAX_KEY_NAME)
}

/// A tag: not blank, no comma (commas separate tags in listings), at most
/// [`MAX_NAME`](codexpool_core::account::MAX_NAME) characters.
fn tag(s: &str) -> Result<String, String> {
    let t = at_most(not_blank(s)?, codexpool_core::account::MAX_NAME)?;
    if t.contains(',') {
        return Err("must not contain a comma".into());
    }
    Ok(t)
}

/// An account's label: not blank, at most [`MAX_NAME`](codexpool_core::account::MAX_NAME)
/// characters.
fn label(s: &str) -> Result<String, String> {
    at_most(not_blank(s)?, codexpool_core::account::MAX_NAME)
}

/// An account's group (`""`: none), at most [`MAX_NAME`](codexpool_core::account::MAX_NAME)
/// characters.
fn group(s: &str) -> Result<String, String> {
    at_most(s.to_string(), codexpool_core::account::MAX_NAME)
}

/// An account's note (`""`: none), at most [`MAX_NOTE`](codexpool_core::account::MAX_NOTE)
/// characters.
fn note(s: &str) -> Result<String, String> {
    at_most(s.to_string(), codexpool_core::account::MAX_NOTE)
}

fn at_most(t: String, max: usize) -> Result<String, String> {
    if t.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(t)
}

/// A model name of a key: one word, as the key store requires.
fn one_word(s: &str) -> Result<String, String> {
    let t = not_blank(s)?;
    if t.chars().any(char::is_whitespace) {
        return Err("must be one word (no spaces)".into());
    }
    Ok(t)
}

/// [`one_word`], or `""` to clear.
fn one_word_or_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    one_word(s)
}

fn effort_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(codexpool_core::keys::REASONING_EFFORTS)
}

/// `30d`, `12h`, `90m`, `45s`, `2w` as a duration: `None` when `t` is not a number and a unit;
/// an error when it is zero or more than `max`.
fn parse_span(t: &str, max: Duration) -> Option<Result<Duration, String>> {
    let unit = t.chars().last().filter(char::is_ascii_alphabetic)?;
    let n = t[..t.len() - 1].trim().parse::<u64>().ok()?;
    // `6M` reads as six months to many, as six minutes to others: neither is guessed.
    if unit == 'M' {
        return Some(Err(
            "`M` is ambiguous: write minutes as `m`, months in days (`30d`)".into(),
        ));
    }
    let secs = match unit.to_ascii_lowercase() {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    Some(if n == 0 {
        Err("the duration must be more than zero".into())
    } else {
        n.checked_mul(secs)
            .filter(|s| *s <= max.as_secs())
            .map(Duration::from_secs)
            .ok_or_else(|| "the duration is too long (at most 100 years)".into())
    })
}

/// An RFC 3339 time, or a `YYYY-MM-DD` date (midnight UTC).
fn parse_time(t: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(t).or_else(|| {
        (t.len() == 10)
            .then(|| Timestamp::parse_rfc3339(&format!("{t}T00:00:00Z")))
            .flatten()
    })
}

/// `30d`, `12h`, `90m`, `45s`, `2w`; an RFC 3339 time; a `YYYY-MM-DD` date (midnight UTC);
/// `never`. A time must lie in the future, and like a duration at most 100 years ahead.
pub fn parse_expiry(s: &str) -> Result<Expiry, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    if let Some(span) = parse_span(t, MAX_EXPIRY_AHEAD) {
        return span.map(Expiry::In);
    }
    if let Some(at) = parse_time(t) {
        // The same limits the key store applies, checked here so that a bad time is a usage
        // error like a bad duration.
        let now = Timestamp::now();
        if at <= now {
            return Err("the time must be in the future".into());
        }
        if at > now.plus(MAX_EXPIRY_AHEAD) {
            return Err("the time is too far ahead (at most 100 years from now)".into());
        }
        return Ok(Expiry::At(at));
    }
    Err(
        "expected a duration like 30d, 12h or 90m, a time like 2026-12-31T23:59:00Z, \
         a date like 2026-12-31, or `never`"
            .into(),
    )
}

/// A time in the past: `7d`, `12h`, `2w` (that long ago), an RFC 3339 time or a `YYYY-MM-DD`
/// date (midnight UTC).
pub fn parse_since(s: &str) -> Result<Timestamp, String> {
    let t = s.trim();
    let now = Timestamp::now();
    if let Some(span) = parse_span(t, MAX_EXPIRY_AHEAD) {
        return span.map(|d| now.minus(d));
    }
    match parse_time(t) {
        Some(at) if at > now => Err("the time must not be in the future".into()),
        Some(at) => Ok(at),
        None => Err(
            "expected a duration like 7d, 12h or 2w (that long ago), a time like \
             2026-11-01T09:00:00Z or a date like 2026-11-01"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn debug_never_prints_a_redirect_code() {
        let cli = Cli::parse_from([
            "codexpool",
            "account",
            "complete",
            "http://localhost:1455/auth/callback?code=ac_secret&state=s",
        ]);
        assert!(!format!("{cli:?}").contains("ac_secret"));
    }

    #[test]
    fn blank_and_malformed_names_are_refused() {
        assert_eq!(not_blank("  ada "), Ok("ada".into()));
        assert!(not_blank(" \t").is_err());
        assert!(key_name(&"k".repeat(201)).is_err());
        assert!(tag("a,b").is_err());
        assert!(one_word("gpt 5").is_err());
        assert!(one_word("").is_err());
        assert_eq!(one_word_or_empty(" "), Ok(String::new()));
        assert!(one_word_or_empty("gpt 5").is_err());
    }

    #[test]
    fn expiries() {
        assert_eq!(
            parse_expiry("30d"),
            Ok(Expiry::In(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(
            parse_expiry("12H"),
            Ok(Expiry::In(Duration::from_secs(43_200)))
        );
        assert_eq!(
            parse_expiry("2w"),
            Ok(Expiry::In(Duration::from_secs(14 * 86_400)))
        );
        assert_eq!(parse_expiry("never"), Ok(Expiry::Never));
        assert_eq!(
            parse_expiry("2030-01-02"),
            Ok(Expiry::At(
                Timestamp::parse_rfc3339("2030-01-02T00:00:00Z").unwrap()
            ))
        );
        assert!(matches!(
            parse_expiry("2030-01-02T03:04:05+01:00"),
            Ok(Expiry::At(_))
        ));
        for bad in [
            "",
            "soon",
            "0d",
            "12y",
            "d",
            "-3d",
            "99999999999999w",
            "2030-13-40",
            "2020-01-01",
            "2001-01-01T00:00:00Z",
            "9999-12-31",
            "6M",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
        assert!(parse_expiry("6M").unwrap_err().contains("ambiguous"));
        assert_eq!(
            parse_expiry("90m"),
            Ok(Expiry::In(Duration::from_secs(90 * 60)))
        );
    }

    #[test]
    fn since_is_a_time_in_the_past() {
        let before = Timestamp::now();
        let since = parse_since("2d").unwrap();
        let two_days = Duration::from_secs(2 * 86_400);
        assert!(since <= before.minus(two_days).plus(Duration::from_secs(5)));
        assert!(since >= before.minus(two_days));
        assert_eq!(
            parse_since("2020-01-02"),
            Ok(Timestamp::parse_rfc3339("2020-01-02T00:00:00Z").unwrap())
        );
        assert!(parse_since("2020-01-02T03:04:05+01:00").is_ok());
        for bad in ["", "soon", "0d", "12y", "-3d", "2999-01-01", "never", "1M"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
