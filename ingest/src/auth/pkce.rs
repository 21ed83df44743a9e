//! PKCE (RFC 7636) with `S256`, and OAuth `state` values.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::http::Secret;

/// A code verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// The verifier (43–128 unreserved characters). Secret until the token call.
    pub verifier: Secret,
    /// `BASE64URL(SHA256(verifier))`.
    pub challenge: String,
}

impl Pkce {
    /// A verifier from 32 random bytes (43 characters) and its challenge.
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_verifier(URL_SAFE_NO_PAD.encode(bytes))
            .unwrap_or_else(|| unreachable!("43 base64url characters are a valid verifier"))
    }

    /// Wraps an existing verifier; `None` unless it is 43–128 characters of
    /// `[A-Z a-z 0-9 - . _ ~]`.
    pub fn from_verifier(verifier: String) -> Option<Self> {
        let ok_len = (43..=128).contains(&verifier.len());
        let ok_chars = verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !(ok_len && ok_chars) {
            return None;
        }
        let challenge = challenge_s256(&verifier);
        Some(Self {
            verifier: Secret::new(verifier),
            challenge,
        })
    }
}

/// `BASE64URL(SHA256(ASCII(verifier)))`.
pub fn challenge_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A random `state` (128 bits, base64url).
pub fn random_state(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rfc7636_appendix_b() {
        let p = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()).unwrap();
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn generated_verifiers_are_valid_and_distinct() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let a = Pkce::generate(&mut rng);
        let b = Pkce::generate(&mut rng);
        assert_eq!(a.verifier.expose().len(), 43);
        assert_ne!(a.verifier, b.verifier);
        assert_eq!(a.challenge, challenge_s256(a.verifier.expose()));
        assert!(Pkce::from_verifier("short".into()).is_none());
        assert!(Pkce::from_verifier("a".repeat(129)).is_none());
        assert!(Pkce::from_verifier(format!("{}!", "a".repeat(43))).is_none());
        assert_ne!(random_state(&mut rng), random_state(&mut rng));
    }
}
