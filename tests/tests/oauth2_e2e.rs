//! Interoperability: the `oauth2` crate (v5) as a confidential client drives the
//! authorization code + PKCE flow, refresh and RFC 7009 revocation against `valet serve`.
//! The login and consent pages are driven through their HTML forms by the harness.

use oauth2::basic::BasicClient;
use oauth2::{
    AsyncHttpClient, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest,
    HttpResponse, PkceCodeChallenge, RedirectUrl, RevocationUrl, Scope, StandardRevocableToken,
    TokenResponse, TokenUrl,
};
use valet_tests::html::{self, Form};
use valet_tests::server::{http_client, ClientSpec, TestServer};

/// oauth2 refuses a revocation URL that is not https (RFC 7009 §2), while the test
/// server speaks plain http on loopback. The client is configured with the https URL
/// and this adapter sends the request over http to the same host and port.
async fn over_loopback_http(
    http: reqwest::Client,
    mut request: HttpRequest,
) -> Result<HttpResponse, oauth2::HttpClientError<reqwest::Error>> {
    let uri = request.uri().to_string();
    if let Some(rest) = uri.strip_prefix("https://127.0.0.1:") {
        *request.uri_mut() = format!("http://127.0.0.1:{rest}").parse().expect("uri");
    }
    http.call(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_crate_code_flow_with_pkce_refresh_introspect_and_revoke() {
    let server = TestServer::start().await;
    let base = server.base_url().to_owned();
    let redirect = "https://app.example/cb";
    let creds = server
        .create_client(
            &ClientSpec::confidential("oauth2-rs")
                .redirect(redirect)
                .scopes("read write"),
        )
        .await;
    let rs = server
        .create_client(
            &ClientSpec::confidential("resource server")
                .grant("client_credentials")
                .scopes("introspect"),
        )
        .await;
    let user = server.create_user("bob", "hunter2 but longer").await;

    let client = BasicClient::new(ClientId::new(creds.client_id.clone()))
        .set_client_secret(ClientSecret::new(creds.secret().to_owned()))
        .set_auth_uri(AuthUrl::new(format!("{base}/authorize")).expect("auth url"))
        .set_token_uri(TokenUrl::new(format!("{base}/token")).expect("token url"))
        .set_revocation_url(
            RevocationUrl::new(format!(
                "{}/revoke",
                base.replacen("http://", "https://", 1)
            ))
            .expect("revocation url"),
        )
        .set_redirect_uri(RedirectUrl::new(redirect.to_owned()).expect("redirect url"));
    // As the oauth2 docs require: no redirects followed (SSRF).
    let http = http_client();

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read".into()))
        .add_scope(Scope::new("write".into()))
        .set_pkce_challenge(challenge)
        .url();
    assert!(auth_url.as_str().contains("code_challenge_method=S256"));

    // The user agent: login form, then consent form, through the HTML.
    let mut browser = server.browser();
    let resp = browser.login(auth_url.as_str(), &user).await;
    assert_eq!(resp.status, 303, "login: {}", resp.describe());
    let next = browser
        .resolve(&resp.location().expect("Location"))
        .to_string();
    let page = browser.get(&next).await;
    let consent = html::find_form(&page.text(), Form::is_consent)
        .unwrap_or_else(|| panic!("no consent form: {}", page.describe()));
    let mut fields = consent.hidden();
    fields.push(("decision".into(), "approve".into()));
    let resp = browser
        .post_form(&browser.form_action(&consent), &fields)
        .await;
    assert_eq!(resp.status, 303, "consent: {}", resp.describe());
    let location = url::Url::parse(&resp.location().expect("Location")).expect("url");
    assert!(location.as_str().starts_with("https://app.example/cb?"));
    let param = |k: &str| {
        location
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(
        param("state").as_deref(),
        Some(csrf.secret().as_str()),
        "state"
    );
    let code = param("code").expect("code");

    // Exchange with oauth2 (client_secret_basic, form-urlencoded per RFC 6749 §2.3.1).
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    assert!(token.access_token().secret().starts_with("valet_at_"));
    let refresh = token.refresh_token().expect("a refresh token").clone();
    assert!(token.expires_in().is_some());
    let granted: Vec<String> = token
        .scopes()
        .map(|s| s.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    if !granted.is_empty() {
        let mut granted = granted;
        granted.sort();
        assert_eq!(granted, ["read", "write"]);
    }

    // Refresh with oauth2: rotation.
    let refreshed = client
        .exchange_refresh_token(&refresh)
        .request_async(&http)
        .await
        .expect("refresh");
    let new_refresh = refreshed
        .refresh_token()
        .expect("rotated refresh token")
        .clone();
    assert_ne!(
        new_refresh.secret(),
        refresh.secret(),
        "refresh token rotated"
    );
    let access = refreshed.access_token().clone();

    // Introspect (raw POST, as a resource server).
    let info = server.introspection(&rs, access.secret()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], creds.client_id.as_str(), "{info}");
    assert_eq!(info["username"], "bob", "{info}");
    assert_eq!(info["iss"], base.as_str(), "{info}");

    // Revoke the refresh token with oauth2 (RFC 7009): the whole grant goes.
    let adapter = |req: HttpRequest| over_loopback_http(http.clone(), req);
    client
        .revoke_token(StandardRevocableToken::RefreshToken(new_refresh.clone()))
        .expect("revocation request")
        .request_async(&adapter)
        .await
        .expect("revocation");
    assert!(
        server.eventually_inactive(&rs, new_refresh.secret()).await,
        "revoked refresh token is active"
    );
    assert!(
        server.eventually_inactive(&rs, access.secret()).await,
        "access token of the revoked grant is active"
    );
    let info = server.introspection(&rs, access.secret()).await;
    assert_eq!(info, serde_json::json!({"active": false}));
    // And oauth2 sees the refresh fail with invalid_grant.
    let err = client
        .exchange_refresh_token(&new_refresh)
        .request_async(&http)
        .await
        .expect_err("refresh after revocation");
    match err {
        oauth2::RequestTokenError::ServerResponse(e) => {
            assert_eq!(e.error().to_string(), "invalid_grant");
        }
        other => panic!("unexpected error: {other:?}"),
    }
    server.stop().await;
}
