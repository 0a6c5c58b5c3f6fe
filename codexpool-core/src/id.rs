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

/// Longest text an error repeats of what was asked for; a longer one is cut (an id is 12
/// characters, a name or email rarely more than this).
const MAX_SHOWN: usize = 80;

/// Shortest run of token characters taken for a credential (an RPC token is 64, a refresh
/// token longer; an id is 12, and a name with a space, `@` or other punctuation is never one).
const TOKEN_LIKE: usize = 32;

/// What was asked for, as an error repeats it: something that looks like a credential pasted
/// where an id belongs (an API key `sk-…`, a JWT such as an OAuth token, any other long run of
/// token characters) shows only its last four characters, and a long text is cut. Errors end up
/// in logs and tracebacks.
pub(crate) fn as_asked(wanted: &str) -> String {
    let last4 = crate::secret::last4(wanted);
    if wanted.starts_with("sk-") && wanted.len() > 12 {
        return format!("sk-…{last4}");
    }
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-_.~+/=".contains(c);
    if wanted.len() >= TOKEN_LIKE && wanted.chars().all(token_char) {
        return format!("…{last4} (a token? {} characters)", wanted.len());
    }
    match wanted.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!(
            "{}… ({} characters)",
            &wanted[..cut],
            wanted.chars().count()
        ),
        None => wanted.to_string(),
    }
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
            id: as_asked(wanted),
        }),
        1 => Ok(matches.remove(0)),
        _ => {
            matches.sort();
            Err(Error::Ambiguous {
                what,
                by: "id",
                prefix: as_asked(wanted),
                candidates: matches,
            })
        }
    }
}

/// [`resolve_prefix`]'s answer, or, when no id or id prefix matched, the one record whose name
/// is `wanted`: `named` gives the ids of the records whose name (`by`: `name`, `label or
/// email`) it is. A full id always wins; an id prefix that is also another record's name is
/// [`Error::Ambiguous`] (`disable 0` must not reach key `01d8…` when a key is named `0`), as
/// is a name several records share, listing their ids.
pub fn or_by_name(
    what: &'static str,
    found: Result<String>,
    by: &'static str,
    wanted: &str,
    named: impl FnOnce(&str) -> Vec<String>,
) -> Result<String> {
    let wanted = wanted.trim();
    let prefix_or = if by == "name" {
        "id prefix or name"
    } else {
        "id prefix, label or email"
    };
    let (mut ids, by) = match found {
        Ok(id) if id == wanted => return Ok(id),
        Ok(id) => {
            let mut ids = named(wanted);
            if ids.iter().all(|other| *other == id) {
                return Ok(id);
            }
            ids.push(id);
            (ids, prefix_or)
        }
        Err(Error::NotFound { .. }) => (named(wanted), by),
        // Several ids start with it: the records named so are among the candidates too.
        Err(Error::Ambiguous {
            by: ambiguous_by,
            candidates,
            ..
        }) => {
            let mut ids = named(wanted);
            let by = if ids.is_empty() {
                ambiguous_by
            } else {
                prefix_or
            };
            ids.extend(candidates);
            (ids, by)
        }
        Err(e) => return Err(e),
    };
    ids.sort();
    ids.dedup();
    match ids.len() {
        0 => Err(Error::NotFound {
            what,
            id: as_asked(wanted),
        }),
        1 => Ok(ids.remove(0)),
        _ => Err(Error::Ambiguous {
            what,
            by,
            prefix: as_asked(wanted),
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
    fn errors_repeat_no_secret_and_no_long_text() {
        let ids = vec!["abc123".to_string()];
        let shown = |wanted: &str| match resolve_prefix("account", wanted, &ids) {
            Err(Error::NotFound { id, .. }) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(shown("sk-cp-gkehgYA6ad1KpGGaNMjyls"), "sk-…jyls");
        assert_eq!(shown("sk-proj-abcdefghijklmnop"), "sk-…mnop");
        assert_eq!(
            shown("eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJlLXNpZw"),
            "…NpZw (a token? 44 characters)"
        );
        assert_eq!(shown(&"f".repeat(64)), "…ffff (a token? 64 characters)");
        // Names and emails are shown as they are.
        for name in [
            "eyJohn.smith",
            "john.smith.longname@company-example.com",
            "work laptop",
        ] {
            assert_eq!(shown(name), name);
        }
        let long = "é".repeat(10_000);
        assert_eq!(
            shown(&long),
            format!("{}… (10000 characters)", "é".repeat(MAX_SHOWN))
        );
        assert_eq!(shown("laptop"), "laptop");
        let secret = "sk-cp-0123456789abcdef";
        let found = resolve_prefix("account", secret, &ids);
        let e = or_by_name("account", found, "label or email", secret, |_| Vec::new());
        assert_eq!(
            e.unwrap_err().to_string(),
            "no account matches \"sk-…cdef\""
        );
    }

    /// A key among `(id, name)` pairs, by id, id prefix or name.
    fn find_key(keys: &[(&str, &str)], wanted: &str) -> Result<String> {
        let ids: Vec<String> = keys.iter().map(|(id, _)| id.to_string()).collect();
        let named = |n: &str| {
            keys.iter()
                .filter(|(_, name)| *name == n)
                .map(|(id, _)| id.to_string())
                .collect()
        };
        or_by_name(
            "key",
            resolve_prefix("key", wanted, &ids),
            "name",
            wanted,
            named,
        )
    }

    #[test]
    fn names_when_no_id_matches() {
        let names = [("abc123", "laptop"), ("abd456", "ci"), ("ff0000", "ci")];
        let find = |wanted: &str| find_key(&names, wanted);
        assert_eq!(find("laptop").unwrap(), "abc123");
        assert_eq!(find(" laptop ").unwrap(), "abc123");
        assert_eq!(find("abd").unwrap(), "abd456", "an id prefix");
        assert_eq!(find("abc123").unwrap(), "abc123", "a full id");
        match find("ci") {
            Err(e @ Error::Ambiguous { .. }) => assert_eq!(
                e.to_string(),
                "key name \"ci\" is ambiguous: it matches abd456, ff0000"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(find("LAPTOP"), Err(Error::NotFound { .. })));
        assert!(matches!(find("a"), Err(Error::Ambiguous { by: "id", .. })));
        // A prefix of one id that is another's name: either could be meant.
        let names = [("01d880", "a"), ("f41910", "0")];
        let find = |wanted: &str| find_key(&names, wanted);
        match find("0") {
            Err(e @ Error::Ambiguous { .. }) => assert_eq!(
                e.to_string(),
                "key id prefix or name \"0\" is ambiguous: it matches 01d880, f41910"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(find("01d880").unwrap(), "01d880", "a full id still wins");
        assert_eq!(find("a").unwrap(), "01d880", "a name no id starts with");
        assert!(matches!(find(""), Err(Error::InvalidInput { .. })));
        // A prefix of several ids that is also a name: the named one is a candidate too.
        let names = [("61cb00", "a"), ("6b3400", "b"), ("badfff", "6")];
        match find_key(&names, "6") {
            Err(e @ Error::Ambiguous { .. }) => assert_eq!(
                e.to_string(),
                "key id prefix or name \"6\" is ambiguous: it matches 61cb00, 6b3400, badfff"
            ),
            other => panic!("{other:?}"),
        }
    }
}
