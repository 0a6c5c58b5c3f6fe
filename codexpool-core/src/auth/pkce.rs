//! PKCE (RFC 7636) and the OAuth `state`, as PROTOCOL.md §1 fixes them: the verifier is
//! base64url (no padding) of 64 random bytes, the challenge base64url(SHA-256(verifier)) with
//! method `S256`, and the state base64url of 32 random bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// A PKCE verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The verifier: sent only in the code exchange.
    pub verifier: Secret,
    /// The challenge: sent in the authorize URL.
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair from 64 random bytes.
    pub fn generate() -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(random_bytes::<64>());
        let challenge = pkce_challenge(&verifier);
        Self {
            verifier: Secret::new(verifier),
            challenge,
        }
    }
}

/// base64url-no-pad(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh OAuth `state`: base64url of 32 random bytes.
pub(crate) fn random_state() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_example() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn sizes_and_alphabet() {
        let p = Pkce::generate();
        assert_eq!(p.verifier.expose().len(), 86, "64 bytes in base64url");
        assert_eq!(p.challenge.len(), 43);
        assert_eq!(p.challenge, pkce_challenge(p.verifier.expose()));
        let s = random_state();
        assert_eq!(s.len(), 43, "32 bytes in base64url");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(s, random_state());
    }
}
