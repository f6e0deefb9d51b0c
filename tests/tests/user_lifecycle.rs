//! A user's life through the CLI: listed, shown, disabled and enabled again.

use serde_json::Value;
use valet_tests::server::{AuthRequest, ClientSpec, FlowEnd, Pkce, TestServer, APP_CB};

async fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    let out = server.cli(args, None).await;
    assert!(
        out.status.success(),
        "valet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `valet user list/show/enable`: a disabled user enabled again signs in afresh; the
/// session from before the disable does not come back, nor do the revoked grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_enabled_again_signs_in_afresh() {
    let server = TestServer::start().await;
    let alice = server.create_user("alice", "a long passphrase").await;
    server.create_user("bob", "bob's long password").await;
    let app = server
        .create_client(
            &ClientSpec::confidential("App")
                .redirect(APP_CB)
                .scopes("openid read"),
        )
        .await;
    let mut browser = server.browser();
    let tokens = server
        .sign_in_for(&mut browser, &alice, &app, "openid read")
        .await;

    let list = cli_json(&server, &["user", "list", "--json"]).await;
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let shown = cli_json(&server, &["user", "show", "alice", "--json"]).await;
    assert_eq!(shown["active"], true);
    assert_eq!(shown["active_sessions"], 1);
    assert_eq!(shown["apps"][0]["client_id"], app.client_id.as_str());

    server.disable_user("alice").await;
    let shown = cli_json(&server, &["user", "show", "alice", "--json"]).await;
    assert_eq!(shown["active"], false);
    assert_eq!(shown["active_sessions"], 0);
    let out = server.cli(&["user", "enable", "alice"], None).await;
    assert!(out.status.success());
    let list = cli_json(&server, &["user", "list", "--json"]).await;
    assert!(list
        .as_array()
        .expect("array")
        .iter()
        .all(|u| u["active"] == true));

    // The old session does not come back: prompt=none needs a new sign-in.
    let req = AuthRequest::new(&app.client_id, APP_CB)
        .pkce(&Pkce::new())
        .scope("openid")
        .set("prompt", "none");
    let resp = browser.get(&server.url(&req.path())).await;
    assert_eq!(
        FlowEnd::new(resp).param("error").as_deref(),
        Some("login_required")
    );
    let rs = server
        .create_client(
            &ClientSpec::confidential("rs")
                .grant("client_credentials")
                .scopes("introspect"),
        )
        .await;
    let old = tokens["access_token"].as_str().expect("access_token");
    assert!(!server.is_active(&rs, old).await, "revoked stays revoked");
    let again = server
        .sign_in_for(&mut browser, &alice, &app, "openid read")
        .await;
    assert!(
        server
            .is_active(&rs, again["access_token"].as_str().expect("access_token"))
            .await
    );
    let missing = server.cli(&["user", "show", "nobody"], None).await;
    assert!(!missing.status.success());
    server.stop().await;
}
