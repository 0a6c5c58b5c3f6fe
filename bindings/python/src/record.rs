//! Dataclass-like return values: frozen classes with read-only attributes, a readable
//! `__repr__`, `==` with a `hash()` that agrees with it, and `to_dict()`. [`record!`] declares one
//! from its fields; [`Field`] says how a field type shows in a repr and in a dict (records nest as
//! dicts, times stay `datetime`s) and how it hashes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::time::Time;

/// How a field value appears in `__repr__` and in `to_dict()`.
pub(crate) trait Field {
    /// The value in a repr.
    fn repr(&self, py: Python<'_>) -> PyResult<String>;
    /// The value in a dict (plain Python data).
    fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
    /// Feeds the value to `h`: values that are `==` feed the same (records are frozen, so a
    /// record's hash never changes; a list field is a copy that cannot change it either).
    fn hash_into(&self, h: &mut DefaultHasher);
}

macro_rules! plain_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            fn repr(&self, py: Python<'_>) -> PyResult<String> {
                Ok(self.plain(py)?.repr()?.to_string())
            }
            fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                self.clone().into_bound_py_any(py)
            }
            fn hash_into(&self, h: &mut DefaultHasher) {
                self.hash(h);
            }
        }
    )*};
}

plain_field!(String, bool, i64, u64, u32, u16, usize);

impl Field for f64 {
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.plain(py)?.repr()?.to_string())
    }
    fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.into_bound_py_any(py)
    }
    fn hash_into(&self, h: &mut DefaultHasher) {
        // `0.0 == -0.0`, so both hash as one; NaN equals nothing, so any hash will do.
        let v = if *self == 0.0 { 0.0 } else { *self };
        v.to_bits().hash(h);
    }
}

impl Field for Time {
    fn repr(&self, _py: Python<'_>) -> PyResult<String> {
        Ok(self.to_string())
    }
    fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.into_pyobject(py)?.into_any())
    }
    fn hash_into(&self, h: &mut DefaultHasher) {
        self.0.hash(h);
    }
}

impl<T: Field> Field for Option<T> {
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        match self {
            Some(v) => v.repr(py),
            None => Ok("None".into()),
        }
    }
    fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Some(v) => v.plain(py),
            None => Ok(py.None().into_bound(py)),
        }
    }
    fn hash_into(&self, h: &mut DefaultHasher) {
        self.is_some().hash(h);
        if let Some(v) = self {
            v.hash_into(h);
        }
    }
}

impl<T: Field> Field for Vec<T> {
    fn repr(&self, py: Python<'_>) -> PyResult<String> {
        let items = self
            .iter()
            .map(|v| v.repr(py))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(format!("[{}]", items.join(", ")))
    }
    fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let items = self
            .iter()
            .map(|v| v.plain(py))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?.into_any())
    }
    fn hash_into(&self, h: &mut DefaultHasher) {
        self.len().hash(h);
        for v in self {
            v.hash_into(h);
        }
    }
}

/// Declares a record class: `record! { /// docs  Rust as "Python" { field: Type, … } }`.
macro_rules! record {
    ($(#[$meta:meta])* $name:ident as $pyname:literal {
        $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$meta])*
        #[pyo3::pyclass(frozen, eq, module = "codexpool", name = $pyname)]
        #[derive(Clone, PartialEq)]
        pub struct $name {
            $($(#[$fmeta])* #[pyo3(get)] pub(crate) $field: $ty,)*
        }

        #[pyo3::pymethods]
        impl $name {
            fn __repr__(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<String> {
                $crate::record::Field::repr(self, py)
            }

            /// The fields as a dict (nested records as dicts; times stay `datetime`s).
            fn to_dict<'py>(
                &self,
                py: pyo3::Python<'py>,
            ) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::PyAny>> {
                $crate::record::Field::plain(self, py)
            }

            fn __hash__(&self) -> u64 {
                $crate::record::hash_of(self)
            }

            /// Itself: a record never changes.
            fn __copy__(slf: pyo3::Py<Self>) -> pyo3::Py<Self> {
                slf
            }

            /// Itself: a record never changes (its fields are immutable too).
            fn __deepcopy__(
                slf: pyo3::Py<Self>,
                _memo: &pyo3::Bound<'_, pyo3::PyAny>,
            ) -> pyo3::Py<Self> {
                slf
            }
        }

        impl $crate::record::Field for $name {
            fn repr(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<String> {
                let parts: Vec<String> = vec![
                    $(format!(
                        "{}={}",
                        stringify!($field),
                        $crate::record::Field::repr(&self.$field, py)?
                    ),)*
                ];
                Ok(format!("{}({})", $pyname, parts.join(", ")))
            }

            fn plain<'py>(
                &self,
                py: pyo3::Python<'py>,
            ) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::PyAny>> {
                use pyo3::types::PyDictMethods;
                let d = pyo3::types::PyDict::new(py);
                $(d.set_item(
                    stringify!($field),
                    $crate::record::Field::plain(&self.$field, py)?,
                )?;)*
                Ok(d.into_any())
            }

            fn hash_into(&self, h: &mut std::collections::hash_map::DefaultHasher) {
                $($crate::record::Field::hash_into(&self.$field, h);)*
            }
        }
    };
}

pub(crate) use record;

/// A record's `hash()`: of its fields, so records that are `==` (same class, same fields) hash
/// alike. `DefaultHasher::new()` has fixed keys: the same in every process, as a tuple's hash.
pub(crate) fn hash_of(record: &impl Field) -> u64 {
    let mut h = DefaultHasher::new();
    record.hash_into(&mut h);
    h.finish()
}

/// A string as Python's `repr` shows it (single quotes).
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A bool as Python shows it.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
