//! OpenID Connect RP-Initiated Logout 1.0: checking a logout request. An `id_token_hint`
//! must verify against a published key and name this issuer (an expired one is fine:
//! the user may have been away); a `post_logout_redirect_uri` must be one registered by
//! the client the request names, exactly.

use serde::Deserialize;
use valet_domain::signing_key::Algorithm;
use valet_domain::{ClientId, RedirectUri};

use super::{OAuth, Unavailable};
use crate::clock::Clock;
use crate::keys;
use crate::ports::EventStore;
use crate::read::ReadModels;

/// The parameters of a logout request, as sent.
#[derive(Debug, Clone, Default)]
pub struct LogoutParams {
    pub id_token_hint: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub client_id: Option<String>,
    pub state: Option<String>,
}

/// What a logout request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutPlan {
    /// Where to send the user once signed out (with `state`); `None`: a page says so.
    pub redirect: Option<String>,
    /// Whether the request proved it comes from the client (a valid `id_token_hint`):
    /// then no confirmation is asked of the user.
    pub hint: HintStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintStatus {
    Verified,
    Absent,
}

#[derive(Debug, thiserror::Error)]
pub enum LogoutError {
    #[error("the id_token_hint does not verify")]
    InvalidHint,
    #[error("the client_id does not match the id_token_hint")]
    ClientMismatch,
    #[error("post_logout_redirect_uri is not registered for the client")]
    UnregisteredRedirect,
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The claims of a hint that matter here.
#[derive(Deserialize)]
struct HintClaims {
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(a) => a,
    })
}

fn decoding_key(
    key: &keys::PublishedKey,
) -> Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)> {
    let member = |name: &str| key.public.get(name).map(String::as_str);
    match Algorithm::parse(key.alg).ok()? {
        Algorithm::RS256 => Some((
            jsonwebtoken::DecodingKey::from_rsa_components(member("n")?, member("e")?).ok()?,
            jsonwebtoken::Algorithm::RS256,
        )),
        Algorithm::ES256 => Some((
            jsonwebtoken::DecodingKey::from_ec_components(member("x")?, member("y")?).ok()?,
            jsonwebtoken::Algorithm::ES256,
        )),
        Algorithm::EdDSA => Some((
            jsonwebtoken::DecodingKey::from_ed_components(member("x")?).ok()?,
            jsonwebtoken::Algorithm::EdDSA,
        )),
    }
}

impl<S: EventStore, R: ReadModels, C: Clock> OAuth<S, R, C> {
    /// The audiences of an id_token this server signed (expired or not), or why not.
    async fn hint_audiences(&self, hint: &str) -> Result<Vec<String>, LogoutError> {
        let header = jsonwebtoken::decode_header(hint).map_err(|_| LogoutError::InvalidHint)?;
        let kid = header.kid.ok_or(LogoutError::InvalidHint)?;
        let ring = keys::ring(&self.store).await.map_err(|e| match e {
            keys::KeysError::Store(e) => LogoutError::Unavailable(e.into()),
            _ => LogoutError::InvalidHint,
        })?;
        let jwks = keys::jwks_of(&ring, self.now());
        let key = jwks
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(LogoutError::InvalidHint)?;
        // The algorithm is the key's, never the header's.
        let (decoding, alg) = decoding_key(key).ok_or(LogoutError::InvalidHint)?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<HintClaims>(hint, &decoding, &validation)
            .map_err(|_| LogoutError::InvalidHint)?;
        Ok(data.claims.aud)
    }

    pub async fn plan_logout(&self, params: &LogoutParams) -> Result<LogoutPlan, LogoutError> {
        let audiences = match params.id_token_hint.as_deref() {
            Some(hint) => Some(self.hint_audiences(hint).await?),
            None => None,
        };
        let client = match (&audiences, params.client_id.as_deref()) {
            (Some(aud), Some(id)) if !aud.iter().any(|a| a == id) => {
                return Err(LogoutError::ClientMismatch)
            }
            (_, Some(id)) => Some(id.to_owned()),
            (Some(aud), None) => aud.first().cloned(),
            (None, None) => None,
        };
        let redirect = match params.post_logout_redirect_uri.as_deref() {
            None => None,
            Some(uri) => {
                let client = client.ok_or(LogoutError::UnregisteredRedirect)?;
                ClientId::parse(&client).map_err(|_| LogoutError::UnregisteredRedirect)?;
                let state = self.client_state(&client).await?;
                let registered = state.client().is_some_and(|c| {
                    c.post_logout_redirect_uris
                        .iter()
                        .any(|r: &RedirectUri| r.as_str() == uri)
                });
                if !registered {
                    return Err(LogoutError::UnregisteredRedirect);
                }
                Some(uri.to_owned())
            }
        };
        Ok(LogoutPlan {
            redirect,
            hint: match audiences {
                Some(_) => HintStatus::Verified,
                None => HintStatus::Absent,
            },
        })
    }
}
