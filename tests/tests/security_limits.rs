//! Failed-authentication limits that a third party cannot turn into a lockout: they slow
//! the failing source (and the guessing of one user's password), never the client or
//! user that is named; addresses come from forwarding headers only behind trusted
//! proxies; the counts are shared by every replica.

use std::time::Duration;

use valet_tests::html::Form;
use valet_tests::server::{
    assert_invalid_client, nonce, random_b64, Auth, AuthRequest, Browser, ClientSpec, Fixture,
    Resp, TestServer, TestUser,
};

const CC: [(&str, &str); 1] = [("grant_type", "client_credentials")];

fn fake_secret() -> String {
    format!("valet_cs_{}", random_b64(32))
}

/// A client-credentials request from an unknown client, with `headers`.
async fn unknown_client_from(s: &TestServer, headers: &[(&str, &str)]) -> Resp {
    let auth = Auth::Basic(format!("ghost-{}", nonce()), fake_secret());
    s.post_form_with("/token", &auth, &CC, headers).await
}

fn retry_after_secs(resp: &Resp, what: &str) -> u64 {
    let retry = resp.header("retry-after").unwrap_or_default();
    retry
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {retry:?} is not delay-seconds"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_for_a_client_from_the_same_address_or_another_do_not_stop_its_correct_secret(
) {
    // Requests name their address through the test client, a trusted proxy.
    let fx = Fixture::with_env(&[("VALET_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let s = &fx.server;
    let x = s
        .create_client(
            &ClientSpec::confidential("X")
                .grant("client_credentials")
                .scopes("x"),
        )
        .await;
    let attacker = [("x-forwarded-for", "203.0.113.9")];
    let elsewhere = [("x-forwarded-for", "198.51.100.5")];
    let wrong = || Auth::Basic(x.client_id.clone(), fake_secret());

    let mut refused = 0;
    for n in 1..=30 {
        let resp = s.post_form_with("/token", &wrong(), &CC, &attacker).await;
        if n <= 10 {
            assert_invalid_client(&resp, &format!("wrong secret #{n}"));
        } else {
            assert_eq!(resp.status, 429, "wrong secret #{n}: {}", resp.describe());
            refused += 1;
        }
        // X keeps working throughout, from another address and from the attacker's.
        if n % 5 == 0 {
            for (what, from) in [
                ("another address", &elsewhere),
                ("the same address", &attacker),
            ] {
                let auth = if n % 10 == 0 { x.basic() } else { x.post() };
                let resp = s.post_form_with("/token", &auth, &CC, from).await;
                assert_eq!(
                    resp.status,
                    200,
                    "X's correct secret from {what} after {n} wrong ones: {}",
                    resp.describe()
                );
                let resp = s
                    .post_form_with("/introspect", &auth, &[("token", "valet_at_x")], from)
                    .await;
                assert_eq!(
                    resp.status,
                    200,
                    "X introspecting from {what} after {n} wrong ones: {}",
                    resp.describe()
                );
            }
        }
    }
    assert_eq!(refused, 20);
    // Wrong secrets for X from another address are counted there, not at the attacker's.
    let resp = s.post_form_with("/token", &wrong(), &CC, &elsewhere).await;
    assert_invalid_client(&resp, "a wrong secret from another address");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_name_the_address_only_behind_a_trusted_proxy() {
    // No trusted proxy: every failure counts against the TCP peer, whatever the headers
    // claim, so an attacker cannot escape the limit by inventing addresses.
    let s = TestServer::start().await;
    for n in 1..=10 {
        let forged = format!("192.0.2.{n}");
        let header = if n % 2 == 0 {
            ("forwarded", format!("for={forged}"))
        } else {
            ("x-forwarded-for", forged)
        };
        let resp = unknown_client_from(&s, &[(header.0, header.1.as_str())]).await;
        assert_invalid_client(&resp, &format!("failure #{n}"));
    }
    let resp = unknown_client_from(&s, &[("x-forwarded-for", "192.0.2.200")]).await;
    assert_eq!(
        resp.status,
        429,
        "an 11th failure with yet another forged address: {}",
        resp.describe()
    );
    s.stop().await;

    // Behind a trusted proxy, the nearest untrusted hop is the client: one that claims
    // a chain of addresses is counted under the one the proxy saw.
    let s = TestServer::start_with(&[("VALET_TRUSTED_PROXIES", "127.0.0.1")]).await;
    for n in 1..=10 {
        let chain = format!("192.0.2.{n}, 203.0.113.50");
        let resp = unknown_client_from(&s, &[("x-forwarded-for", chain.as_str())]).await;
        assert_invalid_client(&resp, &format!("failure #{n} via the proxy"));
    }
    let resp =
        unknown_client_from(&s, &[("forwarded", "for=\"192.0.2.99\", for=203.0.113.50")]).await;
    assert_eq!(resp.status, 429, "203.0.113.50 again: {}", resp.describe());
    let resp = unknown_client_from(&s, &[("x-forwarded-for", "203.0.113.51")]).await;
    assert_invalid_client(&resp, "another client address behind the proxy");
    s.stop().await;
}

/// One sign-in attempt through `browser`'s login form; the POST's response.
async fn sign_in(browser: &mut Browser, url: &str, username: &str, password: &str) -> Resp {
    let (page, form) = browser.form(url, Form::is_login).await;
    let form = form.unwrap_or_else(|| panic!("no login form: {}", page.describe()));
    let mut fields = form.hidden();
    fields.push(("username".to_owned(), username.to_owned()));
    fields.push(("password".to_owned(), password.to_owned()));
    let action = browser.form_action(&form);
    browser.post_form(&action, &fields).await
}

#[track_caller]
fn assert_wrong_password(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.describe());
    assert!(resp.location().is_none(), "{what}: redirected");
}

/// 429 with a Retry-After of at most `max` seconds, and the sign-in form saying so.
#[track_caller]
fn assert_too_many(resp: &Resp, max: u64, what: &str) -> u64 {
    assert_eq!(resp.status, 429, "{what}: {}", resp.describe());
    assert!(resp.location().is_none(), "{what}: redirected");
    let secs = retry_after_secs(resp, what);
    assert!((1..=max).contains(&secs), "{what}: Retry-After {secs}");
    assert!(
        resp.text().contains("Too many failed sign-in attempts"),
        "{what}: {}",
        resp.describe()
    );
    // The sign-in form is shown again, so the person can retry after the wait.
    assert!(
        valet_tests::html::find_form(&resp.text(), Form::is_login).is_some(),
        "{what}: no sign-in form: {}",
        resp.describe()
    );
    secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_for_a_user_are_limited_across_replicas() {
    let fx = Fixture::new().await;
    let a = &fx.server;
    let b = a.replica(&[]).await;
    let url = |s: &TestServer| {
        s.url(
            &AuthRequest::new(&fx.client.client_id, fx.client.redirect_uri())
                .scope("read")
                .path(),
        )
    };
    let (url_a, url_b) = (url(a), url(&b));
    let (mut on_a, mut on_b) = (a.browser(), b.browser());
    let user: &TestUser = &fx.user;
    let wrong = "not the password";

    // Wrong passwords, alternating between the replicas. Five are free; after that each
    // attempt waits 1, 2, 4… seconds after the last failure, wherever it happened.
    let mut failures: u32 = 0;
    let mut on_b_next = false;
    while failures < 7 {
        let (browser, url, name) = if on_b_next {
            (&mut on_b, &url_b, "B")
        } else {
            (&mut on_a, &url_a, "A")
        };
        let resp = sign_in(browser, url, &user.username, wrong).await;
        match resp.status {
            401 => {
                failures += 1;
                on_b_next = !on_b_next;
            }
            _ => {
                assert!(failures >= 5, "limited after {failures} failures on {name}");
                let what = format!("an attempt on {name} after {failures} failures");
                let wait = assert_too_many(&resp, 1 << (failures - 5), &what);
                tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
            }
        }
    }
    // After the 7th failure the wait is 4 s: the other replica refuses even the right
    // password (which it does not check).
    let (browser, url) = if on_b_next {
        (&mut on_b, &url_b)
    } else {
        (&mut on_a, &url_a)
    };
    let resp = sign_in(browser, url, &user.username, &user.password).await;
    let wait = assert_too_many(&resp, 4, "the right password on the other replica");

    // Other users are not slowed by alice's failures.
    let bob = a.create_user("bob", "a different long passphrase").await;
    let resp = sign_in(&mut b.browser(), &url_b, &bob.username, &bob.password).await;
    assert_eq!(resp.status, 303, "bob signs in on B: {}", resp.describe());

    // Once the wait is over, the right password works, and it clears the count.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let mut fresh = b.browser();
    let resp = sign_in(&mut fresh, &url_b, &user.username, &user.password).await;
    assert_eq!(
        resp.status,
        303,
        "alice after the wait: {}",
        resp.describe()
    );
    let mut fresh = a.browser();
    let resp = sign_in(&mut fresh, &url_a, &user.username, wrong).await;
    assert_wrong_password(
        &resp,
        "a failure after the successful sign-in is free again",
    );
    let resp = sign_in(&mut fresh, &url_a, &user.username, &user.password).await;
    assert_eq!(resp.status, 303, "alice again: {}", resp.describe());
    b.stop().await;
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_from_one_address_are_limited_whatever_the_username() {
    let fx = Fixture::new().await;
    let s = &fx.server;
    let url = s.url(
        &AuthRequest::new(&fx.client.client_id, fx.client.redirect_uri())
            .scope("read")
            .path(),
    );
    let mut browser = s.browser();
    // Ten guesses at ten names (unknown names count like known ones)...
    for n in 1..=10 {
        let username = format!("guess-{n}-{}", nonce());
        let resp = sign_in(&mut browser, &url, &username, "password1").await;
        assert_wrong_password(&resp, &format!("failure #{n}"));
    }
    // ...then a minute's wait for anyone signing in from that address.
    let resp = sign_in(&mut browser, &url, &fx.user.username, &fx.user.password).await;
    assert_too_many(&resp, 60, "an 11th attempt from the address");
    fx.stop().await;
}
