//! `KeyStore`: the local API keys ("platform keys") that clients present to the gateway.
//!
//! A key's secret (`sk-cp-` + 48 base62 characters from the OS RNG) is shown once at creation;
//! only its SHA-256 and a display hint are stored. [`KeyStore::verify`] answers from memory in
//! O(1) and records the last-used time without a write per request (the pool flushes those in
//! batches).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::TryRngCore;
use rand::distr::{Alphanumeric, Distribution};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Pool;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::stamp::Stamp;
use crate::store::StoreError;
use crate::time::Timestamp;

/// The prefix of every platform key.
pub const KEY_PREFIX: &str = "sk-cp-";
/// Random characters after the prefix.
pub const KEY_RANDOM_LEN: usize = 48;
/// Accepted reasoning efforts.
pub const REASONING_EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
/// How far ahead a key's expiry may lie: 100 years (of 365 days). A later time is nearly always
/// a unit mistake (milliseconds passed as seconds lands in the year ~58000) and would not print
/// as a date anywhere.
pub const MAX_EXPIRY_AHEAD: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A platform key as stored: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PlatformKey {
    /// Local id (12 hex characters); commands accept a unique prefix.
    pub id: String,
    /// A person's name for it.
    pub name: String,
    /// How it is shown: prefix and last four characters.
    pub hint: String,
    /// SHA-256 of the secret.
    #[serde(skip)]
    pub secret_hash: [u8; 32],
    /// When set, every request through this key uses this model.
    pub model: Option<String>,
    /// When non-empty, the only models this key may ask for.
    pub allowed_models: Vec<String>,
    /// When non-empty, only accounts in these groups serve this key.
    pub allowed_groups: Vec<String>,
    /// When set, the reasoning effort applied to every request.
    pub reasoning_effort: Option<String>,
    /// Whether it is accepted.
    pub enabled: bool,
    /// When it stops being accepted.
    pub expires_at: Option<Timestamp>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last changed.
    pub updated_at: Timestamp,
    /// When it was last used.
    pub last_used_at: Option<Timestamp>,
}

impl PlatformKey {
    /// The model a request should use: the bound model if any, else the requested one if this
    /// key allows it. `Err` names the refused model.
    pub fn resolve_model<'a>(
        &'a self,
        requested: Option<&'a str>,
    ) -> Result<Option<&'a str>, KeyError> {
        if let Some(bound) = &self.model {
            return Ok(Some(bound));
        }
        match requested {
            Some(m) if !self.allows_model(m) => Err(KeyError::ModelNotAllowed {
                model: m.to_string(),
                key_id: self.id.clone(),
                allowed: self.allowed_models.clone(),
            }),
            other => Ok(other),
        }
    }

    /// Whether the key may ask for a model.
    pub fn allows_model(&self, model: &str) -> bool {
        match &self.model {
            Some(bound) => bound == model,
            None => {
                self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
            }
        }
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No key was presented.
    #[error("no API key: send `Authorization: Bearer sk-cp-…` or `x-api-key`")]
    Missing,
    /// The key is not known.
    #[error("unknown API key")]
    Unknown,
    /// The key is disabled.
    #[error("API key {key_id} is disabled")]
    Disabled {
        /// Its id.
        key_id: String,
    },
    /// The key has expired.
    #[error("API key {key_id} expired at {at}")]
    Expired {
        /// Its id.
        key_id: String,
        /// When.
        at: Timestamp,
    },
    /// The key may not use that model.
    #[error(
        "API key {key_id} may not use model {model:?}{}",
        allowed_list(allowed)
    )]
    ModelNotAllowed {
        /// The refused model.
        model: String,
        /// The key.
        key_id: String,
        /// What it may use.
        allowed: Vec<String>,
    },
}

impl KeyError {
    /// The key the request presented, when it is one of ours (disabled, expired, refused a
    /// model): who is still using a revoked key is what the request log must answer.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Self::Disabled { key_id }
            | Self::Expired { key_id, .. }
            | Self::ModelNotAllowed { key_id, .. } => Some(key_id),
            Self::Missing | Self::Unknown => None,
        }
    }
}

fn allowed_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        String::new()
    } else {
        format!(" (allowed: {})", allowed.join(", "))
    }
}

/// What to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NewKey {
    /// Its name (required, non-empty).
    pub name: String,
    /// Bound model.
    pub model: Option<String>,
    /// Allowed models.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Allowed account groups.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Reasoning effort.
    pub reasoning_effort: Option<String>,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
}

impl NewKey {
    /// A key with this name and no restrictions.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }
    /// Binds a model (default: none, the client chooses).
    pub fn model(mut self, m: impl Into<String>) -> Self {
        self.model = Some(m.into());
        self
    }
    /// Allows a model (default: any).
    pub fn allow_model(mut self, m: impl Into<String>) -> Self {
        self.allowed_models.push(m.into());
        self
    }
    /// Allows an account group (default: any).
    pub fn allow_group(mut self, g: impl Into<String>) -> Self {
        self.allowed_groups.push(g.into());
        self
    }
    /// Sets the reasoning effort (default: the client's).
    pub fn reasoning_effort(mut self, e: impl Into<String>) -> Self {
        self.reasoning_effort = Some(e.into());
        self
    }
    /// Sets an expiry (default: never).
    pub fn expires_at(mut self, t: Timestamp) -> Self {
        self.expires_at = Some(t);
        self
    }
}

/// A change to a key. `None` leaves a field; for optional fields `Some(None)` clears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New bound model.
    pub model: Option<Option<String>>,
    /// New allowed models.
    pub allowed_models: Option<Vec<String>>,
    /// New allowed groups.
    pub allowed_groups: Option<Vec<String>>,
    /// New reasoning effort.
    pub reasoning_effort: Option<Option<String>>,
    /// Enabled or not.
    pub enabled: Option<bool>,
    /// New expiry.
    pub expires_at: Option<Option<Timestamp>>,
}

impl KeyPatch {
    /// Renames.
    pub fn name(mut self, v: impl Into<String>) -> Self {
        self.name = Some(v.into());
        self
    }
    /// Binds (or unbinds, with `None` or a blank name) a model.
    pub fn model(mut self, v: Option<String>) -> Self {
        self.model = Some(v);
        self
    }
    /// Replaces the allowed models.
    pub fn allowed_models(mut self, v: Vec<String>) -> Self {
        self.allowed_models = Some(v);
        self
    }
    /// Replaces the allowed groups.
    pub fn allowed_groups(mut self, v: Vec<String>) -> Self {
        self.allowed_groups = Some(v);
        self
    }
    /// Sets (or clears, with `None` or a blank value) the reasoning effort.
    pub fn reasoning_effort(mut self, v: Option<String>) -> Self {
        self.reasoning_effort = Some(v);
        self
    }
    /// Enables or disables.
    pub fn enabled(mut self, v: bool) -> Self {
        self.enabled = Some(v);
        self
    }
    /// Sets (or clears) the expiry.
    pub fn expires_at(mut self, v: Option<Timestamp>) -> Self {
        self.expires_at = Some(v);
        self
    }

    fn validate(mut self) -> Result<Self> {
        if let Some(n) = &self.name {
            self.name = Some(clean_name(n)?);
        }
        // A blank model or effort clears it, as a blank group or note of an account does.
        if let Some(Some(m)) = &self.model {
            self.model = Some(if m.trim().is_empty() {
                None
            } else {
                Some(clean_model("model", m)?)
            });
        }
        if let Some(ms) = self.allowed_models.take() {
            self.allowed_models = Some(clean_list("allowed_models", ms, clean_model)?);
        }
        if let Some(gs) = self.allowed_groups.take() {
            self.allowed_groups = Some(clean_list("allowed_groups", gs, clean_group)?);
        }
        if let Some(Some(e)) = &self.reasoning_effort {
            self.reasoning_effort = Some(if e.trim().is_empty() {
                None
            } else {
                Some(clean_effort(e)?)
            });
        }
        Ok(self)
    }

    /// Applies the patch (the store calls this inside its transaction, on a copy it writes
    /// only when this succeeds). Refused when a change of the bound or allowed models would
    /// leave the bound model outside the allowed ones, as [`KeyStore::create`] refuses such a
    /// key; other changes (disabling, renaming) go through whatever the key holds.
    pub fn apply_to(&self, k: &mut PlatformKey, now: Timestamp) -> Result<(), StoreError> {
        if let Some(v) = &self.name {
            k.name.clone_from(v);
        }
        if let Some(v) = &self.model {
            k.model.clone_from(v);
        }
        if let Some(v) = &self.allowed_models {
            k.allowed_models.clone_from(v);
        }
        if let Some(v) = &self.allowed_groups {
            k.allowed_groups.clone_from(v);
        }
        if let Some(v) = &self.reasoning_effort {
            k.reasoning_effort.clone_from(v);
        }
        if let Some(v) = self.enabled {
            k.enabled = v;
        }
        if let Some(v) = self.expires_at {
            k.expires_at = v;
        }
        k.updated_at = now;
        if self.model.is_some() || self.allowed_models.is_some() {
            bound_model_allowed(k.model.as_deref(), &k.allowed_models)?;
        }
        Ok(())
    }
}

/// A bound model must be among the allowed ones, when some are listed.
fn bound_model_allowed(model: Option<&str>, allowed: &[String]) -> Result<(), StoreError> {
    match model {
        Some(m) if !allowed.is_empty() && !allowed.iter().any(|a| a == m) => {
            Err(StoreError::Refused {
                field: "allowed_models",
                message: format!("the bound model {m:?} is not among them"),
            })
        }
        _ => Ok(()),
    }
}

/// An expiry must lie after `now` and at most [`MAX_EXPIRY_AHEAD`] later.
fn check_expiry(at: Timestamp, now: Timestamp) -> Result<()> {
    if at <= now {
        return Err(Error::invalid("expires_at", "must be in the future"));
    }
    if at > now.plus(MAX_EXPIRY_AHEAD) {
        return Err(Error::invalid(
            "expires_at",
            "must be at most 100 years ahead (was a time in milliseconds given as seconds?)",
        ));
    }
    Ok(())
}

/// The longest key name, in characters (as an account's label).
pub const MAX_KEY_NAME: usize = crate::account::MAX_NAME;

fn clean_name(n: &str) -> Result<String> {
    let n = n.trim();
    if n.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if n.chars().count() > MAX_KEY_NAME {
        return Err(Error::invalid(
            "name",
            format!("must be at most {MAX_KEY_NAME} characters"),
        ));
    }
    Ok(n.to_string())
}

fn clean_model(field: &str, m: &str) -> Result<String> {
    let m = m.trim();
    if m.is_empty() || m.chars().any(char::is_whitespace) {
        return Err(Error::invalid(field, format!("{m:?} is not a model name")));
    }
    Ok(m.to_string())
}

/// An account group's name as accounts take it: trimmed, not empty (spaces inside are fine).
fn clean_group(field: &str, g: &str) -> Result<String> {
    let g = g.trim();
    if g.is_empty() {
        return Err(Error::invalid(field, "a group name must not be empty"));
    }
    Ok(g.to_string())
}

fn clean_list(
    field: &str,
    items: Vec<String>,
    clean: fn(&str, &str) -> Result<String>,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        let i = clean(field, &i)?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

fn clean_effort(e: &str) -> Result<String> {
    let e = e.trim().to_ascii_lowercase();
    if REASONING_EFFORTS.contains(&e.as_str()) {
        Ok(e)
    } else {
        Err(Error::invalid(
            "reasoning_effort",
            format!("{e:?} is not one of {}", REASONING_EFFORTS.join(", ")),
        ))
    }
}

/// A freshly created key with its secret. The secret is not stored: show it now or lose it.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The stored key.
    pub key: PlatformKey,
    /// The secret to hand to the client.
    pub secret: Secret,
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn generate_secret() -> Result<String> {
    let mut rng = rand::rngs::OsRng.unwrap_err();
    let random: String = Alphanumeric
        .sample_iter(&mut rng)
        .take(KEY_RANDOM_LEN)
        .map(char::from)
        .collect();
    Ok(format!("{KEY_PREFIX}{random}"))
}

/// `sk-cp-…` and the last four characters (of anything: it also shows what a person typed).
fn hint_of(secret: &str) -> String {
    format!("{KEY_PREFIX}…{}", crate::secret::last4(secret))
}

/// A key in memory with its last-used stamp (shared across reloads).
pub(crate) struct KeyEntry {
    pub key: Arc<PlatformKey>,
    pub used: Arc<Stamp>,
}

/// The in-memory key table.
#[derive(Default)]
pub(crate) struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
    by_id: BTreeMap<String, Arc<KeyEntry>>,
}

impl KeyTable {
    /// Builds a table from stored keys, keeping last-used stamps of known ids.
    pub fn rebuild(keys: Vec<PlatformKey>, old: &KeyTable) -> Self {
        let mut t = KeyTable::default();
        for k in keys {
            let used = old
                .by_id
                .get(&k.id)
                .map(|e| e.used.clone())
                .unwrap_or_else(|| Arc::new(Stamp::new(k.last_used_at)));
            t.insert(k, used);
        }
        t
    }

    fn insert(&mut self, k: PlatformKey, used: Arc<Stamp>) {
        if let Some(old) = self.by_id.remove(&k.id) {
            self.by_hash.remove(&old.key.secret_hash);
        }
        let e = Arc::new(KeyEntry {
            key: Arc::new(k),
            used,
        });
        self.by_hash.insert(e.key.secret_hash, e.clone());
        self.by_id.insert(e.key.id.clone(), e);
    }

    fn upsert(&mut self, k: PlatformKey) {
        let used = self
            .by_id
            .get(&k.id)
            .map(|e| e.used.clone())
            .unwrap_or_else(|| Arc::new(Stamp::new(k.last_used_at)));
        self.insert(k, used);
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.by_id.remove(id) {
            self.by_hash.remove(&e.key.secret_hash);
        }
    }

    /// Last-used times not yet in the store; [`KeyTable::mark_flushed`] once they are.
    pub fn dirty_stamps(&self) -> Vec<(String, Timestamp)> {
        self.by_id
            .values()
            .filter_map(|e| e.used.dirty().map(|t| (e.key.id.clone(), t)))
            .collect()
    }

    pub fn mark_flushed(&self, written: &[(String, Timestamp)]) {
        for (id, t) in written {
            if let Some(e) = self.by_id.get(id) {
                e.used.mark_flushed(*t);
            }
        }
    }
}

/// Handle to the platform keys of a [`Pool`]. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    pub(crate) pool: Pool,
}

impl KeyStore {
    /// Creates a key. The returned secret is shown once and never stored.
    pub async fn create(&self, new: NewKey) -> Result<CreatedKey> {
        let name = clean_name(&new.name)?;
        let model = new
            .model
            .as_deref()
            .map(|m| clean_model("model", m))
            .transpose()?;
        let allowed_models = clean_list("allowed_models", new.allowed_models, clean_model)?;
        let allowed_groups = clean_list("allowed_groups", new.allowed_groups, clean_group)?;
        let reasoning_effort = new
            .reasoning_effort
            .as_deref()
            .map(clean_effort)
            .transpose()?;
        bound_model_allowed(model.as_deref(), &allowed_models)
            .map_err(|e| Error::from_store(e, "key", ""))?;
        let shared = &self.pool.shared;
        let now = shared.clock.now();
        if let Some(at) = new.expires_at {
            check_expiry(at, now)?;
        }
        let secret = generate_secret()?;
        let key = PlatformKey {
            id: crate::id::new_id(),
            name,
            hint: hint_of(&secret),
            secret_hash: hash_secret(&secret),
            model,
            allowed_models,
            allowed_groups,
            reasoning_effort,
            enabled: true,
            expires_at: new.expires_at,
            created_at: now,
            updated_at: now,
            last_used_at: None,
        };
        let key = self
            .pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                shared.store.insert_key(&key).await?;
                crate::sync::write(&shared.keys).upsert(key.clone());
                Ok(key)
            })
            .await?;
        Ok(CreatedKey {
            key,
            secret: Secret::new(secret),
        })
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Vec<PlatformKey> {
        let t = crate::sync::read(&self.pool.shared.keys);
        let mut v: Vec<PlatformKey> = t.by_id.values().map(|e| self.with_stamp(e)).collect();
        v.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        v
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        crate::sync::read(&self.pool.shared.keys).by_id.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_stamp(&self, e: &KeyEntry) -> PlatformKey {
        let mut k = (*e.key).clone();
        k.last_used_at = e.used.get().or(k.last_used_at);
        k
    }

    /// One key by id, unique id prefix, or else exact name. A secret given where the id
    /// belongs is refused without being echoed (errors end up in logs and tracebacks).
    pub fn get(&self, id: &str) -> Result<PlatformKey> {
        let t = crate::sync::read(&self.pool.shared.keys);
        let e = match t.by_id.get(id) {
            Some(e) => e,
            None => {
                // Ids sort, so the keys starting with a prefix are one range of the map.
                let wanted = id.trim();
                if wanted.starts_with(KEY_PREFIX) && !t.by_id.values().any(|e| e.key.name == wanted)
                {
                    return Err(Error::invalid(
                        "id",
                        format!(
                            "{} is a key's secret, not its id (the key list shows ids)",
                            hint_of(wanted)
                        ),
                    ));
                }
                let candidates = t
                    .by_id
                    .range(wanted.to_string()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(wanted));
                let found = crate::id::resolve_prefix("key", wanted, candidates);
                let id = crate::id::or_by_name("key", found, "name", wanted, |name| {
                    t.by_id
                        .values()
                        .filter(|e| e.key.name == name)
                        .map(|e| e.key.id.clone())
                        .collect()
                })?;
                t.by_id
                    .get(&id)
                    .ok_or(Error::NotFound { what: "key", id })?
            }
        };
        Ok(self.with_stamp(e))
    }

    /// Changes a key.
    pub async fn update(&self, id: &str, patch: KeyPatch) -> Result<PlatformKey> {
        let patch = patch.validate()?;
        let id = self.get(id)?.id;
        let shared = &self.pool.shared;
        if let Some(Some(at)) = patch.expires_at {
            check_expiry(at, shared.clock.now())?;
        }
        self.pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                let k = shared
                    .store
                    .patch_key(&id, &patch, shared.clock.now())
                    .await
                    .map_err(|e| Error::from_store(e, "key", &id))?;
                crate::sync::write(&shared.keys).upsert(k.clone());
                Ok(k)
            })
            .await
    }

    /// Turns a key on.
    pub async fn enable(&self, id: &str) -> Result<PlatformKey> {
        self.update(id, KeyPatch::default().enabled(true)).await
    }

    /// Turns a key off; requests with it get 403 from then on.
    pub async fn disable(&self, id: &str) -> Result<PlatformKey> {
        self.update(id, KeyPatch::default().enabled(false)).await
    }

    /// Deletes a key; requests with it get 401 from then on.
    pub async fn delete(&self, id: &str) -> Result<PlatformKey> {
        let k = self.get(id)?;
        self.pool
            .write_through(|pool| async move {
                let shared = &pool.shared;
                let _guard = shared.admin.lock().await;
                if !shared.store.delete_key(&k.id).await? {
                    return Err(Error::NotFound {
                        what: "key",
                        id: k.id,
                    });
                }
                crate::sync::write(&shared.keys).remove(&k.id);
                Ok(k)
            })
            .await
    }

    /// Checks a presented secret: O(1), from memory. Distinguishes a missing, unknown,
    /// disabled and expired key. Records the use (flushed to the store in batches).
    pub fn verify(&self, secret: &str) -> Result<Arc<PlatformKey>, KeyError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(KeyError::Missing);
        }
        let hash = hash_secret(secret);
        let entry = {
            let t = crate::sync::read(&self.pool.shared.keys);
            t.by_hash.get(&hash).cloned()
        };
        let e = entry.ok_or(KeyError::Unknown)?;
        if !e.key.enabled {
            return Err(KeyError::Disabled {
                key_id: e.key.id.clone(),
            });
        }
        let now = self.pool.shared.clock.now();
        if let Some(at) = e.key.expires_at
            && now >= at
        {
            return Err(KeyError::Expired {
                key_id: e.key.id.clone(),
                at,
            });
        }
        e.used.touch(now);
        Ok(e.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_the_last_four_characters() {
        assert_eq!(hint_of("sk-cp-abcdefgh"), "sk-cp-…efgh");
        assert_eq!(hint_of("sk-cp-€€"), "sk-cp-…p-€€");
        assert_eq!(hint_of("ab"), "sk-cp-…ab");
    }

    #[test]
    fn secrets_have_the_documented_shape() {
        let s = generate_secret().unwrap();
        assert!(s.starts_with(KEY_PREFIX));
        assert_eq!(s.len(), KEY_PREFIX.len() + KEY_RANDOM_LEN);
        assert!(
            s[KEY_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
        assert_ne!(s, generate_secret().unwrap());
        let h = hint_of(&s);
        assert!(h.starts_with("sk-cp-…") && h.ends_with(&s[s.len() - 4..]));
    }

    /// A key that binds nothing and allows everything.
    fn key() -> PlatformKey {
        PlatformKey {
            id: "k".into(),
            name: "n".into(),
            hint: "h".into(),
            secret_hash: [0; 32],
            model: None,
            allowed_models: vec![],
            allowed_groups: vec![],
            reasoning_effort: None,
            enabled: true,
            expires_at: None,
            created_at: Timestamp::from_secs(0),
            updated_at: Timestamp::from_secs(0),
            last_used_at: None,
        }
    }

    #[test]
    fn model_resolution() {
        let mut k = key();
        assert_eq!(k.resolve_model(Some("a")).unwrap(), Some("a"));
        k.allowed_models = vec!["a".into()];
        assert!(matches!(
            k.resolve_model(Some("b")),
            Err(KeyError::ModelNotAllowed { .. })
        ));
        assert!(
            k.resolve_model(Some("b"))
                .unwrap_err()
                .to_string()
                .contains("\"b\"")
        );
        k.model = Some("bound".into());
        assert_eq!(
            k.resolve_model(Some("b")).unwrap(),
            Some("bound"),
            "a bound model wins"
        );
    }

    /// A key that binds a model outside its allowed ones (stored so by an older version) can
    /// still be disabled and renamed; a change of its models must mend it.
    #[test]
    fn only_model_changes_are_checked_against_the_allowed_models() {
        let mut k = PlatformKey {
            model: Some("o3".into()),
            allowed_models: vec!["gpt-5".into()],
            ..key()
        };
        let now = Timestamp::from_secs(9);
        let off = KeyPatch::default().enabled(false).name("leaked");
        off.apply_to(&mut k, now).unwrap();
        assert!(!k.enabled);
        assert_eq!((k.name.as_str(), k.updated_at), ("leaked", now));
        let refused = KeyPatch::default().allowed_models(vec!["gpt-5".into(), "o4".into()]);
        assert!(matches!(
            refused.apply_to(&mut k.clone(), now),
            Err(StoreError::Refused { .. })
        ));
        let mended = KeyPatch::default().model(Some("gpt-5".into()));
        mended.apply_to(&mut k, now).unwrap();
        assert_eq!(k.model.as_deref(), Some("gpt-5"));
    }

    #[test]
    fn names_are_counted_in_characters() {
        assert_eq!(clean_name(&"é".repeat(200)).unwrap().chars().count(), 200);
        assert!(clean_name(&"é".repeat(201)).is_err());
        assert!(clean_name("  ").is_err());
    }

    #[test]
    fn effort_validation() {
        assert_eq!(clean_effort(" High ").unwrap(), "high");
        assert!(clean_effort("extreme").is_err());
    }
}
