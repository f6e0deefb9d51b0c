//! Revocation (RFC 7009).

use valet_domain::grant;
use valet_domain::RevocationReason;

use super::*;

#[tokio::test]
async fn revoking_an_access_token_ends_it_alone() {
    let AliceAtWeb {
        mut world,
        client,
        tokens,
        ..
    } = AliceAtWeb::new().await;
    world
        .valet
        .revoke(&client, &tokens.access_token, None, &caller())
        .await
        .unwrap();
    let recorded = world.recorded_events().await;
    assert!(matches!(
        recorded.as_slice(),
        [(
            _,
            Event::Grant(grant::Event::AccessTokenRevoked {
                reason: RevocationReason::ClientRequest,
                ..
            })
        )]
    ));
    assert!(!world.is_active(&client, &tokens.access_token).await);
    // The refresh token still works.
    assert!(world
        .valet
        .refresh(
            &client,
            tokens.refresh_token.as_deref().unwrap(),
            None,
            &caller()
        )
        .await
        .is_ok());
    // Revoking it again records nothing.
    world.skip_recorded().await;
    world
        .valet
        .revoke(&client, &tokens.access_token, None, &caller())
        .await
        .unwrap();
    assert!(world.recorded().await.is_empty());
}

#[tokio::test]
async fn revoking_a_refresh_token_takes_the_grant_with_it() {
    let AliceAtWeb {
        mut world,
        client,
        tokens,
        ..
    } = AliceAtWeb::new().await;
    // The hint only orders the lookups: a wrong one still finds the token.
    world
        .valet
        .revoke(
            &client,
            tokens.refresh_token.as_deref().unwrap(),
            Some("access_token"),
            &caller(),
        )
        .await
        .unwrap();
    assert_eq!(world.recorded().await.len(), 1);
    assert!(!world.is_active(&client, &tokens.access_token).await);
}

#[tokio::test]
async fn unknown_tokens_and_other_clients_tokens_are_answered_and_left_alone() {
    let AliceAtWeb {
        mut world,
        client: web,
        tokens,
    } = AliceAtWeb::new().await;
    let other = world
        .given_client("other", Kind::Confidential, WEB_APP, "read")
        .await;
    let other = world.authenticated(&other).await;
    for token in [
        tokens.access_token.as_str(),
        tokens.refresh_token.as_deref().unwrap(),
        "valet_at_unknown",
    ] {
        for hint in [None, Some("refresh_token")] {
            world
                .valet
                .revoke(&other, token, hint, &caller())
                .await
                .unwrap();
        }
    }
    assert!(world.recorded().await.is_empty());
    assert!(world.is_active(&web, &tokens.access_token).await);
}

#[tokio::test]
async fn revoking_a_grant_is_idempotent() {
    let mut world = World::new();
    let service = world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let client = world.authenticated(&service).await;
    world
        .valet
        .client_credentials(&client, None, &caller())
        .await
        .unwrap();
    let grant_id = match world.recorded_events().await.as_slice() {
        [(_, Event::Grant(grant::Event::GrantIssued { grant_id, .. }))] => *grant_id,
        other => panic!("{other:?}"),
    };
    let meta = caller();
    let revoke = || {
        world
            .valet
            .revoke_grant(grant_id, RevocationReason::Admin, None, &meta, "admin:test")
    };
    assert!(revoke().await.unwrap());
    assert!(!revoke().await.unwrap());
    let unknown = world
        .valet
        .revoke_grant(
            valet_domain::GrantId::new(Uuid::from_u128(12345)),
            RevocationReason::Admin,
            None,
            &caller(),
            "admin:test",
        )
        .await;
    assert!(!unknown.unwrap());
}
