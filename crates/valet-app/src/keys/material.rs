//! Key pairs for signing: generated here (the OS CSPRNG), the private part as DER for
//! the signer, the public part as JWK members for the log and the JWKS.
//!
//! ring makes the EC and Ed25519 pairs; it cannot generate RSA keys, so the `rsa` crate
//! does that (generation only: signing goes through ring).

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use valet_domain::signing_key::{Algorithm, PublicJwk};

/// RSA modulus size: 2048 bits, as RS256 deployments expect (RFC 7518 §3.3 minimum).
const RSA_BITS: usize = 2048;

/// A fresh key pair. `private_der` is PKCS#1 for RSA and PKCS#8 for the others (the
/// forms ring loads); it never leaves the process unsealed.
pub struct KeyPairMaterial {
    pub private_der: Vec<u8>,
    pub public: PublicJwk,
}

impl std::fmt::Debug for KeyPairMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairMaterial")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot generate a {algorithm} key: {reason}")]
pub struct GenerateError {
    algorithm: Algorithm,
    reason: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwk(members: &[(&str, String)]) -> PublicJwk {
    let members: BTreeMap<String, String> = members
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    PublicJwk::new(members).expect("public members only, with a kty")
}

/// A new key pair for `algorithm`. RSA generation takes a while: call it off the
/// async workers.
pub fn generate(algorithm: Algorithm) -> Result<KeyPairMaterial, GenerateError> {
    let fail = |reason: String| GenerateError { algorithm, reason };
    let rng = SystemRandom::new();
    match algorithm {
        Algorithm::ES256 => {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|e| fail(e.to_string()))?;
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .map_err(|e| fail(e.to_string()))?;
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let public = jwk(&[
                ("kty", "EC".into()),
                ("crv", "P-256".into()),
                ("x", b64(&point[1..33])),
                ("y", b64(&point[33..65])),
            ]);
            Ok(KeyPairMaterial {
                private_der: pkcs8.as_ref().to_vec(),
                public,
            })
        }
        Algorithm::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| fail(e.to_string()))?;
            let pair =
                Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| fail(e.to_string()))?;
            let public = jwk(&[
                ("kty", "OKP".into()),
                ("crv", "Ed25519".into()),
                ("x", b64(pair.public_key().as_ref())),
            ]);
            Ok(KeyPairMaterial {
                private_der: pkcs8.as_ref().to_vec(),
                public,
            })
        }
        Algorithm::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
                .map_err(|e| fail(e.to_string()))?;
            let der = key.to_pkcs1_der().map_err(|e| fail(e.to_string()))?;
            let public = jwk(&[
                ("kty", "RSA".into()),
                ("n", b64(&key.n().to_bytes_be())),
                ("e", b64(&key.e().to_bytes_be())),
            ]);
            Ok(KeyPairMaterial {
                private_der: der.as_bytes().to_vec(),
                public,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{self, UnparsedPublicKey};

    fn b64d(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn each_algorithm_makes_a_pair_whose_jwk_verifies_its_signatures() {
        let rng = SystemRandom::new();
        let message = b"header.payload";
        for algorithm in Algorithm::ALL {
            let pair = generate(algorithm).unwrap();
            let m = pair.public.members();
            assert!(!m.contains_key("d"));
            let (signature, verified) = match algorithm {
                Algorithm::ES256 => {
                    let key = EcdsaKeyPair::from_pkcs8(
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        &pair.private_der,
                        &rng,
                    )
                    .unwrap();
                    let sig = key.sign(&rng, message).unwrap().as_ref().to_vec();
                    let mut point = vec![4u8];
                    point.extend(b64d(&m["x"]));
                    point.extend(b64d(&m["y"]));
                    let ok = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, &sig)
                        .is_ok();
                    (sig, ok)
                }
                Algorithm::EdDSA => {
                    let key = Ed25519KeyPair::from_pkcs8(&pair.private_der).unwrap();
                    let sig = key.sign(message).as_ref().to_vec();
                    let ok = UnparsedPublicKey::new(&signature::ED25519, b64d(&m["x"]))
                        .verify(message, &sig)
                        .is_ok();
                    (sig, ok)
                }
                Algorithm::RS256 => {
                    let key = signature::RsaKeyPair::from_der(&pair.private_der).unwrap();
                    let mut sig = vec![0; key.public().modulus_len()];
                    key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                        .unwrap();
                    let public = signature::RsaPublicKeyComponents {
                        n: b64d(&m["n"]),
                        e: b64d(&m["e"]),
                    };
                    let ok = public
                        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, &sig)
                        .is_ok();
                    (sig, ok)
                }
            };
            assert!(!signature.is_empty());
            assert!(verified, "{algorithm}");
        }
    }
}
