//! The fixture file of every event type and schema version ever written, and samples
//! of today's events: shared by the `event_fixtures` test and the `append_fixtures` tool.
//!
//! `tests/fixtures/events.jsonl` holds one or more lines per (event type, schema version):
//! `{"aggregate", "event_type", "schema_version", "payload"}`, payloads exactly as they
//! were written to the log. Lines are only ever appended, never edited or deleted.

#![allow(dead_code)] // each user takes what it needs

use std::path::PathBuf;

use serde_json::Value;
use uuid::Uuid;
use valet_domain::backchannel::{self, Delivery, Outcome};
use valet_domain::client::{self, ClientKind};
use valet_domain::code::{self, RedirectUriPresence};
use valet_domain::event::DecodeError;
use valet_domain::grant::{self, AccessTokenIssue, GrantOrigin, RefreshTokenIssue, Subject};
use valet_domain::oidc::SessionId;
use valet_domain::session::{self, EndReason};
use valet_domain::signing_key::{self, Algorithm, KeyId, PublicJwk};
use valet_domain::{
    consent, user, ClientId, ClientName, DomainEvent, EventRef, GrantId, GrantType, PkceChallenge,
    RedirectUri, RevocationReason, ScopeSet, StreamId, Timestamp, TokenHash, UserId, Username,
};

pub const AGGREGATES: [(&str, &[&str]); 8] = [
    ("client", client::Event::EVENT_TYPES),
    ("user", user::Event::EVENT_TYPES),
    ("code", code::Event::EVENT_TYPES),
    ("grant", grant::Event::EVENT_TYPES),
    ("consent", consent::Event::EVENT_TYPES),
    ("signing_key", signing_key::Event::EVENT_TYPES),
    ("session", session::Event::EVENT_TYPES),
    ("backchannel", backchannel::Event::EVENT_TYPES),
];

pub fn fixtures_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events.jsonl")
}

/// A fixture line decoded with today's code: the event re-encoded, and its version now.
pub fn decode(
    aggregate: &str,
    event_type: &str,
    version: u32,
    payload: Value,
) -> Result<(Value, u32), DecodeError> {
    fn with<E: DomainEvent>(
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<(Value, u32), DecodeError> {
        E::from_payload(event_type, version, payload).map(|e| (e.to_payload(), e.schema_version()))
    }
    match aggregate {
        "client" => with::<client::Event>(event_type, version, payload),
        "user" => with::<user::Event>(event_type, version, payload),
        "code" => with::<code::Event>(event_type, version, payload),
        "grant" => with::<grant::Event>(event_type, version, payload),
        "consent" => with::<consent::Event>(event_type, version, payload),
        "signing_key" => with::<signing_key::Event>(event_type, version, payload),
        "session" => with::<session::Event>(event_type, version, payload),
        "backchannel" => with::<backchannel::Event>(event_type, version, payload),
        other => panic!("unknown aggregate {other:?}"),
    }
}

pub struct Fixture {
    pub line: usize,
    pub aggregate: String,
    pub event_type: String,
    pub version: u32,
    pub payload: Value,
}

pub fn read_fixtures() -> Vec<Fixture> {
    let path = fixtures_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line {}: not JSON ({e}): {l}", i + 1));
            let field = |k: &str| {
                v.get(k)
                    .unwrap_or_else(|| panic!("line {}: no {k}", i + 1))
                    .clone()
            };
            Fixture {
                line: i + 1,
                aggregate: field("aggregate").as_str().expect("aggregate").to_owned(),
                event_type: field("event_type").as_str().expect("event_type").to_owned(),
                version: field("schema_version")
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .expect("schema_version"),
                payload: field("payload"),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Samples: realistic events built with today's types and encoded by today's code
// ---------------------------------------------------------------------------------------

fn sample<E: DomainEvent>(
    aggregate: &'static str,
    event: E,
) -> (&'static str, &'static str, u32, Value) {
    (
        aggregate,
        event.event_type(),
        event.schema_version(),
        event.to_payload(),
    )
}

pub fn samples() -> Vec<(&'static str, &'static str, u32, Value)> {
    let at = |offset_ms: i64| Timestamp::from_unix_millis(1_795_841_926_490 + offset_ms);
    let id = |s: &str| Uuid::parse_str(s).expect("uuid");
    let app = ClientId::parse("6b1f0c8e2a9d4f3e8c7b5a1d0e9f2c4b").expect("client id");
    let service = ClientId::parse("d41c8a7f3e2b4c6a9f0e1d2c3b4a5f6e").expect("client id");
    let scopes = ScopeSet::parse("read write").expect("scopes");
    let read = ScopeSet::parse("read").expect("scope");
    let alice = Subject {
        user_id: UserId::new(id("01a22085-255a-72ad-b7ce-5cdc73970335")),
        username: Username::parse("alice").expect("username"),
    };
    let grant_id = GrantId::new(id("01a22085-2561-70be-a7ba-1f236f3021a8"));
    let key_id = KeyId::new(id("01a22085-4b1e-7c3a-9d2f-0e5a6b7c8d9e"));
    let sid = SessionId::new(id("01a22085-6c2d-7e4f-8a1b-2c3d4e5f6a7b"));
    let code_hash = TokenHash::of("valet_ac_q3Xv0c1n9Jp8mRk2Ls7Ty4Wb6Ze5Ha0Ud1Gf3Ni8Oe2");
    let access = |n: u32, scope: &ScopeSet, at_ms: i64| AccessTokenIssue {
        jti: None,
        hash: TokenHash::of(&format!("valet_at_fixture-access-{n}")),
        scope: scope.clone(),
        issued_at: at(at_ms),
        expires_at: at(at_ms).plus_seconds(3600),
    };
    let refresh = |n: u32, at_ms: i64| RefreshTokenIssue {
        hash: TokenHash::of(&format!("valet_rt_fixture-refresh-{n}")),
        issued_at: at(at_ms),
        expires_at: at(at_ms).plus_seconds(2_592_000),
    };
    vec![
        sample(
            "client",
            client::Event::ClientRegistered {
                client_id: app.clone(),
                name: ClientName::parse("Photo Print Shop").expect("name"),
                kind: ClientKind::Confidential {
                    secret_hash: TokenHash::of("valet_cs_fixture-client-secret"),
                },
                redirect_uris: vec![
                    RedirectUri::parse("https://app.example/cb").expect("uri"),
                    RedirectUri::parse("https://app.example/oauth/return").expect("uri"),
                ],
                grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
                scopes: scopes.clone(),
                at: at(0),
            },
        ),
        sample(
            "client",
            client::Event::ClientRegistered {
                client_id: service.clone(),
                name: ClientName::parse("Nightly report job").expect("name"),
                kind: ClientKind::Confidential {
                    secret_hash: TokenHash::of("valet_cs_fixture-service-secret"),
                },
                redirect_uris: vec![],
                grant_types: vec![GrantType::ClientCredentials],
                scopes: ScopeSet::parse("reports").expect("scope"),
                at: at(5),
            },
        ),
        sample(
            "client",
            client::Event::ClientRegistered {
                client_id: ClientId::parse("0c5e9b2d7a4f4e1c8b3a6d9f2e5c8b1a").expect("client id"),
                name: ClientName::parse("Pocket app (iOS)").expect("name"),
                kind: ClientKind::Public,
                redirect_uris: vec![RedirectUri::parse("http://127.0.0.1/callback").expect("uri")],
                grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
                scopes: read.clone(),
                at: at(7),
            },
        ),
        sample("client", client::Event::ClientDisabled { at: at(900_000) }),
        sample(
            "client",
            client::Event::ClientIdTokenAlgorithmSet {
                algorithm: Algorithm::EdDSA,
                at: at(5),
            },
        ),
        sample(
            "client",
            client::Event::ClientPostLogoutRedirectUrisSet {
                uris: vec![RedirectUri::parse("https://app.example/signed-out").expect("uri")],
                at: at(5),
            },
        ),
        sample(
            "client",
            client::Event::ClientAccessTokenFormatSet {
                format: client::AccessTokenFormat::Jwt {
                    alg: Algorithm::ES256,
                },
                at: at(5),
            },
        ),
        sample(
            "user",
            user::Event::UserRegistered {
                user_id: alice.user_id,
                username: alice.username.clone(),
                at: at(10),
            },
        ),
        sample("user", user::Event::UserDisabled { at: at(800_000) }),
        sample(
            "user",
            user::Event::UserSignedOutEverywhere { at: at(700_000) },
        ),
        sample("user", user::Event::UserPasswordChanged { at: at(600_000) }),
        sample(
            "user",
            user::Event::UserProfileChanged {
                profile: user::Profile {
                    name: Some(user::PersonName::parse("Alice Liddell").expect("name")),
                    email: Some(user::Email::parse("alice@example.com").expect("email")),
                    email_status: user::EmailStatus::Verified,
                },
                at: at(20),
            },
        ),
        sample(
            "consent",
            consent::Event::ConsentGiven {
                scope: read.clone(),
                at: at(60_000),
            },
        ),
        sample(
            "consent",
            consent::Event::ConsentRevoked { at: at(700_000) },
        ),
        sample(
            "code",
            code::Event::CodeIssued {
                code_hash,
                client_id: app.clone(),
                user_id: alice.user_id,
                username: alice.username.clone(),
                redirect_uri: RedirectUri::parse("https://app.example/cb").expect("uri"),
                redirect_uri_in_request: RedirectUriPresence::Sent,
                scope: read.clone(),
                pkce: Some(
                    PkceChallenge::parse("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
                        .expect("challenge"),
                ),
                grant_id,
                nonce: Some(valet_domain::oidc::Nonce::parse("n-0S6_WzA2Mj").expect("nonce")),
                auth_time: Some(at(55_000)),
                sid: Some(valet_domain::oidc::SessionId::new(id(
                    "01a22085-2aa0-7c11-8d3e-4f5a6b7c8d9e",
                ))),
                issued_at: at(60_001),
                expires_at: at(60_001).plus_seconds(60),
            },
        ),
        sample(
            "code",
            code::Event::CodeRedeemed {
                grant_id,
                client_id: app.clone(),
                at: at(61_000),
            },
        ),
        sample(
            "code",
            code::Event::CodeReplayed {
                grant_id,
                client_id: app.clone(),
                at: at(75_000),
            },
        ),
        sample(
            "grant",
            grant::Event::GrantIssued {
                grant_id,
                client_id: app.clone(),
                subject: Some(alice.clone()),
                scope: read.clone(),
                origin: GrantOrigin::AuthorizationCode { code_hash },
                access: access(1, &read, 61_000),
                refresh: Some(refresh(1, 61_000)),
                at: at(61_000),
            },
        ),
        sample(
            "grant",
            grant::Event::GrantIssued {
                grant_id: GrantId::new(id("01a22085-2562-7621-b925-4a3f9b9e262f")),
                client_id: service.clone(),
                subject: None,
                scope: ScopeSet::parse("reports").expect("scope"),
                origin: GrantOrigin::ClientCredentials,
                access: access(2, &ScopeSet::parse("reports").expect("scope"), 62_000),
                refresh: None,
                at: at(62_000),
            },
        ),
        sample(
            "grant",
            grant::Event::TokensRefreshed {
                previous_refresh: refresh(1, 61_000).hash,
                access: access(3, &read, 3_000_000),
                refresh: refresh(2, 3_000_000),
                at: at(3_000_000),
            },
        ),
        sample(
            "grant",
            grant::Event::RefreshTokenReused {
                presented: refresh(1, 61_000).hash,
                at: at(3_100_000),
            },
        ),
        sample(
            "grant",
            grant::Event::AccessTokenRevoked {
                hash: access(3, &read, 3_000_000).hash,
                reason: RevocationReason::ClientRequest,
                at: at(3_050_000),
            },
        ),
        sample(
            "grant",
            grant::Event::GrantRevoked {
                reason: RevocationReason::RefreshReuse,
                cause: None,
                at: at(3_100_000),
            },
        ),
        sample(
            "grant",
            grant::Event::GrantRevoked {
                reason: RevocationReason::CodeReplay,
                cause: Some(EventRef {
                    stream_id: StreamId::code(&code_hash),
                    event_id: id("01a22085-3a7c-7d10-9e43-77b2c5f0a911"),
                }),
                at: at(75_000),
            },
        ),
        sample(
            "signing_key",
            signing_key::Event::SigningKeyGenerated {
                key_id,
                algorithm: Algorithm::ES256,
                public: PublicJwk::new(
                    [
                        ("kty", "EC"),
                        ("crv", "P-256"),
                        ("x", "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"),
                        ("y", "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                )
                .expect("public jwk"),
                at: at(4_000_000),
            },
        ),
        sample(
            "signing_key",
            signing_key::Event::SigningKeyPublished {
                key_id,
                activates_at: at(4_300_000),
                at: at(4_000_000),
            },
        ),
        sample(
            "signing_key",
            signing_key::Event::SigningKeyActivated {
                key_id,
                at: at(4_300_000),
            },
        ),
        sample(
            "signing_key",
            signing_key::Event::SigningKeyRetired {
                key_id,
                published_until: at(8_000_000),
                at: at(4_400_000),
            },
        ),
        sample(
            "client",
            client::Event::ClientBackchannelLogoutSet {
                logout: client::BackchannelLogout {
                    uri: RedirectUri::parse("https://app.example/backchannel-logout").expect("uri"),
                    sid: client::LogoutSid::Required,
                },
                at: at(5),
            },
        ),
        sample("client", client::Event::ClientEnabled { at: at(7) }),
        sample("user", user::Event::UserEnabled { at: at(40) }),
        sample(
            "client",
            client::Event::ClientSecretRotated {
                secret_hash: TokenHash::of("valet_cs_fixture-rotated-secret"),
                previous_valid_until: at(86_400_007),
                at: at(7),
            },
        ),
        sample(
            "client",
            client::Event::ClientUpdated {
                name: ClientName::parse("Printshop (new)").expect("name"),
                redirect_uris: vec![
                    RedirectUri::parse("https://app.example/callback").expect("uri")
                ],
                grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
                scopes: scopes.clone(),
                at: at(8),
            },
        ),
        sample(
            "client",
            client::Event::ClientRegistrationTokenSet {
                hash: TokenHash::of("valet_rat_fixture-registration-token"),
                at: at(8),
            },
        ),
        sample("client", client::Event::ClientDeleted { at: at(9) }),
        sample(
            "session",
            session::Event::SessionStarted {
                session_id: sid,
                user_id: alice.user_id,
                expires_at: at(28_800_000),
                at: at(10),
            },
        ),
        sample(
            "session",
            session::Event::SessionUsed {
                client_id: Some(app.clone()),
                at: at(20),
            },
        ),
        sample(
            "session",
            session::Event::SessionEnded {
                reason: EndReason::Logout,
                at: at(30),
            },
        ),
        sample(
            "backchannel",
            backchannel::Event::BackchannelLogoutAttempted {
                delivery: Delivery {
                    client_id: app.clone(),
                    user_id: alice.user_id,
                    session_id: Some(sid),
                    cause: Uuid::from_u128(0x5e55),
                },
                attempt: 1,
                outcome: Outcome::Unreachable {
                    error: "connection refused".into(),
                },
                at: at(31),
            },
        ),
        sample(
            "backchannel",
            backchannel::Event::BackchannelLogoutAbandoned {
                attempts: 1,
                at: at(90_000_000),
            },
        ),
    ]
}
