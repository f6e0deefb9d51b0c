//! Server-generated secrets (codes, tokens, client secrets) and user passwords.
//!
//! Secrets are 256 random bits from the OS CSPRNG, base64url-encoded behind a prefix
//! that secret scanners can recognise. Being high-entropy, they are stored and compared
//! as SHA-256 digests. User passwords are low-entropy, so they get argon2id instead.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use valet_domain::TokenHash;

use crate::entropy::{random_bytes, Randomness, RandomnessError};

/// What a secret is for; its prefix says so to humans and scanners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    AccessToken,
    RefreshToken,
    AuthorizationCode,
    ClientSecret,
    /// RFC 7592: lets a dynamically registered client manage its registration.
    RegistrationAccessToken,
}

impl SecretKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            SecretKind::AccessToken => "valet_at_",
            SecretKind::RefreshToken => "valet_rt_",
            SecretKind::AuthorizationCode => "valet_ac_",
            SecretKind::ClientSecret => "valet_cs_",
            SecretKind::RegistrationAccessToken => "valet_rat_",
        }
    }
}

/// A freshly generated secret: the raw value goes to the one response that hands it
/// out, the hash to the log.
pub struct Secret {
    pub raw: String,
    pub hash: TokenHash,
}

/// A new secret of `kind`: 256 bits from `random`.
pub fn generate(kind: SecretKind, random: &dyn Randomness) -> Result<Secret, RandomnessError> {
    let bytes: [u8; 32] = random_bytes(random)?;
    let raw = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes));
    let hash = TokenHash::of(&raw);
    Ok(Secret { raw, hash })
}

/// A client id: 128 random bits, hex, safe as a NATS subject token.
pub fn client_id(random: &dyn Randomness) -> Result<String, RandomnessError> {
    let bytes: [u8; 16] = random_bytes(random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// How passwords are hashed: argon2id. CPU-heavy by design: call from a blocking thread.
#[derive(Debug, Clone)]
pub struct PasswordHashing {
    params: Params,
}

impl Default for PasswordHashing {
    /// The argon2 crate's defaults, OWASP's recommendation (19 MiB, 2 passes, 1 lane).
    fn default() -> Self {
        PasswordHashing {
            params: Params::default(),
        }
    }
}

impl PasswordHashing {
    /// The least work argon2id allows: for unit tests, never for stored passwords.
    pub fn minimal_for_tests() -> Self {
        PasswordHashing {
            params: Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None)
                .unwrap_or_default(),
        }
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string of `password` with a 128-bit salt drawn from `random`.
    pub fn hash(&self, password: &str, random: &dyn Randomness) -> Result<String, PasswordError> {
        let salt_bytes: [u8; 16] = random_bytes(random)?;
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::Hash(e.to_string()))?;
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// Verifies against a stored PHC string (with the parameters it names); any
    /// malformed hash counts as a mismatch.
    pub fn verify(&self, password: &str, stored: &str) -> bool {
        PasswordHash::new(stored)
            .map(|parsed| {
                self.argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::entropy::OsRandom;

    #[test]
    fn secrets_carry_256_bits_behind_their_prefix() {
        let a = generate(SecretKind::AccessToken, &OsRandom).expect("random");
        let b = generate(SecretKind::AccessToken, &OsRandom).expect("random");
        assert!(a.raw.starts_with("valet_at_"));
        assert_eq!(a.raw.len(), "valet_at_".len() + 43);
        assert_ne!(a.raw, b.raw);
        assert_eq!(a.hash, TokenHash::of(&a.raw));
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let hashing = PasswordHashing::default();
        let stored = hashing.hash("correct horse", &OsRandom).expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(hashing.verify("correct horse", &stored));
        assert!(!hashing.verify("wrong horse", &stored));
        assert!(!hashing.verify("correct horse", "not a phc string"));
        // A hash names its own parameters: verification does not depend on today's.
        let cheap = PasswordHashing::minimal_for_tests()
            .hash("correct horse", &OsRandom)
            .expect("hash");
        assert!(hashing.verify("correct horse", &cheap));
    }
}
