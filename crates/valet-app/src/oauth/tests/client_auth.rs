//! Client authentication and the guard on token-issuing writes.

use super::*;
use crate::ports::StreamVersion;

#[tokio::test]
async fn a_confidential_client_authenticates_with_its_secret_only() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world
        .valet
        .authenticate(&service)
        .await
        .expect("its secret");
    assert_eq!(client.id().as_str(), "svc");
    assert!(client.is_confidential());
    assert_eq!(client.version, StreamVersion(1));

    let wrong = ClientAuth::Secret {
        client_id: "svc".into(),
        secret: "guess".into(),
    };
    let unknown = ClientAuth::Secret {
        client_id: "nobody".into(),
        secret: "secret-of-nobody".into(),
    };
    let malformed = ClientAuth::Secret {
        client_id: "a.b".into(),
        secret: "x".into(),
    };
    // Without its secret a confidential client is refused like an unknown one.
    let as_public = ClientAuth::Public {
        client_id: "svc".into(),
    };
    for attempt in [wrong, unknown, malformed, as_public] {
        assert_eq!(
            error_code(world.valet.authenticate(&attempt).await),
            ErrorCode::InvalidClient,
            "{attempt:?}"
        );
    }
    assert!(
        world.recorded().await.is_empty(),
        "authentication records nothing"
    );
}

#[tokio::test]
async fn a_public_client_authenticates_by_its_id() {
    let mut world = World::new();
    let app = world
        .given_client("app", Kind::Public, WEB_APP, "read")
        .await;
    let client = world.valet.authenticate(&app).await.expect("its id");
    assert!(!client.is_confidential());
    // A secret is no way in for a public client.
    let with_secret = ClientAuth::Secret {
        client_id: "app".into(),
        secret: "anything".into(),
    };
    assert_eq!(
        error_code(world.valet.authenticate(&with_secret).await),
        ErrorCode::InvalidClient
    );
}

#[tokio::test]
async fn a_disabled_client_is_refused_once_the_cache_entry_expires() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    assert!(world.valet.authenticate(&service).await.is_ok());
    world.given_disabled_client("svc").await;
    // Within the cache's second the state is the one loaded...
    world.clock.advance_millis(999);
    assert!(world.valet.authenticate(&service).await.is_ok());
    // ...after it, the client's stream is read again.
    world.clock.advance_millis(1);
    assert_eq!(
        error_code(world.valet.authenticate(&service).await),
        ErrorCode::InvalidClient
    );
}

#[tokio::test]
async fn a_clock_set_back_does_not_keep_a_cache_entry_fresh() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    assert!(world.valet.authenticate(&service).await.is_ok());
    world.given_disabled_client("svc").await;
    world.clock.advance_millis(-60_000);
    assert_eq!(
        error_code(world.valet.authenticate(&service).await),
        ErrorCode::InvalidClient
    );
}
