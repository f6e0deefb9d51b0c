//! Administration: clients and users, and the grants their disabling revokes.

use valet_domain::grant;
use valet_domain::{ClientId, RevocationReason, StreamId};

use crate::admin::{AdminError, ClientType, NewClient};

use super::*;

fn new_client(name: &str, client_type: ClientType, redirect: bool, scopes: &[&str]) -> NewClient {
    NewClient {
        name: name.to_owned(),
        client_type,
        redirect_uris: if redirect {
            vec![CALLBACK.to_owned()]
        } else {
            vec![]
        },
        grant_types: vec![],
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        id_token_alg: None,
        post_logout_redirect_uris: vec![],
        access_token_format: None,
        access_token_alg: None,
        backchannel_logout_uri: None,
        backchannel_logout_sid: valet_domain::client::LogoutSid::Optional,
    }
}

#[tokio::test]
async fn a_created_client_can_authenticate_and_is_listed() {
    let mut world = World::new();
    let created = world
        .valet
        .create_client(
            new_client("Reports", ClientType::Confidential, false, &["read"]),
            &caller(),
        )
        .await
        .unwrap();
    let secret = created
        .client_secret
        .expect("a confidential client has a secret");
    assert!(secret.starts_with("valet_cs_"));
    // 128 random bits, as hex: safe in stream ids and NATS subjects.
    assert_eq!(created.client_id.len(), 32);
    let stream = StreamId::client(&ClientId::parse(&created.client_id).unwrap());
    assert_eq!(world.recorded().await, [(stream, "ClientRegistered")]);
    let auth = ClientAuth::Secret {
        client_id: created.client_id.clone(),
        secret,
    };
    let client = world.authenticated(&auth).await;
    assert!(client
        .state
        .allows_grant(valet_domain::GrantType::ClientCredentials));
    let listed = world.valet.list_clients().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].kind.as_str()),
        ("Reports", "confidential")
    );
    assert!(listed[0].active);

    let public = world
        .valet
        .create_client(
            new_client("Spa", ClientType::Public, true, &["read"]),
            &caller(),
        )
        .await
        .unwrap();
    assert_eq!(public.client_secret, None);
}

#[tokio::test]
async fn invalid_registrations_are_refused_with_a_reason() {
    let world = World::new();
    let cases = [
        new_client("No scope", ClientType::Confidential, false, &[]),
        new_client("Bad scope", ClientType::Confidential, false, &["a\"b"]),
        new_client("", ClientType::Confidential, false, &["read"]),
        new_client(
            "Public without redirect",
            ClientType::Public,
            false,
            &["read"],
        ),
        NewClient {
            redirect_uris: vec!["http://app.test/cb".into()],
            ..new_client("Plain http", ClientType::Confidential, true, &["read"])
        },
        NewClient {
            grant_types: vec!["password".into()],
            ..new_client("Password grant", ClientType::Confidential, true, &["read"])
        },
        NewClient {
            access_token_format: Some("paseto".into()),
            ..new_client(
                "Unknown token format",
                ClientType::Confidential,
                false,
                &["read"],
            )
        },
        NewClient {
            access_token_alg: Some("ES256".into()),
            ..new_client(
                "Opaque tokens, signed",
                ClientType::Confidential,
                false,
                &["read"],
            )
        },
        NewClient {
            access_token_format: Some("jwt".into()),
            access_token_alg: Some("HS256".into()),
            ..new_client(
                "Shared-secret JWTs",
                ClientType::Confidential,
                false,
                &["read"],
            )
        },
    ];
    for spec in cases {
        let name = spec.name.clone();
        assert!(
            matches!(
                world.valet.create_client(spec, &caller()).await,
                Err(AdminError::Invalid(_))
            ),
            "{name}"
        );
    }
}

#[tokio::test]
async fn disabling_a_client_revokes_every_grant_it_holds() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world.authenticated(&service).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let response = world
            .valet
            .client_credentials(&client, None, &caller())
            .await
            .unwrap();
        tokens.push(response.access_token);
    }
    world.skip_recorded().await;
    assert_eq!(
        world.valet.disable_client("svc", &caller()).await.unwrap(),
        3
    );
    let recorded = world.recorded_events().await;
    assert_eq!(recorded[0].1.event_type(), "ClientDisabled");
    assert!(recorded[1..].iter().all(|(_, e)| matches!(
        e,
        Event::Grant(grant::Event::GrantRevoked {
            reason: RevocationReason::ClientDisabled,
            ..
        })
    )));
    assert_eq!(recorded.len(), 4);
    // Introspection by another (active) client sees them all revoked.
    let rs = world
        .given_client("rs", Kind::Confidential, SERVICE, "read")
        .await;
    let rs = world.authenticated(&rs).await;
    for token in &tokens {
        assert!(!world.is_active(&rs, token).await);
    }
    assert!(matches!(
        world.valet.disable_client("nobody", &caller()).await,
        Err(AdminError::NotFound(_))
    ));
}

#[tokio::test]
async fn users_are_created_once_and_disabling_revokes_their_grants() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let user_id = world
        .valet
        .create_user("bob", "a long passphrase", &caller())
        .await
        .unwrap();
    assert_eq!(
        world.recorded().await,
        [(StreamId::user(&user_id), "UserRegistered")]
    );
    assert!(matches!(
        world.valet.create_user("bob", "another", &caller()).await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        world.valet.create_user("bob two", "x", &caller()).await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        world.valet.create_user("carol", "", &caller()).await,
        Err(AdminError::Invalid(_))
    ));
    let bob = world.valet.login("bob", "a long passphrase").await.unwrap();
    let tokens = code_grant_tokens(&mut world, &web, &bob).await;
    assert_eq!(world.valet.disable_user("bob", &caller()).await.unwrap(), 1);
    let client = world.authenticated(&web).await;
    assert!(!world.is_active(&client, &tokens.access_token).await);
    assert!(world.valet.login("bob", "a long passphrase").await.is_err());
}

/// The same bytes at every draw: two registrations draw the same client id.
struct StuckRandom;

impl crate::entropy::Randomness for StuckRandom {
    fn fill(&self, bytes: &mut [u8]) -> Result<(), crate::entropy::RandomnessError> {
        bytes.fill(7);
        Ok(())
    }
}

#[tokio::test]
async fn a_deleted_clients_id_is_never_registered_again() {
    let reads = MemoryReadModels::new();
    let store = MemoryEventStore::with_read_models(reads.clone());
    let settings = Settings {
        issuer: ISSUER.to_owned(),
        access_ttl: AccessTokenTtl::new(ACCESS_TTL).unwrap(),
        refresh_ttl: RefreshTokenTtl::new(3600).unwrap(),
        code_ttl: CodeTtl::new(60).unwrap(),
    };
    let valet = OAuth::new(
        store,
        reads,
        FixedClock::at(Timestamp::from_unix_millis(T0)),
        settings,
    )
    .with_ids(SequentialIds::default())
    .with_randomness(StuckRandom);
    let spec = || {
        NewClient::new(
            "batch".into(),
            ClientType::Confidential,
            crate::admin::ClientChanges {
                grant_types: vec!["client_credentials".into()],
                scopes: vec!["read".into()],
                ..Default::default()
            },
        )
    };
    let made = valet.create_client(spec(), &caller()).await.unwrap();
    valet
        .delete_client(&made.client_id, &caller())
        .await
        .unwrap();
    // Given the same id drawn again, the registration is refused: ids are never reused.
    assert!(matches!(
        valet.create_client(spec(), &caller()).await,
        Err(AdminError::AlreadyExists(_))
    ));
}
