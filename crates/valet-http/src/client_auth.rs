//! How a client presented itself (RFC 6749 §2.3.1): HTTP Basic or the request body,
//! never both, never the query string.

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use valet_app::oauth::ClientAuth;

use crate::params::{decode, Field, Params};

/// Standard alphabet; padding optional because some clients drop it.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    /// Nothing identifies the client: 401 invalid_client.
    #[error("no client authentication")]
    Missing,
    /// An Authorization header we cannot read: 401 invalid_client.
    #[error("malformed Authorization header")]
    Malformed,
    /// RFC 6749 §2.3: "MUST NOT use more than one authentication method": 400.
    #[error("more than one client authentication method")]
    MultipleMethods,
}

/// The client's credentials from the `Authorization` header and the form body.
pub fn presented(headers: &HeaderMap, body: &Params) -> Result<ClientAuth, ClientAuthError> {
    let mut authorizations = headers.get_all(AUTHORIZATION).iter();
    let header = authorizations.next();
    if authorizations.next().is_some() {
        return Err(ClientAuthError::MultipleMethods);
    }
    let body_id = body.field("client_id");
    let body_secret = body.field("client_secret");
    if body_id.is_repeated() || body_secret.is_repeated() {
        return Err(ClientAuthError::MultipleMethods);
    }
    if let Some(header) = header {
        let basic = parse_basic(header.as_bytes())?;
        if body_secret != Field::Absent {
            return Err(ClientAuthError::MultipleMethods);
        }
        // A body client_id next to Basic is tolerated (some libraries send both) as
        // long as it names the same client.
        if let Field::Value(id) = body_id {
            if id != basic.client_id {
                return Err(ClientAuthError::MultipleMethods);
            }
        }
        return Ok(ClientAuth::Secret {
            client_id: basic.client_id,
            secret: basic.secret,
        });
    }
    match (body_id.value(), body_secret.value()) {
        (Some(id), Some(secret)) => Ok(ClientAuth::Secret {
            client_id: id.to_owned(),
            secret: secret.to_owned(),
        }),
        (Some(id), None) => Ok(ClientAuth::Public {
            client_id: id.to_owned(),
        }),
        (None, _) => Err(ClientAuthError::Missing),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct BasicCredentials {
    pub client_id: String,
    pub secret: String,
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`. Both parts are form-urldecoded
/// (RFC 6749 §2.3.1), so `+` is a space and a secret may contain `:` as `%3A`.
pub fn parse_basic(header: &[u8]) -> Result<BasicCredentials, ClientAuthError> {
    let header = std::str::from_utf8(header).map_err(|_| ClientAuthError::Malformed)?;
    let (scheme, rest) = header
        .trim()
        .split_once(' ')
        .ok_or(ClientAuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ClientAuthError::Malformed);
    }
    let decoded = BASIC_BASE64
        .decode(rest.trim_start())
        .map_err(|_| ClientAuthError::Malformed)?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or(ClientAuthError::Malformed)?;
    let client_id = decode(&decoded[..colon]).map_err(|_| ClientAuthError::Malformed)?;
    let secret = decode(&decoded[colon + 1..]).map_err(|_| ClientAuthError::Malformed)?;
    if client_id.is_empty() {
        return Err(ClientAuthError::Missing);
    }
    Ok(BasicCredentials { client_id, secret })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::params::encode_component;

    fn basic(id: &str, secret: &str) -> String {
        let joined = format!("{}:{}", encode_component(id), encode_component(secret));
        format!("Basic {}", STANDARD.encode(joined))
    }

    #[test]
    fn decodes_reserved_characters_in_secrets() {
        let secret = "a:b%c+d e/=";
        let got = parse_basic(basic("client-1", secret).as_bytes()).unwrap();
        assert_eq!(got.client_id, "client-1");
        assert_eq!(got.secret, secret);
    }

    #[test]
    fn plus_is_a_space_and_ids_are_percent_decoded() {
        let raw = format!("Basic {}", STANDARD.encode("my%2Dclient:p+w%2B"));
        let got = parse_basic(raw.as_bytes()).unwrap();
        assert_eq!(got.client_id, "my-client");
        assert_eq!(got.secret, "p w+");
    }

    #[test]
    fn scheme_is_case_insensitive_and_padding_optional() {
        let raw = format!(
            "bAsIc {}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode("c:s1")
        );
        assert_eq!(parse_basic(raw.as_bytes()).unwrap().secret, "s1");
    }

    #[test]
    fn refuses_malformed_headers() {
        for raw in [
            "Bearer abc".to_owned(),
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            format!("Basic {}", STANDARD.encode("no-colon")),
            format!("Basic {}", STANDARD.encode("id:%FF")),
            format!("Basic {}", STANDARD.encode(b"id:\xC3")),
        ] {
            assert_eq!(
                parse_basic(raw.as_bytes()),
                Err(ClientAuthError::Malformed),
                "{raw}"
            );
        }
        assert_eq!(
            parse_basic(format!("Basic {}", STANDARD.encode(":s")).as_bytes()),
            Err(ClientAuthError::Missing)
        );
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn chooses_the_method() {
        let form = |s: &str| Params::parse(s.as_bytes()).unwrap();
        assert!(matches!(
            presented(&headers(None), &form("client_id=c&client_secret=s")),
            Ok(ClientAuth::Secret { .. })
        ));
        assert!(matches!(
            presented(&headers(None), &form("client_id=c")),
            Ok(ClientAuth::Public { .. })
        ));
        assert_eq!(
            presented(&headers(None), &form("client_secret=s")).unwrap_err(),
            ClientAuthError::Missing
        );
        assert_eq!(
            presented(&headers(None), &form("")).unwrap_err(),
            ClientAuthError::Missing
        );
        let b = basic("c", "s");
        assert!(matches!(
            presented(&headers(Some(&b)), &form("client_id=c")),
            Ok(ClientAuth::Secret { .. })
        ));
        assert_eq!(
            presented(&headers(Some(&b)), &form("client_id=c&client_secret=s")).unwrap_err(),
            ClientAuthError::MultipleMethods
        );
        assert_eq!(
            presented(&headers(Some(&b)), &form("client_id=other")).unwrap_err(),
            ClientAuthError::MultipleMethods
        );
    }
}
