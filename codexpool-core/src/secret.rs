//! `Secret`: the one wrapper for OAuth tokens, platform keys and other credentials, so that no
//! `Debug`, `Display` or log line can print them by accident.

use std::fmt;
use std::sync::Arc;

/// A credential. `Debug` and `Display` print `*****`; read the value with [`Secret::expose`]
/// only where it leaves the process on purpose (an upstream header, an export file).
///
/// Cloning is cheap (the text is shared).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The credential itself. Every call site is a place where a secret leaves its wrapper.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the credential is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

/// The last four characters of `s` (all of a shorter one): what a hint shows of a credential.
pub(crate) fn last4(s: &str) -> &str {
    let start = s.char_indices().rev().nth(3).map_or(0, |(i, _)| i);
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::from("sk-cp-verysecret");
        assert_eq!(format!("{s:?}"), "*****");
        assert_eq!(format!("{s}"), "*****");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(*****)");
        assert_eq!(s.expose(), "sk-cp-verysecret");
    }
}
