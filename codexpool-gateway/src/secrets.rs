//! Credentials inside free text (a key pasted into a message, an upstream's error that echoes
//! the request's `Authorization` header): found by their shape and masked before the text is
//! logged or passed on.

/// Text that looks like a credential wherever it stands (a key pasted into a message): an API
/// key (`sk-…`, the platform keys' `sk-cp-…` too), a JWT (`eyJ…` in three parts, as access
/// and id tokens are), a refresh token (`rt_…`) or whatever follows `Bearer` (a pasted
/// `Authorization` header) becomes `*****`.
pub(crate) fn mask_secrets(text: &str) -> Option<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut after_bearer = false;
    let mut secret = |w: &str| {
        let w = w.trim_end_matches('.');
        let bearer = std::mem::replace(&mut after_bearer, w.eq_ignore_ascii_case("bearer"));
        (w.starts_with("sk-") && w.len() >= 20)
            || (w.starts_with("eyJ") && w.len() >= 30 && w.matches('.').count() == 2)
            || (w.starts_with("rt_") && w.len() >= 20)
            || (bearer && w.len() >= 16)
    };
    let mut out: Option<String> = None;
    let mut done = 0;
    let mut words = text.char_indices().peekable();
    while let Some((start, c)) = words.next() {
        if !is_word(c) {
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, c)) = words.peek()
            && is_word(c)
        {
            end = i + c.len_utf8();
            words.next();
        }
        let word = &text[start..end];
        if secret(word) {
            let out = out.get_or_insert_with(String::new);
            out.push_str(&text[done..start]);
            out.push_str("*****");
            // A sentence's full stop after the secret stays.
            done = start + word.trim_end_matches('.').len();
        }
    }
    out.map(|mut o| {
        o.push_str(&text[done..]);
        o
    })
}

#[cfg(test)]
mod tests {
    use super::mask_secrets;

    #[test]
    fn credentials_inside_text_are_masked_and_nothing_else() {
        let cases = [
            ("key sk-cp-0123456789abcdef0123 end", Some("key ***** end")),
            ("«sk-0123456789abcdefghij», ok.", Some("«*****», ok.")),
            ("sk-0123456789abcdefghij.", Some("*****.")),
            ("eyJa.eyJbbbbbbbbbbbbbbbbbbbbbbbbb.sig", Some("*****")),
            ("rt_0123456789abcdefghij", Some("*****")),
            (
                "Authorization: Bearer opaque0123456789xyz\nnext",
                Some("Authorization: Bearer *****\nnext"),
            ),
            ("bearer: abcdefghijklmnopqrstu", Some("bearer: *****")),
            // Short words, other words, a JWT-like word in the wrong shape: left alone.
            ("use sk-learn and eyJust-text", None),
            ("rt_short, the Bearer of good news", None),
            ("eyJaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", None),
            ("é sk- ü", None),
            ("", None),
        ];
        for (text, masked) in cases {
            assert_eq!(mask_secrets(text).as_deref(), masked, "{text}");
        }
    }
}
