//! OpenID Connect values of an authentication request.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A sign-in session (the id_token's `sid`): drawn at sign-in, kept in the session
/// cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    pub const fn new(id: Uuid) -> Self {
        Self(id)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }

    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

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

/// The `prompt` of an authentication request (Core §3.1.2.1): which of the sign-in and
/// consent pages must, or must not, be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prompt {
    /// `none`: show no page; fail with `login_required` / `consent_required` instead.
    pub none: bool,
    /// `login`: sign the user in again even with a session.
    pub login: bool,
    /// `consent`: ask again even when consent was given.
    pub consent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("prompt=none cannot be combined with another value")]
    NoneWithOthers,
    #[error("unknown prompt value")]
    Unknown,
}

impl Prompt {
    /// Space-separated values; `select_account` is accepted and means nothing here (one
    /// account per sign-in).
    pub fn parse(s: &str) -> Result<Self, PromptError> {
        let mut prompt = Prompt::default();
        let mut values = 0;
        for value in s.split(' ').filter(|v| !v.is_empty()) {
            values += 1;
            match value {
                "none" => prompt.none = true,
                "login" => prompt.login = true,
                "consent" => prompt.consent = true,
                "select_account" => {}
                _ => return Err(PromptError::Unknown),
            }
        }
        if prompt.none && values > 1 {
            return Err(PromptError::NoneWithOthers);
        }
        Ok(prompt)
    }

    /// The `prompt` parameter to carry on once the user has signed in: without `login`,
    /// so the fresh sign-in is not asked for again.
    pub fn after_sign_in(raw: &str) -> Option<String> {
        let rest: Vec<&str> = raw
            .split(' ')
            .filter(|v| !v.is_empty() && *v != "login")
            .collect();
        (!rest.is_empty()).then(|| rest.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_values_parse_and_none_stands_alone() {
        assert_eq!(Prompt::parse("").unwrap(), Prompt::default());
        let both = Prompt::parse("login consent").unwrap();
        assert!(both.login && both.consent && !both.none);
        assert!(Prompt::parse("none").unwrap().none);
        assert_eq!(
            Prompt::parse("none login"),
            Err(PromptError::NoneWithOthers)
        );
        assert_eq!(Prompt::parse("sometimes"), Err(PromptError::Unknown));
        assert_eq!(
            Prompt::after_sign_in("login consent").as_deref(),
            Some("consent")
        );
        assert_eq!(Prompt::after_sign_in("login"), None);
    }

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
