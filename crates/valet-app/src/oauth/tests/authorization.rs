//! Authorization requests, sign-in and consent (RFC 6749 §4.1.1, RFC 7636).

use valet_domain::code;
use valet_domain::user;

use super::*;
use crate::oauth::{AuthorizeRejection, LoginError};

#[tokio::test]
async fn a_valid_request_is_ready_for_sign_in_and_consent() {
    let mut world = World::new();
    world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let request = world
        .valet
        .validate_authorization(&authorize_params("web", "read"))
        .await
        .expect("valid");
    assert_eq!(request.client_name, "web");
    assert_eq!(request.redirect_uri.as_str(), CALLBACK);
    assert_eq!(request.scope.to_string(), "read");
    assert_eq!(request.state.as_deref(), Some("xyz"));
    assert!(request.pkce.is_some());
}

#[tokio::test]
async fn what_cannot_be_trusted_is_never_redirected_to() {
    let mut world = World::new();
    world
        .given_client("web", Kind::Confidential, WEB_APP, "read")
        .await;
    let no_client = AuthorizeParams {
        client_id: None,
        ..authorize_params("web", "read")
    };
    let unknown = authorize_params("nobody", "read");
    let foreign_uri = AuthorizeParams {
        redirect_uri: Some("https://evil.test/cb".into()),
        ..authorize_params("web", "read")
    };
    for params in [no_client, unknown, foreign_uri] {
        let refused = world.valet.validate_authorization(&params).await;
        assert!(
            matches!(refused, Err(AuthorizeRejection::NoRedirect { .. })),
            "{params:?}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn other_errors_go_back_to_the_client_with_its_state() {
    let mut world = World::new();
    world
        .given_client("web", Kind::Confidential, WEB_APP, "read")
        .await;
    world
        .given_client("spa", Kind::Public, WEB_APP, "read")
        .await;
    world
        .given_client("svc", Kind::Confidential, SERVICE, "read")
        .await;
    let cases = [
        (
            AuthorizeParams {
                response_type: None,
                ..authorize_params("web", "read")
            },
            ErrorCode::InvalidRequest,
        ),
        (
            AuthorizeParams {
                response_type: Some("token".into()),
                ..authorize_params("web", "read")
            },
            ErrorCode::UnsupportedResponseType,
        ),
        (authorize_params("web", "admin"), ErrorCode::InvalidScope),
        (
            authorize_params("svc", "read"),
            ErrorCode::UnauthorizedClient,
        ),
        (
            AuthorizeParams {
                code_challenge_method: Some("plain".into()),
                ..authorize_params("web", "read")
            },
            ErrorCode::InvalidRequest,
        ),
        (
            // A public client must use PKCE.
            AuthorizeParams {
                code_challenge: None,
                code_challenge_method: None,
                ..authorize_params("spa", "read")
            },
            ErrorCode::InvalidRequest,
        ),
    ];
    for (params, expected) in cases {
        match world.valet.validate_authorization(&params).await {
            Err(AuthorizeRejection::Redirect {
                redirect_uri,
                code,
                state,
                ..
            }) => {
                assert_eq!(
                    (redirect_uri.as_str(), code),
                    (CALLBACK, expected),
                    "{params:?}"
                );
                assert_eq!(state.as_deref(), Some("xyz"));
            }
            other => panic!("{params:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn approving_records_the_consent_and_a_single_use_code() {
    let mut world = World::new();
    world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let request = world
        .valet
        .validate_authorization(&authorize_params("web", "read"))
        .await
        .unwrap();
    assert!(!world.valet.consent_covers(&alice, &request).await.unwrap());
    let code = world
        .valet
        .approve(&alice, &request, test_sign_in(), &caller())
        .await
        .unwrap();
    assert!(code.starts_with("valet_ac_"));
    let consent = StreamId::consent(&alice.user_id, &request.client_id);
    assert_eq!(
        world.recorded().await,
        [
            (consent.clone(), "ConsentGiven"),
            (StreamId::code(&TokenHash::of(&code)), "CodeIssued"),
        ]
    );
    assert!(world.valet.consent_covers(&alice, &request).await.unwrap());
    // Approving again what is covered records only the new code.
    world
        .valet
        .approve(&alice, &request, test_sign_in(), &caller())
        .await
        .unwrap();
    let again: Vec<&str> = world.recorded().await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(again, ["CodeIssued"]);
}

#[tokio::test]
async fn the_code_remembers_what_was_asked_and_for_how_long() {
    let mut world = World::new();
    world
        .given_client("web", Kind::Confidential, WEB_APP, "read write")
        .await;
    let alice = world.given_user("alice", "a long passphrase").await;
    let code = approved_code(&mut world, &alice, "web", "read").await;
    let events = world
        .valet
        .store
        .read_stream(&StreamId::code(&TokenHash::of(&code)))
        .await
        .unwrap();
    let Event::Code(code::Event::CodeIssued {
        username,
        scope,
        pkce,
        expires_at,
        ..
    }) = &events[0].event
    else {
        panic!("{events:?}")
    };
    assert_eq!(username.as_str(), "alice");
    assert_eq!(scope.to_string(), "read");
    assert_eq!(pkce.as_ref().unwrap().as_str(), challenge(VERIFIER));
    assert_eq!(*expires_at, world.now().plus_seconds(60));
}

#[tokio::test]
async fn sign_in_needs_the_right_password_of_an_active_user() {
    let mut world = World::new();
    let alice = world.given_user("alice", "a long passphrase").await;
    let signed_in = world
        .valet
        .login("alice", "a long passphrase")
        .await
        .expect("signed in");
    assert_eq!(signed_in, alice);
    for (name, password) in [
        ("alice", "wrong"),
        ("bob", "a long passphrase"),
        ("not a name", "x"),
    ] {
        assert!(
            matches!(
                world.valet.login(name, password).await,
                Err(LoginError::InvalidCredentials)
            ),
            "{name}"
        );
    }
    let disabled = user::Event::UserDisabled { at: world.now() };
    world
        .given_later(StreamId::user(&alice.user_id), disabled)
        .await;
    assert!(matches!(
        world.valet.login("alice", "a long passphrase").await,
        Err(LoginError::InvalidCredentials)
    ));
    assert_eq!(world.valet.active_user(alice.user_id).await.unwrap(), None);
}
