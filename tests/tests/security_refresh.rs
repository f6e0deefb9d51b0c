//! SECURITY.md 23–26: refresh tokens (rotation, reuse detection, binding, scope, races).

use std::collections::BTreeSet;

use valet_tests::server::{
    assert_token_error, AuthRequest, ClientSpec, Fixture, Pkce, Tokens, APP_CB,
};

fn scopes(s: &str) -> BTreeSet<&str> {
    s.split(' ').collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_refresh_rotates_and_reuse_revokes_the_whole_grant() {
    let mut fx = Fixture::new().await;
    let bystander = fx.tokens(Some("read")).await;
    let t1 = fx.tokens(Some("read write")).await;
    let s = &fx.server;

    let t2 = Tokens::from_resp(&s.refresh(&fx.client, t1.refresh(), None).await);
    assert_ne!(t2.refresh(), t1.refresh(), "refresh token not rotated");
    assert_ne!(t2.access_token, t1.access_token, "access token not renewed");
    assert!(t2.refresh().starts_with("valet_rt_"));
    assert_eq!(
        scopes(t2.scope.as_deref().unwrap_or("read write")),
        scopes("read write")
    );
    let t3 = Tokens::from_resp(&s.refresh(&fx.client, t2.refresh(), None).await);
    assert_ne!(
        t3.refresh(),
        t2.refresh(),
        "refresh token not rotated (second use)"
    );
    assert!(fx.is_active(&t3.access_token).await);
    assert!(fx.is_active(t3.refresh()).await);

    // The rotated token comes back: reuse.
    let reuse = s.refresh(&fx.client, t1.refresh(), None).await;
    assert_token_error(
        &reuse,
        400,
        "invalid_grant",
        "reuse of a rotated refresh token",
    );
    for (what, token) in [
        ("first access token", t1.access_token.as_str()),
        ("second access token", t2.access_token.as_str()),
        ("third access token", t3.access_token.as_str()),
        ("second refresh token", t2.refresh()),
        ("current refresh token", t3.refresh()),
        ("first refresh token", t1.refresh()),
    ] {
        assert!(
            fx.eventually_inactive(token).await,
            "after refresh-token reuse the {what} is still active"
        );
    }
    let resp = s.refresh(&fx.client, t3.refresh(), None).await;
    assert_token_error(
        &resp,
        400,
        "invalid_grant",
        "current refresh token after reuse",
    );
    assert!(
        fx.is_active(&bystander.access_token).await,
        "another grant was revoked"
    );
    assert!(
        fx.is_active(bystander.refresh()).await,
        "another grant was revoked"
    );

    // NATS: asserted by the relay tests (issue 4)
    let events = s
        .events_until(|ev| {
            ev.iter()
                .any(|e| e.event_type == "GrantRevoked" && e.payload["reason"] == "refresh_reuse")
        })
        .await;
    let grant_stream = events
        .iter()
        .filter(|e| e.event_type == "GrantIssued")
        .nth(1)
        .expect("two grants")
        .stream_id
        .clone();
    let types: Vec<&str> = events
        .iter()
        .filter(|e| e.stream_id == grant_stream)
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "TokensRefreshed").count(),
        2,
        "{types:?}"
    );
    assert!(types.contains(&"RefreshTokenReused"), "{types:?}");
    assert!(
        events.iter().any(|e| e.stream_id == grant_stream
            && e.event_type == "GrantRevoked"
            && e.payload["reason"] == "refresh_reuse"),
        "no GrantRevoked(refresh_reuse) on {grant_stream}: {types:?}"
    );

    // Public clients rotate too.
    let native = fx
        .server
        .create_client(
            &ClientSpec::public("Native")
                .redirect("http://127.0.0.1/cb")
                .scopes("read"),
        )
        .await;
    let pkce = Pkce::new();
    let req = AuthRequest::new(&native.client_id, "http://127.0.0.1:4567/cb")
        .scope("read")
        .pkce(&pkce);
    let code = fx.server.code(&mut fx.browser, &fx.user, &req).await;
    let p1 = Tokens::from_resp(
        &fx.server
            .redeem(
                &native,
                &code,
                "http://127.0.0.1:4567/cb",
                Some(&pkce.verifier),
            )
            .await,
    );
    let p2 = Tokens::from_resp(&fx.server.refresh(&native, p1.refresh(), None).await);
    assert_ne!(
        p1.refresh(),
        p2.refresh(),
        "public client's refresh token not rotated"
    );
    let resp = fx.server.refresh(&native, p1.refresh(), None).await;
    assert_token_error(&resp, 400, "invalid_grant", "public client reuse");
    assert!(
        fx.eventually_inactive(p2.refresh()).await,
        "public grant not revoked on reuse"
    );
    assert!(
        fx.eventually_inactive(&p2.access_token).await,
        "public grant not revoked on reuse"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_refresh_token_of_client_a_used_by_client_b_is_invalid_grant() {
    let mut fx = Fixture::new().await;
    let b = fx.other_client().await;
    let p = fx
        .server
        .create_client(
            &ClientSpec::public("P")
                .redirect("http://127.0.0.1/cb")
                .scopes("read write"),
        )
        .await;
    let t = fx.tokens(Some("read write")).await;
    let s = &fx.server;
    for (what, thief) in [("confidential B", &b), ("public P", &p)] {
        let resp = s.refresh(thief, t.refresh(), None).await;
        assert_token_error(&resp, 400, "invalid_grant", what);
        let resp = s.refresh(thief, t.refresh(), Some("read")).await;
        assert_token_error(
            &resp,
            400,
            "invalid_grant",
            &format!("{what}, narrower scope"),
        );
    }
    let resp = s
        .token(
            &b.post(),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t.refresh()),
            ],
        )
        .await;
    assert_token_error(
        &resp,
        400,
        "invalid_grant",
        "confidential B, client_secret_post",
    );
    // Nothing was issued to B or P.
    let events = s.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "TokensRefreshed")
            .count(),
        0,
        "a refresh succeeded for the wrong client"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_refresh_scope_may_narrow_but_not_widen() {
    let mut fx = Fixture::new().await;
    // Wider than the grant.
    let t = fx.tokens(Some("read write")).await;
    for scope in [
        "read write admin",
        "admin",
        "introspect",
        "read write write2",
    ] {
        let resp = fx
            .server
            .refresh(&fx.client, t.refresh(), Some(scope))
            .await;
        assert_token_error(
            &resp,
            400,
            "invalid_scope",
            &format!("refresh with {scope:?}"),
        );
    }
    let narrow_grant = fx.tokens(Some("read")).await;
    let resp = fx
        .server
        .refresh(&fx.client, narrow_grant.refresh(), Some("read write"))
        .await;
    assert_token_error(
        &resp,
        400,
        "invalid_scope",
        "refresh of a read grant with read write",
    );

    // Narrower: a narrower access token (the refused attempts did not consume the token).
    let s = &fx.server;
    let narrowed = Tokens::from_resp(&s.refresh(&fx.client, t.refresh(), Some("read")).await);
    assert_eq!(
        narrowed.scope.as_deref(),
        Some("read"),
        "response scope: {}",
        narrowed.raw
    );
    let info = s.introspection(&fx.rs, &narrowed.access_token).await;
    assert_eq!(info["active"], true);
    assert_eq!(
        info["scope"], "read",
        "introspected scope of the narrowed token: {info}"
    );
    // RFC 6749 §6: the new refresh token keeps the original grant's scope, and an
    // omitted scope means the originally granted one.
    let full = Tokens::from_resp(&s.refresh(&fx.client, narrowed.refresh(), None).await);
    let info = s.introspection(&fx.rs, &full.access_token).await;
    assert_eq!(
        scopes(info["scope"].as_str().unwrap_or_default()),
        scopes("read write"),
        "omitted scope after narrowing: {info}"
    );
    let resp = s.refresh(&fx.client, full.refresh(), Some("write")).await;
    let write_only = Tokens::from_resp(&resp);
    let info = s.introspection(&fx.rs, &write_only.access_token).await;
    assert_eq!(info["scope"], "write", "{info}");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s26_parallel_refreshes_with_one_token_yield_exactly_one_success() {
    let mut fx = Fixture::new().await;
    let t = fx.tokens(Some("read write")).await;
    let server = std::sync::Arc::new(fx);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let fx = server.clone();
        let rt = t.refresh().to_owned();
        tasks.push(tokio::spawn(async move {
            fx.server.refresh(&fx.client, &rt, None).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let resp = task.await.expect("task");
        match resp.status {
            200 => ok += 1,
            _ => assert_token_error(&resp, 400, "invalid_grant", "losing parallel refresh"),
        }
    }
    assert_eq!(ok, 1, "parallel refreshes with one token: {ok} succeeded");
    let events = server.server.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "TokensRefreshed")
            .count(),
        1,
        "exactly one rotation is recorded"
    );
    let _ = APP_CB;
    match std::sync::Arc::try_unwrap(server) {
        Ok(fx) => fx.stop().await,
        Err(_) => panic!("fixture still shared"),
    }
}
