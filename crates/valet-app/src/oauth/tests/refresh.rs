//! Refresh with rotation and reuse detection (RFC 6749 §6, RFC 9700 §4.14).

use valet_domain::grant;
use valet_domain::RevocationReason;

use super::*;

#[tokio::test]
async fn a_refresh_rotates_the_token_and_keeps_the_grant() {
    let AliceAtWeb {
        mut world,
        client,
        tokens: first,
        ..
    } = AliceAtWeb::new().await;
    world.clock.advance_seconds(30);
    let second = world
        .valet
        .refresh(
            &client,
            first.refresh_token.as_deref().unwrap(),
            None,
            &caller(),
        )
        .await
        .expect("refreshed");
    assert_eq!(second.scope, "read write");
    assert_ne!(second.refresh_token, first.refresh_token);
    let recorded = world.recorded_events().await;
    let [(
        _,
        Event::Grant(grant::Event::TokensRefreshed {
            previous_refresh,
            access,
            ..
        }),
    )] = recorded.as_slice()
    else {
        panic!("{recorded:?}")
    };
    assert_eq!(
        *previous_refresh,
        TokenHash::of(first.refresh_token.as_deref().unwrap())
    );
    assert_eq!(access.issued_at, world.now().plus_seconds(30));
    // Rotation does not cut the earlier access token short.
    assert!(world.is_active(&client, &first.access_token).await);
}

#[tokio::test]
async fn a_narrower_scope_may_be_asked_a_wider_one_not() {
    let AliceAtWeb {
        world,
        client,
        tokens,
        ..
    } = AliceAtWeb::new().await;
    let refresh = tokens.refresh_token.unwrap();
    assert_eq!(
        error_code(
            world
                .valet
                .refresh(&client, &refresh, Some("read admin"), &caller())
                .await
        ),
        ErrorCode::InvalidScope
    );
    let narrower = world
        .valet
        .refresh(&client, &refresh, Some("read"), &caller())
        .await
        .unwrap();
    assert_eq!(narrower.scope, "read");
}

#[tokio::test]
async fn a_rotated_token_presented_again_revokes_the_whole_grant() {
    let AliceAtWeb {
        mut world,
        client,
        tokens: first,
        ..
    } = AliceAtWeb::new().await;
    let stolen = first.refresh_token.unwrap();
    let second = world
        .valet
        .refresh(&client, &stolen, None, &caller())
        .await
        .unwrap();
    world.skip_recorded().await;
    assert_eq!(
        error_code(world.valet.refresh(&client, &stolen, None, &caller()).await),
        ErrorCode::InvalidGrant
    );
    let recorded = world.recorded_events().await;
    let types: Vec<&str> = recorded.iter().map(|(_, e)| e.event_type()).collect();
    assert_eq!(types, ["RefreshTokenReused", "GrantRevoked"]);
    assert!(matches!(
        &recorded[1].1,
        Event::Grant(grant::Event::GrantRevoked {
            reason: RevocationReason::RefreshReuse,
            ..
        })
    ));
    // Every token of the family is dead, the legitimate holder's too.
    for token in [&second.access_token, second.refresh_token.as_ref().unwrap()] {
        assert!(!world.is_active(&client, token).await);
    }
    assert_eq!(
        error_code(
            world
                .valet
                .refresh(
                    &client,
                    second.refresh_token.as_deref().unwrap(),
                    None,
                    &caller()
                )
                .await
        ),
        ErrorCode::InvalidGrant
    );
}

#[tokio::test]
async fn another_clients_refresh_token_is_unknown_to_it() {
    let AliceAtWeb {
        mut world, tokens, ..
    } = AliceAtWeb::new().await;
    let other = world
        .given_client("other", Kind::Confidential, WEB_APP, "read")
        .await;
    let other = world.authenticated(&other).await;
    assert_eq!(
        error_code(
            world
                .valet
                .refresh(
                    &other,
                    tokens.refresh_token.as_deref().unwrap(),
                    None,
                    &caller()
                )
                .await
        ),
        ErrorCode::InvalidGrant
    );
    assert!(
        world.recorded().await.is_empty(),
        "no reuse cascade for a stranger"
    );
    assert_eq!(
        error_code(
            world
                .valet
                .refresh(&other, "valet_rt_unknown", None, &caller())
                .await
        ),
        ErrorCode::InvalidGrant
    );
}
