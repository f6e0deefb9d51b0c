//! A relying-party library nobody here wrote, the `openidconnect` crate, through the whole
//! OpenID Connect life of a sign-in against the real server: discovery → authorization
//! code with PKCE and nonce (the pages clicked as a browser would) → id_token verified
//! from the JWKS → UserInfo → refresh (a new id_token) → RP-Initiated Logout.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};
use valet_tests::html::{find_form, Form};
use valet_tests::server::{Browser, ClientCreds, ClientSpec, FlowEnd, TestServer, APP_CB};

const SIGNED_OUT: &str = "https://app.example/signed-out";

/// `location` resolved against the URL it came from.
fn join(base: &str, location: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(location))
        .expect("a URL")
        .to_string()
}

/// Follows Valet's pages from `url` (signing in, approving) until a redirect leaves
/// Valet: that redirect.
async fn until_back_at_the_app(browser: &mut Browser, url: String, own: &str) -> FlowEnd {
    let mut url = url;
    for _ in 0..10 {
        let resp = browser.get(&url).await;
        match resp.status {
            301..=308 => {
                let next = join(&url, &resp.location().expect("Location"));
                if !next.starts_with(own) {
                    return FlowEnd::new(resp);
                }
                url = next;
            }
            200 => {
                let page = resp.text();
                let (form, extra) = match find_form(&page, Form::is_login) {
                    Some(form) => (
                        form,
                        [("username", "alice"), ("password", "a long passphrase")].to_vec(),
                    ),
                    None => (
                        find_form(&page, Form::is_consent).expect("a sign-in or consent page"),
                        [("decision", "approve")].to_vec(),
                    ),
                };
                let mut fields = form.hidden();
                fields.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
                let action = join(&url, &form.action);
                let r = browser.post_form(&action, &fields).await;
                let next = join(&action, &r.location().expect("Location"));
                if !next.starts_with(own) {
                    return FlowEnd::new(r);
                }
                url = next;
            }
            _ => panic!("GET {url}: {}", resp.describe()),
        }
    }
    panic!("too many steps");
}

/// A server with alice ("Alice Liddell") and a relying party of scopes `openid profile`
/// that may return users to `signed_out` after logout (the URI from the server's own
/// address).
async fn with_relying_party(
    signed_out: impl Fn(&TestServer) -> String,
) -> (TestServer, ClientCreds, String) {
    let server = TestServer::start().await;
    server.create_user("alice", "a long passphrase").await;
    let out = server
        .cli(
            &["user", "update", "alice", "--name", "Alice Liddell"],
            None,
        )
        .await;
    assert!(out.status.success());
    let signed_out = signed_out(&server);
    let client = server
        .create_client(
            &ClientSpec::confidential("RP")
                .redirect(APP_CB)
                .scopes("openid profile")
                .post_logout_redirect(&signed_out),
        )
        .await;
    (server, client, signed_out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openidconnect_crate_signs_in_refreshes_reads_userinfo_and_signs_out() {
    let (server, rp, _) = with_relying_party(|_| SIGNED_OUT.to_owned()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Discovery.
    let issuer = IssuerUrl::new(server.base_url().to_owned()).expect("issuer");
    let metadata = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .expect("discovery");
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(rp.client_id.clone()),
        rp.client_secret.clone().map(ClientSecret::new),
    )
    .set_redirect_uri(RedirectUrl::new(APP_CB.to_owned()).expect("redirect"));

    // The authorization code with PKCE and a nonce, through Valet's pages.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut browser = server.browser();
    let back = until_back_at_the_app(&mut browser, url.to_string(), server.base_url()).await;
    assert_eq!(
        back.param("state").as_deref(),
        Some(state.secret().as_str())
    );
    assert_eq!(back.param("iss").as_deref(), Some(server.base_url()));
    let tokens = client
        .exchange_code(AuthorizationCode::new(back.code()))
        .expect("a token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the code redeems");

    // The id_token, verified from the JWKS (signature, iss, aud, exp, nonce).
    let id_token = tokens.id_token().expect("an id_token");
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .expect("the id_token verifies");
    let sub = claims.subject().clone();
    assert!(claims.auth_time().is_some());

    // UserInfo.
    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), Some(sub.clone()))
        .expect("a userinfo endpoint")
        .request_async(&http)
        .await
        .expect("UserInfo answers");
    assert_eq!(info.subject(), &sub);
    assert_eq!(
        info.name().and_then(|n| n.get(None)).map(|n| n.as_str()),
        Some("Alice Liddell")
    );

    // Refresh: a new id_token for the same user and sign-in.
    let refreshed = client
        .exchange_refresh_token(tokens.refresh_token().expect("a refresh token"))
        .expect("a token endpoint")
        .request_async(&http)
        .await
        .expect("the refresh");
    let again = refreshed
        .id_token()
        .expect("a new id_token")
        .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
        .expect("the new id_token verifies");
    assert_eq!(again.subject(), &sub);
    assert_eq!(again.auth_time(), claims.auth_time());

    // RP-Initiated Logout with the id_token as the hint, back to the registered address.
    let discovery = http
        .get(server.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect("discovery")
        .bytes()
        .await
        .expect("a body");
    let discovery: serde_json::Value = serde_json::from_slice(&discovery).expect("JSON");
    let mut logout = url::Url::parse(
        discovery["end_session_endpoint"]
            .as_str()
            .expect("end_session"),
    )
    .expect("a URL");
    logout
        .query_pairs_mut()
        .append_pair("id_token_hint", &id_token.to_string())
        .append_pair("post_logout_redirect_uri", SIGNED_OUT)
        .append_pair("state", "bye");
    let resp = browser.get(logout.as_str()).await;
    let end = FlowEnd::new(resp);
    assert!(
        end.raw_location.starts_with(SIGNED_OUT),
        "{}",
        end.raw_location
    );
    assert_eq!(end.param("state").as_deref(), Some("bye"));
    server.stop().await;
}

/// The same life of a sign-in with panva's openid-client (OpenID Certified, npm), the
/// sign-in and consent pages clicked in Debian's chromium by playwright-core
/// (tests/js/openid-client-e2e.mjs; `make test` installs what it needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_in_chromium_signs_in_refreshes_reads_userinfo_and_signs_out() {
    let js = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/openid-client").is_dir(),
        "run `npm ci --prefix tests/js` (make test does)"
    );
    // A page that exists, for the browser to land on after the logout.
    let (server, rp, signed_out) = with_relying_party(|server| server.url("/healthz")).await;
    let run = tokio::process::Command::new("node")
        .arg(js.join("openid-client-e2e.mjs"))
        .current_dir(&js)
        .env("ISSUER", server.base_url())
        .env("CLIENT_ID", &rp.client_id)
        .env("CLIENT_SECRET", rp.secret())
        .env("REDIRECT_URI", APP_CB)
        .env("SIGNED_OUT", &signed_out)
        .env("USERNAME", "alice")
        .env("PASSWORD", "a long passphrase")
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the script finishes within 2 minutes")
        .expect("node runs (apt-get install nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openid-client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["iss"], server.base_url());
    assert_eq!(seen["name"], "Alice Liddell");
    assert_eq!(seen["refreshed_sub"], seen["sub"]);
    assert_eq!(seen["auth_time_kept"], true);
    assert_eq!(seen["logout_state"], "bye");
    server.stop().await;
}
