//! The audit commands and projection rebuilds, driven through the `valet` binary the way
//! an operator would: `valet audit token|at|log`, `valet projections rebuild [--verify]`
//! (SECURITY.md 38 and 44) and `valet seed`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use valet_tests::server::{
    assert_token_error, run_valet, sha256_hex, spawn_valet, ClientCreds, ClientSpec, Fixture,
    TestServer, TestUser, Tokens, APP_CB,
};
use valet_tests::TestDb;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

async fn valet_ok(s: &TestServer, args: &[&str]) -> String {
    let out = s.cli(args, None).await;
    assert_ok(&out, &format!("valet {args:?}"))
}

/// `valet ARGS` on a bare database (no server).
async fn valet_on(db: &TestDb, args: &[&str]) -> Output {
    run_valet(&db.url, &[], args, Duration::from_secs(180))
        .await
        .unwrap_or_else(|| panic!("valet {args:?} did not finish within 180 s"))
}

#[track_caller]
fn jsonl(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The current time as RFC 3339 with milliseconds (what `valet audit` accepts).
fn now_rfc3339() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    valet_wire::rfc3339_from_unix_millis(millis)
}

/// Separates moments taken by the test from the events around them. Event times are
/// PostgreSQL's `now()` (microseconds); the moments the test prints have milliseconds.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(60)).await;
}

/// One row of the events table, with what the audit commands print.
#[derive(Debug, Clone)]
struct Ev {
    position: i64,
    event_id: String,
    stream: String,
    event_type: String,
    payload: Value,
}

/// A connection of the test's own (not borrowed from the server).
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

async fn events(pg: &tokio_postgres::Client) -> Vec<Ev> {
    pg.query(
        "SELECT position, event_id::text, stream_id, event_type, payload FROM events ORDER BY position",
        &[],
    )
    .await
    .expect("read events")
    .iter()
    .map(|r| Ev {
        position: r.get(0),
        event_id: r.get(1),
        stream: r.get(2),
        event_type: r.get(3),
        payload: r.get(4),
    })
    .collect()
}

async fn positions_between(pg: &tokio_postgres::Client, since: &str, until: &str) -> Vec<i64> {
    pg.query(
        "SELECT position FROM events WHERE recorded_at >= $1::text::timestamptz AND recorded_at <= $2::text::timestamptz ORDER BY position",
        &[&since, &until],
    )
    .await
    .expect("events between")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn grant_of(pg: &tokio_postgres::Client, access_token: &str) -> String {
    pg.query_one(
        "SELECT grant_id::text FROM access_tokens WHERE token_sha256 = decode($1, 'hex')",
        &[&sha256_hex(access_token)],
    )
    .await
    .expect("the access token has a read-model row")
    .get(0)
}

async fn user_id_of(pg: &tokio_postgres::Client, username: &str) -> String {
    pg.query_one(
        "SELECT user_id::text FROM users WHERE username = $1",
        &[&username],
    )
    .await
    .expect("user row")
    .get(0)
}

/// Every projected table and its primary key.
const TABLES: [(&str, &str); 7] = [
    ("clients", "client_id"),
    ("users", "user_id"),
    ("grants", "grant_id"),
    ("access_tokens", "token_sha256"),
    ("refresh_tokens", "token_sha256"),
    ("consents", "user_id, client_id"),
    ("sessions", "session_id"),
];

/// Damages one live read-model row (the first access token).
const CORRUPT_ONE_ACCESS_TOKEN: &str = "UPDATE access_tokens SET scope = 'x'
    WHERE token_sha256 = (SELECT token_sha256 FROM access_tokens ORDER BY token_sha256 LIMIT 1)";

/// Every read-model table as text, ordered by primary key.
async fn dump(pg: &tokio_postgres::Client) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for (table, pk) in TABLES {
        let text: String = pg
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY {pk}), '') FROM public.{table} t"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("dump {table}: {e}"))
            .get(0);
        out.insert(table, text);
    }
    out
}

#[track_caller]
fn assert_same_dump(a: &BTreeMap<&str, String>, b: &BTreeMap<&str, String>, what: &str) {
    for (table, _) in TABLES {
        assert!(
            a[table] == b[table],
            "{what}: table {table} differs\n--- first\n{}\n--- second\n{}",
            a[table],
            b[table]
        );
    }
}

async fn scratch_schema_exists(pg: &tokio_postgres::Client) -> bool {
    pg.query_one(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'valet_rebuild'",
        &[],
    )
    .await
    .expect("schemata")
    .get::<_, i64>(0)
        == 1
}

/// Lines of `valet audit token` for one section (`client`, `consent`, `code`, `grant`)
/// and event type.
fn lineage<'a>(out: &'a str, label: &str, event_type: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(label) && l.split_whitespace().any(|w| w == event_type)
        })
        .collect()
}

/// The `#<position>` of a lineage line.
fn position_in(line: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix('#'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no #position in {line:?}"))
}

fn short(token: &str) -> String {
    format!("sha256:{}…", &sha256_hex(token)[..12])
}

/// `valet audit at TIME [extra...] --format jsonl`, by grant id.
async fn active_at(s: &TestServer, time: &str, extra: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec!["audit", "at", time, "--format", "jsonl"];
    args.extend_from_slice(extra);
    let out = s.cli(&args, None).await;
    let stdout = assert_ok(&out, &format!("valet {args:?}"));
    // Within ten minutes of the last event the replay must read the whole log; fewer
    // events means it stopped short of events that had committed.
    let total: i64 = s
        .pg()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count events")
        .get(0);
    let stderr = text(&out.stderr);
    let replayed: Option<i64> = stderr
        .split_whitespace()
        .skip_while(|w| *w != "replayed")
        .nth(1)
        .and_then(|n| n.parse().ok());
    if !time.starts_with("2000-") {
        assert_eq!(
            replayed,
            Some(total),
            "valet {args:?} replayed {replayed:?} of the {total} committed events \
             (stderr {stderr:?}); output {stdout}"
        );
    }
    jsonl(&stdout)
        .into_iter()
        .map(|g| {
            (
                g["grant_id"].as_str().expect("grant_id").to_owned(),
                g.clone(),
            )
        })
        .collect()
}

fn access_hashes(grant: &Value) -> BTreeSet<String> {
    grant["access_tokens"]
        .as_array()
        .expect("access_tokens array")
        .iter()
        .map(|t| t["token_sha256"].as_str().expect("token_sha256").to_owned())
        .collect()
}

fn keys(map: &BTreeMap<String, Value>) -> BTreeSet<&str> {
    map.keys().map(String::as_str).collect()
}

fn set<'a>(items: &[&'a str]) -> BTreeSet<&'a str> {
    items.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------
// valet audit token
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_token_explains_a_revocation_by_refresh_reuse() {
    let mut fx = Fixture::new().await;
    let t1 = fx.tokens(Some("read")).await;
    let s = &fx.server;
    let t2 = Tokens::from_resp(&s.refresh(&fx.client, t1.refresh(), None).await);
    let reuse = s.refresh(&fx.client, t1.refresh(), None).await;
    assert_token_error(
        &reuse,
        400,
        "invalid_grant",
        "reuse of a rotated refresh token",
    );

    let pg = s.pg().await;
    let grant_id = grant_of(pg, &t1.access_token).await;
    let log = events(pg).await;
    let find = |event_type: &str, stream: &str| -> Ev {
        let found: Vec<&Ev> = log
            .iter()
            .filter(|e| e.event_type == event_type && e.stream == stream)
            .collect();
        assert_eq!(found.len(), 1, "{event_type} in {stream}: {found:?}");
        found[0].clone()
    };
    let grant_stream = format!("grant-{grant_id}");
    let reused = find("RefreshTokenReused", &grant_stream);
    let revoked = find("GrantRevoked", &grant_stream);
    assert_eq!(revoked.payload["reason"], "refresh_reuse");

    let hash = sha256_hex(&t1.access_token);
    let by_token = valet_ok(s, &["audit", "token", &t1.access_token]).await;
    let by_hash = valet_ok(s, &["audit", "token", &hash]).await;
    assert_eq!(
        by_token, by_hash,
        "the token and its SHA-256 tell the same story"
    );
    let out = by_token;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("token   sha256:{hash} (access_token)"),
        "{out}"
    );
    assert_eq!(lines[1], format!("grant   {grant_id}"), "{out}");

    // The verdict names the reason and the event that caused it.
    let status = lines
        .iter()
        .find(|l| l.starts_with("status "))
        .unwrap_or_else(|| panic!("no status line:\n{out}"));
    assert!(
        status.contains("revoked") && status.contains("refresh_reuse"),
        "{status}"
    );
    assert!(
        status.contains(&revoked.event_id) && status.contains(&format!("#{}", revoked.position)),
        "the status line points at the GrantRevoked event {}: {status}",
        revoked.event_id
    );
    let cause = lines
        .iter()
        .find(|l| l.starts_with("cause "))
        .unwrap_or_else(|| panic!("no cause line:\n{out}"));
    assert!(
        cause.contains(&reused.event_id) && cause.contains("RefreshTokenReused"),
        "the cause line points at the RefreshTokenReused event {}: {cause}",
        reused.event_id
    );
    assert!(cause.contains(&format!("#{}", reused.position)), "{cause}");

    // The lineage: client, consent, code issued and redeemed, then the grant's story.
    let one = |label: &str, event_type: &str| -> &str {
        let found = lineage(&out, label, event_type);
        assert_eq!(
            found.len(),
            1,
            "one {label} {event_type} line expected:\n{out}"
        );
        found[0]
    };
    let client = one("client", "ClientRegistered");
    assert!(client.contains(&fx.client.client_id), "{client}");
    assert!(client.contains("\"App\""), "{client}");
    let consent = one("consent", "ConsentGiven");
    assert!(consent.contains("\"read\""), "{consent}");
    let code_issued = one("code", "CodeIssued");
    assert!(code_issued.contains("alice"), "{code_issued}");
    let code_redeemed = one("code", "CodeRedeemed");
    let issued = one("grant", "GrantIssued");
    assert!(
        issued.contains(&short(&t1.access_token)) && issued.contains(&short(t1.refresh())),
        "{issued}"
    );
    let rotated = one("grant", "TokensRefreshed");
    assert!(
        rotated.contains(&format!(
            "refresh {} rotated → access {}, refresh {}",
            short(t1.refresh()),
            short(&t2.access_token),
            short(t2.refresh())
        )),
        "{rotated}"
    );
    let reuse_line = one("grant", "RefreshTokenReused");
    assert!(reuse_line.contains(&short(t1.refresh())), "{reuse_line}");
    let revoked_line = one("grant", "GrantRevoked");
    assert!(revoked_line.contains("refresh_reuse"), "{revoked_line}");
    assert!(
        revoked_line.contains(&format!("client:{}", fx.client.client_id)),
        "the revocation is attributed to the client that presented the token: {revoked_line}"
    );
    // Each line carries the event's log position, and the story is in log order.
    let story = [
        client,
        code_issued,
        code_redeemed,
        issued,
        rotated,
        reuse_line,
        revoked_line,
    ];
    let positions: Vec<i64> = story.iter().map(|l| position_in(l)).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(positions, sorted, "lineage out of log order:\n{out}");
    assert_eq!(position_in(reuse_line), reused.position);
    assert_eq!(position_in(revoked_line), revoked.position);
    assert!(position_in(consent) < position_in(code_issued), "{out}");

    // The rotated-to refresh token leads to the same grant and the same verdict.
    let by_refresh = valet_ok(s, &["audit", "token", t2.refresh()]).await;
    assert!(
        by_refresh.starts_with(&format!(
            "token   sha256:{} (refresh_token)\ngrant   {grant_id}\n",
            sha256_hex(t2.refresh())
        )),
        "{by_refresh}"
    );
    assert!(by_refresh.contains(&reused.event_id), "{by_refresh}");

    // A token that was never issued is an error, not an empty story.
    let unknown = s
        .cli(
            &["audit", "token", &sha256_hex("valet_at_never-issued")],
            None,
        )
        .await;
    assert!(!unknown.status.success(), "unknown token: {unknown:?}");
    assert!(
        text(&unknown.stderr).contains("no token"),
        "{}",
        text(&unknown.stderr)
    );
    fx.stop().await;
}

// ---------------------------------------------------------------------------------------
// valet audit at
// ---------------------------------------------------------------------------------------

async fn second_client(s: &TestServer, name: &str) -> ClientCreds {
    s.create_client(
        &ClientSpec::confidential(name)
            .redirect(APP_CB)
            .scopes("read write"),
    )
    .await
}

async fn tokens_for(s: &TestServer, user: &TestUser, client: &ClientCreds, scope: &str) -> Tokens {
    let mut browser = s.browser();
    s.user_tokens(&mut browser, user, client, Some(scope)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_at_answers_before_and_after_a_revocation() {
    let mut fx = Fixture::new().await;
    let s = &fx.server;
    let app2 = second_client(s, "App2").await;
    let bob = s.create_user("bob", "bob's long password").await;
    let pg = &connect(s.db_url()).await;

    let before_anything = now_rfc3339();
    pause().await;
    let a = fx.tokens(Some("read write")).await; // alice @ App: refresh token revoked later
    let s = &fx.server;
    let b = tokens_for(s, &bob, &fx.client, "read").await; // bob @ App: access token revoked later
    let c = tokens_for(s, &fx.user, &app2, "read").await; // alice @ App2: untouched
    let (ga, gb, gc) = (
        grant_of(pg, &a.access_token).await,
        grant_of(pg, &b.access_token).await,
        grant_of(pg, &c.access_token).await,
    );
    pause().await;
    let t1 = now_rfc3339();
    pause().await;
    let resp = s
        .revoke(&fx.client.auth(), a.refresh(), Some("refresh_token"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let resp = s.revoke(&fx.client.auth(), &b.access_token, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(fx.eventually_inactive(&a.access_token).await);
    assert!(fx.eventually_inactive(&b.access_token).await);
    pause().await;
    let t2 = now_rfc3339();

    // T1: the three grants, each with its access token.
    let at1 = active_at(s, &t1, &[]).await;
    assert_eq!(
        keys(&at1),
        set(&[&ga, &gb, &gc]),
        "at {t1} (before the revocations): {at1:#?}"
    );
    let alice_id = user_id_of(pg, "alice").await;
    let grant_a = &at1[&ga];
    assert_eq!(grant_a["client_id"], fx.client.client_id.as_str());
    assert_eq!(grant_a["username"], "alice");
    assert_eq!(grant_a["sub"], alice_id.as_str());
    assert_eq!(grant_a["scope"], "read write");
    assert_eq!(grant_a["refreshable"], true);
    assert!(grant_a["issued_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        access_hashes(grant_a),
        BTreeSet::from([sha256_hex(&a.access_token)])
    );
    assert_eq!(grant_a["access_tokens"][0]["scope"], "read write");
    assert_eq!(
        access_hashes(&at1[&gb]),
        BTreeSet::from([sha256_hex(&b.access_token)])
    );
    assert_eq!(at1[&gb]["username"], "bob");

    // T2: A's grant is gone; B's grant remains (its refresh token) without the revoked
    // access token; C is untouched.
    let at2 = active_at(s, &t2, &[]).await;
    assert_eq!(
        keys(&at2),
        set(&[&gb, &gc]),
        "at {t2} (after the revocations): {at2:#?}"
    );
    assert!(
        access_hashes(&at2[&gb]).is_empty(),
        "at {t2} bob's revoked access token is still listed: {:#?}",
        at2[&gb]
    );
    assert_eq!(at2[&gb]["refreshable"], true);
    assert_eq!(
        access_hashes(&at2[&gc]),
        BTreeSet::from([sha256_hex(&c.access_token)])
    );
    // `now` agrees with T2, and before anything happened nothing was active.
    assert_eq!(keys(&active_at(s, "now", &[]).await), keys(&at2));
    assert!(active_at(s, &before_anything, &[]).await.is_empty());
    assert!(active_at(s, "2000-01-01", &[]).await.is_empty());

    // Filters.
    let app2_id = app2.client_id.as_str();
    let app_id = fx.client.client_id.as_str();
    assert_eq!(
        keys(&active_at(s, &t1, &["--client", app2_id]).await),
        set(&[&gc])
    );
    assert_eq!(
        keys(&active_at(s, &t1, &["--client", app_id]).await),
        set(&[&ga, &gb])
    );
    assert_eq!(
        keys(&active_at(s, &t2, &["--client", app_id]).await),
        set(&[&gb])
    );
    assert_eq!(
        keys(&active_at(s, &t1, &["--user", "bob"]).await),
        set(&[&gb])
    );
    assert_eq!(
        keys(&active_at(s, &t1, &["--user", "alice"]).await),
        set(&[&ga, &gc])
    );
    assert_eq!(
        keys(&active_at(s, &t2, &["--user", "alice"]).await),
        set(&[&gc])
    );
    assert_eq!(
        keys(&active_at(s, &t1, &["--user", "alice", "--client", app_id]).await),
        set(&[&ga])
    );
    assert!(active_at(s, &t1, &["--user", "nobody"]).await.is_empty());

    // The table: a heading with the count, column names, one line per grant.
    let table = valet_ok(s, &["audit", "at", &t1]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("active at ") && lines[0].ends_with(": 3 grant(s)"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("GRANT") && lines[1].contains("CLIENT"),
        "{table}"
    );
    assert_eq!(lines.len(), 2 + 3, "{table}");
    let row_a = lines
        .iter()
        .find(|l| l.starts_with(&ga))
        .unwrap_or_else(|| panic!("no row for {ga}:\n{table}"));
    assert!(
        row_a.contains(&sha256_hex(&a.access_token)[..12]) && row_a.contains("alice"),
        "{row_a}"
    );

    // A time that is not one.
    let bad = s.cli(&["audit", "at", "yesterday"], None).await;
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("not a time"),
        "{}",
        text(&bad.stderr)
    );
    fx.stop().await;
}

// ---------------------------------------------------------------------------------------
// valet audit log
// ---------------------------------------------------------------------------------------

/// Which events are "about" a client or a user, decided from the events themselves: its
/// own stream, consent streams naming it, events whose payload names it, and the code
/// and grant streams issued to it.
fn about(log: &[Ev], pred: impl Fn(&Ev) -> bool, own_streams: impl Fn(&str) -> bool) -> Vec<i64> {
    let owned: BTreeSet<&str> = log
        .iter()
        .filter(|e| matches!(e.event_type.as_str(), "CodeIssued" | "GrantIssued") && pred(e))
        .map(|e| e.stream.as_str())
        .collect();
    log.iter()
        .filter(|e| own_streams(&e.stream) || owned.contains(e.stream.as_str()) || pred(e))
        .map(|e| e.position)
        .collect()
}

async fn log_positions(s: &TestServer, args: &[&str]) -> Vec<i64> {
    let mut all = vec!["audit", "log", "--format", "jsonl"];
    all.extend_from_slice(args);
    jsonl(&valet_ok(s, &all).await)
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_filters_and_formats() {
    let mut fx = Fixture::new().await;
    let s = &fx.server;
    let app2 = second_client(s, "App2").await;
    let bob = s.create_user("bob", "bob's long password").await;
    let pg = &connect(s.db_url()).await;

    // Phase 1: alice at App, bob at App2 (consents, codes, grants), one refresh.
    let a = fx.tokens(Some("read")).await;
    let s = &fx.server;
    let b = tokens_for(s, &bob, &app2, "read write").await;
    let a2 = Tokens::from_resp(&s.refresh(&fx.client, a.refresh(), None).await);
    pause().await;
    let since = now_rfc3339();
    pause().await;
    // Phase 2: only admin work.
    s.create_user("carol", "carol's long password").await;
    let app3 = second_client(s, "App3").await;
    pause().await;
    let until = now_rfc3339();
    pause().await;
    // Phase 3: a revocation.
    let resp = s.revoke(&app2.auth(), b.refresh(), None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(fx.eventually_inactive(&b.access_token).await);

    let log = events(pg).await;
    let all: Vec<i64> = log.iter().map(|e| e.position).collect();

    // jsonl: every event, in order, with the documented fields.
    let out = valet_ok(s, &["audit", "log", "--format", "jsonl"]).await;
    let entries = jsonl(&out);
    assert_eq!(
        entries
            .iter()
            .map(|e| e["position"].as_i64().expect("position"))
            .collect::<Vec<_>>(),
        all
    );
    for (entry, ev) in entries.iter().zip(&log) {
        assert_eq!(entry["stream"], ev.stream.as_str(), "{entry}");
        assert_eq!(entry["type"], ev.event_type.as_str(), "{entry}");
        assert_eq!(entry["event_id"], ev.event_id.as_str(), "{entry}");
        assert_eq!(entry["payload"], ev.payload, "{entry}");
        assert_eq!(
            entry["schema_version"],
            valet_domain::event::current_version(&ev.event_type),
            "{entry}"
        );
        let time = entry["time"].as_str().expect("time");
        assert!(
            time.len() == "2026-01-01T00:00:00.000Z".len() && time.ends_with('Z'),
            "{time}"
        );
        assert!(
            entry["actor"].is_string(),
            "every event has an actor: {entry}"
        );
    }
    let by_type = |t: &str| entries.iter().find(|e| e["type"] == t).expect(t).clone();
    assert_eq!(
        by_type("TokensRefreshed")["actor"],
        format!("client:{}", fx.client.client_id).as_str()
    );

    // --stream
    let grant_a = grant_of(pg, &a.access_token).await;
    let stream = format!("grant-{grant_a}");
    let expected: Vec<i64> = log
        .iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.position)
        .collect();
    assert_eq!(expected.len(), 2, "GrantIssued and TokensRefreshed");
    assert_eq!(log_positions(s, &["--stream", &stream]).await, expected);
    assert!(log_positions(s, &["--stream", "grant-nope"])
        .await
        .is_empty());

    // --client: its registration, the consents, codes and grants issued to it.
    for client in [&fx.client, &app2, &app3] {
        let id = client.client_id.clone();
        let expected = about(
            &log,
            |e| e.payload["client_id"] == id.as_str(),
            |stream| {
                stream == format!("client-{id}")
                    || (stream.starts_with("consent-") && stream.ends_with(&format!("-{id}")))
            },
        );
        let got = log_positions(s, &["--client", &id]).await;
        assert_eq!(got, expected, "--client {id}");
    }
    let app = log_positions(s, &["--client", &fx.client.client_id]).await;
    let types: BTreeSet<&str> = log
        .iter()
        .filter(|e| app.contains(&e.position))
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        set(&[
            "ClientRegistered",
            "ConsentGiven",
            "CodeIssued",
            "CodeRedeemed",
            "GrantIssued",
            "SessionUsed",
            "TokensRefreshed"
        ]),
        "--client of the app that alice used"
    );
    let a2_grant = grant_of(pg, &a2.access_token).await;
    assert_eq!(a2_grant, grant_a);

    // --user: the user's registration, consents, codes (issued and redeemed), grants
    // and sessions.
    for name in ["alice", "bob", "carol"] {
        let uid = user_id_of(pg, name).await;
        let sessions: Vec<String> = log
            .iter()
            .filter(|e| e.event_type == "SessionStarted" && e.payload["user_id"] == uid.as_str())
            .map(|e| e.stream.clone())
            .collect();
        let expected = about(
            &log,
            |e| {
                e.payload["user_id"] == uid.as_str()
                    || e.payload["subject"]["user_id"] == uid.as_str()
            },
            |stream| {
                stream == format!("user-{uid}")
                    || stream.starts_with(&format!("consent-{uid}-"))
                    || sessions.iter().any(|s| s == stream)
            },
        );
        let got = log_positions(s, &["--user", name]).await;
        assert_eq!(
            got,
            expected,
            "--user {name}: missing {:?}, unexpected {:?}",
            describe(&log, expected.iter().filter(|p| !got.contains(p))),
            describe(&log, got.iter().filter(|p| !expected.contains(p)))
        );
    }
    assert!(log_positions(s, &["--user", "nobody"]).await.is_empty());
    // Both filters: AND.
    let both = log_positions(s, &["--user", "bob", "--client", &app2.client_id]).await;
    let bob_all = log_positions(s, &["--user", "bob"]).await;
    let app2_all = log_positions(s, &["--client", &app2.client_id]).await;
    let intersection: Vec<i64> = bob_all
        .iter()
        .copied()
        .filter(|p| app2_all.contains(p))
        .collect();
    assert_eq!(both, intersection);
    assert!(!both.is_empty());

    // --since / --until: the window holds exactly the admin work of phase 2.
    let window = log_positions(s, &["--since", &since, "--until", &until]).await;
    let window_types: Vec<&str> = window
        .iter()
        .map(|p| {
            log.iter()
                .find(|e| e.position == *p)
                .map(|e| e.event_type.as_str())
                .expect("known position")
        })
        .collect();
    assert_eq!(window_types, ["UserRegistered", "ClientRegistered"]);
    assert_eq!(window, positions_between(pg, &since, &until).await);
    let after = log_positions(s, &["--since", &until]).await;
    assert!(!after.is_empty());
    assert!(after.iter().all(|p| *p > *window.last().expect("window")));
    let before = log_positions(s, &["--until", &since]).await;
    assert_eq!(
        [before.clone(), window.clone(), after.clone()].concat(),
        all,
        "--until T, [T, U] and --since U partition the log"
    );
    // The other time formats.
    assert_eq!(log_positions(s, &["--since", "2000-01-01"]).await, all);
    assert!(log_positions(s, &["--until", "2000-01-01"])
        .await
        .is_empty());
    assert_eq!(log_positions(s, &["--since", "@0"]).await, all);
    assert!(log_positions(s, &["--until", "@946684800"])
        .await
        .is_empty());
    assert_eq!(log_positions(s, &["--until", "now"]).await, all);
    assert_eq!(
        log_positions(s, &["--since", "1999-12-31T23:00:00-01:00"]).await,
        all
    );
    // Filters combine.
    assert_eq!(
        log_positions(
            s,
            &["--since", &since, "--until", &until, "--user", "carol"]
        )
        .await,
        window[..1].to_vec()
    );
    let bad = s.cli(&["audit", "log", "--since", "last week"], None).await;
    assert!(!bad.status.success());
    let stderr = text(&bad.stderr);
    assert!(
        stderr.contains("--since") && stderr.contains("not a time"),
        "{stderr}"
    );

    // The table: a header, then one line per event with position, time, stream, type.
    let table = valet_ok(s, &["audit", "log"]).await;
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["POSITION", "TIME", "STREAM", "TYPE", "ACTOR", "PAYLOAD"],
        "{table}"
    );
    assert_eq!(lines.len(), 1 + log.len(), "{table}");
    for (line, ev) in lines[1..].iter().zip(&log) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], ev.position.to_string(), "{line}");
        assert!(words[1].ends_with('Z'), "{line}");
        assert_eq!(words[2], ev.stream, "{line}");
        assert_eq!(words[3], ev.event_type, "{line}");
    }
    let filtered = valet_ok(s, &["audit", "log", "--stream", &stream]).await;
    assert_eq!(filtered.lines().count(), 1 + 2, "{filtered}");
    fx.stop().await;
}

/// A user's code is redeemed and then replayed: both facts are about the user (the
/// replay revoked their grant), and `--user` must show them along with `CodeIssued`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_user_includes_the_fate_of_their_codes() {
    let mut fx = Fixture::new().await;
    let (code, pkce) = fx.code(Some("read")).await;
    let s = &fx.server;
    Tokens::from_resp(
        &s.redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
            .await,
    );
    let replay = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_token_error(&replay, 400, "invalid_grant", "code replay");
    let pg = &connect(s.db_url()).await;
    let code_stream = format!("code-{}", sha256_hex(&code));
    let code_events: Vec<(i64, String)> = events(pg)
        .await
        .into_iter()
        .filter(|e| e.stream == code_stream)
        .map(|e| (e.position, e.event_type))
        .collect();
    assert_eq!(
        code_events
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>(),
        ["CodeIssued", "CodeRedeemed", "CodeReplayed"]
    );
    let by_client = log_positions(s, &["--client", &fx.client.client_id]).await;
    let by_user = log_positions(s, &["--user", "alice"]).await;
    for (position, event_type) in &code_events {
        assert!(
            by_client.contains(position),
            "--client misses #{position} {event_type}"
        );
        assert!(
            by_user.contains(position),
            "--user alice misses #{position} {event_type} of her code (has {by_user:?})"
        );
    }
    fx.stop().await;
}

fn describe<'a>(log: &[Ev], positions: impl Iterator<Item = &'a i64>) -> Vec<String> {
    positions
        .map(|p| {
            let e = log
                .iter()
                .find(|e| e.position == *p)
                .expect("known position");
            format!("#{p} {} {}", e.event_type, e.stream)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// SECURITY 44: replaying the whole log twice yields byte-identical read models
// ---------------------------------------------------------------------------------------

/// Clients of every kind, users, consents, codes (one replayed), rotations, a reuse,
/// revocations of both token kinds, a disabled user and a disabled client.
async fn varied_workload(fx: &mut Fixture) {
    let s = &fx.server;
    let native = s
        .create_client(
            &ClientSpec::public("Native app")
                .redirect("http://127.0.0.1:7000/cb")
                .scopes("read profile"),
        )
        .await;
    let batch = s
        .create_client(
            &ClientSpec::confidential("Batch job")
                .grant("client_credentials")
                .scopes("reports"),
        )
        .await;
    let bob = s.create_user("bob", "bob's long password").await;
    let carol = s.create_user("carol", "carol's long password").await;

    // alice: consent for read, then read write (the consent widens), two rotations.
    let a = fx.tokens(Some("read")).await;
    let b = fx.tokens(Some("read write")).await;
    let s = &fx.server;
    let a2 = Tokens::from_resp(&s.refresh(&fx.client, a.refresh(), None).await);
    let _a3 = Tokens::from_resp(&s.refresh(&fx.client, a2.refresh(), Some("read")).await);
    // b: rotated, then the old refresh token comes back (reuse revokes the grant).
    let _b2 = Tokens::from_resp(&s.refresh(&fx.client, b.refresh(), None).await);
    let reuse = s.refresh(&fx.client, b.refresh(), None).await;
    assert_token_error(&reuse, 400, "invalid_grant", "refresh reuse");
    // A code redeemed twice (replay revokes its grant).
    let (code, pkce) = fx.code(Some("read")).await;
    let s = &fx.server;
    let first = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    Tokens::from_resp(&first);
    let replay = s
        .redeem(&fx.client, &code, APP_CB, Some(&pkce.verifier))
        .await;
    assert_token_error(&replay, 400, "invalid_grant", "code replay");
    // bob on the public client: the access token is revoked alone.
    let nb = tokens_for(s, &bob, &native, "read profile").await;
    let resp = s.revoke(&native.auth(), &nb.access_token, None).await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    // bob on the app: the refresh token is revoked (the whole grant goes).
    let bb = tokens_for(s, &bob, &fx.client, "write").await;
    let resp = s
        .revoke(&fx.client.auth(), bb.refresh(), Some("refresh_token"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.describe());
    // Service tokens; the batch job is disabled afterwards.
    Tokens::from_resp(&s.client_credentials(&fx.rs, None).await);
    Tokens::from_resp(&s.client_credentials(&batch, Some("reports")).await);
    Tokens::from_resp(&s.client_credentials(&batch, None).await);
    s.disable_client(&batch.client_id).await;
    // carol has a grant, then is disabled.
    tokens_for(s, &carol, &native, "read").await;
    s.disable_user("carol").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s44_rebuilding_twice_gives_byte_identical_read_models() {
    let mut fx = Fixture::new().await;
    varied_workload(&mut fx).await;
    let s = &fx.server;
    let pg = s.pg().await;
    assert_eq!(
        TABLES.map(|(t, _)| t),
        valet_projector::READ_MODEL_TABLES,
        "the dump covers every projected table"
    );

    let inline = dump(pg).await;
    // The workload reached every kind of row.
    for (table, rows) in &inline {
        assert!(!rows.is_empty(), "{table} is empty");
    }
    for needle in ["refresh_reuse", "code_replay", "client_request"] {
        assert!(
            inline["grants"].contains(needle) || inline["access_tokens"].contains(needle),
            "no revocation for {needle} in the read models:\n{inline:#?}"
        );
    }
    for status in ["current", "rotated", "revoked"] {
        assert!(inline["refresh_tokens"].contains(status), "{status}");
    }

    let first = valet_ok(s, &["projections", "rebuild"]).await;
    assert!(first.contains("live read models replaced"), "{first}");
    let once = dump(pg).await;
    let second = valet_ok(s, &["projections", "rebuild", "--batch-size", "7"]).await;
    assert!(second.contains("live read models replaced"), "{second}");
    let twice = dump(pg).await;
    assert_same_dump(&once, &twice, "two rebuilds");
    assert_same_dump(&inline, &once, "inline projection vs rebuild");
    assert!(
        !scratch_schema_exists(pg).await,
        "the scratch schema is dropped"
    );

    let verify = s.cli(&["projections", "rebuild", "--verify"], None).await;
    let out = assert_ok(&verify, "projections rebuild --verify");
    assert!(
        out.contains("verify: the live read models equal the rebuild"),
        "{out}"
    );
    assert_same_dump(
        &twice,
        &dump(pg).await,
        "--verify leaves the live tables alone",
    );

    // Corrupt one live row: --verify notices, names the table and shows both sides.
    let changed = pg
        .execute(CORRUPT_ONE_ACCESS_TOKEN, &[])
        .await
        .expect("corrupt a row");
    assert_eq!(changed, 1);
    let verify = s.cli(&["projections", "rebuild", "--verify"], None).await;
    assert!(
        !verify.status.success(),
        "--verify passed on a corrupted read model"
    );
    let out = text(&verify.stdout);
    assert!(
        out.contains("verify: access_tokens differs: 1 row(s) only live, 1 row(s) only rebuilt"),
        "{out}"
    );
    assert!(
        out.contains("live: {") && out.contains("\"scope\":\"x\""),
        "{out}"
    );
    assert!(out.contains("rebuilt: {"), "{out}");
    assert!(
        !out.contains("verify: clients differs") && !out.contains("verify: grants differs"),
        "{out}"
    );
    let stderr = text(&verify.stderr);
    assert!(
        stderr.contains("error: the live read models differ from a rebuild of the log"),
        "{stderr}"
    );
    // A rebuild repairs it.
    valet_ok(s, &["projections", "rebuild"]).await;
    assert_same_dump(&once, &dump(pg).await, "rebuild after the corruption");
    fx.stop().await;
}

// ---------------------------------------------------------------------------------------
// SECURITY 38: a rebuild killed mid-batch resumes and ends like one from scratch
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s38_rebuild_killed_mid_batch_resumes_to_the_same_read_models() {
    let db = TestDb::create().await;
    let seeded = assert_ok(&valet_on(&db, &["seed", "--events", "5000"]).await, "seed");
    assert!(seeded.starts_with("seeded "), "{seeded}");
    let pg = db.connect().await;
    let total: i64 = pg
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    assert!(total >= 5000, "{total} events");
    let inline = dump(&pg).await;

    // Start a rebuild in small batches and SIGKILL it once a batch has committed.
    let mut attempt = 0;
    let applied_at_kill = loop {
        attempt += 1;
        match rebuild_killed_after_a_batch(&db, &pg).await {
            Some(applied) => break applied,
            // The rebuild reads batches only below the cluster-wide commit horizon; while
            // another transaction anywhere on the server holds it back, the whole log goes
            // into the final transaction and no batch is committed to interrupt. Try again.
            None if attempt < 5 => tokio::time::sleep(Duration::from_secs(1)).await,
            None => panic!("the rebuild finished {attempt} times before a batch committed"),
        }
    };

    // The interrupted run left its scratch schema and one progress row; the live read
    // models were not touched.
    assert!(scratch_schema_exists(&pg).await);
    let progress = pg
        .query(
            "SELECT applied, xact, position FROM valet_rebuild.rebuild_progress",
            &[],
        )
        .await
        .expect("progress row");
    assert_eq!(progress.len(), 1);
    let applied: i64 = progress[0].get(0);
    assert!(
        applied >= applied_at_kill && applied < total,
        "applied {applied} of {total} (at least {applied_at_kill} when killed)"
    );
    let scratch_grants: i64 = pg
        .query_one("SELECT count(*) FROM valet_rebuild.grants", &[])
        .await
        .expect("scratch grants")
        .get(0);
    assert!(
        scratch_grants > 0,
        "the committed batches are in the scratch tables"
    );
    assert_same_dump(
        &inline,
        &dump(&pg).await,
        "live tables after the killed rebuild",
    );

    // Damage a live row, so that the read models can only come out right if the resumed
    // rebuild really replaces them.
    pg.execute(CORRUPT_ONE_ACCESS_TOKEN, &[])
        .await
        .expect("corrupt a row");

    let resumed = valet_on(&db, &["projections", "rebuild"]).await;
    let out = assert_ok(&resumed, "resumed rebuild");
    assert!(
        out.contains(&format!("rebuilt read models from {total} events"))
            && out.contains(&format!(
                "resuming after {applied} events of an interrupted run"
            )),
        "{out}"
    );
    assert!(
        !scratch_schema_exists(&pg).await,
        "the scratch schema is dropped"
    );
    let after_resume = dump(&pg).await;

    let verify = valet_on(&db, &["projections", "rebuild", "--verify"]).await;
    let out = assert_ok(&verify, "rebuild --verify after the resumed rebuild");
    assert!(
        out.contains("verify: the live read models equal the rebuild"),
        "{out}"
    );
    assert!(
        !out.contains("resuming"),
        "--verify starts from scratch: {out}"
    );

    let scratch = valet_on(&db, &["projections", "rebuild"]).await;
    let out = assert_ok(&scratch, "rebuild from scratch");
    assert!(!out.contains("resuming"), "{out}");
    let from_scratch = dump(&pg).await;
    assert_same_dump(
        &after_resume,
        &from_scratch,
        "resumed vs from-scratch rebuild",
    );
    assert_same_dump(&inline, &from_scratch, "inline projection vs rebuild");
    drop(pg);
    db.drop_database().await;
}

/// Runs `valet projections rebuild --batch-size 200` and kills it (SIGKILL) as soon as its
/// progress row shows a committed batch; returns the events applied then, or `None` when
/// the rebuild ended before that.
async fn rebuild_killed_after_a_batch(db: &TestDb, pg: &tokio_postgres::Client) -> Option<i64> {
    let mut child = spawn_valet(&db.url, &["projections", "rebuild", "--batch-size", "200"]);
    let started = Instant::now();
    let applied = loop {
        let applied = pg
            .query_opt("SELECT applied FROM valet_rebuild.rebuild_progress", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0));
        if let Some(applied) = applied.filter(|a| *a > 0) {
            child.start_kill().expect("SIGKILL the rebuild");
            break applied;
        }
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "the rebuild failed: {status}");
            return None;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rebuild committed no batch within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let status = child.wait().await.expect("wait for the killed rebuild");
    match status.signal() {
        Some(9) => Some(applied),
        // It finished between the last poll and the kill.
        _ if status.success() => None,
        _ => panic!("the rebuild ended with {status}"),
    }
}

// ---------------------------------------------------------------------------------------
// valet seed
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_writes_a_decodable_log_with_consistent_read_models() {
    let db = TestDb::create().await;
    let out = assert_ok(&valet_on(&db, &["seed", "--events", "400"]).await, "seed");
    assert!(out.starts_with("seeded "), "{out}");
    let pg = db.connect().await;
    let counts: HashMap<String, i64> = pg
        .query(
            "SELECT event_type, count(*) FROM events GROUP BY event_type",
            &[],
        )
        .await
        .expect("counts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for event_type in [
        "ClientRegistered",
        "UserRegistered",
        "GrantIssued",
        "TokensRefreshed",
        "GrantRevoked",
    ] {
        assert!(
            counts.get(event_type).is_some_and(|n| *n > 0),
            "{event_type}: {counts:?}"
        );
    }
    let out = assert_ok(
        &valet_on(&db, &["projections", "rebuild", "--verify"]).await,
        "verify after seed",
    );
    assert!(
        out.contains("verify: the live read models equal the rebuild"),
        "{out}"
    );
    drop(pg);
    db.drop_database().await;
}
