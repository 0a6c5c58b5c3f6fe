//! Rescued tokens: what a refresh obtained when the database would not take it. The issuer has
//! already spent the old refresh token, so the new tokens ARE the sign-in; rather than drop them,
//! the refresh writes them to a private file beside the database
//! (`<db dir>/rescued-tokens/<db file name>/<account id>.<nonce>.json`, mode 0600, no token in any
//! log line). Each database has a folder of its own: a copy of it (a backup) or another database
//! in the same folder has the same account ids, and must neither take nor remove its rescues.
//! Earlier builds wrote them to `rescued-tokens/` itself ([`Folders::legacy`]): those are still
//! read by every process, and folded in (and removed) as before by a database that has their
//! account; opening a database leaves the others' alone.
//! Until the database takes them, every read of that account sees them (so a reload cannot revert
//! a process to the spent token), and the next write of the account, refresh lease on it or
//! opening of the database folds them in — only if they are newer than what is stored, the way
//! an import keeps the newer sign-in — and removes the file.
//!
//! Each rescue is its own file (a fresh nonce per write, written via a temporary file and a
//! rename), so removing the files a fold has read can never remove one written meanwhile.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::account::{Account, AccountStatus, Tokens};
use crate::secret::Secret;
use crate::time::Timestamp;

/// Where a database's rescued tokens are: its own folder, and the one earlier builds shared
/// between the databases of a folder.
#[derive(Debug)]
pub(crate) struct Folders {
    /// `<db dir>/rescued-tokens/<db file name>/`: where rescues are written.
    pub own: PathBuf,
    /// `<db dir>/rescued-tokens/`: only read.
    pub legacy: PathBuf,
}

impl Folders {
    pub fn for_db(db_path: &Path) -> Self {
        let legacy = db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("rescued-tokens");
        let name = db_path.file_name().unwrap_or("codexpool.db".as_ref());
        Self {
            own: legacy.join(name),
            legacy,
        }
    }

    /// The rescues in both folders ([`read`]), the legacy ones first (they are older).
    pub fn read(&self, only: Option<&str>) -> Vec<Rescue> {
        let mut all = read(&self.legacy, only);
        all.extend(read(&self.own, only));
        all
    }
}

/// One rescue file's content.
#[derive(Debug, Clone)]
pub(crate) struct Rescue {
    /// The account.
    pub account_id: String,
    /// SHA-256 (hex) of the refresh token the issuer took for `tokens`: the stored tokens those
    /// replace, whatever their times say.
    pub spent_sha256: String,
    /// The tokens the issuer answered with.
    pub tokens: Tokens,
    /// The file.
    pub path: PathBuf,
}

fn sha256_hex(s: &Secret) -> String {
    Sha256::digest(s.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An id that can name a file: no separators, dots or other surprises.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn backend(message: String) -> StoreError {
    StoreError::Backend {
        message,
        source: None,
    }
}

/// Writes a rescue file for `account_id` in `folders.own` (both folders created 0700 if
/// missing); its path.
pub(crate) fn write(
    folders: &Folders,
    account_id: &str,
    spent: &Secret,
    tokens: &Tokens,
) -> Result<PathBuf, StoreError> {
    if !safe_id(account_id) {
        return Err(backend(format!(
            "cannot name a rescue file after account id {account_id:?}"
        )));
    }
    // The shared folder first: made on the way, it would get the umask's mode.
    let dir = &folders.own;
    for folder in [&folders.legacy, dir] {
        crate::import::create_private_dir(folder)
            .map_err(|e| backend(format!("cannot create {}: {e}", folder.display())))?;
    }
    let nonce = format!(
        "{}-{:016x}",
        Timestamp::now().as_millis(),
        rand::random::<u64>()
    );
    let path = dir.join(format!("{account_id}.{nonce}.json"));
    let doc = json!({
        "version": 1,
        "account_id": account_id,
        "spent_refresh_token_sha256": sha256_hex(spent),
        "tokens": {
            "id_token": tokens.id_token.expose(),
            "access_token": tokens.access_token.expose(),
            "refresh_token": tokens.refresh_token.expose(),
            "expires_at_ms": tokens.expires_at.map(Timestamp::as_millis),
            "last_refresh_ms": tokens.last_refresh.map(Timestamp::as_millis),
        },
    });
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| backend(e.to_string()))?;
    crate::import::write_private(&path, &bytes).map_err(|e| backend(e.to_string()))?;
    // The folders may be new this time: their entries must be on disk too (rescues are rare).
    for folder in folders
        .legacy
        .parent()
        .into_iter()
        .chain([folders.legacy.as_path()])
    {
        crate::import::sync_dir(folder)
            .map_err(|e| backend(format!("cannot sync {}: {e}", folder.display())))?;
    }
    Ok(path)
}

fn parse(path: &Path, bytes: &[u8]) -> Option<Rescue> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    if v.get("version").and_then(Value::as_i64) != Some(1) {
        return None;
    }
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let t = v.get("tokens")?;
    let ms = |k: &str| t.get(k).and_then(Value::as_i64).map(Timestamp::from_millis);
    Some(Rescue {
        account_id: text(&v, "account_id")?,
        spent_sha256: text(&v, "spent_refresh_token_sha256")?,
        tokens: Tokens {
            id_token: Secret::new(text(t, "id_token")?),
            access_token: Secret::new(text(t, "access_token")?),
            refresh_token: Secret::new(text(t, "refresh_token")?),
            expires_at: ms("expires_at_ms"),
            last_refresh: ms("last_refresh_ms"),
        },
        path: path.to_path_buf(),
    })
}

/// The rescue files in `dir`, oldest name first; of one account when `only` is given. A file
/// that cannot be read is logged and left for a person to look at.
pub(crate) fn read(dir: &Path, only: Option<&str>) -> Vec<Rescue> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the rescued tokens");
            return Vec::new();
        }
    };
    let mut names: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        // Not the folders of the databases beside (in the legacy folder).
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        // Temporary files of a write in progress start with a dot.
        .filter(|(name, _)| !name.starts_with('.') && name.ends_with(".json"))
        .filter(|(name, _)| only.is_none_or(|id| name.split('.').next() == Some(id)))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|(name, path)| {
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|bytes| parse(&path, &bytes))
                .filter(|r| name.split('.').next() == Some(r.account_id.as_str()));
            if parsed.is_none() {
                tracing::error!(file = %path.display(), "a rescued-tokens file cannot be read; it is left alone");
            }
            parsed
        })
        .collect()
}

/// Removes rescue files that were folded into the database or are out of date.
pub(crate) fn remove(rescues: &[Rescue]) {
    for r in rescues {
        match std::fs::remove_file(&r.path) {
            Ok(()) => {
                tracing::info!(account = %r.account_id, "rescued tokens are in the database now; removed their file");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %r.path.display(), error = %e, "cannot remove a rescued-tokens file");
            }
        }
    }
}

/// Whether tokens `a` are older than `b`: by the access token's expiry, else by the last
/// refresh (the comparison an import makes to keep the newer sign-in). Unknown is not older.
pub(crate) fn older(a: &Tokens, b: &Tokens) -> bool {
    match (a.expires_at, b.expires_at) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => matches!((a.last_refresh, b.last_refresh), (Some(x), Some(y)) if x < y),
    }
}

/// Whether tokens a refresh obtained should replace `stored`: not when they are the same; always
/// when `stored` holds the refresh token that was spent for them (`stored_was_spent`); otherwise
/// (someone wrote other tokens meanwhile) only when they are not older.
pub(crate) fn replaces(new: &Tokens, stored: &Tokens, stored_was_spent: bool) -> bool {
    if new.access_token == stored.access_token && new.refresh_token == stored.refresh_token {
        return false;
    }
    stored_was_spent || !older(new, stored)
}

/// Puts rescued tokens into `a` when they replace its tokens ([`replaces`]); fresh tokens also
/// cure a dead sign-in (`needs_login`), as the refresh that got them would have. `true` when
/// `a` changed.
pub(crate) fn apply(a: &mut Account, r: &Rescue) -> bool {
    let spent = sha256_hex(&a.tokens.refresh_token) == r.spent_sha256;
    if !replaces(&r.tokens, &a.tokens, spent) {
        return false;
    }
    a.tokens = r.tokens.clone();
    if a.status == AccountStatus::NeedsLogin {
        a.status = AccountStatus::Active;
        a.status_reason = None;
    }
    true
}

/// Applies every rescue of `a`'s account in order; `true` when `a` changed.
pub(crate) fn apply_all(a: &mut Account, rescues: &[Rescue]) -> bool {
    let mut changed = false;
    for r in rescues {
        if r.account_id == a.id {
            changed |= apply(a, r);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(rt: &str, exp: Option<i64>, last: Option<i64>) -> Tokens {
        Tokens {
            id_token: Secret::new("id"),
            access_token: Secret::new(format!("at-{rt}")),
            refresh_token: Secret::new(rt),
            expires_at: exp.map(Timestamp::from_secs),
            last_refresh: last.map(Timestamp::from_secs),
        }
    }

    #[test]
    fn newer_tokens_replace_and_older_ones_do_not() {
        let stored = tokens("rt1", Some(100), Some(10));
        // The successor of what is stored, whatever its times say.
        assert!(replaces(&tokens("rt2", Some(50), None), &stored, true));
        // Someone else's tokens: the newer wins.
        assert!(replaces(&tokens("rt2", Some(200), None), &stored, false));
        assert!(!replaces(&tokens("rt2", Some(50), None), &stored, false));
        assert!(replaces(
            &tokens("rt2", Some(100), Some(20)),
            &stored,
            false
        ));
        assert!(!replaces(
            &tokens("rt2", Some(100), Some(5)),
            &stored,
            false
        ));
        // The same tokens: nothing to do.
        assert!(!replaces(&stored.clone(), &stored, true));
    }

    #[test]
    fn rescue_files_round_trip_are_private_and_hold_no_spent_token() {
        let dir = tempfile::tempdir().unwrap();
        let folders = Folders::for_db(&dir.path().join("pool.db"));
        let rescue_dir = folders.own.clone();
        let t = tokens("rt-new", Some(100), Some(10));
        let path = write(&folders, "abc123", &Secret::new("rt-old"), &t).unwrap();
        assert!(write(&folders, "../x", &Secret::new("rt-old"), &t).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("rt-old"),
            "the spent token is kept as a hash only"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&rescue_dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let all = read(&rescue_dir, None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].tokens, t);
        assert!(read(&rescue_dir, Some("abc12")).is_empty());
        assert_eq!(read(&rescue_dir, Some("abc123")).len(), 1);

        let mut a = crate::store::conformance::sample_account("abc123", "c");
        a.tokens.refresh_token = Secret::new("rt-old");
        a.status = AccountStatus::NeedsLogin;
        assert!(apply_all(&mut a, &all));
        assert_eq!(a.tokens, t);
        assert_eq!(a.status, AccountStatus::Active);
        assert!(!apply_all(&mut a, &all), "applied once");
        remove(&all);
        assert!(read(&rescue_dir, None).is_empty());
    }
}
