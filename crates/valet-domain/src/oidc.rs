//! OpenID Connect values of an authentication request.

use serde::{Deserialize, Serialize};

/// The `nonce` of an authentication request (OpenID Connect Core §3.1.2.1), copied into
/// the id_token byte for byte: 1 to 512 visible ASCII characters (the spec sets no
/// limit; a bound keeps codes and events small).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nonce(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a nonce is 1 to {max} visible ASCII characters", max = Nonce::MAX_LEN)]
pub struct NonceError;

impl Nonce {
    pub const MAX_LEN: usize = 512;

    pub fn parse(s: &str) -> Result<Self, NonceError> {
        let visible = s.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if s.is_empty() || s.len() > Self::MAX_LEN || !visible {
            return Err(NonceError);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Nonce {
    type Error = NonceError;
    fn try_from(s: String) -> Result<Self, NonceError> {
        Self::parse(&s)
    }
}

impl From<Nonce> for String {
    fn from(n: Nonce) -> Self {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_bounded_visible_ascii_kept_byte_for_byte() {
        let odd = "n-0S6_WzA2Mj ~!\"#$%&'()*+,./:;<=>?@[\\]^`{|}";
        assert_eq!(Nonce::parse(odd).unwrap().as_str(), odd);
        assert!(Nonce::parse("").is_err());
        assert!(Nonce::parse("tab\there").is_err());
        assert!(Nonce::parse("é").is_err());
        assert!(Nonce::parse(&"x".repeat(512)).is_ok());
        assert!(Nonce::parse(&"x".repeat(513)).is_err());
    }
}
