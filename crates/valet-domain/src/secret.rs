//! Digests of secrets. Raw codes, tokens and client secrets never leave the
//! HTTP response; everything else refers to them by SHA-256.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a token hash must be 64 lowercase hex characters")]
pub struct TokenHashError;

/// SHA-256 of a server-generated 256-bit random value. A fast hash is right
/// here: with that much entropy there is nothing to brute-force.
///
/// `==` is not constant-time; use [`TokenHash::ct_eq`] when comparing a
/// presented secret against a stored one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct TokenHash([u8; 32]);

/// By hand, to read the hex without allocating a String: replays decode one or two
/// hashes per event.
impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = TokenHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 lowercase hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TokenHash, E> {
                TokenHash::from_hex(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

impl TokenHash {
    pub fn of(raw: &str) -> Self {
        Self(Sha256::digest(raw.as_bytes()).into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Lowercase only, so every hash has exactly one textual form (it is part of stream ids).
    pub fn from_hex(s: &str) -> Result<Self, TokenHashError> {
        // One pass that checks and decodes (a replay decodes a hash or two per event).
        fn nibble(c: u8) -> Result<u8, TokenHashError> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(TokenHashError),
            }
        }
        if s.len() != 64 {
            return Err(TokenHashError);
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(bytes))
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl TryFrom<String> for TokenHash {
    type Error = TokenHashError;
    fn try_from(s: String) -> Result<Self, TokenHashError> {
        Self::from_hex(&s)
    }
}

impl From<TokenHash> for String {
    fn from(h: TokenHash) -> String {
        h.to_string()
    }
}

/// Compares without an early exit, so timing does not reveal the length of
/// the matching prefix. Lengths are not secret: a length mismatch is `false` at once.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into a short-circuit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_utf8() {
        // SHA-256("abc"), FIPS 180-2 example.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(TokenHash::of("abc").to_string(), expected);
        assert_eq!(TokenHash::from_hex(expected).unwrap(), TokenHash::of("abc"));
        assert_eq!(
            format!("{:?}", TokenHash::of("abc")),
            format!("TokenHash({expected})")
        );
    }

    #[test]
    fn from_hex_is_strict() {
        let good = "0".repeat(64);
        assert!(TokenHash::from_hex(&good).is_ok());
        for bad in [
            "0".repeat(63),
            "0".repeat(65),
            "A".repeat(64),
            "g".repeat(64),
            format!("é{}", "0".repeat(62)),
            String::new(),
        ] {
            assert!(TokenHash::from_hex(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_is_hex_string() {
        let h = TokenHash::of("x");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{h}\""));
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<TokenHash>("\"abc\"").is_err());
    }

    #[test]
    fn constant_time_comparisons() {
        assert!(TokenHash::of("a").ct_eq(&TokenHash::of("a")));
        assert!(!TokenHash::of("a").ct_eq(&TokenHash::of("b")));
        let table: &[(&[u8], &[u8], bool)] = &[
            (b"", b"", true),
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"abc", b"xbc", false),
            (b"abc", b"ab", false),
            (b"ab", b"abc", false),
        ];
        for &(a, b, eq) in table {
            assert_eq!(constant_time_eq(a, b), eq, "{a:?} {b:?}");
        }
    }
}
