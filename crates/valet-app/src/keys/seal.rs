//! Private keys at rest: sealed with AES-256-GCM under the key-encryption key (KEK) the
//! operator provides or Valet created on first start. The key id is the associated
//! data, so a sealed key moved to another key's row does not open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use valet_domain::signing_key::KeyId;

/// The key-encryption key: 32 bytes. Never printed.
#[derive(Clone)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a key-encryption key is 32 bytes, base64 or hex encoded (got {0} bytes)")]
    KekLength(usize),
    #[error("the key-encryption key is not base64 or hex")]
    KekEncoding,
    #[error("the sealed key {0} does not open with this key-encryption key (a different KEK, or a damaged row)")]
    Open(KeyId),
    #[error("sealing failed")]
    Seal,
}

impl Kek {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Kek(bytes)
    }

    /// A KEK as written in a file or variable: 32 bytes as base64 (standard or url-safe)
    /// or hex; surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| SealError::KekEncoding)?
        } else {
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| SealError::KekEncoding)?
        };
        let len = bytes.len();
        bytes
            .try_into()
            .map(Kek)
            .map_err(|_| SealError::KekLength(len))
    }

    /// A new random KEK and its text form (base64) for the file that keeps it.
    pub fn generate() -> Result<(Self, String), SealError> {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Seal)?;
        Ok((Kek(bytes), STANDARD.encode(bytes)))
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0).expect("32 bytes is an AES-256 key"),
        )
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, key_id: KeyId, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Seal)?;
        let mut out = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_id.to_string().as_bytes()),
                &mut out,
            )
            .map_err(|_| SealError::Seal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend(out);
        Ok(sealed)
    }

    pub fn open(&self, key_id: KeyId, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open(key_id));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open(key_id))?;
        let mut body = body.to_vec();
        let plain = self
            .key()
            .open_in_place(nonce, Aad::from(key_id.to_string().as_bytes()), &mut body)
            .map_err(|_| SealError::Open(key_id))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> KeyId {
        KeyId::new(Uuid::from_u128(n))
    }

    #[test]
    fn a_sealed_key_opens_with_its_kek_and_id_only() {
        let (kek, text) = Kek::generate().unwrap();
        let sealed = kek.seal(id(1), b"private der").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"private der"));
        assert_eq!(kek.open(id(1), &sealed).unwrap(), b"private der");
        assert!(kek.open(id(2), &sealed).is_err(), "bound to its key id");
        let (other, _) = Kek::generate().unwrap();
        assert!(other.open(id(1), &sealed).is_err());
        assert_eq!(
            Kek::parse(&text).unwrap().open(id(1), &sealed).unwrap(),
            b"private der"
        );
    }

    #[test]
    fn a_kek_is_32_bytes_in_base64_or_hex() {
        assert!(Kek::parse(&"ab".repeat(32)).is_ok());
        assert!(matches!(
            Kek::parse("c2hvcnQ="),
            Err(SealError::KekLength(5))
        ));
        assert!(matches!(
            Kek::parse("not base64!"),
            Err(SealError::KekEncoding)
        ));
        assert_eq!(format!("{:?}", Kek::from_bytes([7; 32])), "Kek(…)");
    }
}
