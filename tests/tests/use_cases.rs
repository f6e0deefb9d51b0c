//! The generic use case (load → decide → append, retried on conflict) against the
//! in-memory store and the real PostgreSQL.

use uuid::Uuid;
use valet_app::aggregate::{Code, Consent};
use valet_app::{
    execute, load, Clock, EventMetadata, EventStore, ExecuteError, SystemClock, UuidV7,
};
use valet_domain::code::{self, RedirectUriPresence};
use valet_domain::{
    ClientId, CodeTtl, GrantId, RedirectUri, ScopeSet, StreamId, TokenHash, UserId, Username,
};
use valet_store::{MemoryEventStore, PgEventStore, PgStoreConfig};
use valet_tests::TestDb;

/// Sixteen writers give consent to different scopes of one stream at the same time:
/// every one of them lands (conflicts are retried), and the state holds the union.
async fn concurrent_commands_all_land<S: EventStore + Clone>(store: &S) {
    let user = UserId::new(Uuid::now_v7());
    let client = ClientId::parse("retry-client").expect("client id");
    let stream = StreamId::consent(&user, &client);
    let mut tasks = Vec::new();
    for n in 0..16 {
        let (store, stream, client) = (store.clone(), stream.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let command = valet_domain::consent::Command::Give {
                user_id: user,
                client_id: client,
                scope: ScopeSet::parse(&format!("scope{n}")).expect("scope"),
                at: SystemClock.now(),
            };
            execute::<Consent, _>(&store, &UuidV7, &stream, command, &EventMetadata::default())
                .await
        }));
    }
    for task in tasks {
        let executed = task.await.expect("task").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(executed.events.len(), 1);
    }
    let loaded = load::<Consent, _>(store, &stream).await.expect("load");
    assert_eq!(loaded.version.0, 16);
    let all: Vec<String> = (0..16).map(|n| format!("scope{n}")).collect();
    assert!(loaded
        .state
        .covers(&ScopeSet::parse(&all.join(" ")).expect("scopes")));
}

/// A rejected redemption of a used code still records the replay, so the grant can be
/// revoked and the audit log shows it.
async fn a_rejection_records_its_events<S: EventStore>(store: &S) {
    let code_hash = TokenHash::of(&format!("code-{}", Uuid::now_v7()));
    let stream = StreamId::code(&code_hash);
    let client = ClientId::parse("app").expect("client id");
    let now = SystemClock.now();
    let meta = EventMetadata::default();
    let issue = code::Command::Issue {
        code_hash,
        client_id: client.clone(),
        user_id: UserId::new(Uuid::now_v7()),
        username: Username::parse("alice").expect("username"),
        redirect_uri: RedirectUri::parse("https://app.example/cb").expect("uri"),
        redirect_uri_in_request: RedirectUriPresence::Sent,
        scope: ScopeSet::parse("read").expect("scope"),
        pkce: None,
        grant_id: GrantId::new(Uuid::now_v7()),
        nonce: None,
        auth_time: now,
        sid: valet_domain::oidc::SessionId::new(Uuid::now_v7()),
        at: now,
        ttl: CodeTtl::new(60).expect("ttl"),
    };
    execute::<Code, _>(store, &UuidV7, &stream, issue, &meta)
        .await
        .expect("issue");
    let redeem = code::Command::Redeem {
        client_id: client,
        redirect_uri: Some("https://app.example/cb".to_owned()),
        verifier: None,
        at: now,
    };
    execute::<Code, _>(store, &UuidV7, &stream, redeem.clone(), &meta)
        .await
        .expect("first redemption");
    match execute::<Code, _>(store, &UuidV7, &stream, redeem, &meta).await {
        Err(ExecuteError::Rejected { error, recorded }) => {
            assert!(matches!(error, code::Error::InvalidGrant(_)), "{error:?}");
            assert_eq!(recorded.len(), 1);
        }
        Ok(_) => panic!("a replayed code was accepted"),
        Err(other) => panic!("unexpected error {other}"),
    }
    let types: Vec<&str> = store
        .read_stream(&stream)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event.event_type())
        .collect();
    assert_eq!(types, ["CodeIssued", "CodeRedeemed", "CodeReplayed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_concurrent_commands_all_land() {
    concurrent_commands_all_land(&MemoryEventStore::new()).await;
}

#[tokio::test]
async fn memory_a_rejection_records_its_events() {
    a_rejection_records_its_events(&MemoryEventStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_commands_all_land() {
    let db = TestDb::create().await;
    let store = PgEventStore::connect(PgStoreConfig::new(db.url.clone()))
        .await
        .expect("store");
    concurrent_commands_all_land(&store).await;
    drop(store);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_rejection_records_its_events() {
    let db = TestDb::create().await;
    let store = PgEventStore::connect(PgStoreConfig::new(db.url.clone()))
        .await
        .expect("store");
    a_rejection_records_its_events(&store).await;
    drop(store);
    db.drop_database().await;
}
