//! PKCE (RFC 7636), S256 only.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use crate::secret::constant_time_eq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    #[error("code_challenge_method must be S256")]
    UnsupportedMethod,
    #[error("code_challenge must be 43 base64url characters")]
    MalformedChallenge,
    #[error("code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]")]
    MalformedVerifier,
}

/// Only S256: `plain` offers no protection if the authorization request leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PkceMethod {
    S256,
}

impl PkceMethod {
    pub fn parse(s: &str) -> Result<Self, PkceError> {
        match s {
            "S256" => Ok(Self::S256),
            _ => Err(PkceError::UnsupportedMethod),
        }
    }

    pub const fn as_str(self) -> &'static str {
        "S256"
    }
}

/// BASE64URL-NOPAD(SHA-256(verifier)): always exactly 43 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PkceChallenge(String);

impl PkceChallenge {
    pub fn parse(s: &str) -> Result<Self, PkceError> {
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if s.len() != 43 || !s.bytes().all(base64url) {
            return Err(PkceError::MalformedChallenge);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_satisfied_by(&self, verifier: &PkceVerifier) -> bool {
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.0.as_bytes()));
        constant_time_eq(computed.as_bytes(), self.0.as_bytes())
    }
}

impl TryFrom<String> for PkceChallenge {
    type Error = PkceError;
    fn try_from(s: String) -> Result<Self, PkceError> {
        Self::parse(&s)
    }
}

impl From<PkceChallenge> for String {
    fn from(c: PkceChallenge) -> String {
        c.0
    }
}

/// The verifier is a secret until the code is redeemed: it is never
/// serialised and its Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PkceVerifier(String);

impl PkceVerifier {
    pub fn parse(s: &str) -> Result<Self, PkceError> {
        let unreserved =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if !(43..=128).contains(&s.len()) || !s.bytes().all(unreserved) {
            return Err(PkceError::MalformedVerifier);
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceVerifier(<redacted>)")
    }
}

#[cfg(test)]
pub(crate) const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
#[cfg(test)]
pub(crate) const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        let challenge = PkceChallenge::parse(RFC_CHALLENGE).unwrap();
        assert!(challenge.is_satisfied_by(&PkceVerifier::parse(RFC_VERIFIER).unwrap()));
        let other = PkceVerifier::parse(&"a".repeat(43)).unwrap();
        assert!(!challenge.is_satisfied_by(&other));
        // A verifier equal to the challenge itself (the `plain` method) must not pass.
        assert!(!challenge.is_satisfied_by(&PkceVerifier::parse(RFC_CHALLENGE).unwrap()));
    }

    #[test]
    fn method_only_s256() {
        assert_eq!(PkceMethod::parse("S256"), Ok(PkceMethod::S256));
        for bad in ["plain", "s256", "S256 ", "", "S512"] {
            assert_eq!(
                PkceMethod::parse(bad),
                Err(PkceError::UnsupportedMethod),
                "{bad:?}"
            );
        }
        assert_eq!(PkceMethod::S256.as_str(), "S256");
    }

    #[test]
    fn challenge_format_table() {
        let table: &[(String, bool)] = &[
            (RFC_CHALLENGE.to_owned(), true),
            ("A".repeat(43), true),
            ("-_".repeat(21) + "a", true),
            ("A".repeat(42), false),
            ("A".repeat(44), false),
            ("A".repeat(42) + "=", false),
            ("A".repeat(42) + "+", false),
            ("A".repeat(42) + "/", false),
            ("A".repeat(42) + ".", false),
            ("A".repeat(41) + "é", false),
            (String::new(), false),
        ];
        for (s, ok) in table {
            assert_eq!(PkceChallenge::parse(s).is_ok(), *ok, "{s:?}");
        }
        assert!(serde_json::from_str::<PkceChallenge>("\"short\"").is_err());
    }

    #[test]
    fn verifier_format_table() {
        let table: &[(String, bool)] = &[
            (RFC_VERIFIER.to_owned(), true),
            ("a".repeat(43), true),
            ("a".repeat(128), true),
            ("-._~".repeat(11), true),
            ("a".repeat(42), false),
            ("a".repeat(129), false),
            ("a".repeat(42) + "+", false),
            ("a".repeat(42) + "/", false),
            ("a".repeat(42) + "=", false),
            ("a".repeat(42) + " ", false),
            ("a".repeat(42) + "%", false),
        ];
        for (s, ok) in table {
            assert_eq!(PkceVerifier::parse(s).is_ok(), *ok, "{s:?}");
        }
        assert_eq!(
            format!("{:?}", PkceVerifier::parse(RFC_VERIFIER).unwrap()),
            "PkceVerifier(<redacted>)"
        );
    }
}
