//! The `EventStore` contract, written once and run against every implementation.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use valet_app::{
    AppendError, EventMetadata, EventStore, ExpectedVersion, LogCursor, LogFollower, NewEvent,
    StreamVersion,
};
use valet_domain::{client, Event, StreamId, Timestamp};

/// A stream id no other test uses, so suites can share a database.
pub fn fresh_stream(prefix: &str) -> StreamId {
    let id = valet_domain::ClientId::parse(&format!("{prefix}-{}", Uuid::now_v7().simple()))
        .expect("a valid client id");
    StreamId::client(&id)
}

/// Event number `n` of a client stream (which event does not matter to the store; its
/// time carries the number).
pub fn event(n: u64) -> NewEvent {
    let event = client::Event::ClientDisabled {
        at: Timestamp::from_unix_millis(n as i64),
    };
    NewEvent::new(
        Uuid::now_v7(),
        event,
        EventMetadata {
            actor: Some("contract-test".to_owned()),
            ..EventMetadata::default()
        },
    )
}

/// The number [`event`] gave an event.
pub fn number(event: &Event) -> u64 {
    match event {
        Event::Client(client::Event::ClientDisabled { at }) => at.as_unix_millis() as u64,
        other => panic!("not a numbered test event: {other:?}"),
    }
}

fn v(n: u64) -> ExpectedVersion {
    ExpectedVersion::Exactly(StreamVersion(n))
}

pub async fn append_then_read_stream<S: EventStore>(store: &S) {
    let stream = fresh_stream("contract");
    let first = vec![event(1), event(2)];
    let ids: Vec<Uuid> = first.iter().map(|e| e.event_id).collect();
    let outcome = store
        .append(&stream, ExpectedVersion::NoStream, first)
        .await
        .expect("first append");
    assert_eq!(outcome.version, StreamVersion(2));
    assert_eq!(outcome.recorded.len(), 2);
    assert!(outcome.recorded[0].position < outcome.recorded[1].position);
    store
        .append(&stream, v(2), vec![event(3)])
        .await
        .expect("second append");

    let events = store.read_stream(&stream).await.expect("read stream");
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version.0).collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(events[0].event_id, ids[0]);
    assert_eq!(number(&events[2].event), 3);
    assert_eq!(events[0].metadata.actor.as_deref(), Some("contract-test"));
    assert!(events.iter().all(|e| e.stream == stream));
    assert!(events[0].recorded_at_micros > 0);

    let unknown = store
        .read_stream(&fresh_stream("nobody"))
        .await
        .expect("read");
    assert!(unknown.is_empty());
}

pub async fn wrong_expected_version_is_a_typed_conflict<S: EventStore>(store: &S) {
    let stream = fresh_stream("conflict");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .expect("create");

    for (expected, label) in [
        (ExpectedVersion::NoStream, "stream exists"),
        (v(0), "stale"),
        (v(5), "ahead of the stream"),
    ] {
        let err = store
            .append(&stream, expected, vec![event(2), event(3)])
            .await
            .expect_err(label);
        match err {
            AppendError::Conflict {
                stream: s, actual, ..
            } => {
                assert_eq!(s, stream, "{label}");
                assert!(actual.0 >= 1, "{label}");
            }
            other => panic!("{label}: expected a conflict, got {other:?}"),
        }
    }
    // Nothing of the refused appends landed: no gaps, no partial batches.
    let versions: Vec<u64> = store
        .read_stream(&stream)
        .await
        .expect("read")
        .iter()
        .map(|e| e.stream_version.0)
        .collect();
    assert_eq!(versions, vec![1]);
}

pub async fn duplicate_event_id_is_refused<S: EventStore>(store: &S) {
    let stream = fresh_stream("dup");
    let e = event(1);
    store
        .append(&stream, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .expect("first");
    let other = fresh_stream("dup");
    let err = store
        .append(&other, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .expect_err("same event id twice");
    assert!(
        matches!(err, AppendError::DuplicateEventId(id) if id == e.event_id),
        "{err:?}"
    );
    assert!(store.read_stream(&other).await.expect("read").is_empty());
}

/// SECURITY.md 35: N writers at one expected version, exactly one wins.
pub async fn concurrent_appends_at_one_version<S: EventStore + Clone>(store: &S, writers: usize) {
    let stream = fresh_stream("race");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event(0)])
        .await
        .expect("create");
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let mut tasks = Vec::new();
    for n in 0..writers {
        let store = store.clone();
        let stream = stream.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.append(&stream, v(1), vec![event(n as u64 + 1)]).await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(outcome) => {
                wins += 1;
                assert_eq!(outcome.version, StreamVersion(2));
            }
            Err(AppendError::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!((wins, conflicts), (1, writers - 1));

    // The losers reload and retry: versions stay contiguous.
    store
        .append(&stream, v(2), vec![event(99)])
        .await
        .expect("retry");
    let versions: Vec<u64> = store
        .read_stream(&stream)
        .await
        .expect("read")
        .iter()
        .map(|e| e.stream_version.0)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
}

/// Reads the whole log after `from` in pages of `page` events.
pub async fn read_all<S: EventStore>(
    store: &S,
    from: LogCursor,
    page: usize,
) -> Vec<valet_app::RecordedEvent> {
    let mut cursor = from;
    let mut all = Vec::new();
    loop {
        let batch = store.read_log(cursor, page).await.expect("read log");
        let Some(last) = batch.last() else { return all };
        cursor = last.cursor();
        all.extend(batch);
    }
}

pub async fn log_is_read_in_order_in_pages<S: EventStore>(store: &S) {
    let start = read_all(store, LogCursor::START, 500)
        .await
        .last()
        .map_or(LogCursor::START, |e| e.cursor());
    let a = fresh_stream("log-a");
    let b = fresh_stream("log-b");
    store
        .append(&a, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .expect("a");
    store
        .append(&b, ExpectedVersion::NoStream, vec![event(3)])
        .await
        .expect("b");
    store
        .append(&a, v(2), vec![event(4)])
        .await
        .expect("a again");

    // The log is readable once no transaction below ours is still open (other tests'
    // transactions may hold that horizon back for a moment), so wait for it.
    let ours = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ours: Vec<u64> = read_all(store, start, 1)
                .await
                .into_iter()
                .filter(|e| e.stream == a || e.stream == b)
                .map(|e| number(&e.event))
                .collect();
            if ours.len() >= 4 {
                return ours;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("appended events never became readable");
    assert_eq!(ours, vec![1, 2, 3, 4]);

    let page = store.read_log(start, 2).await.expect("page");
    assert!(page.len() <= 2);
    let cursors: Vec<LogCursor> = read_all(store, LogCursor::START, 3)
        .await
        .iter()
        .map(|e| e.cursor())
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursors strictly increase"
    );
}

/// The relay's lean read returns the same events as the full one, in the same order.
pub async fn replay_read_matches_the_full_read<S: EventStore>(store: &S) {
    let a = fresh_stream("replay-a");
    store
        .append(&a, ExpectedVersion::NoStream, vec![event(1), event(2)])
        .await
        .expect("append");
    let full = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let all = read_all(store, LogCursor::START, 1000).await;
            if all.iter().filter(|e| e.stream == a).count() == 2 {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("appended events never became readable");
    let lean = store
        .read_log_replay(LogCursor::START, full.len())
        .await
        .expect("lean read");
    assert_eq!(lean.len(), full.len());
    for (lean, full) in lean.iter().zip(&full) {
        assert_eq!(lean.cursor(), full.cursor());
        assert_eq!(lean.event_id, full.event_id);
        assert_eq!(lean.stream, full.stream);
        assert_eq!(lean.event, full.event);
        assert_eq!(lean.recorded_at_micros, full.recorded_at_micros);
    }
}

/// A follower that has caught up sleeps until an append wakes it (well before its
/// fallback poll would).
pub async fn follower_is_woken_by_an_append<S: EventStore>(reader: &S, writer: &S) {
    let end = read_all(reader, LogCursor::START, 1000)
        .await
        .last()
        .map_or(LogCursor::START, |e| e.cursor());
    let mut follower = LogFollower::new(reader, end).with_fallback_poll(Duration::from_secs(60));
    // Drain anything committed meanwhile so that only the wake-up below can end the wait.
    while !follower.poll().await.expect("poll").is_empty() {}
    let stream = fresh_stream("wake");
    let append = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .append(&stream, ExpectedVersion::NoStream, vec![event(7)])
            .await
            .expect("append")
    };
    let follow = async {
        loop {
            let batch = follower.next().await.expect("next");
            if batch.iter().any(|e| e.stream == stream) {
                return;
            }
        }
    };
    let (_, woke) = tokio::join!(
        append,
        tokio::time::timeout(Duration::from_secs(10), follow)
    );
    woke.expect("the follower was not woken by the append within 10 s");
}
