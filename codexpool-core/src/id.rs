//! Local ids of accounts and keys: random, short, and addressable by any unique prefix (as in
//! `codexpool account disable 3f2a`) or, when no id matches, by the record's exact name (a
//! key's name, an account's label or email).

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
                by: "id",
                prefix: wanted.to_string(),
                candidates: matches,
            })
        }
    }
}

/// [`resolve_prefix`]'s answer, or, when no id or id prefix matched, the one record whose name
/// is `wanted`: `named` gives the ids of the records whose name (`by`: `name`, `label or
/// email`) it is. Ids come first, so a name can never hide an id. Several records of that name
/// are [`Error::Ambiguous`], listing their ids.
pub fn or_by_name(
    found: Result<String>,
    by: &'static str,
    wanted: &str,
    named: impl FnOnce(&str) -> Vec<String>,
) -> Result<String> {
    let Err(Error::NotFound { what, id }) = found else {
        return found;
    };
    let mut ids = named(wanted.trim());
    ids.sort();
    ids.dedup();
    match ids.len() {
        0 => Err(Error::NotFound { what, id }),
        1 => Ok(ids.remove(0)),
        _ => Err(Error::Ambiguous {
            what,
            by,
            prefix: wanted.trim().to_string(),
            candidates: ids,
        }),
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

    #[test]
    fn names_when_no_id_matches() {
        let ids: Vec<String> = vec!["abc123".into(), "abd456".into(), "ff0000".into()];
        let names = [("abc123", "laptop"), ("abd456", "ci"), ("ff0000", "ci")];
        let find = |wanted: &str| {
            or_by_name(resolve_prefix("key", wanted, &ids), "name", wanted, |n| {
                names
                    .iter()
                    .filter(|(_, name)| *name == n)
                    .map(|(id, _)| id.to_string())
                    .collect()
            })
        };
        assert_eq!(find("laptop").unwrap(), "abc123");
        assert_eq!(find(" laptop ").unwrap(), "abc123");
        assert_eq!(find("abd").unwrap(), "abd456", "an id prefix comes first");
        match find("ci") {
            Err(e @ Error::Ambiguous { .. }) => assert_eq!(
                e.to_string(),
                "key name \"ci\" is ambiguous: it matches abd456, ff0000"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(find("LAPTOP"), Err(Error::NotFound { .. })));
        assert!(matches!(find("a"), Err(Error::Ambiguous { by: "id", .. })));
        assert!(matches!(find(""), Err(Error::InvalidInput { .. })));
    }
}
