//! Login sessions, "Remove access", and which logout tokens a cause calls for.

use valet_domain::backchannel::DeliveryId;
use valet_domain::client::{BackchannelLogout, LogoutSid};
use valet_domain::session::{EndReason, IdleTimeout};
use valet_domain::{consent, grant, session, RevocationReason};

use super::*;
use crate::log::ReplayEvent;
use crate::sessions::SessionPolicy;

const POLICY: SessionPolicy = SessionPolicy {
    lifetime_seconds: 3600,
    idle: IdleTimeout(Some(600)),
};

#[tokio::test]
async fn a_session_acts_for_its_user_until_it_ends() {
    let mut world = World::new();
    world.valet.set_session_policy(POLICY);
    let alice = world.given_user("alice", "a long passphrase").await;
    let started = world.valet.start_session(&alice, &caller()).await.unwrap();
    let user = world
        .valet
        .session_user(alice.user_id, started.session_id)
        .await
        .unwrap();
    assert_eq!(user.map(|(u, _)| u), Some(alice.clone()));
    // Another user's id with this session: nobody.
    let other = UserId::new(Uuid::from_u128(7));
    assert!(world
        .valet
        .session_user(other, started.session_id)
        .await
        .unwrap()
        .is_none());
    let ended = world
        .valet
        .end_session(
            started.session_id,
            EndReason::Logout,
            &caller(),
            "user:alice",
        )
        .await
        .unwrap();
    assert!(ended);
    assert!(world
        .valet
        .session_user(alice.user_id, started.session_id)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_idle_session_is_recorded_as_expired_when_presented() {
    let mut world = World::new();
    world.valet.set_session_policy(POLICY);
    let alice = world.given_user("alice", "a long passphrase").await;
    let started = world.valet.start_session(&alice, &caller()).await.unwrap();
    world.skip_recorded().await;
    world.clock.advance_seconds(600);
    let user = world
        .valet
        .session_user(alice.user_id, started.session_id)
        .await
        .unwrap();
    assert!(user.is_none());
    let recorded = world.recorded_events().await;
    assert!(matches!(
        recorded.as_slice(),
        [(
            StreamId::Session(_),
            Event::Session(session::Event::SessionEnded {
                reason: EndReason::Expired,
                ..
            })
        )]
    ));
}

#[tokio::test]
async fn removing_an_app_revokes_the_consent_and_its_grants_only() {
    let AliceAtWeb { mut world, .. } = AliceAtWeb::new().await;
    let alice = AuthenticatedUser {
        user_id: UserId::new(Uuid::from_u128(0xa11ce + 5)),
        username: Username::parse("alice").unwrap(),
    };
    world.skip_recorded().await;
    let web = ClientId::parse("web").unwrap();
    let revoked = world
        .valet
        .remove_app(&alice, &web, &caller())
        .await
        .unwrap();
    assert_eq!(revoked, 1);
    let recorded = world.recorded_events().await;
    assert!(matches!(
        recorded.as_slice(),
        [
            (
                StreamId::Consent(..),
                Event::Consent(consent::Event::ConsentRevoked { .. })
            ),
            (
                StreamId::Grant(_),
                Event::Grant(grant::Event::GrantRevoked {
                    reason: RevocationReason::ConsentRevoked,
                    ..
                })
            )
        ]
    ));
    assert!(world
        .valet
        .connected_apps(alice.user_id)
        .await
        .unwrap()
        .is_empty());
}

/// The session signs `user` in to `client`.
async fn signs_in_to(
    world: &World,
    user: &AuthenticatedUser,
    session_id: valet_domain::oidc::SessionId,
    client: &ClientId,
) {
    let loaded = world
        .valet
        .session_of(user.user_id, session_id)
        .await
        .unwrap()
        .unwrap();
    world
        .valet
        .use_session(&loaded, Some(client), user, &caller())
        .await
        .unwrap();
}

/// Registers `name` for logout tokens at `https://<name>.test/logout`.
async fn given_logout_uri(world: &mut World, name: &str, sid: LogoutSid) {
    let stream = StreamId::client(&ClientId::parse(name).unwrap());
    let set = client::Event::ClientBackchannelLogoutSet {
        logout: BackchannelLogout {
            uri: RedirectUri::parse(&format!("https://{name}.test/logout")).unwrap(),
            sid,
        },
        at: world.now(),
    };
    world.given_later(stream, set).await;
}

/// The last recorded event, as the dispatcher reads it.
async fn last_event(world: &World) -> ReplayEvent {
    let log = world
        .valet
        .store
        .read_log(LogCursor::START, usize::MAX)
        .await
        .unwrap();
    log.last().cloned().map(ReplayEvent::from).unwrap()
}

#[tokio::test]
async fn a_session_end_calls_for_a_token_to_each_registered_client_it_signed_in_to() {
    let mut world = World::new();
    for name in ["web", "shop", "quiet"] {
        world
            .given_client(name, Kind::Confidential, WEB_APP, "openid")
            .await;
    }
    given_logout_uri(&mut world, "web", LogoutSid::Required).await;
    given_logout_uri(&mut world, "shop", LogoutSid::Optional).await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let started = world.valet.start_session(&alice, &caller()).await.unwrap();
    for name in ["web", "shop", "quiet"] {
        let client = ClientId::parse(name).unwrap();
        signs_in_to(&world, &alice, started.session_id, &client).await;
    }
    world
        .valet
        .end_session(
            started.session_id,
            EndReason::Logout,
            &caller(),
            "user:alice",
        )
        .await
        .unwrap();
    let cause = last_event(&world).await;
    let planned = world.valet.logout_deliveries(&cause).await.unwrap();
    let to: Vec<(&str, &str)> = planned
        .iter()
        .map(|p| (p.delivery.client_id.as_str(), p.uri.as_str()))
        .collect();
    // "quiet" registered no logout URI.
    assert_eq!(
        to,
        [
            ("web", "https://web.test/logout"),
            ("shop", "https://shop.test/logout")
        ]
    );
    for p in &planned {
        assert_eq!(p.delivery.session_id, Some(started.session_id));
        assert_eq!(p.delivery.user_id, alice.user_id);
        assert_eq!(
            p.id,
            DeliveryId::of(cause.event_id, &p.delivery.client_id, p.delivery.session_id)
        );
    }
    // Reading the cause again plans the same deliveries (the same streams).
    let again = world.valet.logout_deliveries(&cause).await.unwrap();
    assert_eq!(again, planned);
}

#[tokio::test]
async fn removing_an_app_calls_for_one_token_per_standing_session_when_it_needs_sid() {
    let mut world = World::new();
    world
        .given_client("web", Kind::Confidential, WEB_APP, "openid")
        .await;
    given_logout_uri(&mut world, "web", LogoutSid::Required).await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let web = ClientId::parse("web").unwrap();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let started = world.valet.start_session(&alice, &caller()).await.unwrap();
        signs_in_to(&world, &alice, started.session_id, &web).await;
        sessions.push(started.session_id);
    }
    // A session that never signed in to web hears nothing of it.
    world.valet.start_session(&alice, &caller()).await.unwrap();
    let consent = StreamId::consent(&alice.user_id, &web);
    world
        .given(
            consent.clone(),
            vec![consent::Event::ConsentGiven {
                scope: ScopeSet::parse("openid").unwrap(),
                at: world.now(),
            }
            .into()],
        )
        .await;
    world
        .valet
        .remove_app(&alice, &web, &caller())
        .await
        .unwrap();
    let log = world
        .valet
        .store
        .read_log(LogCursor::START, usize::MAX)
        .await
        .unwrap();
    let cause = log
        .into_iter()
        .rev()
        .find(|e| e.event.event_type() == "ConsentRevoked")
        .map(ReplayEvent::from)
        .expect("the consent was revoked");
    let planned = world.valet.logout_deliveries(&cause).await.unwrap();
    let mut sids: Vec<_> = planned.iter().map(|p| p.delivery.session_id).collect();
    sids.sort();
    sessions.sort();
    assert_eq!(sids, sessions.into_iter().map(Some).collect::<Vec<_>>());
}
