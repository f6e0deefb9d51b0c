//! Server-generated secrets (codes, tokens, client secrets) and user passwords.
//!
//! Secrets are 256 random bits from the OS CSPRNG, base64url-encoded behind a prefix
//! that secret scanners can recognise. Being high-entropy, they are stored and compared
//! as SHA-256 digests. User passwords are low-entropy, so they get argon2id instead.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use valet_domain::TokenHash;

/// What a secret is for; its prefix says so to humans and scanners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    AccessToken,
    RefreshToken,
    AuthorizationCode,
    ClientSecret,
}

impl SecretKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            SecretKind::AccessToken => "valet_at_",
            SecretKind::RefreshToken => "valet_rt_",
            SecretKind::AuthorizationCode => "valet_ac_",
            SecretKind::ClientSecret => "valet_cs_",
        }
    }
}

/// A freshly generated secret: the raw value goes to the one response that hands it
/// out, the hash to the log.
pub struct Secret {
    pub raw: String,
    pub hash: TokenHash,
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessError(String);

pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomnessError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| RandomnessError(e.to_string()))?;
    Ok(bytes)
}

pub fn generate(kind: SecretKind) -> Result<Secret, RandomnessError> {
    let bytes: [u8; 32] = random_bytes()?;
    let raw = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes));
    let hash = TokenHash::of(&raw);
    Ok(Secret { raw, hash })
}

/// A client id: 128 random bits, hex, safe as a NATS subject token.
pub fn client_id() -> Result<String, RandomnessError> {
    let bytes: [u8; 16] = random_bytes()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// argon2id with the crate's default (OWASP-recommended) parameters. CPU-heavy: call
/// from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt_bytes: [u8; 16] = random_bytes()?;
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Verifies against a stored PHC string; any malformed hash counts as a mismatch.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_256_bits_behind_their_prefix() {
        let a = generate(SecretKind::AccessToken).expect("random");
        let b = generate(SecretKind::AccessToken).expect("random");
        assert!(a.raw.starts_with("valet_at_"));
        assert_eq!(a.raw.len(), "valet_at_".len() + 43);
        assert_ne!(a.raw, b.raw);
        assert_eq!(a.hash, TokenHash::of(&a.raw));
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let stored = hash_password("correct horse").expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("wrong horse", &stored));
        assert!(!verify_password("correct horse", "not a phc string"));
    }
}
