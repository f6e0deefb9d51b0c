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
    assert!(!world.is_active(&client, &token).await);
    assert!(!world.is_active(&client, "valet_at_unknown").await);
}

#[tokio::test]
async fn a_current_refresh_token_introspects_with_its_grants_scope() {
    let AliceAtWeb {
        world,
        client,
        tokens,
        ..
    } = AliceAtWeb::new().await;
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
    assert!(!world.is_active(&client, &refresh).await);
}
