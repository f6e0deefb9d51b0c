//! The event store contract against the in-memory store and the real PostgreSQL, and the
//! PostgreSQL-specific guarantees: concurrent writers (SECURITY.md 35), commit-safe log
//! reading (SECURITY.md 37, store part) and cross-process wake-ups.

use std::time::Duration;

use valet_app::{EventStore, ExpectedVersion, LogCursor, LogFollower, StreamVersion};
use valet_store::{append_on, MemoryEventStore, PgEventStore, PgStoreConfig};
use valet_tests::contract::{self, event, fresh_stream};
use valet_tests::TestDb;

async fn pg_store(db: &TestDb) -> PgEventStore {
    PgEventStore::connect(PgStoreConfig::new(db.url.clone()))
        .await
        .expect("connect store")
}

macro_rules! contract_tests {
    ($($name:ident $(, $arg:expr)?;)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let store = MemoryEventStore::new();
                    contract::$name(&store $(, $arg)?).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = TestDb::create().await;
                    let store = pg_store(&db).await;
                    contract::$name(&store $(, $arg)?).await;
                    drop(store);
                    db.drop_database().await;
                }
            )*
        }
    };
}

contract_tests! {
    append_then_read_stream;
    wrong_expected_version_is_a_typed_conflict;
    duplicate_event_id_is_refused;
    log_is_read_in_order_in_pages;
    replay_read_matches_the_full_read;
    concurrent_appends_at_one_version, 32;
}

#[tokio::test]
async fn memory_follower_is_woken_by_an_append() {
    let store = MemoryEventStore::new();
    contract::follower_is_woken_by_an_append(&store, &store).await;
}

/// Two stores on one database stand for two processes: the reader learns of the
/// writer's commit through LISTEN/NOTIFY, not through its (60 s) fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_follower_in_another_process_is_woken_by_notify() {
    let db = TestDb::create().await;
    let reader = pg_store(&db).await;
    let writer = pg_store(&db).await;
    contract::follower_is_woken_by_an_append(&reader, &writer).await;
    drop((reader, writer));
    db.drop_database().await;
}

async fn log_end(store: &PgEventStore) -> LogCursor {
    contract::read_all(store, LogCursor::START, 1000)
        .await
        .last()
        .map_or(LogCursor::START, |e| e.cursor())
}

/// SECURITY.md 37 (store part): transaction T1 takes a lower position than T2 but
/// commits after it. A follower must still deliver T1's event, whichever order the
/// transaction ids were drawn in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_safe_reading_delivers_a_late_commit_with_a_lower_position() {
    for t2_starts_first in [false, true] {
        let db = TestDb::create().await;
        let store = pg_store(&db).await;
        let mut follower = LogFollower::new(&store, log_end(&store).await)
            .with_fallback_poll(Duration::from_millis(50));

        let mut c1 = store.pool().get().await.expect("conn 1");
        let mut c2 = store.pool().get().await.expect("conn 2");
        let t1 = c1.transaction().await.expect("begin t1");
        let t2 = c2.transaction().await.expect("begin t2");
        if t2_starts_first {
            // T2 draws its transaction id before T1 does, so (xact, position) puts T2
            // first: the follower delivers T2, passing T1's lower position.
            t2.batch_execute("SELECT pg_current_xact_id()")
                .await
                .expect("xid t2");
        }
        let slow = fresh_stream("slow");
        let fast = fresh_stream("fast");
        let p1 = append_on(&t1, &slow, ExpectedVersion::NoStream, &[event(1)])
            .await
            .expect("t1 append")
            .positions()[0];
        let p2 = append_on(&t2, &fast, ExpectedVersion::NoStream, &[event(2)])
            .await
            .expect("t2 append")
            .positions()[0];
        assert!(p1 < p2, "T1 must hold the lower position");
        t2.commit().await.expect("commit t2");
        store.announce_commit();

        let mut delivered: Vec<i64> = Vec::new();
        if t2_starts_first {
            let batch = tokio::time::timeout(Duration::from_secs(10), follower.next())
                .await
                .expect("T2 delivered")
                .expect("read");
            delivered.extend(batch.iter().map(|e| e.position));
            assert_eq!(delivered, vec![p2], "the reader has passed position {p1}");
        } else {
            // T1 holds the commit horizon: nothing may be delivered past it yet.
            let early = follower.poll().await.expect("poll");
            assert!(
                early.is_empty(),
                "delivered {early:?} past an open transaction"
            );
        }

        t1.commit().await.expect("commit t1");
        store.announce_commit();
        while delivered.len() < 2 {
            let batch = tokio::time::timeout(Duration::from_secs(10), follower.next())
                .await
                .expect("the late commit was never delivered")
                .expect("read");
            delivered.extend(batch.iter().map(|e| e.position));
        }
        let mut sorted = delivered.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![p1, p2], "each event exactly once");
        if !t2_starts_first {
            assert_eq!(delivered, vec![p1, p2]);
        }
        drop((c1, c2, follower));
        drop(store);
        db.drop_database().await;
    }
}

/// Writers of different streams do not wait for each other: a transaction holding an
/// append open does not block an append to another stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_append_does_not_block_other_streams() {
    let db = TestDb::create().await;
    let store = pg_store(&db).await;
    let mut c1 = store.pool().get().await.expect("conn");
    let t1 = c1.transaction().await.expect("begin");
    append_on(
        &t1,
        &fresh_stream("held"),
        ExpectedVersion::NoStream,
        &[event(1)],
    )
    .await
    .expect("held append");
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        store.append(
            &fresh_stream("free"),
            ExpectedVersion::NoStream,
            vec![event(2)],
        ),
    )
    .await
    .expect("an append to another stream waited for an open transaction")
    .expect("append");
    assert_eq!(other.version, StreamVersion(1));
    t1.rollback().await.expect("rollback");
    drop(c1);
    drop(store);
    db.drop_database().await;
}

/// `valet migrate` twice: the second run creates nothing and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent() {
    let db = TestDb::create().await;
    let again = valet_store::migrate(&db.url).await.expect("second migrate");
    assert!(!again.database_created);
    assert!(again.applied.is_empty());
    let client = db.connect().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count as usize, valet_store::MIGRATIONS.len());
    drop(client);
    db.drop_database().await;
}

/// Group commit: independent appends written together land in one statement (one
/// transaction), and one wrong expectation among them fails only its own append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_appends_commit_together_and_fail_alone() {
    use valet_app::{AppendError, StreamWrite};
    let db = TestDb::create().await;
    let store = pg_store(&db).await;
    let (a, b, c) = (fresh_stream("ga"), fresh_stream("gb"), fresh_stream("gc"));
    store
        .append(&c, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .expect("seed c");
    let write = |stream: &valet_domain::StreamId, expected, events| StreamWrite {
        stream: stream.clone(),
        expected,
        events,
    };

    // All three fit: one statement, so one transaction id for all their events.
    let results = store
        .append_grouped(vec![
            vec![write(
                &a,
                ExpectedVersion::NoStream,
                vec![event(1), event(2)],
            )],
            vec![write(&b, ExpectedVersion::NoStream, vec![event(3)])],
            vec![
                write(&c, ExpectedVersion::Exactly(StreamVersion(1)), vec![]),
                write(
                    &fresh_stream("gd"),
                    ExpectedVersion::NoStream,
                    vec![event(4)],
                ),
            ],
        ])
        .await
        .expect("grouped append");
    let outcomes: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every append fits"))
        .collect();
    assert_eq!(outcomes[0][0].version, StreamVersion(2));
    assert_eq!(outcomes[1][0].version, StreamVersion(1));
    assert_eq!(outcomes[2][0].version, StreamVersion(1));
    assert_eq!(outcomes[2][1].version, StreamVersion(1));
    let xacts: std::collections::HashSet<i64> = outcomes
        .iter()
        .flatten()
        .flat_map(|o| o.recorded.iter().map(|e| e.xact))
        .collect();
    assert_eq!(xacts.len(), 1, "one statement, one transaction");
    let versions: Vec<u64> = store
        .read_stream(&a)
        .await
        .expect("read a")
        .iter()
        .map(|e| e.stream_version.0)
        .collect();
    assert_eq!(versions, vec![1, 2]);

    // A stale expectation fails its own append only; the others still commit.
    let results = store
        .append_grouped(vec![
            vec![write(
                &a,
                ExpectedVersion::Exactly(StreamVersion(2)),
                vec![event(5)],
            )],
            vec![write(&b, ExpectedVersion::NoStream, vec![event(6)])],
            vec![write(
                &c,
                ExpectedVersion::Exactly(StreamVersion(1)),
                vec![event(7)],
            )],
        ])
        .await
        .expect("grouped append");
    assert_eq!(
        results[0].as_ref().expect("a fits")[0].version,
        StreamVersion(3)
    );
    match &results[1] {
        Err(AppendError::Conflict { actual, .. }) => assert_eq!(*actual, StreamVersion(1)),
        other => panic!("b at a stale version must conflict, got {other:?}"),
    }
    assert_eq!(
        results[2].as_ref().expect("c fits")[0].version,
        StreamVersion(2)
    );
    assert_eq!(store.read_stream(&b).await.expect("read b").len(), 1);

    // Appends asserting the same version of one stream (two tokens of one client) are
    // checked together and land together, each with its own events as recorded.
    let (e, f) = (fresh_stream("ge"), fresh_stream("gf"));
    let results = store
        .append_grouped(vec![
            vec![
                write(&c, ExpectedVersion::Exactly(StreamVersion(2)), vec![]),
                write(&e, ExpectedVersion::NoStream, vec![event(8)]),
            ],
            vec![
                write(&c, ExpectedVersion::Exactly(StreamVersion(2)), vec![]),
                write(&f, ExpectedVersion::NoStream, vec![event(9)]),
            ],
        ])
        .await
        .expect("grouped append");
    let outcomes: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("both assert the current version"))
        .collect();
    assert_eq!(outcomes[0][1].recorded[0].event, event(8).event);
    assert_eq!(outcomes[1][1].recorded[0].event, event(9).event);
    assert_eq!(outcomes[1][1].recorded[0].stream, f);
    assert_eq!(
        outcomes[0][1].recorded[0].xact, outcomes[1][1].recorded[0].xact,
        "one statement, one transaction"
    );

    // One of them asserting an older version fails alone.
    let results = store
        .append_grouped(vec![
            vec![
                write(&c, ExpectedVersion::Exactly(StreamVersion(2)), vec![]),
                write(
                    &fresh_stream("gh"),
                    ExpectedVersion::NoStream,
                    vec![event(10)],
                ),
            ],
            vec![
                write(&c, ExpectedVersion::Exactly(StreamVersion(1)), vec![]),
                write(
                    &fresh_stream("gi"),
                    ExpectedVersion::NoStream,
                    vec![event(11)],
                ),
            ],
        ])
        .await
        .expect("grouped append");
    assert!(results[0].is_ok(), "the current expectation lands");
    match &results[1] {
        Err(AppendError::Conflict { actual, .. }) => assert_eq!(*actual, StreamVersion(2)),
        other => panic!("c at a stale version must conflict, got {other:?}"),
    }
    drop(store);
    db.drop_database().await;
}
