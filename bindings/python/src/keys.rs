//! `pool.keys`: the platform keys (`sk-cp-…`) clients present to the gateway, over core's
//! `KeyStore`. A key's secret exists only in the `CreatedKey` that `create` returns.

use codexpool_core::keys::{CreatedKey as CoreCreatedKey, KeyPatch, NewKey};
use codexpool_core::{PlatformKey, Secret};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::args::keyword_changes;
use crate::errors::{OrRaise, invalid};
use crate::record::{Field, record};
use crate::runtime::{Home, HomeExt};
use crate::time::{self, Time, opt};

record! {
    /// A platform key as stored: everything but the secret.
    Key as "Key" {
        id: String,
        name: String,
        hint: String,
        model: Option<String>,
        allowed_models: Vec<String>,
        allowed_groups: Vec<String>,
        reasoning_effort: Option<String>,
        enabled: bool,
        expires_at: Option<Time>,
        created_at: Time,
        updated_at: Time,
        last_used_at: Option<Time>,
    }
}

impl From<PlatformKey> for Key {
    fn from(k: PlatformKey) -> Self {
        Self {
            id: k.id,
            name: k.name,
            hint: k.hint,
            model: k.model,
            allowed_models: k.allowed_models,
            allowed_groups: k.allowed_groups,
            reasoning_effort: k.reasoning_effort,
            enabled: k.enabled,
            expires_at: opt(k.expires_at),
            created_at: Time(k.created_at),
            updated_at: Time(k.updated_at),
            last_used_at: opt(k.last_used_at),
        }
    }
}

/// A new key and its secret. The secret is shown here once and never stored; it is not part of
/// `repr()` or `to_dict()`: read `.secret`.
#[pyclass(frozen, module = "codexpool")]
pub struct CreatedKey {
    key: Key,
    secret: Secret,
}

#[pymethods]
impl CreatedKey {
    /// The key's record.
    #[getter]
    fn key(&self) -> Key {
        self.key.clone()
    }
    /// The secret to give the client (`sk-cp-…`).
    #[getter]
    fn secret(&self) -> &str {
        self.secret.expose()
    }
    /// `{"key": {...}}` (without the secret).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("key", self.key.plain(py)?)?;
        Ok(d.into_any())
    }
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "CreatedKey(key={}, secret='*****')",
            self.key.repr(py)?
        ))
    }
}

impl From<CoreCreatedKey> for CreatedKey {
    fn from(c: CoreCreatedKey) -> Self {
        Self {
            key: c.key.into(),
            secret: c.secret,
        }
    }
}

/// The platform keys of a pool (`pool.keys`).
#[pyclass(frozen, module = "codexpool")]
pub struct KeyStore {
    inner: codexpool_core::KeyStore,
    home: Home,
}

impl KeyStore {
    pub(crate) fn new(pool: &codexpool_core::Pool, home: Home) -> Self {
        Self {
            inner: pool.keys(),
            home,
        }
    }
}

#[pymethods]
impl KeyStore {
    /// Creates a key. `model` binds every request to that model; `allowed_models` and
    /// `allowed_groups` restrict it; `expires_at` is a datetime, RFC 3339 string or epoch seconds.
    #[pyo3(signature = (name, model=None, *, allowed_models=None, allowed_groups=None, reasoning_effort=None, expires_at=None))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        py: Python<'_>,
        name: String,
        model: Option<String>,
        allowed_models: Option<Vec<String>>,
        allowed_groups: Option<Vec<String>>,
        reasoning_effort: Option<String>,
        expires_at: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<CreatedKey> {
        let mut new = NewKey::named(name);
        new.model = model;
        new.allowed_models = allowed_models.unwrap_or_default();
        new.allowed_groups = allowed_groups.unwrap_or_default();
        new.reasoning_effort = reasoning_effort;
        new.expires_at = expires_at
            .map(|v| time::from_arg(v, "expires_at"))
            .transpose()?;
        let inner = self.inner.clone();
        self.home
            .run(py, async move { inner.create(new).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Every key, oldest first.
    fn list(&self) -> PyResult<Vec<Key>> {
        self.home.ensure()?;
        Ok(self.inner.list().into_iter().map(Into::into).collect())
    }

    /// One key by id or unique id prefix.
    fn get(&self, py: Python<'_>, id: &str) -> PyResult<Key> {
        self.home.ensure()?;
        self.inner.get(id).map(Into::into).or_raise(py)
    }

    /// Changes a key. Keywords: `name`, `model`, `allowed_models`, `allowed_groups`,
    /// `reasoning_effort`, `expires_at`, `enabled`; an omitted one is left as it is, `None`
    /// clears `model`, `reasoning_effort`, `expires_at` and the lists (an empty `model` or
    /// `reasoning_effort` clears it too).
    #[pyo3(
        signature = (id, **changes),
        text_signature = "($self, id, *, name=..., model=..., allowed_models=..., allowed_groups=..., reasoning_effort=..., expires_at=..., enabled=...)"
    )]
    fn update(
        &self,
        py: Python<'_>,
        id: &str,
        changes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Key> {
        let mut p = KeyPatch::default();
        let accepted = [
            "name",
            "model",
            "allowed_models",
            "allowed_groups",
            "reasoning_effort",
            "expires_at",
            "enabled",
        ];
        for (name, v) in keyword_changes("update", changes, &accepted)? {
            match name.as_str() {
                "name" => match v.extract::<Option<String>>()? {
                    Some(n) => p.name = Some(n),
                    None => return Err(invalid(py, "name", "must not be None")),
                },
                "model" => p.model = Some(v.extract()?),
                "allowed_models" => {
                    p.allowed_models = Some(v.extract::<Option<Vec<String>>>()?.unwrap_or_default())
                }
                "allowed_groups" => {
                    p.allowed_groups = Some(v.extract::<Option<Vec<String>>>()?.unwrap_or_default())
                }
                "reasoning_effort" => p.reasoning_effort = Some(v.extract()?),
                "expires_at" => {
                    p.expires_at = Some(if v.is_none() {
                        None
                    } else {
                        Some(time::from_arg(&v, "expires_at")?)
                    })
                }
                _ => match v.extract::<Option<bool>>()? {
                    Some(on) => p.enabled = Some(on),
                    None => return Err(invalid(py, "enabled", "must not be None")),
                },
            }
        }
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.update(&id, p).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Turns a key on.
    fn enable(&self, py: Python<'_>, id: &str) -> PyResult<Key> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.enable(&id).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Turns a key off: requests with it get 403 from then on.
    fn disable(&self, py: Python<'_>, id: &str) -> PyResult<Key> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.disable(&id).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// Deletes a key (requests with it get 401 from then on); returns it.
    fn delete(&self, py: Python<'_>, id: &str) -> PyResult<Key> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        self.home
            .run(py, async move { inner.delete(&id).await })?
            .map(Into::into)
            .or_raise(py)
    }

    /// The key a secret belongs to; raises `KeyRefused` when it is unknown, disabled or expired.
    /// A key it accepts counts as used, as a request through the gateway does: the returned
    /// key's `last_used_at` is from before this use (`get` shows this one).
    fn verify(&self, py: Python<'_>, secret: &str) -> PyResult<Key> {
        self.home.ensure()?;
        self.inner
            .verify(secret)
            .map(|k| (*k).clone().into())
            .or_raise(py)
    }

    fn __len__(&self) -> PyResult<usize> {
        self.home.ensure()?;
        Ok(self.inner.len())
    }

    fn __repr__(&self) -> String {
        self.home
            .repr("KeyStore", || format!("len={}", self.inner.len()))
    }
}
