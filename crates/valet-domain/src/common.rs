//! Small vocabulary shared by several aggregates.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::StreamId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported grant type")]
pub struct UnsupportedGrantType;

/// The grant types Valet implements; `password` and `implicit` deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub fn parse(s: &str) -> Result<Self, UnsupportedGrantType> {
        match s {
            "authorization_code" => Ok(Self::AuthorizationCode),
            "refresh_token" => Ok(Self::RefreshToken),
            "client_credentials" => Ok(Self::ClientCredentials),
            _ => Err(UnsupportedGrantType),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

/// Why a token or grant stopped being valid; part of the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    ClientRequest,
    CodeReplay,
    RefreshReuse,
    ConsentRevoked,
    UserDisabled,
    ClientDisabled,
    Admin,
}

impl RevocationReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientRequest => "client_request",
            Self::CodeReplay => "code_replay",
            Self::RefreshReuse => "refresh_reuse",
            Self::ConsentRevoked => "consent_revoked",
            Self::UserDisabled => "user_disabled",
            Self::ClientDisabled => "client_disabled",
            Self::Admin => "admin",
        }
    }
}

/// Points at the recorded event that caused a revocation (e.g. a `CodeReplayed`
/// in another stream). Opaque to the domain; the app layer fills it in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRef {
    pub stream_id: StreamId,
    pub event_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_type_table() {
        for (s, g) in [
            ("authorization_code", GrantType::AuthorizationCode),
            ("refresh_token", GrantType::RefreshToken),
            ("client_credentials", GrantType::ClientCredentials),
        ] {
            assert_eq!(GrantType::parse(s), Ok(g));
            assert_eq!(g.as_str(), s);
            assert_eq!(serde_json::to_value(g).unwrap(), s);
        }
        for bad in [
            "password",
            "implicit",
            "",
            "Authorization_Code",
            "authorization_code ",
        ] {
            assert_eq!(GrantType::parse(bad), Err(UnsupportedGrantType), "{bad:?}");
        }
    }

    #[test]
    fn revocation_reason_serde_matches_as_str() {
        use RevocationReason::*;
        for r in [
            ClientRequest,
            CodeReplay,
            RefreshReuse,
            ConsentRevoked,
            UserDisabled,
            ClientDisabled,
            Admin,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(
                serde_json::from_value::<RevocationReason>(r.as_str().into()).unwrap(),
                r
            );
        }
        assert_eq!(RefreshReuse.as_str(), "refresh_reuse");
    }
}
