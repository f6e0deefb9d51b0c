//! OpenID Connect and JWT behaviours of ../shared/OIDC.md against the real server, one
//! test per item, named after it (o01…).

use std::time::{Duration, Instant};

use valet_resource::valet_wire::{EventType, TokenEvent, STREAM};
use valet_resource::{Validator, ValidatorConfig};
use valet_tests::nats::TestNats;
use valet_tests::server::{ClientSpec, TestServer};

/// The stream's messages once it holds at least `count`.
async fn until_stream_holds(nats: &TestNats, count: usize) -> Vec<TokenEvent> {
    let start = Instant::now();
    loop {
        let events: Vec<TokenEvent> = nats
            .stream_messages(STREAM)
            .await
            .iter()
            .map(|m| TokenEvent::from_json(&m.payload).expect("a token event"))
            .collect();
        if events.len() >= count {
            return events;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the stream holds {} messages, not {count}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// o17: client_credentials tokens carry `sub` = the client id in introspection and in
/// `token.issued` events (RFC 9068 §2.2; revocations name the token, not its subject),
/// and the grant issues no id_token. (JWT access tokens come
/// with their own issue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o17_client_credentials_tokens_carry_the_client_id_as_sub() {
    let nats = TestNats::start().await;
    let server = TestServer::start_with(&[("VALET_NATS_URL", &nats.url())]).await;
    let service = ClientSpec::confidential("printer")
        .grant("client_credentials")
        .scopes("read");
    let printer = server.create_client(&service).await;
    let designs = server
        .create_client(
            &ClientSpec::confidential("designs")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;

    let resp = server.client_credentials(&printer, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let body = resp.json();
    assert!(body.get("id_token").is_none(), "{body}");
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();

    let info = server.introspection(&designs, &token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], printer.client_id.as_str(), "{info}");
    assert!(info.get("username").is_none(), "no user: {info}");

    let resp = server.revoke(&printer.basic(), &token, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let events = until_stream_holds(&nats, 2).await;
    let kinds: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(kinds, [EventType::TokenIssued, EventType::TokenRevoked]);
    let issued = &events[0];
    assert_eq!(
        issued.sub.as_deref(),
        Some(printer.client_id.as_str()),
        "{issued:?}"
    );
    assert_eq!(issued.username, None, "{issued:?}");

    // The SDK reports the client as `sub`, and no user.
    let validator = Validator::connect(ValidatorConfig::new(nats.url()))
        .await
        .expect("connect");
    validator
        .wait_ready(Some(Duration::from_secs(30)))
        .await
        .expect("ready");
    let resp = server.client_credentials(&printer, None).await;
    let fresh = resp.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let start = Instant::now();
    let local = loop {
        if let Ok(info) = validator.check(&fresh) {
            break info;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(local.sub.as_deref(), Some(printer.client_id.as_str()));
    assert_eq!(local.user_id(), None);
    assert_eq!(local.subject(), None);
    server.stop().await;
}
