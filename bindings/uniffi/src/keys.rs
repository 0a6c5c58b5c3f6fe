//! `KeyStore`: the platform keys (`sk-cp-…`) clients present to the gateway, over core's
//! [`codexpool_core::KeyStore`]. A key's secret is returned once, by `create`, in a
//! [`CreatedKey`] object whose printed forms hide it.

use std::sync::Arc;

use codexpool_core::keys::{KeyPatch as CorePatch, NewKey as CoreNewKey};
use codexpool_core::{PlatformKey as CoreKey, Secret, Timestamp};

use crate::runtime::{Home, HomeExt};
use crate::{CodexPoolError, ms};

/// A platform key as stored: everything but the secret. Times are milliseconds since the Unix
/// epoch (UTC).
#[derive(Debug, Clone, uniffi::Record)]
pub struct PlatformKey {
    /// Local id (12 hex characters); calls taking an id also take a unique prefix.
    pub id: String,
    /// A person's name for it.
    pub name: String,
    /// How it is shown: prefix and last four characters.
    pub hint: String,
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
    /// When it stops being accepted (ms).
    pub expires_at: Option<i64>,
    /// When it was created (ms).
    pub created_at: i64,
    /// When it was last changed (ms).
    pub updated_at: i64,
    /// When it was last used (ms).
    pub last_used_at: Option<i64>,
}

impl From<CoreKey> for PlatformKey {
    fn from(k: CoreKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            hint: k.hint,
            model: k.model,
            allowed_models: k.allowed_models,
            allowed_groups: k.allowed_groups,
            reasoning_effort: k.reasoning_effort,
            enabled: k.enabled,
            expires_at: k.expires_at.map(ms),
            created_at: ms(k.created_at),
            updated_at: ms(k.updated_at),
            last_used_at: k.last_used_at.map(ms),
        }
    }
}

/// A new key and its secret. The secret is not stored: hand it out now or lose it.
///
/// An object rather than a record: a record's generated `toString`/`__str__`/`description`
/// would print every field, the secret included. This one prints the key with `secret=*****`;
/// `secret()` is the only way to the secret.
#[derive(uniffi::Object)]
#[uniffi::export(Debug, Display)]
pub struct CreatedKey {
    key: PlatformKey,
    secret: Secret,
}

#[uniffi::export]
impl CreatedKey {
    /// The stored key.
    pub fn key(&self) -> PlatformKey {
        self.key.clone()
    }

    /// The secret (`sk-cp-…`) to give the client.
    pub fn secret(&self) -> String {
        self.secret.expose().to_string()
    }
}

impl std::fmt::Display for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CreatedKey(id={}, name={}, hint={}, secret={})",
            self.key.id, self.key.name, self.key.hint, self.secret
        )
    }
}

/// The same as `Display` (Python's `repr` is `Debug`): one printed form, the secret hidden.
impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What to create. Only `name` is required.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NewKey {
    /// Its name (non-empty).
    pub name: String,
    /// Bind every request to this model (default: the client chooses).
    #[uniffi(default = None)]
    pub model: Option<String>,
    /// The only models it may ask for (default: any).
    #[uniffi(default = [])]
    pub allowed_models: Vec<String>,
    /// Only accounts in these groups serve it (default: any).
    #[uniffi(default = [])]
    pub allowed_groups: Vec<String>,
    /// `none`, `minimal`, `low`, `medium`, `high` or `xhigh` (default: the client's).
    #[uniffi(default = None)]
    pub reasoning_effort: Option<String>,
    /// Expiry in ms since the epoch (default: never).
    #[uniffi(default = None)]
    pub expires_at: Option<i64>,
}

impl From<NewKey> for CoreNewKey {
    fn from(n: NewKey) -> Self {
        let mut out = CoreNewKey::named(n.name);
        out.model = n.model;
        out.allowed_models = n.allowed_models;
        out.allowed_groups = n.allowed_groups;
        out.reasoning_effort = n.reasoning_effort;
        out.expires_at = n.expires_at.map(Timestamp::from_millis);
        out
    }
}

/// A change to a key. A field left `None` is kept. An empty `model` or `reasoning_effort`
/// clears it, and so does an `expires_at` of 0 or less (the key no longer expires).
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct KeyPatch {
    /// New name.
    #[uniffi(default = None)]
    pub name: Option<String>,
    /// New bound model (empty: none).
    #[uniffi(default = None)]
    pub model: Option<String>,
    /// New allowed models, replacing all (empty list: any).
    #[uniffi(default = None)]
    pub allowed_models: Option<Vec<String>>,
    /// New allowed groups, replacing all (empty list: any).
    #[uniffi(default = None)]
    pub allowed_groups: Option<Vec<String>>,
    /// New reasoning effort (empty: the client's).
    #[uniffi(default = None)]
    pub reasoning_effort: Option<String>,
    /// Enabled or not.
    #[uniffi(default = None)]
    pub enabled: Option<bool>,
    /// New expiry in ms since the epoch (0 or less: never).
    #[uniffi(default = None)]
    pub expires_at: Option<i64>,
}

impl From<KeyPatch> for CorePatch {
    fn from(p: KeyPatch) -> Self {
        let mut out = CorePatch::default();
        out.name = p.name;
        out.model = p.model.map(Some);
        out.allowed_models = p.allowed_models;
        out.allowed_groups = p.allowed_groups;
        out.reasoning_effort = p.reasoning_effort.map(Some);
        out.enabled = p.enabled;
        out.expires_at = p
            .expires_at
            .map(|t| (t > 0).then(|| Timestamp::from_millis(t)));
        out
    }
}

/// The platform keys of a pool. Get it with `Pool.keys()`.
#[derive(uniffi::Object)]
pub struct KeyStore {
    pub(crate) inner: codexpool_core::Pool,
    pub(crate) home: Home,
}

#[uniffi::export]
impl KeyStore {
    /// Creates a key; the returned secret is shown this once (`secret()`).
    pub async fn create(&self, new_key: NewKey) -> Result<Arc<CreatedKey>, CodexPoolError> {
        let keys = self.inner.keys();
        self.home
            .run(async move {
                let created = keys.create(new_key.into()).await?;
                Ok(Arc::new(CreatedKey {
                    key: created.key.into(),
                    secret: created.secret,
                }))
            })
            .await
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<PlatformKey>, CodexPoolError> {
        self.home.ensure()?;
        Ok(self
            .inner
            .keys()
            .list()
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// One key by id or unique id prefix.
    pub fn get(&self, id: String) -> Result<PlatformKey, CodexPoolError> {
        self.home.ensure()?;
        Ok(self.inner.keys().get(&id)?.into())
    }

    /// Changes a key.
    pub async fn update(&self, id: String, patch: KeyPatch) -> Result<PlatformKey, CodexPoolError> {
        let keys = self.inner.keys();
        self.home
            .run(async move { Ok(keys.update(&id, patch.into()).await?.into()) })
            .await
    }

    /// Turns a key on.
    pub async fn enable(&self, id: String) -> Result<PlatformKey, CodexPoolError> {
        let keys = self.inner.keys();
        self.home
            .run(async move { Ok(keys.enable(&id).await?.into()) })
            .await
    }

    /// Turns a key off: requests with it are refused (403) from then on.
    pub async fn disable(&self, id: String) -> Result<PlatformKey, CodexPoolError> {
        let keys = self.inner.keys();
        self.home
            .run(async move { Ok(keys.disable(&id).await?.into()) })
            .await
    }

    /// Deletes a key; returns it as it was.
    pub async fn delete(&self, id: String) -> Result<PlatformKey, CodexPoolError> {
        let keys = self.inner.keys();
        self.home
            .run(async move { Ok(keys.delete(&id).await?.into()) })
            .await
    }

    /// Checks a secret as the gateway does: the key, or `Auth` naming why it is refused
    /// (missing, unknown, disabled, expired). A key it accepts counts as used: the returned
    /// key's `last_used_at` is from before this use (`get` shows this one).
    pub fn verify(&self, secret: String) -> Result<PlatformKey, CodexPoolError> {
        self.home.ensure()?;
        let key = self.inner.keys().verify(&secret)?;
        Ok(CoreKey::clone(&key).into())
    }
}
