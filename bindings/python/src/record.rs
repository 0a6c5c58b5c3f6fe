//! Dataclass-like return values: frozen classes with read-only attributes, a readable
//! `__repr__`, `==`, and `to_dict()`. [`record!`] declares one from its fields; [`Field`] says how
//! a field type shows in a repr and in a dict (records nest as dicts, times stay `datetime`s).

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
        }
    )*};
}

plain_field!(String, bool, i64, u64, u32, u16, usize, f64);

impl Field for Time {
    fn repr(&self, _py: Python<'_>) -> PyResult<String> {
        Ok(self.to_string())
    }
    fn plain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.into_pyobject(py)?.into_any())
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
        }
    };
}

pub(crate) use record;

/// A string as Python's `repr` shows it (single quotes).
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A bool as Python shows it.
pub(crate) fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}
