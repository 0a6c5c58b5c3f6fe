//! Import and export of accounts (PROTOCOL.md §2): Codex CLI `auth.json` files, codexpool's own
//! export document, a folder of such files, or bytes from stdin.
//!
//! Every input gets its own result (imported, updated, or skipped with the reason). A malformed
//! file never stops the others, and an account is written in one step or not at all. A re-import
//! of the same sign-in (same `chatgpt_account_id` and user) replaces its tokens and keeps what a
//! person set (label, group, tags, note, sort). [`AccountPool::take_over`] then makes codexpool
//! the only live holder of the Codex CLI sign-ins an import wrote.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::account::{Account, AccountPatch, AccountStatus, Tokens, check_lengths, normalize_tags};
use crate::auth::{Claims, decode_claims};
use crate::error::{Error, Result};
use crate::pool::AccountPool;
use crate::secret::Secret;
use crate::store::StoreError;
use crate::time::Timestamp;

/// The export format version.
pub const EXPORT_VERSION: u64 = 1;
/// Largest file accepted for import.
pub const MAX_IMPORT_BYTES: u64 = 8 * 1024 * 1024;

/// Reads an account file of at most [`MAX_IMPORT_BYTES`]; `None` when there is more. Bounded
/// by reading, not by a size asked beforehand: a pipe or a device has none.
pub fn read_import(r: impl std::io::Read) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    r.take(MAX_IMPORT_BYTES + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= MAX_IMPORT_BYTES).then_some(buf))
}

/// What happened to one imported account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum ImportOutcome {
    /// A new account was added.
    Imported,
    /// An existing account got new tokens.
    Updated,
    /// The account exists and already holds the input's tokens, or a newer sign-in than the
    /// input's: nothing was written, nothing is wrong (a re-import of the same file, or one
    /// after codexpool refreshed the tokens).
    Unchanged(String),
    /// Nothing was written: the input was not a usable sign-in.
    Skipped(String),
    /// Nothing was written: the input was fine, the database refused it (full disk, read-only
    /// file, locked too long). Worth retrying once the database is fixed.
    Failed(String),
}

/// One input's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ImportResult {
    /// Where it came from: a path, `stdin`, with `#N` for the N-th account of a document.
    pub source: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: ImportOutcome,
    /// The account, when one was written or found up to date.
    pub account_id: Option<String>,
    /// Its label.
    pub label: Option<String>,
    /// Something the user should know (e.g. a refresh token shared with the Codex CLI).
    pub warning: Option<String>,
    /// The input was a Codex CLI sign-in (`auth.json`): that CLI holds the same single-use
    /// refresh token until one side refreshes.
    pub codex_cli: bool,
    /// [`AccountPool::take_over`] refreshed this Codex CLI sign-in: codexpool holds the only
    /// live refresh token, and that CLI must sign in again.
    pub taken_over: bool,
    /// [`AccountPool::take_over`] could not refresh this Codex CLI sign-in: why. The account
    /// stays imported, its refresh token still shared with that CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub take_over_error: Option<String>,
    /// That refresh failed because the issuer declared the sign-in dead (expired, revoked,
    /// reused): trying the take-over again cannot help, the account needs a new sign-in.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sign_in_dead: bool,
    /// The account holds the input's tokens now (imported, updated, or already up to date);
    /// not when the stored sign-in is newer.
    #[serde(skip)]
    pub(crate) holds_input_tokens: bool,
}

/// Results of an import, one per account found (or per unreadable file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// The results in input order.
    pub results: Vec<ImportResult>,
}

impl ImportReport {
    /// How many were added.
    pub fn imported(&self) -> usize {
        self.count(|o| matches!(o, ImportOutcome::Imported))
    }
    /// How many were updated.
    pub fn updated(&self) -> usize {
        self.count(|o| matches!(o, ImportOutcome::Updated))
    }
    /// How many were already up to date.
    pub fn unchanged(&self) -> usize {
        self.count(|o| matches!(o, ImportOutcome::Unchanged(_)))
    }
    /// How many were skipped.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, ImportOutcome::Skipped(_)))
    }
    /// How many the database refused.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, ImportOutcome::Failed(_)))
    }
    fn count(&self, f: impl Fn(&ImportOutcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }
}

/// The export document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportDocument {
    /// Always [`EXPORT_VERSION`].
    pub version: u64,
    /// When it was written.
    pub exported_at: Timestamp,
    /// The accounts, tokens included.
    pub accounts: Vec<ExportedAccount>,
}

/// One account in an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedAccount {
    /// Label.
    pub label: String,
    /// Email.
    pub email: Option<String>,
    /// OpenAI account id.
    pub chatgpt_account_id: Option<String>,
    /// OpenAI user id.
    pub chatgpt_user_id: Option<String>,
    /// Plan.
    pub plan_type: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Note.
    pub note: Option<String>,
    /// Sort priority.
    pub sort: i64,
    /// Status.
    pub status: AccountStatus,
    /// Tokens, in the Codex CLI's shape.
    pub tokens: ExportedTokens,
    /// When the tokens were last refreshed.
    pub last_refresh: Option<Timestamp>,
}

/// Tokens in an export (plain text: the file is written 0600). `Debug` hides them.
#[derive(Clone, Serialize, Deserialize)]
pub struct ExportedTokens {
    /// Id token.
    pub id_token: String,
    /// Access token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: String,
    /// OpenAI account id.
    pub account_id: Option<String>,
}

impl std::fmt::Debug for ExportedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedTokens")
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

/// One account read from an input, before it is written.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub tokens: Tokens,
    pub claims: Claims,
    pub chatgpt_account_id: String,
    pub label: Option<String>,
    pub group: Option<String>,
    pub tags: Vec<String>,
    pub note: Option<String>,
    pub sort: Option<i64>,
    pub status: Option<AccountStatus>,
    /// From a Codex CLI `auth.json` (its refresh token is shared with the CLI).
    pub from_codex_cli: bool,
}

/// `snake_case` or `camelCase`.
fn field<'a>(o: &'a Map<String, Value>, snake: &str) -> Option<&'a Value> {
    if let Some(v) = o.get(snake).filter(|v| !v.is_null()) {
        return Some(v);
    }
    let mut camel = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            camel.extend(c.to_uppercase());
            up = false;
        } else {
            camel.push(c);
        }
    }
    o.get(&camel).filter(|v| !v.is_null())
}

fn text(o: &Map<String, Value>, name: &str) -> std::result::Result<Option<String>, String> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn parse_candidate(
    o: &Map<String, Value>,
    from_codex_cli: bool,
) -> std::result::Result<Candidate, String> {
    let tok = match field(o, "tokens") {
        Some(Value::Object(t)) => t,
        Some(_) => return Err("tokens is not an object".into()),
        // A Codex CLI that signed in with an API key: nothing of ChatGPT to pool.
        None if from_codex_cli && text(o, "OPENAI_API_KEY").ok().flatten().is_some() => {
            return Err(
                "this Codex CLI sign-in is an OpenAI API key, not a ChatGPT account \
                        (codexpool pools ChatGPT sign-ins: `codexpool account login`)"
                    .into(),
            );
        }
        None => o,
    };
    let access = text(tok, "access_token")?.ok_or("access_token is missing")?;
    let refresh = text(tok, "refresh_token")?.ok_or("refresh_token is missing")?;
    let id_token = text(tok, "id_token")?;
    // Identity from the id token, else the access token; an explicit account id wins.
    let claims = match &id_token {
        Some(t) => decode_claims(t).map_err(|e| format!("id_token: {e}"))?,
        None => decode_claims(&access).unwrap_or_default(),
    };
    let access_claims = decode_claims(&access).ok();
    let explicit = text(tok, "account_id")?.or(text(o, "chatgpt_account_id")?);
    let chatgpt_account_id = explicit
        .or_else(|| claims.chatgpt_account_id.clone())
        .or_else(|| {
            access_claims
                .as_ref()
                .and_then(|c| c.chatgpt_account_id.clone())
        })
        .ok_or("no ChatGPT account id in the tokens or the file")?;
    let tags = match field(o, "tags") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or("tags must be strings"))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(Value::String(s)) => s
            .split(',')
            .map(str::to_string)
            .filter(|t| !t.trim().is_empty())
            .collect(),
        Some(_) => return Err("tags is not a list".into()),
    };
    let tags = normalize_tags(tags).map_err(|e| e.to_string())?;
    let sort = match field(o, "sort") {
        None => None,
        Some(v) => Some(v.as_i64().ok_or("sort is not a whole number")?),
    };
    let status = match text(o, "status")? {
        None => None,
        Some(s) => Some(s.parse::<AccountStatus>().map_err(|e| e.to_string())?),
    };
    let last_refresh = match field(o, "last_refresh") {
        Some(Value::String(s)) => Timestamp::parse_rfc3339(s),
        _ => None,
    };
    let mut claims = claims;
    if claims.chatgpt_user_id.is_none()
        && claims.sub.is_none()
        && let Some(ac) = &access_claims
    {
        claims.chatgpt_user_id = ac.user_id().map(str::to_string);
    }
    if let Some(uid) = text(o, "chatgpt_user_id")? {
        claims.chatgpt_user_id = Some(uid);
    }
    let expires_at = access_claims.as_ref().and_then(|c| c.expires_at);
    let (label, group, note) = (text(o, "label")?, text(o, "group")?, text(o, "note")?);
    check_lengths(label.as_deref(), group.as_deref(), note.as_deref())
        .map_err(|e| e.to_string())?;
    Ok(Candidate {
        tokens: Tokens {
            id_token: Secret::new(id_token.unwrap_or_default()),
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            expires_at,
            last_refresh,
        },
        chatgpt_account_id,
        label,
        group,
        tags,
        note,
        sort,
        status,
        claims,
        from_codex_cli,
    })
}

/// One account found in a document: the source suffix (`#N`) and the candidate or why not.
type Found = (String, std::result::Result<Candidate, String>);

pub(crate) fn parse_document(bytes: &[u8]) -> std::result::Result<Vec<Found>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let (items, codex): (Vec<&Value>, bool) = match &v {
        Value::Object(o) if field(o, "accounts").is_some() => {
            if let Some(ver) = field(o, "version")
                && ver.as_u64() != Some(EXPORT_VERSION)
            {
                return Err(format!(
                    "unsupported export version {ver} (this codexpool reads version {EXPORT_VERSION})"
                ));
            }
            match field(o, "accounts") {
                Some(Value::Array(a)) => (a.iter().collect(), false),
                _ => return Err("accounts is not a list".into()),
            }
        }
        // A Codex CLI auth.json: tokens nested, OPENAI_API_KEY beside them.
        Value::Object(o)
            if o.contains_key("OPENAI_API_KEY")
                || (o.contains_key("tokens") && o.contains_key("last_refresh")) =>
        {
            (vec![&v], true)
        }
        Value::Object(_) => (vec![&v], false),
        Value::Array(a) => (a.iter().collect(), false),
        _ => return Err("expected a JSON object or list".into()),
    };
    if items.is_empty() {
        return Err("no accounts in the document".into());
    }
    let many = items.len() > 1
        || matches!(v, Value::Array(_))
        || !codex && matches!(&v, Value::Object(o) if o.contains_key("accounts"));
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let suffix = if many {
                format!("#{}", i + 1)
            } else {
                String::new()
            };
            let parsed = match item {
                Value::Object(o) => parse_candidate(o, codex),
                _ => Err("an account entry is not a JSON object".into()),
            };
            (suffix, parsed)
        })
        .collect())
}

fn skipped(source: String, reason: impl Into<String>) -> ImportResult {
    ImportResult {
        source,
        outcome: ImportOutcome::Skipped(reason.into()),
        account_id: None,
        label: None,
        warning: None,
        codex_cli: false,
        taken_over: false,
        take_over_error: None,
        sign_in_dead: false,
        holds_input_tokens: false,
    }
}

/// Why a re-imported sign-in keeps its stored tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// They are the input's already.
    Same,
    /// They are newer than the input's.
    Newer,
}

/// The result of an input whose tokens were not written: the stored ones are `kept`.
fn unchanged(
    source: String,
    account: Account,
    kept: Kept,
    codex_cli: bool,
    warning: Option<String>,
) -> ImportResult {
    let same = kept == Kept::Same;
    ImportResult {
        source,
        outcome: ImportOutcome::Unchanged(kept.reason().into()),
        account_id: Some(account.id),
        label: Some(account.label),
        // The same tokens are still shared with a Codex CLI.
        warning: warning.filter(|_| same),
        codex_cli,
        taken_over: false,
        take_over_error: None,
        sign_in_dead: false,
        holds_input_tokens: same,
    }
}

impl Kept {
    fn reason(self) -> &'static str {
        match self {
            Self::Same => "already up to date (the stored tokens are this file's)",
            Self::Newer => "the stored sign-in is newer than this file (refreshed since)",
        }
    }
}

impl AccountPool {
    /// Imports a file, or a folder: a `CODEX_HOME` (a folder with an `auth.json`: only that
    /// file, its other files are the Codex CLI's own), else every `*.json` file in it and every
    /// `<sub>/auth.json` (a folder of `CODEX_HOME` directories), sorted by path.
    pub async fn import_path(&self, path: impl AsRef<Path>) -> Result<ImportReport> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mut report = ImportReport::default();
        let codex_home = path.join("auth.json");
        if meta.is_dir() && codex_home.is_file() {
            report
                .results
                .extend(self.import_one_file(&codex_home).await);
        } else if meta.is_dir() {
            let is_json = |p: &Path| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|x| x.eq_ignore_ascii_case("json"))
            };
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
                let p = entry.map_err(|e| Error::io(path, e))?.path();
                if is_json(&p) {
                    files.push(p);
                } else if p.is_dir() && p.join("auth.json").is_file() {
                    files.push(p.join("auth.json"));
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(Error::invalid(
                    "path",
                    format!(
                        "{} holds no .json files (nor sub-folders with an auth.json)",
                        path.display()
                    ),
                ));
            }
            for f in files {
                report.results.extend(self.import_one_file(&f).await);
            }
        } else {
            report.results.extend(self.import_one_file(path).await);
        }
        Ok(report)
    }

    async fn import_one_file(&self, path: &Path) -> Vec<ImportResult> {
        let source = path.display().to_string();
        // Off the runtime's threads: a named pipe blocks until its writer comes.
        let owned = path.to_owned();
        let read =
            tokio::task::spawn_blocking(move || std::fs::File::open(owned).and_then(read_import))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => {
                return vec![skipped(
                    source,
                    format!("larger than {} MiB", MAX_IMPORT_BYTES >> 20),
                )];
            }
            Err(e) => return vec![skipped(source, format!("cannot read: {e}"))],
        };
        self.import_bytes(&source, &bytes).await.results
    }

    /// Imports a document held in memory (e.g. read from stdin); `source` names it in results.
    pub async fn import_bytes(&self, source: &str, bytes: &[u8]) -> ImportReport {
        let mut report = ImportReport::default();
        let items = match parse_document(bytes) {
            Ok(items) => items,
            Err(reason) => {
                report.results.push(skipped(source.to_string(), reason));
                return report;
            }
        };
        for (suffix, parsed) in items {
            let src = format!("{source}{suffix}");
            let result = match parsed {
                Err(reason) => skipped(src, reason),
                Ok(c) => {
                    let warning = c.from_codex_cli.then(|| {
                        format!(
                            "{source} belongs to a Codex CLI sign-in: both now hold the same single-use refresh \
                             token, and whichever refreshes first signs the other out. Let codexpool own it \
                             (import with take-over: `codexpool account import --take-over`, `take_over=True` \
                             in Python; then sign the Codex CLI in again) or stop using it for this account."
                        )
                    });
                    if let Some((account, kept)) = self.kept_tokens(&c) {
                        let codex_cli = c.from_codex_cli;
                        report
                            .results
                            .push(unchanged(src, account, kept, codex_cli, warning));
                        continue;
                    }
                    let codex_cli = c.from_codex_cli;
                    let tokens = c.tokens.clone();
                    match self.upsert_signin(c, false).await {
                        // The stored tokens turned out newer (refreshed elsewhere since memory
                        // last saw them): the store kept them.
                        Ok((a, false))
                            if a.tokens.access_token != tokens.access_token
                                || a.tokens.refresh_token != tokens.refresh_token =>
                        {
                            unchanged(src, a, Kept::Newer, codex_cli, warning)
                        }
                        Ok((a, created)) => ImportResult {
                            source: src,
                            outcome: if created {
                                ImportOutcome::Imported
                            } else {
                                ImportOutcome::Updated
                            },
                            account_id: Some(a.id),
                            label: Some(a.label),
                            warning,
                            codex_cli,
                            taken_over: false,
                            take_over_error: None,
                            sign_in_dead: false,
                            holds_input_tokens: true,
                        },
                        Err(e @ Error::Store(StoreError::Backend { .. })) => ImportResult {
                            outcome: ImportOutcome::Failed(e.to_string()),
                            ..skipped(src, String::new())
                        },
                        Err(e) => skipped(src, e.to_string()),
                    }
                }
            };
            report.results.push(result);
        }
        report
    }

    /// Makes codexpool the only live holder of the Codex CLI sign-ins that an import just wrote
    /// (its `imported` and `updated` results with `codex_cli`): one token refresh each rotates
    /// the single-use refresh token, so the CLI's copy is spent and that CLI must sign in again.
    /// An `unchanged` one is taken over when it was already up to date (its tokens are still
    /// the file's), and is `updated` then; when the stored sign-in was newer, it was refreshed
    /// since: already taken over.
    ///
    /// Each result taken over gets `taken_over` and a warning saying so (replacing the
    /// "shared" one); returns how many accounts were refreshed. A refresh that fails does not
    /// stop the others (one dead sign-in would otherwise block every file after it on every
    /// rerun): its result gets `take_over_error` and its account stays imported and shared.
    /// When any failed, the error is [`Error::TakeOver`] for the first of them; the report says
    /// which were taken over and which failed, so show it with the error.
    pub async fn take_over(&self, report: &mut ImportReport) -> Result<usize> {
        let auth = self.pool.auth();
        let mut refreshed: Vec<String> = Vec::new();
        // Per account: why its refresh failed and whether the issuer declared the sign-in dead,
        // so a second copy of it is not tried again.
        let mut failed: Vec<(String, String, bool)> = Vec::new();
        let mut first_error: Option<Error> = None;
        for r in &mut report.results {
            let fresh = r.holds_input_tokens;
            let (Some(id), true, true) = (r.account_id.as_deref(), r.codex_cli, fresh) else {
                continue;
            };
            if let Some((_, why, dead)) = failed.iter().find(|(done, ..)| done == id) {
                r.warning = Some(take_over_failed(&r.source, *dead));
                r.take_over_error = Some(why.clone());
                r.sign_in_dead = *dead;
                continue;
            }
            // The same sign-in twice (two copies of one auth.json): one refresh is enough.
            if !refreshed.iter().any(|done| done == id) {
                if let Err(cause) = auth.refresh(id).await {
                    // Said by the error this returns, and by the result: no log line.
                    tracing::debug!(input = %r.source, account = %id, error = %cause, "could not take over a Codex CLI sign-in");
                    let dead = matches!(cause, crate::auth::AuthError::RefreshDead { .. });
                    r.warning = Some(take_over_failed(&r.source, dead));
                    r.take_over_error = Some(cause.to_string());
                    r.sign_in_dead = dead;
                    failed.push((id.to_string(), cause.to_string(), dead));
                    first_error.get_or_insert(Error::TakeOver {
                        input: r.source.clone(),
                        account_id: id.to_string(),
                        cause,
                    });
                    continue;
                }
                refreshed.push(id.to_string());
            }
            r.taken_over = true;
            // The refresh wrote new tokens: the stored ones are no longer the file's.
            if matches!(r.outcome, ImportOutcome::Unchanged(_)) {
                r.outcome = ImportOutcome::Updated;
            }
            r.warning = Some(format!(
                "took over {}: codexpool now holds the only live refresh token; that Codex CLI \
                 must sign in again (`codex login`)",
                r.source
            ));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(refreshed.len()),
        }
    }

    /// Why a file's tokens are not written over the stored ones of the same sign-in, if so:
    /// they are the stored ones already, or they are older (an earlier access-token expiry, or
    /// without expiries an earlier refresh). A re-import of `~/.codex/auth.json` after
    /// codexpool refreshed the account would otherwise put back a refresh token that is already
    /// spent, and the next refresh would sign it out.
    fn kept_tokens(&self, c: &Candidate) -> Option<(Account, Kept)> {
        let user_id = c.claims.user_id().unwrap_or_default();
        let account = self.find_identity(&c.chatgpt_account_id, user_id)?;
        let (file, stored) = (&c.tokens, &account.tokens);
        // A file without an id token (another tool's, holding only the other two) leaves the
        // stored one as it is.
        if file.refresh_token == stored.refresh_token
            && file.access_token == stored.access_token
            && (file.id_token.expose().is_empty() || file.id_token == stored.id_token)
        {
            return Some((account, Kept::Same));
        }
        file.older_than(stored).then_some((account, Kept::Newer))
    }

    /// Creates the account of a sign-in, or gives an existing one (same identity) the new
    /// tokens. With `overwrite_meta`, given label/group/tags/note replace the stored ones (a
    /// fresh login); without, they are used only for a new account (a re-import). Returns the
    /// account and whether it was created.
    pub(crate) async fn upsert_signin(
        &self,
        c: Candidate,
        overwrite_meta: bool,
    ) -> Result<(Account, bool)> {
        let user_id = c.claims.user_id().unwrap_or_default().to_string();
        for attempt in 0..2 {
            if let Some(existing) = self.find_identity(&c.chatgpt_account_id, &user_id) {
                let mut tokens = c.tokens.clone();
                // No id token in the file: the sign-in's stays (as after a refresh without one).
                if tokens.id_token.expose().is_empty() {
                    tokens.id_token = existing.tokens.id_token.clone();
                }
                let mut p = AccountPatch {
                    tokens: Some(tokens),
                    ..Default::default()
                };
                if let Some(e) = &c.claims.email {
                    p.email = Some(Some(e.clone()));
                }
                if let Some(plan) = &c.claims.chatgpt_plan_type {
                    p.plan_type = Some(Some(plan.clone()));
                }
                // Fresh tokens cure a dead sign-in; a person's `disabled` and a ban stay.
                if existing.status == AccountStatus::NeedsLogin {
                    p = p
                        .status(AccountStatus::Active, None)
                        .only_from(&[AccountStatus::NeedsLogin]);
                }
                if overwrite_meta {
                    p.label = c.label.clone();
                    p.group = c.group.clone().map(Some);
                    if !c.tags.is_empty() {
                        p.tags = Some(c.tags.clone());
                    }
                    p.note = c.note.clone().map(Some);
                } else {
                    // A re-import: the store checks again, since memory may not hold a refresh
                    // another process made a moment ago.
                    p = p.unless_older_tokens();
                }
                let p = p.validate()?;
                return Ok((self.apply_patch(&existing.id, p).await?, false));
            }
            let now = self.pool.now();
            let account = Account {
                id: crate::id::new_id(),
                label: c
                    .label
                    .clone()
                    .or_else(|| c.claims.email.clone())
                    .unwrap_or_else(|| c.chatgpt_account_id.clone()),
                email: c.claims.email.clone(),
                chatgpt_account_id: Some(c.chatgpt_account_id.clone()),
                chatgpt_user_id: Some(user_id.clone()),
                plan_type: c.claims.chatgpt_plan_type.clone(),
                group: c.group.clone(),
                tags: c.tags.clone(),
                sort: c.sort.unwrap_or(0),
                note: c.note.clone(),
                // As exported: a dead sign-in or a banned account would only fail again.
                status: c.status.unwrap_or_default(),
                status_reason: match c.status {
                    Some(AccountStatus::NeedsLogin) => {
                        Some("the sign-in was dead when it was exported: sign in again".into())
                    }
                    Some(AccountStatus::Banned) => {
                        Some("OpenAI had deactivated it when it was exported".into())
                    }
                    _ => None,
                },
                tokens: c.tokens.clone(),
                created_at: now,
                updated_at: now,
                last_used_at: None,
            };
            match self.insert(account).await {
                Ok(a) => return Ok((a, true)),
                // Another process added the same sign-in meanwhile: take its row and update it.
                Err(Error::Store(StoreError::Conflict { .. })) if attempt == 0 => {
                    self.pool.reload().await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "account {} keeps colliding; try again",
            c.chatgpt_account_id
        )))
    }

    /// The export document for the accounts matching `filter` (tokens included).
    pub fn export(&self, filter: &crate::account::AccountFilter) -> ExportDocument {
        let accounts = self
            .list(filter)
            .into_iter()
            .map(|a| ExportedAccount {
                tokens: ExportedTokens {
                    id_token: a.tokens.id_token.expose().to_string(),
                    access_token: a.tokens.access_token.expose().to_string(),
                    refresh_token: a.tokens.refresh_token.expose().to_string(),
                    account_id: a.chatgpt_account_id.clone(),
                },
                last_refresh: a.tokens.last_refresh,
                label: a.label,
                email: a.email,
                chatgpt_account_id: a.chatgpt_account_id,
                chatgpt_user_id: a.chatgpt_user_id,
                plan_type: a.plan_type,
                group: a.group,
                tags: a.tags,
                note: a.note,
                sort: a.sort,
                status: a.status,
            })
            .collect();
        ExportDocument {
            version: EXPORT_VERSION,
            exported_at: self.pool.now(),
            accounts,
        }
    }

    /// Writes the export document to a file with mode 0600 (replacing it atomically). Returns
    /// how many accounts were written.
    pub async fn export_to_file(
        &self,
        path: impl AsRef<Path>,
        filter: &crate::account::AccountFilter,
    ) -> Result<usize> {
        let doc = self.export(filter);
        let bytes =
            serde_json::to_vec_pretty(&doc).map_err(|e| Error::invalid("export", e.to_string()))?;
        let path = path.as_ref();
        // A file of its own (new, or a plain file it replaces) is written privately and whole;
        // a link or a special file (`/dev/stdout`, a pipe such as `>(gpg -e …)`) is where the
        // export goes, not a name to replace.
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                followable(path, &m)?;
                write_through(path, &bytes)?;
            }
            Ok(m) if !m.file_type().is_file() => write_through(path, &bytes)?,
            Ok(_) => write_private(path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_private(path, &bytes)?,
            Err(e) => return Err(Error::io(path, e)),
        }
        Ok(doc.accounts.len())
    }
}

/// Whether the link at `path` may be followed with tokens: only one of this user's own, or of
/// the owner of the folder it is in (as the kernel's `protected_symlinks` has it for sticky
/// folders): another user's link in a folder both may write to (a shared export folder) would
/// lead the export, as root too, into a file of that user's choosing.
fn followable(path: &Path, link: &std::fs::Metadata) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        let folder = std::fs::metadata(parent_dir(path)).map_err(|e| Error::io(path, e))?;
        if link.uid() != me && link.uid() != folder.uid() {
            return Err(Error::invalid(
                "output",
                format!(
                    "{} is a link another user made (uid {}): not followed with the tokens; \
                     give the file it leads to, or a path of your own",
                    path.display(),
                    link.uid()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, link);
    Ok(())
}

/// Writes `bytes` where `path` leads (through links): into a pipe or a device as it is, into a
/// regular file made readable by its owner only before its first byte (a link to no file yet
/// makes one, owner-only from the start).
fn write_through(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::io(path, e);
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut f = open.open(path).map_err(io)?;
    let regular = f.metadata().map_err(io)?.is_file();
    if regular {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        f.set_len(0).map_err(io)?;
    }
    f.write_all(bytes).map_err(io)?;
    if regular {
        f.sync_all().map_err(io)?;
    }
    Ok(())
}

/// Writes a file readable by its owner only, via a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = private_temp(path, bytes)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // The rename is durable only once the folder is: until then a power loss may bring back the
    // old file, or none (a rescued refresh token would be gone).
    let dir = parent_dir(path);
    sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Like [`write_private`], only where no file is yet: `Ok(false)` when one is there (nothing is
/// written then). Of several processes writing at once the first wins, and every reader finds
/// its file whole.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = private_temp(path, bytes)?;
    let placed = link_new(&tmp, path);
    // The file lives on under `path` (a link), or not at all.
    let _ = std::fs::remove_file(&tmp);
    let placed = placed.map_err(|e| Error::io(path, e))?;
    let dir = parent_dir(path);
    sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(placed)
}

/// Puts the file `from` at `to` too unless a file is there (`Ok(false)`): a hard link, which
/// unlike a rename never replaces. A file system without hard links (FAT, some network ones)
/// gets a rename.
pub fn link_new(from: &Path, to: &Path) -> std::io::Result<bool> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
            ) =>
        {
            std::fs::rename(from, to).map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// The folder `path` is in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A new file beside `path`, readable by its owner only, holding `bytes` on disk; removed
/// again when writing fails.
fn private_temp(path: &Path, bytes: &[u8]) -> Result<std::path::PathBuf> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("path", format!("{} is not a file path", path.display())))?;
    #[cfg(unix)]
    sweep_stale_temps(parent_dir(path), &name.to_string_lossy());
    // A fresh name, created only if it does not exist (never through a file or link someone
    // else put there): the mode is this file's from its first byte.
    let tmp = parent_dir(path).join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| Error::io(path, e))?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(tmp)
}

/// How old a temporary file of a process that is gone must be to be removed: a process in
/// another PID namespace may look gone while it writes.
#[cfg(unix)]
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes what earlier writes of `dir/name` left behind when their process died between
/// making the temporary file and renaming it (a SIGKILL, a power cut): it holds what was being
/// written, every account's tokens for an export. Only this user's files, of processes that are
/// gone, untouched for a minute.
#[cfg(unix)]
fn sweep_stale_temps(dir: &Path, name: &str) {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        // Any answer but "no such process" (this process, another user's) leaves it.
        if rustix::process::test_kill_process(pid) != Err(rustix::io::Errno::SRCH) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        let idle = meta.modified().ok().and_then(|m| m.elapsed().ok());
        if meta.is_file() && meta.uid() == me && idle.is_some_and(|d| d >= STALE_TEMP) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed what a killed write left behind")
                }
                Err(e) => {
                    tracing::debug!(file = %path.display(), error = %e, "could not remove what a killed write left behind")
                }
            }
        }
    }
}

/// Flushes a folder's entries (new names, renames) to disk. Unix only: elsewhere a folder cannot
/// be opened as a file, and NTFS journals renames itself.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates a folder readable by its owner only (mode 0700 on Unix) if it is missing, and its
/// parents as usual; an existing folder is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let create = |builder: &std::fs::DirBuilder| match builder.create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    };
    match create(&builder) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            create(&builder)
        }
        other => other,
    }
}

/// The warning of a sign-in whose take-over failed (not the advice to take it over, which is
/// what failed). A sign-in the issuer declared `dead` is shared with nobody any more: trying
/// again cannot help.
fn take_over_failed(source: &str, dead: bool) -> String {
    if dead {
        return format!(
            "the sign-in in {source} is no longer valid: sign in again with `codexpool account \
             login` (and `codex login` for the Codex CLI)"
        );
    }
    format!(
        "{source} still shares its sign-in with the Codex CLI (its take-over failed): whichever \
         refreshes first signs the other out; take it over again later, or stop using it in the \
         Codex CLI"
    )
}
