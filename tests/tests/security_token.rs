//! SECURITY.md 10–19: the token endpoint, black-box against `valet serve`.

use std::time::Duration;

use serde_json::Value;
use valet_tests::server::{
    assert_invalid_client, assert_token_error, run_valet, sha256_hex, Auth, AuthRequest,
    ClientSpec, Fixture, Pkce, Resp, Tokens, APP_CB,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_code_replay_is_refused_and_revokes_everything_issued_from_it() {
    let mut fx = Fixture::new().await;
    // Another grant of the same client and user must survive the cascade.
    let bystander = fx.tokens(Some("read")).await;
    let (code, pkce) = fx.code(Some("read write")).await;
    let s = &fx.server;
    let first = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    let tokens = Tokens::from_resp(&first);
    assert!(fx.is_active(&tokens.access_token).await);

    let replay = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_token_error(&replay, 400, "invalid_grant", "code replay");
    assert!(replay.json().get("access_token").is_none());
    // Again, and with post authentication: still invalid_grant.
    let again = s
        .token(
            &fx.client.post(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", APP_CB),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_token_error(&again, 400, "invalid_grant", "second replay");

    assert!(
        fx.eventually_inactive(&tokens.access_token).await,
        "the access token issued from a replayed code is still active"
    );
    assert!(
        fx.eventually_inactive(tokens.refresh()).await,
        "the refresh token issued from a replayed code is still active"
    );
    let refresh = s.refresh(&fx.client, tokens.refresh(), None).await;
    assert_token_error(&refresh, 400, "invalid_grant", "refresh after code replay");
    assert!(
        fx.is_active(&bystander.access_token).await,
        "another grant was revoked by the cascade"
    );

    // The log records the replay and the revocation of that very grant.
    // NATS: asserted by the relay tests (issue 4)
    let code_stream = format!("code-{}", sha256_hex(&code));
    let events = s
        .events_until(|ev| {
            ev.iter()
                .any(|e| e.event_type == "GrantRevoked" && e.payload["reason"] == "code_replay")
        })
        .await;
    let in_code: Vec<&str> = events
        .iter()
        .filter(|e| e.stream_id == code_stream)
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        in_code.iter().filter(|t| **t == "CodeRedeemed").count(),
        1,
        "code stream: {in_code:?}"
    );
    assert!(
        in_code.contains(&"CodeReplayed"),
        "code stream: {in_code:?}"
    );
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "GrantRevoked")
        .collect();
    assert!(
        revoked.iter().any(|e| e.payload["reason"] == "code_replay"),
        "no GrantRevoked(code_replay): {revoked:?}"
    );
    // The revoked grant is the one issued from the code, not the bystander's.
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "GrantIssued")
        .collect();
    assert_eq!(issued.len(), 2, "two grants issued");
    let replayed_grant = &issued[1].stream_id;
    assert!(replayed_grant.starts_with("grant-"));
    for e in &revoked {
        assert_eq!(&e.stream_id, replayed_grant, "revoked the wrong grant");
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_replay_by_another_client_does_not_cascade() {
    let mut fx = Fixture::new().await;
    let other = fx
        .server
        .create_client(
            &ClientSpec::confidential("Other")
                .redirect("https://other.example/cb")
                .scopes("read write"),
        )
        .await;
    let public = fx
        .server
        .create_client(
            &ClientSpec::public("Other native")
                .redirect("http://127.0.0.1/cb")
                .scopes("read write"),
        )
        .await;
    let (code, pkce) = fx.code(Some("read")).await;
    let s = &fx.server;
    let tokens = Tokens::from_resp(
        &s.redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    );

    for (what, client, redirect) in [
        (
            "other confidential client, victim's redirect_uri",
            &other,
            APP_CB,
        ),
        (
            "other confidential client, own redirect_uri",
            &other,
            "https://other.example/cb",
        ),
        ("public client", &public, "http://127.0.0.1/cb"),
    ] {
        let resp = s
            .redeem(client, &code, redirect, Some(&pkce.verifier))
            .await;
        assert_token_error(&resp, 400, "invalid_grant", what);
    }
    // Give an asynchronous cascade time to (wrongly) happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        fx.is_active(&tokens.access_token).await,
        "access token revoked by a foreign replay"
    );
    assert!(
        fx.is_active(tokens.refresh()).await,
        "refresh token revoked by a foreign replay"
    );
    let events = s.events().await;
    assert!(
        !events.iter().any(|e| e.event_type == "GrantRevoked"),
        "a foreign replay revoked a grant"
    );
    let refreshed = s.refresh(&fx.client, tokens.refresh(), None).await;
    assert_eq!(
        refreshed.status,
        200,
        "the grant still works: {}",
        refreshed.describe()
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_expired_code_is_invalid_grant() {
    let mut fx = Fixture::with_env(&[("VALET_CODE_TTL", "1")]).await;
    // A code redeemed at once is fine...
    let (code, pkce) = fx.code(Some("read")).await;
    let resp = fx
        .server
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_eq!(resp.status, 200, "fresh code: {}", resp.describe());
    // ...one redeemed after its lifetime is not.
    let (code, pkce) = fx.code(Some("read")).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let resp = fx
        .server
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_token_error(&resp, 400, "invalid_grant", "expired code");
    // And still not on a second try.
    let resp = fx
        .server
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_token_error(&resp, 400, "invalid_grant", "expired code, again");

    // The lifetime is capped at 10 minutes: the server refuses to start above it.
    for ttl in ["601", "3600", "0"] {
        let out = run_valet(
            fx.server.db_url(),
            &[("VALET_CODE_TTL", ttl)],
            &["serve"],
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|| panic!("valet serve with VALET_CODE_TTL={ttl} kept running"));
        assert!(!out.status.success(), "VALET_CODE_TTL={ttl} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.trim().is_empty(),
            "VALET_CODE_TTL={ttl}: no error message"
        );
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_code_of_client_a_redeemed_by_client_b_is_invalid_grant() {
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
    for (what, thief, redirect) in [
        ("confidential B with A's redirect_uri", &b, APP_CB),
        (
            "confidential B with its own redirect_uri",
            &b,
            "https://b.example/cb",
        ),
        ("public P", &p, "http://127.0.0.1/cb"),
    ] {
        let (code, pkce) = fx.code(Some("read")).await;
        let resp = fx
            .server
            .redeem(thief, &code, redirect, Some(&pkce.verifier))
            .await;
        assert_token_error(&resp, 400, "invalid_grant", what);
        // Post authentication as B: same.
        if thief.client_secret.is_some() {
            let resp = fx
                .server
                .token(
                    &thief.post(),
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", redirect),
                        ("code_verifier", &pkce.verifier),
                    ],
                )
                .await;
            assert_token_error(&resp, 400, "invalid_grant", &format!("{what} (post)"));
        }
    }
    // No tokens went to B or P.
    let events = fx.server.events().await;
    assert!(
        !events.iter().any(|e| e.event_type == "GrantIssued"),
        "a grant was issued to the wrong client"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_redirect_uri_at_token_must_equal_the_authorization_request() {
    let fx = Fixture::new().await;
    let cb2 = "https://app.example/cb2";
    let two = fx
        .server
        .create_client(
            &ClientSpec::confidential("Two callbacks")
                .redirect(APP_CB)
                .redirect(cb2)
                .scopes("read"),
        )
        .await;
    let mut browser = fx.server.browser();
    let mut cases = Vec::new();
    for (got_with, sent) in [
        (APP_CB, cb2),
        (cb2, APP_CB),
        (APP_CB, "https://app.example/cb/"),
        (APP_CB, "https://APP.example/cb"),
        (APP_CB, "https://app.example/cb?"),
        (APP_CB, "https://evil.example/cb"),
    ] {
        let req = AuthRequest::new(&two.client_id, got_with).scope("read");
        let code = fx.server.code(&mut browser, &fx.user, &req).await;
        cases.push((got_with, sent, code));
    }
    let s = &fx.server;
    for (got_with, sent, code) in &cases {
        let resp = s.redeem(&two, code, sent, None).await;
        assert_token_error(
            &resp,
            400,
            "invalid_grant",
            &format!("code for {got_with} redeemed with {sent:?}"),
        );
    }
    // Omitted although it was in the authorization request (RFC 6749 §4.1.3: REQUIRED).
    let req = AuthRequest::new(&two.client_id, APP_CB).scope("read");
    let code = s.code(&mut browser, &fx.user, &req).await;
    let resp = s
        .token(
            &two.basic(),
            &[("grant_type", "authorization_code"), ("code", &code)],
        )
        .await;
    assert_eq!(
        resp.status,
        400,
        "redirect_uri omitted: {}",
        resp.describe()
    );
    assert!(
        matches!(
            resp.error().as_deref(),
            Some("invalid_grant" | "invalid_request")
        ),
        "redirect_uri omitted: {}",
        resp.describe()
    );
    // The matching URI works.
    let req = AuthRequest::new(&two.client_id, cb2).scope("read");
    let code = s.code(&mut browser, &fx.user, &req).await;
    let resp = s.redeem(&two, &code, cb2, None).await;
    assert_eq!(
        resp.status,
        200,
        "matching redirect_uri: {}",
        resp.describe()
    );
    fx.stop().await;
}

async fn exchange(fx: &Fixture, code: String, verifier: Option<String>) -> Resp {
    fx.server
        .redeem(&fx.client, &code, APP_CB, verifier.as_deref())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_pkce_is_enforced_at_the_token_endpoint() {
    let mut fx = Fixture::new().await;

    // Challenge sent, verifier missing.
    let (code, _) = fx.code(Some("read")).await;
    assert_token_error(
        &exchange(&fx, code, None).await,
        400,
        "invalid_grant",
        "verifier missing",
    );
    // An empty verifier counts as omitted (RFC 6749 §3.2): missing, so invalid_grant.
    let (code, _) = fx.code(Some("read")).await;
    assert_token_error(
        &exchange(&fx, code, Some(String::new())).await,
        400,
        "invalid_grant",
        "empty verifier",
    );
    // Wrong (well-formed) verifier.
    let (code, _) = fx.code(Some("read")).await;
    let wrong = Pkce::new().verifier;
    assert_token_error(
        &exchange(&fx, code, Some(wrong)).await,
        400,
        "invalid_grant",
        "wrong verifier",
    );
    // The challenge itself as verifier.
    let (code, pkce) = fx.code(Some("read")).await;
    assert_token_error(
        &exchange(&fx, code, Some(pkce.challenge.clone())).await,
        400,
        "invalid_grant",
        "challenge as verifier",
    );
    // Downgrade: no challenge at /authorize, a verifier at /token.
    let req = AuthRequest::new(&fx.client.client_id, APP_CB).scope("read");
    let code = fx.server.code(&mut fx.browser, &fx.user, &req).await;
    assert_token_error(
        &exchange(&fx, code, Some(Pkce::new().verifier)).await,
        400,
        "invalid_grant",
        "verifier without challenge",
    );

    // Malformed verifiers (RFC 7636 §4.1: 43..128 of [A-Za-z0-9-._~]).
    let ok43 = Pkce::new().verifier;
    let malformed = [
        ok43[..42].to_owned(),
        "a".repeat(129),
        format!("{}+", &ok43[..42]),
        format!("{}/", &ok43[..42]),
        format!("{}=", &ok43[..42]),
        format!("{} ", &ok43[..42]),
        format!("{}%", &ok43[..42]),
        format!("{}é", &ok43[..41]),
    ];
    for verifier in malformed {
        let (code, _) = fx.code(Some("read")).await;
        let resp = exchange(&fx, code, Some(verifier.clone())).await;
        assert_token_error(
            &resp,
            400,
            "invalid_request",
            &format!("malformed verifier {verifier:?}"),
        );
    }

    // Well-formed edge cases succeed: 128 characters using the whole alphabet.
    let long: String = "ABCxyz019-._~".chars().cycle().take(128).collect();
    let pkce = Pkce::from_verifier(&long);
    let req = AuthRequest::new(&fx.client.client_id, APP_CB)
        .scope("read")
        .pkce(&pkce);
    let code = fx.server.code(&mut fx.browser, &fx.user, &req).await;
    let resp = exchange(&fx, code, Some(long)).await;
    assert_eq!(resp.status, 200, "128-char verifier: {}", resp.describe());
    let (code, pkce) = fx.code(Some("read")).await;
    let resp = exchange(&fx, code, Some(pkce.verifier)).await;
    assert_eq!(resp.status, 200, "43-char verifier: {}", resp.describe());
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_grant_type_missing_unknown_or_not_allowed() {
    let mut fx = Fixture::new().await;
    let native = fx
        .server
        .create_client(
            &ClientSpec::public("Native")
                .redirect("http://127.0.0.1/cb")
                .scopes("read"),
        )
        .await;
    let (code, pkce) = fx.code(Some("read")).await;
    let s = &fx.server;
    let resp = s
        .token(
            &fx.client.basic(),
            &[
                ("code", &code),
                ("redirect_uri", APP_CB),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_token_error(&resp, 400, "invalid_request", "grant_type missing");
    let resp = s
        .token(&fx.client.basic(), &[("grant_type", ""), ("code", &code)])
        .await;
    assert_eq!(resp.status, 400, "empty grant_type: {}", resp.describe());
    assert!(
        matches!(
            resp.error().as_deref(),
            Some("invalid_request" | "unsupported_grant_type")
        ),
        "empty grant_type: {}",
        resp.describe()
    );
    for grant in [
        "password",
        "implicit",
        "token",
        "urn:example:unknown",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:device_code",
        "AUTHORIZATION_CODE",
        "authorization_code ",
    ] {
        let resp = s
            .token(
                &fx.client.basic(),
                &[
                    ("grant_type", grant),
                    ("username", &fx.user.username),
                    ("password", &fx.user.password),
                    ("code", &code),
                    ("redirect_uri", APP_CB),
                ],
            )
            .await;
        assert_token_error(
            &resp,
            400,
            "unsupported_grant_type",
            &format!("grant_type={grant:?}"),
        );
    }
    // The code was not consumed by any of that.
    let ok = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_eq!(
        ok.status,
        200,
        "code after refused requests: {}",
        ok.describe()
    );

    // A public client cannot use client_credentials; nor can a client not registered for it.
    let resp = s.client_credentials(&native, Some("read")).await;
    assert_token_error(
        &resp,
        400,
        "unauthorized_client",
        "public client_credentials",
    );
    let resp = s.client_credentials(&native, None).await;
    assert_token_error(
        &resp,
        400,
        "unauthorized_client",
        "public client_credentials, no scope",
    );
    let resp = s.client_credentials(&fx.client, Some("read")).await;
    assert_token_error(
        &resp,
        400,
        "unauthorized_client",
        "client without client_credentials",
    );
    // The machine client may, and gets no refresh token (RFC 6749 §4.4.3).
    let resp = s.client_credentials(&fx.rs, None).await;
    let tokens = Tokens::from_resp(&resp);
    assert!(
        tokens.refresh_token.is_none(),
        "client_credentials issued a refresh token"
    );
    assert_eq!(tokens.raw["token_type"], "Bearer");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_get_duplicates_and_query_credentials_are_refused() {
    let mut fx = Fixture::new().await;
    let s = &fx.server;
    let rs_secret = fx.rs.secret().to_owned();
    let rs_id = fx.rs.client_id.clone();

    // GET /token is not allowed, even with everything in the query.
    for path in [
        "/token".to_owned(),
        format!(
            "/token?grant_type=client_credentials&client_id={rs_id}&client_secret={}",
            valet_tests::server::form_encode(&rs_secret)
        ),
    ] {
        let resp = s.get(&path).await;
        assert_eq!(resp.status, 405, "GET {path}: {}", resp.describe());
        assert!(
            !resp.text().contains("access_token"),
            "GET {path} issued a token"
        );
        let allow = resp.header("allow").unwrap_or_default();
        assert!(
            allow.contains("POST"),
            "405 without Allow: POST ({allow:?})"
        );
    }

    // Duplicated parameters.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Auth);
    let dup_cases: [Case; 5] = [
        (
            "grant_type twice",
            vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ],
            fx.rs.basic(),
        ),
        (
            "scope twice",
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "introspect"),
                ("scope", "introspect"),
            ],
            fx.rs.basic(),
        ),
        (
            "client_id twice",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &rs_id),
                ("client_id", &rs_id),
                ("client_secret", &rs_secret),
            ],
            Auth::None,
        ),
        (
            "client_secret twice",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &rs_id),
                ("client_secret", &rs_secret),
                ("client_secret", &rs_secret),
            ],
            Auth::None,
        ),
        (
            "grant_type twice, different",
            vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "password"),
            ],
            fx.rs.basic(),
        ),
    ];
    for (what, pairs, auth) in dup_cases {
        let resp = s.token(&auth, &pairs).await;
        assert_token_error(&resp, 400, "invalid_request", what);
    }
    let (code, pkce) = fx.code(Some("read")).await;
    let s = &fx.server;
    let resp = s
        .token(
            &fx.client.basic(),
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code", &code),
                ("redirect_uri", APP_CB),
                ("code_verifier", &pkce.verifier),
            ],
        )
        .await;
    assert_token_error(&resp, 400, "invalid_request", "code twice");

    // Credentials in the query string are never honoured.
    let query_creds = format!(
        "client_id={rs_id}&client_secret={}",
        valet_tests::server::form_encode(&rs_secret)
    );
    let resp = s
        .post_raw(
            &format!("/token?{query_creds}"),
            Some("application/x-www-form-urlencoded"),
            &[],
            b"grant_type=client_credentials".to_vec(),
        )
        .await;
    assert_ne!(
        resp.status,
        200,
        "query credentials honoured: {}",
        resp.describe()
    );
    assert!(
        matches!(
            resp.error().as_deref(),
            Some("invalid_client" | "invalid_request")
        ),
        "query credentials: {}",
        resp.describe()
    );
    if resp.status == 401 {
        assert_invalid_client(&resp, "query credentials");
    }
    // Grant parameters in the query are ignored too: the code is not consumed.
    let resp = s
        .post_raw(
            &format!(
                "/token?grant_type=authorization_code&code={code}&code_verifier={}",
                pkce.verifier
            ),
            Some("application/x-www-form-urlencoded"),
            &[(
                "authorization",
                &valet_tests::server::basic_header(&fx.client.client_id, fx.client.secret()),
            )],
            format!("redirect_uri={}", valet_tests::server::form_encode(APP_CB)).into_bytes(),
        )
        .await;
    assert_eq!(resp.status, 400, "grant in the query: {}", resp.describe());
    assert!(resp.json().get("access_token").is_none());
    for path in ["/introspect", "/revoke"] {
        let resp = s
            .post_raw(
                &format!("{path}?{query_creds}"),
                Some("application/x-www-form-urlencoded"),
                &[],
                b"token=valet_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_vec(),
            )
            .await;
        assert_eq!(
            resp.status,
            401,
            "{path} with query credentials: {}",
            resp.describe()
        );
    }
    // The code is still good: none of the above used it.
    let resp = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_eq!(
        resp.status,
        200,
        "code after refused requests: {}",
        resp.describe()
    );
    fx.stop().await;
}

/// A value that must never come back in a response body.
fn marker(len: usize) -> String {
    "Zq9-canary_".chars().cycle().take(len).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_oversized_huge_and_binary_inputs_are_refused_cleanly() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let bound = Duration::from_secs(5);
    let basic = valet_tests::server::basic_header(&fx.rs.client_id, fx.rs.secret());
    let form = Some("application/x-www-form-urlencoded");

    // 70 KB bodies: 413 on every endpoint, before parsing.
    let big = format!(
        "grant_type=client_credentials&scope={}",
        "a".repeat(70 * 1024)
    );
    for path in ["/token", "/introspect", "/revoke"] {
        let resp = s
            .post_raw(
                path,
                form,
                &[("authorization", &basic)],
                big.clone().into_bytes(),
            )
            .await;
        assert_eq!(resp.status, 413, "70 KB to {path}: {}", resp.describe());
        let resp = s
            .post_raw(path, Some("application/json"), &[], vec![b' '; 70 * 1024])
            .await;
        assert_eq!(
            resp.status,
            413,
            "70 KB JSON to {path}: {}",
            resp.describe()
        );
    }
    // ... and on the login and consent forms.
    let req = AuthRequest::new(&fx.client.client_id, APP_CB).scope("read");
    let mut browser = s.browser();
    let (page, login) = browser
        .form(&s.url(&req.path()), valet_tests::html::Form::is_login)
        .await;
    let login = login.unwrap_or_else(|| panic!("no login form: {}", page.describe()));
    let mut fields = login.hidden();
    fields.push(("username".into(), fx.user.username.clone()));
    fields.push(("password".into(), "p".repeat(70 * 1024)));
    let action = browser.form_action(&login);
    let resp = browser.post_form(&action, &fields).await;
    assert_eq!(resp.status, 413, "70 KB login POST: {}", resp.describe());
    let resp = browser.login(&s.url(&req.path()), &fx.user).await;
    assert_eq!(resp.status, 303, "login: {}", resp.describe());
    let next = browser.resolve(&resp.location().unwrap()).to_string();
    let (page, consent) = browser
        .form(&next, valet_tests::html::Form::is_consent)
        .await;
    let consent = consent.unwrap_or_else(|| panic!("no consent form: {}", page.describe()));
    let mut fields = consent.hidden();
    fields.push(("decision".into(), "approve".into()));
    fields.push(("padding".into(), "x".repeat(70 * 1024)));
    let resp = browser
        .post_form(&browser.form_action(&consent), &fields)
        .await;
    assert_eq!(resp.status, 413, "70 KB consent POST: {}", resp.describe());
    assert!(resp.location().is_none());

    // 60 KB field values (under the limit): 400 in bounded time, no echo.
    let huge = marker(60 * 1024);
    let probe = &huge[..64];
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "60 KB code",
            vec![
                ("grant_type", "authorization_code"),
                ("code", &huge),
                ("redirect_uri", APP_CB),
            ],
        ),
        (
            "60 KB scope",
            vec![("grant_type", "client_credentials"), ("scope", &huge)],
        ),
        ("60 KB grant_type", vec![("grant_type", &huge)]),
        (
            "60 KB refresh_token",
            vec![("grant_type", "refresh_token"), ("refresh_token", &huge)],
        ),
        (
            "60 KB code_verifier",
            vec![
                ("grant_type", "authorization_code"),
                (
                    "code",
                    "valet_ac_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                ),
                ("redirect_uri", APP_CB),
                ("code_verifier", &huge),
            ],
        ),
    ];
    for (what, pairs) in cases {
        let resp = s.token(&fx.rs.basic(), &pairs).await;
        assert!(resp.elapsed < bound, "{what}: took {:?}", resp.elapsed);
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
        assert!(
            resp.error().is_some(),
            "{what}: no JSON error: {}",
            resp.describe()
        );
        assert!(!resp.text().contains(probe), "{what}: the input is echoed");
    }
    // A huge unknown parameter is ignored (RFC 6749 §3.2), quickly.
    let resp = s
        .token(
            &fx.rs.basic(),
            &[("grant_type", "client_credentials"), (&huge, "x")],
        )
        .await;
    assert!(
        resp.elapsed < bound,
        "60 KB parameter name: took {:?}",
        resp.elapsed
    );
    assert_eq!(
        resp.status,
        200,
        "60 KB unknown parameter: {}",
        resp.describe()
    );
    assert!(
        !resp.text().contains(probe),
        "60 KB parameter name is echoed"
    );
    let resp = s
        .token(
            &Auth::Post(huge.clone(), "x".into()),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert!(resp.elapsed < bound);
    assert!(
        matches!(resp.status, 400 | 401),
        "60 KB client_id: {}",
        resp.describe()
    );
    assert!(!resp.text().contains(probe), "60 KB client_id is echoed");
    for path in ["/introspect", "/revoke"] {
        let resp = s.post_form(path, &fx.rs.basic(), &[("token", &huge)]).await;
        assert!(resp.elapsed < bound);
        assert!(
            matches!(resp.status, 200 | 400),
            "60 KB token to {path}: {}",
            resp.describe()
        );
        assert!(!resp.text().contains(probe), "{path}: the input is echoed");
        if resp.status == 200 && path == "/introspect" {
            assert_eq!(resp.json(), serde_json::json!({"active": false}));
        }
    }

    // Binary, non-UTF-8 bytes.
    let mut raw = b"grant_type=authorization_code&code=".to_vec();
    raw.extend_from_slice(&[0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, b'&', 0xf0, 0x9f]);
    raw.extend_from_slice(b"&redirect_uri=https%3A%2F%2Fapp.example%2Fcb");
    let mut noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    noise.extend_from_slice(&[0xff, 0x00, 0xfe]);
    let binary_cases: Vec<(&str, Vec<u8>)> = vec![
        ("raw invalid UTF-8 in a value", raw),
        (
            "percent-encoded invalid UTF-8",
            b"grant_type=authorization_code&code=%FF%FE%00%C3%28&redirect_uri=https%3A%2F%2Fapp.example%2Fcb".to_vec(),
        ),
        ("percent-encoded invalid UTF-8 grant_type", b"grant_type=%FF%FE".to_vec()),
        ("binary noise", noise.clone()),
        ("NUL bytes", b"grant_type=client_credentials\0\0&scope=\0".to_vec()),
        ("malformed percent-encoding", b"grant_type=%ZZ%&scope=%".to_vec()),
    ];
    for (what, body) in binary_cases {
        let resp = s
            .post_raw("/token", form, &[("authorization", &basic)], body)
            .await;
        assert!(resp.elapsed < bound, "{what}: took {:?}", resp.elapsed);
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
        assert!(
            resp.error().is_some(),
            "{what}: no JSON error: {}",
            resp.describe()
        );
    }
    let resp = s
        .post_raw(
            "/token",
            Some("application/octet-stream"),
            &[("authorization", &basic)],
            noise,
        )
        .await;
    assert!(
        (400..500).contains(&resp.status),
        "binary body with a binary content type: {}",
        resp.describe()
    );
    let resp = s
        .post_raw(
            "/token",
            None,
            &[("authorization", &basic)],
            b"grant_type=client_credentials".to_vec(),
        )
        .await;
    assert!(
        (400..500).contains(&resp.status),
        "no content type: {}",
        resp.describe()
    );

    // error_description never echoes input.
    let echo_cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("grant_type", vec![("grant_type", "canary<script>-gt")]),
        (
            "scope",
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "canary<script>-sc"),
            ],
        ),
        (
            "code",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "canary<script>-cd"),
                ("redirect_uri", APP_CB),
            ],
        ),
        (
            "redirect_uri",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("redirect_uri", "https://canary<script>-ru"),
            ],
        ),
        (
            "refresh_token",
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "canary<script>-rt"),
            ],
        ),
        (
            "code_verifier",
            vec![
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("redirect_uri", APP_CB),
                ("code_verifier", "canary<script>-cv"),
            ],
        ),
    ];
    for (what, pairs) in echo_cases {
        let resp = s.token(&fx.rs.basic(), &pairs).await;
        assert_eq!(resp.status, 400, "{what}: {}", resp.describe());
        assert!(
            !resp.text().contains("canary"),
            "{what} is echoed: {}",
            resp.describe()
        );
    }
    let resp = s
        .token(
            &Auth::Post("canary-client".into(), "canary-secret".into()),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_invalid_client(&resp, "unknown client");
    assert!(
        !resp.text().contains("canary"),
        "client credentials are echoed"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_token_error_and_introspection_responses_are_no_store() {
    let mut fx = Fixture::new().await;
    let (code, pkce) = fx.code(Some("read")).await;
    let s = &fx.server;
    let mut responses = Vec::new();
    let issued = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    let tokens = Tokens::from_resp(&issued);
    responses.push(("authorization_code success", issued));
    let refreshed = s.refresh(&fx.client, tokens.refresh(), None).await;
    let tokens = Tokens::from_resp(&refreshed);
    responses.push(("refresh success", refreshed));
    responses.push((
        "client_credentials success",
        s.client_credentials(&fx.rs, None).await,
    ));
    responses.push((
        "invalid_grant",
        s.redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    ));
    responses.push((
        "unsupported_grant_type",
        s.token(&fx.rs.basic(), &[("grant_type", "password")]).await,
    ));
    responses.push((
        "invalid_client",
        s.token(
            &Auth::Basic(fx.rs.client_id.clone(), "wrong".into()),
            &[("grant_type", "client_credentials")],
        )
        .await,
    ));
    responses.push((
        "introspection active",
        s.introspect(&fx.rs.basic(), &tokens.access_token).await,
    ));
    responses.push((
        "introspection inactive",
        s.introspect(&fx.rs.basic(), "valet_at_nope").await,
    ));
    responses.push((
        "introspection 401",
        s.introspect(&Auth::None, &tokens.access_token).await,
    ));
    responses.push((
        "revocation 200",
        s.revoke(&fx.client.basic(), "valet_at_nope", None).await,
    ));
    responses.push((
        "revocation 401",
        s.revoke(&Auth::None, &tokens.access_token, None).await,
    ));
    for (what, resp) in &responses {
        assert!(
            resp.no_store(),
            "{what}: Cache-Control is {:?} ({})",
            resp.header("cache-control"),
            resp.describe()
        );
    }
    // Successful token responses are bearer JSON.
    let body: Value = responses[0].1.json();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().is_some_and(|n| n > 0), "{body}");
    fx.stop().await;
}

/// Under concurrency, token appends share statements (group commit) and introspections
/// share queries: every caller must still get its own, right answer, including many
/// callers asking about the same token at once, and read-your-writes must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tokens_and_introspections_each_get_their_own_answer() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let before = s.events_of("GrantIssued").await.len();
    let issued =
        futures_util::future::join_all((0..40).map(|_| s.client_credentials(&fx.rs, None))).await;
    let tokens: Vec<String> = issued
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "token: {}", r.describe());
            Tokens::from_resp(r).access_token
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "every caller gets its own token"
    );
    assert_eq!(s.events_of("GrantIssued").await.len(), before + 40);

    // Each token, the first token twenty more times, and unknown tokens, all at once.
    let mut asked: Vec<(String, bool)> = tokens.iter().map(|t| (t.clone(), true)).collect();
    asked.extend((0..20).map(|_| (tokens[0].clone(), true)));
    asked.extend((0..5).map(|n| (format!("valet_at_unknown{n}"), false)));
    let auth = fx.rs.basic();
    let answers =
        futures_util::future::join_all(asked.iter().map(|(t, _)| s.introspect(&auth, t))).await;
    for ((token, active), resp) in asked.iter().zip(&answers) {
        assert_eq!(resp.status, 200, "introspection: {}", resp.describe());
        let body = resp.json();
        assert_eq!(body["active"], Value::Bool(*active), "{token}: {body}");
        if *active {
            assert_eq!(body["client_id"], Value::String(fx.rs.client_id.clone()));
        }
    }
    fx.server.stop().await;
}
