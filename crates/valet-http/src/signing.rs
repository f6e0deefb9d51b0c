//! Session and anti-CSRF values, HMAC-SHA256-signed with the server's session key.
//!
//! Every MAC covers a purpose label first, so a value signed for one use (a CSRF
//! token) can never pass as another (a session).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;
use valet_app::entropy::{random_bytes, OsRandom, RandomnessError};
use valet_domain::oidc::SessionId;
use valet_domain::UserId;

type HmacSha256 = Hmac<Sha256>;

/// A CSRF cookie is 32 random bytes, base64url: 43 characters.
const CSRF_COOKIE_LEN: usize = 43;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("malformed session value")]
    Malformed,
    #[error("session signature does not verify")]
    BadSignature,
    #[error("session expired")]
    Expired,
}

/// A verified session: who signed in, which sign-in it is (OpenID Connect's `sid`), and
/// when (unix seconds; `auth_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub authenticated_at: i64,
}

impl Session {
    /// When the user signed in (`authenticated_at` is in whole seconds).
    pub fn signed_in_at(&self) -> valet_domain::Timestamp {
        valet_domain::Timestamp::from_unix_millis(self.authenticated_at.saturating_mul(1000))
    }
}

/// The HMAC key. Deliberately not `Debug`: it must never reach a log.
pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    pub fn new(key: [u8; 32]) -> Self {
        Signer { key }
    }

    fn mac(&self, purpose: &[u8], message: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose);
        mac.update(b"\0");
        mac.update(message);
        mac
    }

    /// `<user uuid>.<session uuid>.<sign-in unix seconds>.<expiry unix seconds>.<MAC>`.
    pub fn session(&self, session: &Session, expires_at: i64) -> String {
        let payload = format!(
            "{}.{}.{}.{expires_at}",
            session.user_id, session.session_id, session.authenticated_at
        );
        let tag = self
            .mac(b"valet-session", payload.as_bytes())
            .finalize()
            .into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    pub fn verify_session(&self, value: &str, now: i64) -> Result<Session, SessionError> {
        let (payload, tag) = value.rsplit_once('.').ok_or(SessionError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SessionError::Malformed)?;
        // Constant-time comparison inside `verify_slice`.
        self.mac(b"valet-session", payload.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| SessionError::BadSignature)?;
        let mut parts = payload.split('.');
        let (Some(user), Some(session_id), Some(authenticated_at), Some(expires_at), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SessionError::Malformed);
        };
        let user = Uuid::parse_str(user).map_err(|_| SessionError::Malformed)?;
        let session_id = SessionId::parse(session_id).ok_or(SessionError::Malformed)?;
        let authenticated_at: i64 = authenticated_at
            .parse()
            .map_err(|_| SessionError::Malformed)?;
        let expires_at: i64 = expires_at.parse().map_err(|_| SessionError::Malformed)?;
        if now >= expires_at {
            return Err(SessionError::Expired);
        }
        Ok(Session {
            user_id: UserId::new(user),
            session_id,
            authenticated_at,
        })
    }

    /// The hidden-field value that goes with a CSRF cookie. Binding the field to the
    /// cookie with our key means an attacker who can plant a cookie (a sibling
    /// subdomain) still cannot produce a matching field.
    pub fn csrf_field(&self, cookie: &str) -> String {
        let tag = self
            .mac(b"valet-csrf", cookie.as_bytes())
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(tag)
    }

    pub fn verify_csrf(&self, cookie: &str, field: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(field) else {
            return false;
        };
        self.mac(b"valet-csrf", cookie.as_bytes())
            .verify_slice(&tag)
            .is_ok()
    }
}

/// A fresh random CSRF cookie value.
pub fn new_csrf_cookie() -> Result<String, RandomnessError> {
    let bytes: [u8; 32] = random_bytes(&OsRandom)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a CSRF cookie looks like one we issued (worth reusing rather than replacing).
pub fn is_csrf_cookie(value: &str) -> bool {
    value.len() == CSRF_COOKIE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn user() -> UserId {
        UserId::new(Uuid::now_v7())
    }

    #[test]
    fn sessions_verify_until_they_expire() {
        let signer = Signer::new([7; 32]);
        let u = user();
        let session = Session {
            user_id: u,
            session_id: SessionId::new(Uuid::now_v7()),
            authenticated_at: NOW - 5,
        };
        let value = signer.session(&session, NOW + 3600);
        assert_eq!(signer.verify_session(&value, NOW), Ok(session));
        assert_eq!(
            signer.verify_session(&value, NOW + 3600),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn tampered_sessions_are_refused() {
        let signer = Signer::new([7; 32]);
        let u = user();
        let session = Session {
            user_id: u,
            session_id: SessionId::new(Uuid::now_v7()),
            authenticated_at: NOW,
        };
        let value = signer.session(&session, NOW + 10);
        // Another user id, a later sign-in or a later expiry with the old MAC.
        let later = value.replacen(&format!(".{NOW}."), &format!(".{}.", NOW + 5), 1);
        assert_eq!(
            signer.verify_session(&later, NOW),
            Err(SessionError::BadSignature)
        );
        let (_, rest) = value.split_once('.').unwrap();
        let other_user = format!("{}.{rest}", user());
        assert_eq!(
            signer.verify_session(&other_user, NOW),
            Err(SessionError::BadSignature)
        );
        let longer = value.replacen(
            &format!(".{}.", NOW + 10),
            &format!(".{}.", NOW + 99_999),
            1,
        );
        assert_eq!(
            signer.verify_session(&longer, NOW),
            Err(SessionError::BadSignature)
        );
        // Another key.
        assert_eq!(
            Signer::new([8; 32]).verify_session(&value, NOW),
            Err(SessionError::BadSignature)
        );
        for junk in ["", "x", "a.b", "a.b.c", "...", &format!("{value}x")] {
            assert!(signer.verify_session(junk, NOW).is_err(), "{junk}");
        }
    }

    #[test]
    fn csrf_fields_are_bound_to_their_cookie() {
        let signer = Signer::new([1; 32]);
        let cookie = new_csrf_cookie().unwrap();
        assert!(is_csrf_cookie(&cookie));
        let field = signer.csrf_field(&cookie);
        assert!(signer.verify_csrf(&cookie, &field));
        let other = new_csrf_cookie().unwrap();
        assert!(!signer.verify_csrf(&other, &field));
        assert!(!signer.verify_csrf(&cookie, ""));
        assert!(!signer.verify_csrf(&cookie, &cookie));
        assert!(!Signer::new([2; 32]).verify_csrf(&cookie, &field));
    }

    #[test]
    fn a_csrf_mac_is_not_a_session_mac() {
        let signer = Signer::new([3; 32]);
        let u = user();
        let payload = format!("{u}.{}.{NOW}.{}", Uuid::now_v7(), NOW + 100);
        let forged = format!("{payload}.{}", signer.csrf_field(&payload));
        assert_eq!(
            signer.verify_session(&forged, NOW),
            Err(SessionError::BadSignature)
        );
    }
}
