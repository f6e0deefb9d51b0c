//! The client_credentials grant (RFC 6749 §4.4).

use valet_domain::grant::{self, GrantOrigin};
use valet_domain::GrantId;

use super::*;
use crate::oauth::Introspection;

#[tokio::test]
async fn a_service_gets_a_token_of_its_scope_recorded_as_a_one_token_grant() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read write")
        .await;
    let client = world.authenticated(&service).await;
    let response = world
        .valet
        .client_credentials(&client, None, &caller())
        .await
        .expect("a token");
    assert!(response.access_token.starts_with("valet_at_"));
    assert_eq!(response.token_type, "Bearer");
    assert_eq!(response.expires_in, ACCESS_TTL);
    assert_eq!(response.scope, "read write");
    assert_eq!(response.refresh_token, None);

    let recorded = world.recorded_events().await;
    let [(
        stream,
        Event::Grant(grant::Event::GrantIssued {
            grant_id,
            origin,
            subject,
            refresh,
            access,
            ..
        }),
    )] = recorded.as_slice()
    else {
        panic!("one GrantIssued, got {recorded:?}")
    };
    // The grant's id is the first id the use case drew.
    assert_eq!(*grant_id, GrantId::new(Uuid::from_u128(1)));
    assert_eq!(stream, &StreamId::grant(grant_id));
    assert_eq!(origin, &GrantOrigin::ClientCredentials);
    assert_eq!((subject, refresh), (&None, &None));
    // The log holds the token's digest, never the token.
    assert_eq!(access.hash, TokenHash::of(&response.access_token));
    assert_eq!(access.expires_at, world.now().plus_seconds(ACCESS_TTL));
}

#[tokio::test]
async fn the_token_introspects_active_at_once() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read write")
        .await;
    let client = world.authenticated(&service).await;
    let token = world
        .valet
        .client_credentials(&client, Some("read"), &caller())
        .await
        .unwrap()
        .access_token;
    match world.valet.introspect(&client, &token).await.unwrap() {
        Introspection::Active {
            scope,
            client_id,
            sub,
            iss,
            exp,
            ..
        } => {
            assert_eq!((scope.as_str(), client_id.as_str()), ("read", "svc"));
            assert_eq!(
                (sub.as_str(), iss.as_str()),
                ("svc", ISSUER),
                "the client is its own subject"
            );
            assert_eq!(exp, world.now().plus_seconds(ACCESS_TTL).as_unix_seconds());
        }
        inactive => panic!("{inactive:?}"),
    }
}

#[tokio::test]
async fn a_scope_beyond_the_registration_or_a_grant_type_not_registered_is_refused() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world.authenticated(&service).await;
    for scope in ["write", "read write", "bad\u{7f}scope"] {
        assert_eq!(
            error_code(
                world
                    .valet
                    .client_credentials(&client, Some(scope), &caller())
                    .await
            ),
            ErrorCode::InvalidScope,
            "{scope}"
        );
    }
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read")
        .await;
    let web = world.authenticated(&web).await;
    assert_eq!(
        error_code(world.valet.client_credentials(&web, None, &caller()).await),
        ErrorCode::UnauthorizedClient
    );
    assert!(world.recorded().await.is_empty());
}

#[tokio::test]
async fn a_client_disabled_after_authenticating_gets_no_token() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world.authenticated(&service).await;
    // The client is disabled between authentication and issuance.
    world.given_disabled_client("svc").await;
    assert_eq!(
        error_code(
            world
                .valet
                .client_credentials(&client, None, &caller())
                .await
        ),
        ErrorCode::InvalidClient
    );
    assert!(world.recorded().await.is_empty(), "no grant was recorded");
}
