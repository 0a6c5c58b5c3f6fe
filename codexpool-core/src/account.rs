//! The account record: who a pooled ChatGPT sign-in is, how a person organised it (label,
//! group, tags, sort, note), its status, and its OAuth tokens.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::secret::Secret;
use crate::time::Timestamp;

/// Whether an account may serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Usable (quota and cooldowns permitting).
    #[default]
    Active,
    /// Turned off by a person. Never changed automatically.
    Disabled,
    /// The sign-in is dead (refresh token expired, reused or revoked): sign in again.
    NeedsLogin,
    /// OpenAI deactivated the account or workspace.
    Banned,
}

impl AccountStatus {
    /// All statuses.
    pub const ALL: [AccountStatus; 4] =
        [Self::Active, Self::Disabled, Self::NeedsLogin, Self::Banned];

    /// The statuses the pool may change on its own: all but [`Disabled`](Self::Disabled).
    pub const AUTOMATIC: [AccountStatus; 3] = [Self::Active, Self::NeedsLogin, Self::Banned];

    /// The stored and displayed spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::NeedsLogin => "needs_login",
            Self::Banned => "banned",
        }
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AccountStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == norm)
            .ok_or_else(|| {
                Error::invalid(
                    "status",
                    format!("{s:?} is not one of active, disabled, needs_login, banned"),
                )
            })
    }
}

/// The OAuth tokens of an account. All three are secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The OpenID id token (a JWT with the account's claims).
    pub id_token: Secret,
    /// The bearer token for the backend.
    pub access_token: Secret,
    /// The single-use refresh token.
    pub refresh_token: Secret,
    /// When the access token expires (its `exp` claim), if known.
    pub expires_at: Option<Timestamp>,
    /// When the tokens were last refreshed, if known.
    pub last_refresh: Option<Timestamp>,
}

impl Tokens {
    /// Whether these are older than `stored`, tokens of the same sign-in: an earlier
    /// access-token expiry, or without two expiries an earlier refresh. (Also with the same
    /// refresh token, since an issuer need not rotate it: an older access token may have expired
    /// already.)
    pub(crate) fn older_than(&self, stored: &Tokens) -> bool {
        match (self.expires_at, stored.expires_at) {
            (Some(f), Some(s)) if f != s => f < s,
            _ => matches!((self.last_refresh, stored.last_refresh), (Some(f), Some(s)) if f < s),
        }
    }
}

/// A pooled ChatGPT sign-in.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Account {
    /// Local id (12 lowercase hex characters); commands accept a unique prefix.
    pub id: String,
    /// A person's name for it (defaults to the email).
    pub label: String,
    /// The sign-in's email.
    pub email: Option<String>,
    /// OpenAI's account (workspace) id: the `ChatGPT-Account-ID` header.
    pub chatgpt_account_id: Option<String>,
    /// OpenAI's user id within that account (team workspaces share the account id).
    pub chatgpt_user_id: Option<String>,
    /// `free`, `plus`, `pro`, `team`, `business`, `enterprise`, `edu`, `go`.
    pub plan_type: Option<String>,
    /// At most one group; platform keys may be limited to groups.
    pub group: Option<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Priority: lower first under the `ordered` strategy.
    pub sort: i64,
    /// A person's note.
    pub note: Option<String>,
    /// Whether it may serve.
    pub status: AccountStatus,
    /// Why it has that status (e.g. the refresh error).
    pub status_reason: Option<String>,
    /// The OAuth tokens (never serialized).
    #[serde(skip)]
    pub tokens: Tokens,
    /// When it was added.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// When it last served a request.
    pub last_used_at: Option<Timestamp>,
}

impl Account {
    /// Whether the account matches a list filter.
    pub fn matches(&self, f: &AccountFilter) -> bool {
        if let Some(g) = &f.group
            && self.group.as_deref() != Some(g.as_str())
        {
            return false;
        }
        if let Some(t) = &f.tag
            && !self.tags.iter().any(|x| x == t)
        {
            return false;
        }
        if let Some(s) = f.status
            && self.status != s
        {
            return false;
        }
        if let Some(text) = &f.text {
            let needle = text.to_lowercase();
            let hay = [
                Some(self.id.as_str()),
                Some(self.label.as_str()),
                self.email.as_deref(),
                self.note.as_deref(),
                self.chatgpt_account_id.as_deref(),
                self.group.as_deref(),
            ];
            let tag_hit = self.tags.iter().any(|t| t.to_lowercase().contains(&needle));
            if !tag_hit
                && !hay
                    .iter()
                    .flatten()
                    .any(|h| h.to_lowercase().contains(&needle))
            {
                return false;
            }
        }
        true
    }

    /// The identity used to recognise a re-import of the same sign-in.
    pub fn identity(&self) -> Option<(&str, &str)> {
        Some((
            self.chatgpt_account_id.as_deref()?,
            self.chatgpt_user_id.as_deref().unwrap_or_default(),
        ))
    }
}

/// Filters for listing accounts. Empty = all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccountFilter {
    /// Only this group.
    pub group: Option<String>,
    /// Only accounts with this tag.
    pub tag: Option<String>,
    /// Only this status.
    pub status: Option<AccountStatus>,
    /// Case-insensitive text in id, label, email, note, group, tags or account id.
    pub text: Option<String>,
}

impl AccountFilter {
    /// Only this group.
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = Some(g.into());
        self
    }
    /// Only accounts with this tag.
    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tag = Some(t.into());
        self
    }
    /// Only this status.
    pub fn status(mut self, s: AccountStatus) -> Self {
        self.status = Some(s);
        self
    }
    /// Text search.
    pub fn text(mut self, t: impl Into<String>) -> Self {
        self.text = Some(t.into());
        self
    }
}

/// A change to an account. `None` leaves a field as it is; for optional fields
/// `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AccountPatch {
    /// New label.
    pub label: Option<String>,
    /// New email.
    pub email: Option<Option<String>>,
    /// New plan type.
    pub plan_type: Option<Option<String>>,
    /// New group.
    pub group: Option<Option<String>>,
    /// New tags (replacing all).
    pub tags: Option<Vec<String>>,
    /// New sort priority.
    pub sort: Option<i64>,
    /// New note.
    pub note: Option<Option<String>>,
    /// New status.
    pub status: Option<AccountStatus>,
    /// New status reason.
    pub status_reason: Option<Option<String>>,
    /// Apply `status` and `status_reason` only when the stored status is one of these (checked
    /// in the store's transaction, so a decision the pool made on an old view of the account
    /// cannot overwrite what a person or another process set meanwhile). `None`: always.
    pub status_only_from: Option<Vec<AccountStatus>>,
    /// Apply `status` and `status_reason` only while the stored refresh token is this one
    /// (checked in the store's transaction): a verdict on one sign-in (the issuer declared it
    /// dead) must not reach tokens written meanwhile by a new sign-in, an import or another
    /// process's refresh. `None`: whatever the tokens.
    pub status_only_with_refresh_token: Option<Secret>,
    /// New tokens.
    pub tokens: Option<Tokens>,
    /// Leave the account as it is when `tokens` are older than the stored ones (checked in the
    /// store's transaction, so tokens refreshed since the caller looked, maybe by another
    /// process, are not written over by a copy taken before).
    pub unless_older_tokens: bool,
    /// New OpenAI account id.
    pub chatgpt_account_id: Option<Option<String>>,
    /// New OpenAI user id.
    pub chatgpt_user_id: Option<Option<String>>,
}

impl AccountPatch {
    /// Sets the label.
    pub fn label(mut self, v: impl Into<String>) -> Self {
        self.label = Some(v.into());
        self
    }
    /// Sets (or with `None` clears) the group.
    pub fn group(mut self, v: Option<String>) -> Self {
        self.group = Some(v);
        self
    }
    /// Replaces the tags.
    pub fn tags(mut self, v: Vec<String>) -> Self {
        self.tags = Some(v);
        self
    }
    /// Sets the sort priority.
    pub fn sort(mut self, v: i64) -> Self {
        self.sort = Some(v);
        self
    }
    /// Sets (or clears) the note.
    pub fn note(mut self, v: Option<String>) -> Self {
        self.note = Some(v);
        self
    }
    /// Sets the status and its reason.
    pub fn status(mut self, s: AccountStatus, reason: Option<String>) -> Self {
        self.status = Some(s);
        self.status_reason = Some(reason);
        self
    }
    /// Turns the account on (clearing the status reason) or off by a person's choice: it stays
    /// off until a person turns it on.
    pub fn enabled(self, on: bool) -> Self {
        if on {
            self.status(AccountStatus::Active, None)
        } else {
            self.status(AccountStatus::Disabled, Some("disabled by a person".into()))
        }
    }
    /// Makes the status change conditional on the stored status: see
    /// [`status_only_from`](Self::status_only_from).
    pub fn only_from(mut self, from: &[AccountStatus]) -> Self {
        self.status_only_from = Some(from.to_vec());
        self
    }
    /// Makes the status change conditional on the stored refresh token: see
    /// [`status_only_with_refresh_token`](Self::status_only_with_refresh_token).
    pub fn only_with_refresh_token(mut self, refresh_token: Secret) -> Self {
        self.status_only_with_refresh_token = Some(refresh_token);
        self
    }
    /// Replaces the tokens.
    pub fn tokens(mut self, t: Tokens) -> Self {
        self.tokens = Some(t);
        self
    }
    /// Makes the whole patch conditional on its tokens: see
    /// [`unless_older_tokens`](Self::unless_older_tokens).
    pub fn unless_older_tokens(mut self) -> Self {
        self.unless_older_tokens = true;
        self
    }

    /// Checks and normalises the person-entered fields (trimmed, no empty names, tags
    /// de-duplicated).
    pub fn validate(mut self) -> Result<Self, Error> {
        if let Some(l) = &self.label {
            let l = l.trim();
            if l.is_empty() {
                return Err(Error::invalid("label", "must not be empty"));
            }
            check_length("label", l, MAX_NAME)?;
            self.label = Some(l.to_string());
        }
        if let Some(Some(g)) = &self.group {
            let g = g.trim();
            check_length("group", g, MAX_NAME)?;
            self.group = Some((!g.is_empty()).then(|| g.to_string()));
        }
        if let Some(Some(n)) = &self.note {
            let n = n.trim();
            check_length("note", n, MAX_NOTE)?;
            self.note = Some((!n.is_empty()).then(|| n.to_string()));
        }
        if let Some(tags) = self.tags.take() {
            self.tags = Some(normalize_tags(tags)?);
        }
        Ok(self)
    }

    /// Applies the patch to an account (the store calls this inside its transaction).
    pub fn apply_to(&self, a: &mut Account, now: Timestamp) {
        if self.unless_older_tokens
            && self
                .tokens
                .as_ref()
                .is_some_and(|t| t.older_than(&a.tokens))
        {
            return;
        }
        let p = self.clone();
        if let Some(v) = p.label {
            a.label = v;
        }
        if let Some(v) = p.email {
            a.email = v;
        }
        if let Some(v) = p.plan_type {
            a.plan_type = v;
        }
        if let Some(v) = p.group {
            a.group = v;
        }
        if let Some(v) = p.tags {
            a.tags = v;
        }
        if let Some(v) = p.sort {
            a.sort = v;
        }
        if let Some(v) = p.note {
            a.note = v;
        }
        if p.status_only_from
            .is_none_or(|from| from.contains(&a.status))
            && p.status_only_with_refresh_token
                .is_none_or(|rt| rt == a.tokens.refresh_token)
        {
            if let Some(v) = p.status {
                a.status = v;
            }
            if let Some(v) = p.status_reason {
                a.status_reason = v;
            }
        }
        if let Some(v) = p.tokens {
            a.tokens = v;
        }
        if let Some(v) = p.chatgpt_account_id {
            a.chatgpt_account_id = v;
        }
        if let Some(v) = p.chatgpt_user_id {
            a.chatgpt_user_id = v;
        }
        a.updated_at = now;
    }
}

/// The longest label, group or tag, in characters (as a key's name).
pub const MAX_NAME: usize = 200;
/// The longest note, in characters.
pub const MAX_NOTE: usize = 10_000;

/// Refuses a text longer than `max` characters.
fn check_length(field: &str, text: &str, max: usize) -> Result<(), Error> {
    if text.chars().nth(max).is_some() {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Refuses a label or group over [`MAX_NAME`] characters and a note over [`MAX_NOTE`] (of a
/// sign-in or an imported account, which no [`AccountPatch`] checks).
pub(crate) fn check_lengths(
    label: Option<&str>,
    group: Option<&str>,
    note: Option<&str>,
) -> Result<(), Error> {
    for (field, value, max) in [
        ("label", label, MAX_NAME),
        ("group", group, MAX_NAME),
        ("note", note, MAX_NOTE),
    ] {
        if let Some(v) = value {
            check_length(field, v, max)?;
        }
    }
    Ok(())
}

/// Trims tags, drops duplicates, refuses empty ones, long ones and commas (they separate tags
/// on the command line).
pub fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let t = t.trim();
        if t.is_empty() {
            return Err(Error::invalid("tags", "a tag must not be empty"));
        }
        if t.contains(',') {
            return Err(Error::invalid(
                "tags",
                format!("tag {t:?} must not contain a comma"),
            ));
        }
        check_length("tags", t, MAX_NAME)?;
        if !out.iter().any(|x| x == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_loosely_and_rejects_unknown() {
        assert_eq!(
            "needs-login".parse::<AccountStatus>().unwrap(),
            AccountStatus::NeedsLogin
        );
        assert_eq!(
            " Active ".parse::<AccountStatus>().unwrap(),
            AccountStatus::Active
        );
        assert!("gone".parse::<AccountStatus>().is_err());
    }

    #[test]
    fn patch_validation_normalises() {
        let p = AccountPatch::default()
            .label("  Work  ")
            .tags(vec![" a ".into(), "b".into(), "a".into()])
            .group(Some("  ".into()))
            .validate()
            .unwrap();
        assert_eq!(p.label.as_deref(), Some("Work"));
        assert_eq!(p.tags, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(p.group, Some(None), "a blank group clears it");
        assert!(AccountPatch::default().label(" ").validate().is_err());
        assert!(
            AccountPatch::default()
                .tags(vec!["".into()])
                .validate()
                .is_err()
        );
        assert!(
            AccountPatch::default()
                .tags(vec!["a,b".into()])
                .validate()
                .is_err()
        );
    }
}
