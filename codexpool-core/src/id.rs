//! Local ids of accounts and keys: random, short, and addressable by any unique prefix (as in
//! `codexpool account disable 3f2a`).

use crate::error::{Error, Result};

/// A new random local id: 12 lowercase hex characters.
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Resolves an id or unique id prefix against known ids. An exact match always wins.
pub fn resolve_prefix<'a>(
    what: &'static str,
    wanted: &str,
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<String> {
    let wanted = wanted.trim();
    if wanted.is_empty() {
        return Err(Error::invalid("id", format!("an empty {what} id")));
    }
    let mut matches = Vec::new();
    for id in ids {
        if id == wanted {
            return Ok(id.clone());
        }
        if id.starts_with(wanted) {
            matches.push(id.clone());
        }
    }
    match matches.len() {
        0 => Err(Error::NotFound {
            what,
            id: wanted.to_string(),
        }),
        1 => Ok(matches.remove(0)),
        _ => {
            matches.sort();
            Err(Error::Ambiguous {
                what,
                prefix: wanted.to_string(),
                candidates: matches,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 12);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn prefixes() {
        let ids: Vec<String> = vec!["abc123".into(), "abd456".into(), "ab".into()];
        assert_eq!(resolve_prefix("key", "abc", &ids).unwrap(), "abc123");
        assert_eq!(
            resolve_prefix("key", "ab", &ids).unwrap(),
            "ab",
            "exact match wins"
        );
        assert!(matches!(
            resolve_prefix("key", "a", &ids),
            Err(Error::Ambiguous { .. })
        ));
        assert!(matches!(
            resolve_prefix("key", "zz", &ids),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            resolve_prefix("key", " ", &ids),
            Err(Error::InvalidInput { .. })
        ));
    }
}
