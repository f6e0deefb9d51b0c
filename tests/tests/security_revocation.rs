//! SECURITY.md 27–31: revocation (RFC 7009) and introspection (RFC 7662).

use std::time::Duration;

use serde_json::json;
use valet_tests::server::{
    assert_invalid_client, assert_token_error, random_b64, sha256_hex, Auth, ClientSpec, Fixture,
    Tokens,
};

fn inactive() -> serde_json::Value {
    json!({"active": false})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s27_revoking_unknown_expired_or_revoked_tokens_is_200() {
    let mut fx = Fixture::with_env(&[
        ("VALET_ACCESS_TOKEN_TTL", "1"),
        ("VALET_REFRESH_TOKEN_TTL", "2"),
    ])
    .await;
    let t = fx.tokens(Some("read")).await;
    let s = &fx.server;
    let auth = fx.client.basic();

    // Already revoked: revoke twice (and a third time with the other hint).
    let first = s.revoke(&auth, &t.access_token, Some("access_token")).await;
    assert_eq!(first.status, 200, "revoke: {}", first.describe());
    for hint in [Some("access_token"), None, Some("refresh_token")] {
        let resp = s.revoke(&auth, &t.access_token, hint).await;
        assert_eq!(
            resp.status,
            200,
            "revoke again ({hint:?}): {}",
            resp.describe()
        );
    }
    let r1 = s.revoke(&auth, t.refresh(), Some("refresh_token")).await;
    assert_eq!(r1.status, 200, "revoke refresh: {}", r1.describe());
    let r2 = s.revoke(&auth, t.refresh(), Some("refresh_token")).await;
    assert_eq!(r2.status, 200, "revoke refresh again: {}", r2.describe());

    // Unknown tokens, of every shape.
    let unknown = [
        format!("valet_at_{}", random_b64(32)),
        format!("valet_rt_{}", random_b64(32)),
        format!("valet_ac_{}", random_b64(32)),
        "not-a-token".to_owned(),
        "x".repeat(2000),
        "ünïcödé".to_owned(),
    ];
    for token in &unknown {
        for hint in [None, Some("access_token"), Some("refresh_token")] {
            let resp = s.revoke(&auth, token, hint).await;
            assert_eq!(
                resp.status,
                200,
                "revoke unknown {token:.20} ({hint:?}): {}",
                resp.describe()
            );
        }
        let resp = s.revoke(&fx.client.post(), token, None).await;
        assert_eq!(
            resp.status,
            200,
            "revoke unknown (post auth): {}",
            resp.describe()
        );
    }

    // Expired tokens.
    let e = fx.tokens(Some("read")).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let s = &fx.server;
    assert!(
        !fx.is_active(&e.access_token).await,
        "access token outlived its TTL"
    );
    assert!(
        !fx.is_active(e.refresh()).await,
        "refresh token outlived its TTL"
    );
    for (what, token, hint) in [
        (
            "expired access token",
            e.access_token.as_str(),
            Some("access_token"),
        ),
        ("expired refresh token", e.refresh(), Some("refresh_token")),
        (
            "expired access token, no hint",
            e.access_token.as_str(),
            None,
        ),
    ] {
        let resp = s.revoke(&auth, token, hint).await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.describe());
    }
    // Revocation still requires client authentication, whatever the token.
    let resp = s.revoke(&Auth::None, &unknown[0], None).await;
    assert_eq!(
        resp.status,
        401,
        "revocation without client auth: {}",
        resp.describe()
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s28_revoking_a_refresh_token_revokes_its_grant() {
    let mut fx = Fixture::new().await;
    let bystander = fx.tokens(Some("read")).await;
    let t1 = fx.tokens(Some("read write")).await;
    let t2 = Tokens::from_resp(&fx.server.refresh(&fx.client, t1.refresh(), None).await);
    let t3 = fx.tokens(Some("read")).await;
    let t4 = fx.tokens(Some("write")).await;
    let t5 = fx.tokens(Some("read write")).await;
    let s = &fx.server;
    let auth = fx.client.basic();

    // With the right hint.
    let resp = s.revoke(&auth, t2.refresh(), Some("refresh_token")).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    for (what, token) in [
        ("revoked refresh token", t2.refresh()),
        ("its grant's current access token", t2.access_token.as_str()),
        ("its grant's earlier access token", t1.access_token.as_str()),
    ] {
        assert!(fx.eventually_inactive(token).await, "{what} still active");
    }
    let resp = s.refresh(&fx.client, t2.refresh(), None).await;
    assert_token_error(
        &resp,
        400,
        "invalid_grant",
        "refresh with a revoked refresh token",
    );
    // Without a hint, and with a wrong one (RFC 7009 §2.1: the server searches on).
    for (what, t, hint) in [
        ("no hint", &t3, None),
        ("wrong hint", &t4, Some("access_token")),
    ] {
        let resp = s.revoke(&auth, t.refresh(), hint).await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.describe());
        assert!(
            fx.eventually_inactive(t.refresh()).await,
            "{what}: refresh token active"
        );
        assert!(
            fx.eventually_inactive(&t.access_token).await,
            "{what}: access token active"
        );
    }
    // An access token revoked with the wrong hint is revoked too.
    let resp = s
        .revoke(&fx.client.post(), &t5.access_token, Some("refresh_token"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(
        fx.eventually_inactive(&t5.access_token).await,
        "access token with wrong hint"
    );

    // Other grants are untouched.
    assert!(
        fx.is_active(&bystander.access_token).await,
        "bystander access token revoked"
    );
    assert!(
        fx.is_active(bystander.refresh()).await,
        "bystander refresh token revoked"
    );

    // NATS: asserted by the relay tests (issue 4)
    let events = s
        .events_until(|ev| {
            ev.iter()
                .filter(|e| {
                    e.event_type == "GrantRevoked" && e.payload["reason"] == "client_request"
                })
                .count()
                >= 3
        })
        .await;
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "GrantRevoked")
        .collect();
    assert_eq!(revoked.len(), 3, "three grants revoked: {revoked:?}");
    assert!(revoked
        .iter()
        .all(|e| e.payload["reason"] == "client_request"));
    let access_revoked: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "AccessTokenRevoked")
        .collect();
    let t5_hash = sha256_hex(&t5.access_token);
    assert!(
        access_revoked
            .iter()
            .any(|e| e.payload["hash"] == t5_hash.as_str()
                && e.payload["reason"] == "client_request"),
        "no AccessTokenRevoked(client_request) for the access token: {access_revoked:?}"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s29_a_client_cannot_revoke_another_clients_token() {
    let mut fx = Fixture::new().await;
    let b = fx.other_client().await;
    let t = fx.tokens(Some("read write")).await;
    let s = &fx.server;
    for (who, auth) in [
        ("B (Basic)", b.basic()),
        ("B (post)", b.post()),
        ("the resource server", fx.rs.basic()),
    ] {
        for (what, token) in [
            ("access", t.access_token.as_str()),
            ("refresh", t.refresh()),
        ] {
            for hint in [None, Some("access_token"), Some("refresh_token")] {
                let resp = s.revoke(&auth, token, hint).await;
                assert_eq!(
                    resp.status,
                    200,
                    "{who} revoking A's {what} token: {}",
                    resp.describe()
                );
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fx.is_active(&t.access_token).await,
        "another client revoked A's access token"
    );
    assert!(
        fx.is_active(t.refresh()).await,
        "another client revoked A's refresh token"
    );
    let events = s.events().await;
    assert!(
        !events
            .iter()
            .any(|e| e.event_type == "GrantRevoked" || e.event_type == "AccessTokenRevoked"),
        "a foreign revocation was recorded"
    );
    let resp = s.refresh(&fx.client, t.refresh(), None).await;
    assert_eq!(
        resp.status,
        200,
        "A's grant still works: {}",
        resp.describe()
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s30_introspection_of_dead_tokens_is_only_active_false() {
    let mut fx = Fixture::with_env(&[("VALET_ACCESS_TOKEN_TTL", "3")]).await;
    let (code, pkce) = fx.code(Some("read write")).await;
    let resp = fx
        .server
        .redeem(
            &fx.client,
            &code,
            valet_tests::server::APP_CB,
            Some(&pkce.verifier),
        )
        .await;
    let t = Tokens::from_resp(&resp);
    let s = &fx.server;

    // Active: the full set of claims.
    let resp = s.introspect(&fx.rs.basic(), &t.access_token).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let info = resp.json();
    assert_eq!(info["active"], true, "{info}");
    let mut scope: Vec<&str> = info["scope"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .collect();
    scope.sort_unstable();
    assert_eq!(scope, ["read", "write"], "{info}");
    assert_eq!(info["client_id"], fx.client.client_id.as_str(), "{info}");
    assert_eq!(info["token_type"], "access_token", "{info}");
    assert_eq!(info["iss"], s.base_url(), "{info}");
    assert_eq!(info["username"], "alice", "{info}");
    assert!(
        info["sub"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    let (iat, exp) = (
        info["iat"].as_i64().unwrap_or(0),
        info["exp"].as_i64().unwrap_or(0),
    );
    assert!(
        iat > 1_600_000_000 && exp - iat == 3,
        "iat {iat} exp {exp} with a 3 s TTL"
    );
    let info = s.introspection(&fx.rs, t.refresh()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["token_type"], "refresh_token", "{info}");

    let other = fx.tokens(Some("read")).await;
    let s = &fx.server;
    assert_eq!(
        s.revoke(&fx.client.basic(), &other.access_token, None)
            .await
            .status,
        200
    );
    let grant = fx.tokens(Some("read")).await;
    let s = &fx.server;
    assert_eq!(
        s.revoke(&fx.client.basic(), grant.refresh(), None)
            .await
            .status,
        200
    );
    // Disabling a user or a client revokes their tokens too.
    let carol = s.create_user("carol", "carol's own password").await;
    let mut carol_browser = s.browser();
    let carols = s
        .user_tokens(&mut carol_browser, &carol, &fx.client, Some("read"))
        .await;
    let machine = s
        .create_client(
            &ClientSpec::confidential("Machine")
                .grant("client_credentials")
                .scopes("m"),
        )
        .await;
    let machines = Tokens::from_resp(&s.client_credentials(&machine, None).await);
    assert!(fx.is_active(carols.refresh()).await);
    assert!(fx.is_active(&machines.access_token).await);
    s.disable_user("carol").await;
    s.disable_client(&machine.client_id).await;
    let events = s
        .events_until(|ev| {
            ["user_disabled", "client_disabled"].iter().all(|reason| {
                ev.iter()
                    .any(|e| e.event_type == "GrantRevoked" && e.payload["reason"] == *reason)
            })
        })
        .await;
    for reason in ["user_disabled", "client_disabled"] {
        assert!(
            events
                .iter()
                .any(|e| e.event_type == "GrantRevoked" && e.payload["reason"] == reason),
            "no GrantRevoked({reason})"
        );
    }
    for token in [
        carols.refresh(),
        carols.access_token.as_str(),
        machines.access_token.as_str(),
    ] {
        assert!(
            fx.eventually_inactive(token).await,
            "a token of a disabled user or client is active"
        );
    }
    let mut dead: Vec<(String, String)> = vec![
        (
            "disabled user's refresh token".into(),
            carols.refresh().to_owned(),
        ),
        (
            "disabled user's access token".into(),
            carols.access_token.clone(),
        ),
        (
            "disabled client's access token".into(),
            machines.access_token.clone(),
        ),
        ("revoked access token".into(), other.access_token.clone()),
        ("revoked refresh token".into(), grant.refresh().to_owned()),
        (
            "access token of a revoked grant".into(),
            grant.access_token.clone(),
        ),
        (
            "unknown access token".into(),
            format!("valet_at_{}", random_b64(32)),
        ),
        (
            "unknown refresh token".into(),
            format!("valet_rt_{}", random_b64(32)),
        ),
        ("garbage".into(), "definitely not a token".into()),
        ("the redeemed code".into(), code.clone()),
        ("a client secret".into(), fx.client.secret().to_owned()),
        ("a token with a flipped character".into(), {
            let mut x = t.access_token.clone();
            let last = x.pop().unwrap();
            x.push(if last == 'A' { 'B' } else { 'A' });
            x
        }),
    ];
    assert_all_inactive(&fx, &dead).await;
    // Expired.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    dead.push(("expired access token".into(), t.access_token.clone()));
    assert_all_inactive(&fx, &dead).await;
    fx.stop().await;
}

async fn assert_all_inactive(fx: &Fixture, dead: &[(String, String)]) {
    let s = &fx.server;
    for (what, token) in dead {
        for hint in [None, Some("access_token"), Some("refresh_token")] {
            let mut pairs = vec![("token", token.as_str())];
            if let Some(h) = hint {
                pairs.push(("token_type_hint", h));
            }
            let resp = s.post_form("/introspect", &fx.rs.basic(), &pairs).await;
            assert_eq!(resp.status, 200, "{what} ({hint:?}): {}", resp.describe());
            assert_eq!(
                resp.json(),
                inactive(),
                "{what} ({hint:?}): {}",
                resp.describe()
            );
            assert!(resp.no_store(), "{what}: no Cache-Control: no-store");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s31_introspection_requires_client_authentication() {
    let mut fx = Fixture::new().await;
    let native = fx
        .server
        .create_client(
            &ClientSpec::public("Native")
                .redirect("http://127.0.0.1/cb")
                .scopes("read"),
        )
        .await;
    let t = fx.tokens(Some("read")).await;
    let s = &fx.server;
    for (what, auth) in [
        ("no authentication", Auth::None),
        ("public client id", Auth::Public(native.client_id.clone())),
        (
            "public client id with an empty secret",
            Auth::Basic(native.client_id.clone(), String::new()),
        ),
        (
            "wrong secret",
            Auth::Basic(fx.rs.client_id.clone(), "wrong".into()),
        ),
        (
            "unknown client",
            Auth::Basic("ghost".into(), "wrong".into()),
        ),
        (
            "bearer token instead",
            Auth::Header(format!("Bearer {}", t.access_token)),
        ),
    ] {
        let resp = s.introspect(&auth, &t.access_token).await;
        assert_eq!(
            resp.status,
            401,
            "introspection with {what}: {}",
            resp.describe()
        );
        assert!(
            !resp.text().contains("active"),
            "{what}: the token's state leaks"
        );
        if matches!(auth, Auth::Basic(..)) {
            assert_invalid_client(&resp, what);
        }
    }
    for (what, caller) in [
        ("the resource server", &fx.rs),
        ("the token's own client", &fx.client),
    ] {
        let resp = s.introspect(&caller.basic(), &t.access_token).await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.describe());
        assert_eq!(resp.json()["active"], true, "{what}");
        let resp = s.introspect(&caller.post(), &t.access_token).await;
        assert_eq!(resp.status, 200, "{what} (post): {}", resp.describe());
    }
    fx.stop().await;
}
