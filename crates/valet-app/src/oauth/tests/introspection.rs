//! Introspection (RFC 7662).

use super::*;
use crate::oauth::Introspection;

#[tokio::test]
async fn only_confidential_clients_may_introspect() {
    let mut world = World::new();
    let spa = world
        .given_client("spa", Kind::Public, WEB_APP, "read")
        .await;
    let spa = world.authenticated(&spa).await;
    assert_eq!(
        error_code(world.valet.introspect(&spa, "valet_at_anything").await),
        ErrorCode::InvalidClient
    );
}

#[tokio::test]
async fn a_token_is_active_until_it_expires() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world.authenticated(&service).await;
    let token = world
        .valet
        .client_credentials(&client, None, &caller())
        .await
        .unwrap()
        .access_token;
    world.clock.advance_seconds(ACCESS_TTL - 1);
    assert!(matches!(
        world.valet.introspect(&client, &token).await.unwrap(),
        Introspection::Active { .. }
    ));
    world.clock.advance_seconds(1);
    assert_eq!(
        world.valet.introspect(&client, &token).await.unwrap(),
        Introspection::Inactive
    );
    assert_eq!(
        world
            .valet
            .introspect(&client, "valet_at_unknown")
            .await
            .unwrap(),
        Introspection::Inactive
    );
}

#[tokio::test]
async fn a_current_refresh_token_introspects_with_its_grants_scope() {
    let mut world = World::new();
    let web = world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let tokens = code_grant_tokens(&mut world, &web, &alice).await;
    let client = world.authenticated(&web).await;
    let refresh = tokens.refresh_token.unwrap();
    match world.valet.introspect(&client, &refresh).await.unwrap() {
        Introspection::Active {
            token_type, scope, ..
        } => assert_eq!(
            (token_type, scope.as_str()),
            ("refresh_token", "read write")
        ),
        inactive => panic!("{inactive:?}"),
    }
    // Rotated, it is inactive.
    world
        .valet
        .refresh(&client, &refresh, None, &caller())
        .await
        .unwrap();
    assert_eq!(
        world.valet.introspect(&client, &refresh).await.unwrap(),
        Introspection::Inactive
    );
}
