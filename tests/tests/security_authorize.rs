//! SECURITY.md 1–9: the authorization endpoint, black-box against `valet serve`.
//!
//! NR = an HTML 400 page without Location; R = a redirect to the registered URI with
//! `error` and the exact `state`. Validation of the request happens before the user is
//! asked to log in (RFC 6749 §4.1.1: "If the request is valid, the authorization server
//! authenticates the resource owner"), so most cases are checked on the very first GET,
//! and again with a logged-in session (where a lax server would hand out a code).

use valet_tests::html::{self, Form};
use valet_tests::server::{
    assert_nr, assert_r, AuthRequest, Browser, ClientSpec, Fixture, Pkce, APP_CB,
};

const CSP_FRAME: &str = "frame-ancestors 'none'";

/// A browser that has logged in and approved `read` for the fixture's client, so a
/// request it sends that the server wrongly accepts comes straight back with a code.
async fn logged_in(fx: &mut Fixture) -> Browser {
    let mut browser = fx.server.browser();
    let req = AuthRequest::new(&fx.client.client_id, APP_CB).scope("read");
    let end = fx.server.authorize(&mut browser, &fx.user, &req).await;
    assert!(
        end.param("code").is_some(),
        "set-up flow failed: {}",
        end.raw_location
    );
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_missing_or_unknown_client_id_is_not_redirected() {
    let mut fx = Fixture::new().await;
    let mut session = logged_in(&mut fx).await;
    let s = &fx.server;
    let id = fx.client.client_id.clone();

    let cases = [
        (
            "missing client_id",
            AuthRequest::new(&id, APP_CB)
                .scope("read")
                .remove("client_id"),
        ),
        (
            "unknown client_id",
            AuthRequest::new("no-such-client", APP_CB).scope("read"),
        ),
        (
            "empty client_id",
            AuthRequest::new("", APP_CB).scope("read"),
        ),
        (
            "client_id that differs only in case",
            AuthRequest::new(&id.to_uppercase(), APP_CB).scope("read"),
        ),
        (
            "unregistered redirect_uri",
            AuthRequest::new(&id, "https://evil.example/cb").scope("read"),
        ),
        (
            "redirect_uri registered for another client",
            AuthRequest::new(&fx.rs.client_id, APP_CB).scope("introspect"),
        ),
        (
            "unknown client_id with an otherwise valid PKCE request",
            AuthRequest::new("no-such-client", APP_CB)
                .scope("read")
                .pkce(&Pkce::new()),
        ),
    ];
    // Sanity: the same request with the real client is accepted.
    let ok = s
        .get(&AuthRequest::new(&id, APP_CB).scope("read").path())
        .await;
    assert_eq!(ok.status, 200, "valid request: {}", ok.describe());

    for (what, req) in &cases {
        assert_nr(&s.get(&req.path()).await, what);
        assert_nr(
            &session.get(&s.url(&req.path())).await,
            &format!("{what} (logged in)"),
        );
    }
    // The error page does not offer a way on to the unregistered URI.
    let evil = s
        .get(&AuthRequest::new(&id, "https://evil.example/cb").path())
        .await;
    assert!(
        !evil.text().contains("href=\"https://evil.example"),
        "NR page links to the unregistered redirect URI"
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_redirect_uri_tricks_are_refused() {
    let mut fx = Fixture::new().await;
    let mut session = logged_in(&mut fx).await;
    let id = fx.client.client_id.clone();

    let tricks = [
        "https://app.example/cb/../x",
        "https://app.example/cb/../cb",
        "https://app.example/cb/./",
        "https://app.example/x/../cb",
        "https://app.example%2Fcb",
        "https://app.example/cb%2F..%2Fx",
        "https://app.example%2F@evil.example/cb",
        "https://app.example/cb%2f",
        "https://app.example/%63b",
        "https://app.example/cb/",
        "https://app.example/cb//",
        "https://app.example//cb",
        "https://app.example/CB",
        "https://APP.EXAMPLE/cb",
        "https://App.example/cb",
        "HTTPS://app.example/cb",
        "https://app.example@evil.example/cb",
        "https://evil.example@app.example/cb",
        "https://app.example:443@evil.example/cb",
        "https://evil.example\\@app.example/cb",
        "https://evil.app.example/cb",
        "https://www.app.example/cb",
        "https://app.example.evil.example/cb",
        "https://app.example.evil/cb",
        "https://evilapp.example/cb",
        "https://app.exampl/cb",
        "https://app.example./cb",
        "http://app.example/cb",
        "ftp://app.example/cb",
        "//app.example/cb",
        "app.example/cb",
        "https://app.example:443/cb",
        "https://app.example:8443/cb",
        "https://app.example:/cb",
        "https://app.example/cb?",
        "https://app.example/cb?x=1",
        "https://app.example/cb?next=https://evil.example",
        "https://app.example/cb#",
        "https://app.example/cb#frag",
        "https://app.example/cb%23frag",
        "https://app.example/cb ",
        " https://app.example/cb",
        "https://app.example/cb%00",
        "https://app.example/cb\n",
    ];
    for uri in tricks {
        let req = AuthRequest::new(&id, uri).scope("read");
        assert_nr(
            &fx.server.get(&req.path()).await,
            &format!("redirect_uri {uri:?}"),
        );
        assert_nr(
            &session.get(&fx.server.url(&req.path())).await,
            &format!("redirect_uri {uri:?} (logged in)"),
        );
    }
    // The exact string is accepted (and with a session yields the code at once).
    let end = fx
        .server
        .authorize(
            &mut session,
            &fx.user,
            &AuthRequest::new(&id, APP_CB).scope("read"),
        )
        .await;
    assert!(end.raw_location.starts_with("https://app.example/cb?"));
    assert!(end.param("code").is_some());

    // RFC 8252 §7.3: a public (native) client's loopback IP URI matches any port, and
    // only the port may vary.
    let native = fx
        .server
        .create_client(
            &ClientSpec::public("Native")
                .redirect("http://127.0.0.1/callback")
                .redirect("http://[::1]/callback")
                .scopes("read"),
        )
        .await;
    for uri in [
        "http://127.0.0.1/callback",
        "http://127.0.0.1:51234/callback",
        "http://127.0.0.1:1/callback",
        "http://127.0.0.1:65535/callback",
        "http://[::1]/callback",
        "http://[::1]:8080/callback",
    ] {
        let req = AuthRequest::new(&native.client_id, uri)
            .scope("read")
            .pkce(&Pkce::new());
        let resp = fx.server.get(&req.path()).await;
        assert_eq!(
            resp.status,
            200,
            "loopback {uri} must be accepted: {}",
            resp.describe()
        );
        assert!(
            html::find_form(&resp.text(), Form::is_login).is_some(),
            "loopback {uri}: expected the login form"
        );
    }
    for uri in [
        "http://127.0.0.1:51234/callback/",
        "http://127.0.0.1:51234/other",
        "http://127.0.0.1:51234/Callback",
        "http://127.0.0.1:51234/callback?x=1",
        "http://127.0.0.1:51234/callback#x",
        "http://localhost:51234/callback",
        "http://localhost/callback",
        "https://127.0.0.1:51234/callback",
        "http://127.0.0.2:51234/callback",
        "http://127.0.0.1.evil.example:51234/callback",
        "http://127.0.0.1:51234@evil.example/callback",
        "http://evil.example@127.0.0.1:51234/callback",
        "http://127.0.0.1:99999/callback",
        "http://127.0.0.1:051234/callback",
        "http://127.0.0.1:+80/callback",
        "http://127.0.0.1:/callback",
        "http://[::1]:8080/other",
        "http://[::2]:8080/callback",
    ] {
        let req = AuthRequest::new(&native.client_id, uri)
            .scope("read")
            .pkce(&Pkce::new());
        assert_nr(
            &fx.server.get(&req.path()).await,
            &format!("public loopback {uri:?}"),
        );
    }
    // A full flow on an ephemeral port lands on that very port, and the code is
    // redeemed with the same redirect_uri.
    let pkce = Pkce::new();
    let cb = "http://127.0.0.1:51234/callback";
    let req = AuthRequest::new(&native.client_id, cb)
        .scope("read")
        .pkce(&pkce);
    let mut browser = fx.server.browser();
    let end = fx.server.authorize(&mut browser, &fx.user, &req).await;
    assert!(
        end.raw_location
            .starts_with("http://127.0.0.1:51234/callback?"),
        "redirected to {}",
        end.raw_location
    );
    let resp = fx
        .server
        .redeem(&native, &end.code(), cb, Some(&pkce.verifier))
        .await;
    assert_eq!(resp.status, 200, "native redemption: {}", resp.describe());

    // Confidential clients get no port leeway, even on loopback.
    let web = fx
        .server
        .create_client(
            &ClientSpec::confidential("Loopback web")
                .redirect("http://127.0.0.1:8080/cb")
                .scopes("read"),
        )
        .await;
    let ok = fx
        .server
        .get(&AuthRequest::new(&web.client_id, "http://127.0.0.1:8080/cb").path())
        .await;
    assert_eq!(ok.status, 200, "exact loopback URI: {}", ok.describe());
    for uri in [
        "http://127.0.0.1:9090/cb",
        "http://127.0.0.1/cb",
        "http://localhost:8080/cb",
    ] {
        assert_nr(
            &fx.server
                .get(&AuthRequest::new(&web.client_id, uri).path())
                .await,
            &format!("confidential loopback {uri}"),
        );
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_registration_refuses_bad_redirect_uris_and_ambiguity_is_refused() {
    let mut fx = Fixture::new().await;
    let s = &fx.server;
    for uri in [
        "https://app.example/cb#frag",
        "https://app.example/cb#",
        "https://*.app.example/cb",
        "https://app.example/*",
        "https://app.example/cb?x=*",
        "http://app.example/cb",
        "http://192.168.1.10/cb",
        "http://127.0.0.1.evil.example/cb",
        "http://localhost.evil.example/cb",
        "http://10.0.0.1:8080/cb",
    ] {
        let err = s
            .try_create_client(
                &ClientSpec::confidential("Refused")
                    .redirect(uri)
                    .scopes("read"),
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("registration of {uri:?} was accepted"));
        let err = err.trim();
        assert!(!err.is_empty(), "{uri}: no error message on stderr");
        assert_eq!(
            err.lines().count(),
            1,
            "{uri}: error is not one line: {err:?}"
        );
        // One bad URI among good ones refuses the whole registration.
        assert!(
            s.try_create_client(
                &ClientSpec::confidential("Refused too")
                    .redirect("https://fine.example/cb")
                    .redirect(uri)
                    .scopes("read"),
            )
            .await
            .is_err(),
            "{uri} accepted next to a valid URI"
        );
    }
    for uri in [
        "http://127.0.0.1:8080/cb",
        "http://[::1]/cb",
        "http://localhost:3000/cb",
        "https://app.example/cb?tenant=1",
    ] {
        s.try_create_client(
            &ClientSpec::confidential("Fine")
                .redirect(uri)
                .scopes("read"),
        )
        .await
        .unwrap_or_else(|e| panic!("registration of {uri:?} refused: {e}"));
    }

    // Several registered URIs and none sent: the server cannot know where to go.
    let multi = s
        .create_client(
            &ClientSpec::confidential("Multi")
                .redirect("https://multi.example/one")
                .redirect("https://multi.example/two")
                .scopes("read"),
        )
        .await;
    let req = AuthRequest::new(&multi.client_id, "unused")
        .remove("redirect_uri")
        .scope("read");
    assert_nr(&s.get(&req.path()).await, "no redirect_uri, two registered");
    let mut session = logged_in(&mut fx).await;
    assert_nr(
        &session.get(&fx.server.url(&req.path())).await,
        "no redirect_uri, two registered (logged in)",
    );
    // Each registered URI works when sent.
    for uri in ["https://multi.example/one", "https://multi.example/two"] {
        let resp = fx
            .server
            .get(&AuthRequest::new(&multi.client_id, uri).scope("read").path())
            .await;
        assert_eq!(resp.status, 200, "{uri}: {}", resp.describe());
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_response_type_missing_or_unsupported_is_redirected_with_error() {
    let mut fx = Fixture::new().await;
    let mut session = logged_in(&mut fx).await;
    let id = fx.client.client_id.clone();
    let cases = [
        (
            "invalid_request",
            AuthRequest::new(&id, APP_CB).remove("response_type"),
        ),
        (
            "unsupported_response_type",
            AuthRequest::new(&id, APP_CB).set("response_type", "token"),
        ),
        (
            "unsupported_response_type",
            AuthRequest::new(&id, APP_CB).set("response_type", "code token"),
        ),
        (
            "unsupported_response_type",
            AuthRequest::new(&id, APP_CB).set("response_type", "id_token"),
        ),
        (
            "unsupported_response_type",
            AuthRequest::new(&id, APP_CB).set("response_type", "CODE"),
        ),
        (
            "unsupported_response_type",
            AuthRequest::new(&id, APP_CB).set("response_type", "password"),
        ),
    ];
    for (error, req) in &cases {
        let req = req.clone().scope("read");
        let what = format!("response_type={:?}", req.get("response_type"));
        assert_r(
            &fx.server.get(&req.path()).await,
            APP_CB,
            error,
            req.get("state"),
            &what,
        );
        assert_r(
            &session.get(&fx.server.url(&req.path())).await,
            APP_CB,
            error,
            req.get("state"),
            &format!("{what} (logged in)"),
        );
    }
    // Without a state, the error redirect carries none.
    let req = AuthRequest::new(&id, APP_CB)
        .remove("state")
        .set("response_type", "token");
    assert_r(
        &fx.server.get(&req.path()).await,
        APP_CB,
        "unsupported_response_type",
        None,
        "no state",
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_bad_scope_disallowed_grant_and_denial_are_redirected_with_error() {
    let mut fx = Fixture::new().await;
    let mut session = logged_in(&mut fx).await;
    let s = &fx.server;
    let id = fx.client.client_id.clone();
    // A scope that exists in the system, but for another client.
    s.create_client(
        &ClientSpec::confidential("Billing")
            .redirect("https://billing.example/cb")
            .scopes("billing"),
    )
    .await;
    for scope in [
        "admin",
        "read admin",
        "billing",
        "read write billing",
        "introspect",
    ] {
        let req = AuthRequest::new(&id, APP_CB).scope(scope);
        let what = format!("scope {scope:?}");
        assert_r(
            &s.get(&req.path()).await,
            APP_CB,
            "invalid_scope",
            req.get("state"),
            &what,
        );
        assert_r(
            &session.get(&s.url(&req.path())).await,
            APP_CB,
            "invalid_scope",
            req.get("state"),
            &format!("{what} (logged in)"),
        );
    }

    // A client registered with a redirect URI but without the authorization_code grant.
    let cc = s
        .create_client(
            &ClientSpec::confidential("Machine with a callback")
                .redirect("https://machine.example/cb")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;
    let req = AuthRequest::new(&cc.client_id, "https://machine.example/cb").scope("read");
    assert_r(
        &s.get(&req.path()).await,
        "https://machine.example/cb",
        "unauthorized_client",
        req.get("state"),
        "client without authorization_code",
    );
    assert_r(
        &session.get(&s.url(&req.path())).await,
        "https://machine.example/cb",
        "unauthorized_client",
        req.get("state"),
        "client without authorization_code (logged in)",
    );

    // The user denies: access_denied, by a 303 after the consent POST.
    let mut browser = s.browser();
    let req = AuthRequest::new(&id, APP_CB).scope("read write");
    let end = s
        .authorize_deciding(&mut browser, &fx.user, &req, "deny")
        .await;
    assert_eq!(end.status, 303, "deny answers 303");
    assert_r(
        &end.response,
        APP_CB,
        "access_denied",
        req.get("state"),
        "user denies",
    );
    // A denial is not remembered as consent: the next request asks again.
    let (resp, form) = browser.form(&s.url(&req.path()), Form::is_consent).await;
    assert!(
        form.is_some(),
        "after a denial the consent form is shown again: {}",
        resp.describe()
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_public_clients_need_s256_and_malformed_challenges_are_refused() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let cb = "http://127.0.0.1/callback";
    let native = s
        .create_client(&ClientSpec::public("Native").redirect(cb).scopes("read"))
        .await;
    let good = Pkce::new();
    let base = || AuthRequest::new(&native.client_id, cb).scope("read");

    let ok = s.get(&base().pkce(&good).path()).await;
    assert_eq!(ok.status, 200, "public client with S256: {}", ok.describe());

    let b64_43 = |c: char| format!("{}{c}", &good.challenge[..42]);
    let public_cases = [
        ("no challenge", base()),
        (
            "plain method",
            base()
                .set("code_challenge", &good.verifier)
                .set("code_challenge_method", "plain"),
        ),
        (
            "challenge without method (plain by default)",
            base().set("code_challenge", &good.challenge),
        ),
        (
            "method without challenge",
            base().set("code_challenge_method", "S256"),
        ),
        (
            "lowercase s256",
            base()
                .set("code_challenge", &good.challenge)
                .set("code_challenge_method", "s256"),
        ),
        (
            "unknown method",
            base()
                .set("code_challenge", &good.challenge)
                .set("code_challenge_method", "S512"),
        ),
        (
            "empty challenge",
            base()
                .set("code_challenge", "")
                .set("code_challenge_method", "S256"),
        ),
    ];
    let malformed = [
        good.challenge[..42].to_owned(),
        format!("{}A", good.challenge),
        b64_43('+'),
        b64_43('/'),
        b64_43('='),
        b64_43('.'),
        b64_43('~'),
        b64_43(' '),
        format!("{}=", &good.challenge[..42]),
        "A".repeat(128),
        good.verifier.clone() + &good.verifier,
    ];
    for (what, req) in public_cases {
        assert_r(
            &s.get(&req.path()).await,
            cb,
            "invalid_request",
            req.get("state"),
            &format!("public client, {what}"),
        );
    }
    for challenge in &malformed {
        let req = base()
            .set("code_challenge", challenge)
            .set("code_challenge_method", "S256");
        assert_r(
            &s.get(&req.path()).await,
            cb,
            "invalid_request",
            req.get("state"),
            &format!("public client, malformed challenge {challenge:?}"),
        );
        // The same rule for confidential clients that opt in to PKCE.
        let req = AuthRequest::new(&fx.client.client_id, APP_CB)
            .scope("read")
            .set("code_challenge", challenge)
            .set("code_challenge_method", "S256");
        assert_r(
            &s.get(&req.path()).await,
            APP_CB,
            "invalid_request",
            req.get("state"),
            &format!("confidential client, malformed challenge {challenge:?}"),
        );
    }
    // plain is refused for everyone (only S256 is advertised).
    let req = AuthRequest::new(&fx.client.client_id, APP_CB)
        .scope("read")
        .set("code_challenge", &good.verifier)
        .set("code_challenge_method", "plain");
    assert_r(
        &s.get(&req.path()).await,
        APP_CB,
        "invalid_request",
        req.get("state"),
        "confidential client, plain",
    );
    // A logged-in user does not get a code for a public request without PKCE.
    let mut browser = s.browser();
    let end = s
        .authorize(&mut browser, &fx.user, &base().pkce(&Pkce::new()))
        .await;
    assert!(end.param("code").is_some());
    let req = base();
    assert_r(
        &browser.get(&s.url(&req.path())).await,
        cb,
        "invalid_request",
        req.get("state"),
        "public client without PKCE (logged in, consent given)",
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_repeated_parameters_are_invalid_requests() {
    let mut fx = Fixture::new().await;
    let mut session = logged_in(&mut fx).await;
    let s = &fx.server;
    let id = fx.client.client_id.clone();
    let base = || AuthRequest::new(&id, APP_CB).scope("read");

    let nr_cases = [
        ("client_id twice (same)", base().add("client_id", &id)),
        (
            "client_id twice (other)",
            base().add("client_id", &fx.rs.client_id),
        ),
        (
            "client_id twice (unknown)",
            base().add("client_id", "no-such-client"),
        ),
        (
            "redirect_uri twice (same)",
            base().add("redirect_uri", APP_CB),
        ),
        (
            "redirect_uri twice (other)",
            base().add("redirect_uri", "https://evil.example/cb"),
        ),
    ];
    for (what, req) in &nr_cases {
        assert_nr(&s.get(&req.path()).await, what);
        assert_nr(
            &session.get(&s.url(&req.path())).await,
            &format!("{what} (logged in)"),
        );
    }

    let pkce = Pkce::new();
    let r_cases = [
        ("response_type twice", base().add("response_type", "code")),
        ("scope twice (same)", base().add("scope", "read")),
        ("scope twice (other)", base().add("scope", "write")),
        (
            "code_challenge twice",
            base().pkce(&pkce).add("code_challenge", &pkce.challenge),
        ),
        (
            "code_challenge_method twice",
            base().pkce(&pkce).add("code_challenge_method", "S256"),
        ),
    ];
    for (what, req) in &r_cases {
        assert_r(
            &s.get(&req.path()).await,
            APP_CB,
            "invalid_request",
            req.get("state"),
            what,
        );
        assert_r(
            &session.get(&s.url(&req.path())).await,
            APP_CB,
            "invalid_request",
            req.get("state"),
            &format!("{what} (logged in)"),
        );
    }
    // state twice: an invalid_request redirect (which state to echo is moot), never a code.
    let req = base().add("state", "second");
    for resp in [
        s.get(&req.path()).await,
        session.get(&s.url(&req.path())).await,
    ] {
        assert!(
            matches!(resp.status, 302 | 303),
            "state twice: {}",
            resp.describe()
        );
        let loc = resp.location().unwrap_or_default();
        assert!(
            loc.starts_with("https://app.example/cb?"),
            "state twice: {loc}"
        );
        let url = url::Url::parse(&loc).expect("location");
        let error = url
            .query_pairs()
            .find(|(k, _)| k == "error")
            .map(|(_, v)| v.into_owned());
        assert_eq!(
            error.as_deref(),
            Some("invalid_request"),
            "state twice: {loc}"
        );
        assert!(
            !url.query_pairs().any(|(k, _)| k == "code"),
            "state twice: code issued"
        );
    }
    fx.stop().await;
}

/// `&#+%`, a unicode string and a 2 KB string, echoed byte-exact.
fn tricky_states() -> Vec<String> {
    let mut long = String::new();
    let alphabet = "aZ0-._~ +&=%#?/;:,!$'()*@[]\"<>{}|\\^`é";
    while long.len() < 2048 {
        long.push_str(alphabet);
    }
    while long.len() > 2048 || !long.is_char_boundary(long.len()) {
        long.pop();
    }
    vec![
        "&#+%".to_owned(),
        "&state=evil&code=fake#frag%00%2B+".to_owned(),
        "ünïcödé ✓ 日本語 🦀 \u{202e}".to_owned(),
        long,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_state_is_echoed_byte_exact() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let id = fx.client.client_id.clone();
    for (i, state) in tricky_states().iter().enumerate() {
        let what = format!("state #{i} ({} bytes)", state.len());
        // A user of its own, so that every path is walked: login, deny, consent, remembered.
        let user = s
            .create_user(&format!("state-user-{i}"), "pw-for-state-tests")
            .await;
        let mut browser = s.browser();
        let req = AuthRequest::new(&id, APP_CB).scope("read").state(state);

        let denied = s
            .authorize_deciding(&mut browser, &user, &req, "deny")
            .await;
        assert_r(
            &denied.response,
            APP_CB,
            "access_denied",
            Some(state),
            &format!("{what}, deny"),
        );

        let approved = s.authorize(&mut browser, &user, &req).await;
        assert_eq!(
            approved.param("state").as_deref(),
            Some(state.as_str()),
            "{what}, approve"
        );
        assert!(approved.param("code").is_some(), "{what}, approve: no code");
        assert_eq!(
            approved
                .params()
                .iter()
                .filter(|(k, _)| k == "state")
                .count(),
            1,
            "{what}: one state parameter"
        );

        let remembered = browser.get(&s.url(&req.path())).await;
        assert_eq!(
            remembered.status, 302,
            "{what}: remembered consent answers 302"
        );
        let end = valet_tests::server::FlowEnd::new(remembered);
        assert_eq!(
            end.param("state").as_deref(),
            Some(state.as_str()),
            "{what}, remembered"
        );
        assert!(end.param("code").is_some());

        let req_err = req.clone().set("response_type", "token");
        assert_r(
            &s.get(&req_err.path()).await,
            APP_CB,
            "unsupported_response_type",
            Some(state),
            &format!("{what}, unsupported_response_type"),
        );
        let req_err = req.clone().scope("admin");
        assert_r(
            &s.get(&req_err.path()).await,
            APP_CB,
            "invalid_scope",
            Some(state),
            &format!("{what}, invalid_scope"),
        );
    }
    fx.stop().await;
}

fn assert_frame_ancestors(resp: &valet_tests::server::Resp, what: &str) {
    let csp = resp.headers_all("content-security-policy").join(", ");
    assert!(
        csp.contains(CSP_FRAME),
        "{what}: Content-Security-Policy {csp:?} lacks {CSP_FRAME}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_login_and_consent_posts_need_the_csrf_token() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let req = AuthRequest::new(&fx.client.client_id, APP_CB).scope("read");
    let url = s.url(&req.path());
    let credentials = |form: &Form, csrf: Option<&str>| {
        let mut fields: Vec<(String, String)> = form
            .hidden()
            .into_iter()
            .filter(|(k, _)| k != "csrf_token")
            .collect();
        if let Some(t) = csrf {
            fields.push(("csrf_token".to_owned(), t.to_owned()));
        }
        fields.push(("username".to_owned(), fx.user.username.clone()));
        fields.push(("password".to_owned(), fx.user.password.clone()));
        fields
    };

    // The login page.
    let mut browser = s.browser();
    let (page, form) = browser.form(&url, Form::is_login).await;
    assert_eq!(page.status, 200);
    assert_frame_ancestors(&page, "login page");
    let login = form.unwrap_or_else(|| panic!("no login form: {}", page.describe()));
    assert_eq!(login.method, "post", "login form method");
    let token = login
        .hidden_value("csrf_token")
        .expect("the login form has a hidden csrf_token");
    assert!(token.len() >= 16, "csrf_token too short: {token:?}");
    assert!(
        !browser.cookies.is_empty(),
        "no cookie set alongside the csrf_token"
    );
    let action = browser.form_action(&login);

    let forged = {
        let mut t = token.clone();
        let last = t.pop().expect("non-empty");
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    };
    for (what, csrf) in [
        ("without csrf_token", None),
        ("with a wrong csrf_token", Some(forged.as_str())),
        ("with an empty csrf_token", Some("")),
    ] {
        let resp = browser.post_form(&action, &credentials(&login, csrf)).await;
        assert_eq!(resp.status, 403, "login POST {what}: {}", resp.describe());
        assert!(resp.location().is_none(), "login POST {what} redirected");
    }
    // The token of one browser does not work with another browser's cookie.
    let mut other = s.browser();
    let (_, other_form) = other.form(&url, Form::is_login).await;
    assert!(other_form.is_some());
    let resp = other
        .post_form(&action, &credentials(&login, Some(&token)))
        .await;
    assert_eq!(
        resp.status,
        403,
        "login POST with another browser's token: {}",
        resp.describe()
    );
    // Nor without any cookie at all.
    let mut cookieless = s.browser();
    let resp = cookieless
        .post_form(&action, &credentials(&login, Some(&token)))
        .await;
    assert_eq!(
        resp.status,
        403,
        "login POST without the cookie: {}",
        resp.describe()
    );
    // The refused POSTs did not log anyone in.
    let (_, still_login) = browser.form(&url, Form::is_login).await;
    let login = still_login.expect("after refused POSTs the login form is shown again");

    // A wrong password: the form again (200) or 401, never a redirect or a code.
    let mut wrong = credentials(&login, login.hidden_value("csrf_token").as_deref());
    wrong.retain(|(k, _)| k != "password");
    wrong.push(("password".to_owned(), "not the password".to_owned()));
    let resp = browser.post_form(&action, &wrong).await;
    assert!(
        matches!(resp.status, 200 | 401),
        "login with a wrong password: {}",
        resp.describe()
    );
    assert!(resp.location().is_none(), "wrong password redirected");
    assert!(!resp.text().contains("valet_ac_"));
    let (_, again) = browser.form(&url, Form::is_login).await;
    let login = again.expect("after a wrong password the login form is shown again");

    // A proper login answers 303 back to /authorize.
    let resp = browser
        .post_form(
            &action,
            &credentials(&login, login.hidden_value("csrf_token").as_deref()),
        )
        .await;
    assert_eq!(resp.status, 303, "login success: {}", resp.describe());
    let next = browser.resolve(&resp.location().expect("Location"));
    assert_eq!(
        next.path(),
        "/authorize",
        "login redirects back to /authorize"
    );

    // The consent page.
    let (page, form) = browser.form(next.as_str(), Form::is_consent).await;
    assert_eq!(page.status, 200, "consent page: {}", page.describe());
    assert_frame_ancestors(&page, "consent page");
    let consent = form.unwrap_or_else(|| panic!("no consent form: {}", page.describe()));
    assert_eq!(consent.method, "post", "consent form method");
    assert!(
        consent.has_submit("decision", "deny"),
        "consent form has a deny button"
    );
    let ctoken = consent
        .hidden_value("csrf_token")
        .expect("the consent form has a hidden csrf_token");
    let caction = browser.form_action(&consent);
    let consent_fields = |csrf: Option<&str>| {
        let mut fields: Vec<(String, String)> = consent
            .hidden()
            .into_iter()
            .filter(|(k, _)| k != "csrf_token")
            .collect();
        if let Some(t) = csrf {
            fields.push(("csrf_token".to_owned(), t.to_owned()));
        }
        fields.push(("decision".to_owned(), "approve".to_owned()));
        fields
    };
    let cforged = format!("{ctoken}x");
    for (what, csrf) in [
        ("without csrf_token", None),
        ("with a wrong csrf_token", Some(cforged.as_str())),
        ("with the login page's token", Some(forged.as_str())),
    ] {
        let resp = browser.post_form(&caction, &consent_fields(csrf)).await;
        assert_eq!(resp.status, 403, "consent POST {what}: {}", resp.describe());
        assert!(resp.location().is_none(), "consent POST {what} redirected");
        assert!(
            !resp.text().contains("valet_ac_"),
            "consent POST {what}: code in body"
        );
    }
    // A consent POST from a browser without the session is refused too.
    let resp = cookieless
        .post_form(&caction, &consent_fields(Some(&ctoken)))
        .await;
    assert!(
        resp.location().is_none_or(|l| !l.contains("code=")),
        "consent POST without the session cookie yielded a code: {}",
        resp.describe()
    );
    // Nothing was consented: the form is shown again.
    let (page, form) = browser.form(next.as_str(), Form::is_consent).await;
    let consent = form.unwrap_or_else(|| {
        panic!(
            "after refused consent POSTs the form is shown again: {}",
            page.describe()
        )
    });
    let fields = {
        let mut f = consent.hidden();
        f.push(("decision".to_owned(), "approve".to_owned()));
        f
    };
    let resp = browser
        .post_form(&browser.form_action(&consent), &fields)
        .await;
    assert_eq!(resp.status, 303, "consent approve: {}", resp.describe());
    let end = valet_tests::server::FlowEnd::new(resp);
    assert!(end.raw_location.starts_with("https://app.example/cb?"));
    assert!(end.param("code").is_some());

    // Deny also answers 303.
    let req = AuthRequest::new(&fx.client.client_id, APP_CB).scope("read write");
    let end = s
        .authorize_deciding(&mut browser, &fx.user, &req, "deny")
        .await;
    assert_eq!(end.status, 303, "consent deny answers 303");

    // Error pages are not frameable either.
    let nr = s
        .get(&AuthRequest::new("no-such-client", APP_CB).path())
        .await;
    assert_eq!(nr.status, 400);
    assert_frame_ancestors(&nr, "NR error page");
    fx.stop().await;
}
