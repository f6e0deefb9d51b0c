//! Relay failover across three `valet serve` replicas on one database and a three-node
//! NATS cluster (stream replicas 3), under load: the relay leader killed (`kill -9`),
//! paused (`SIGSTOP`) and cut off from NATS alone. Each time the stream grows again
//! within 5 s of the leader's last progress, every replica's `/readyz` names the same
//! leader and says whether it is connected, and in the end the stream holds every
//! committed event once, in log order. A second test then kills NATS nodes one at a
//! time: the one the relay leader uses, then the one leading the stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use valet_tests::nats::{publishable_event_ids, stream_matches_log, NatsProxy, TestNats};
use valet_tests::server::{ClientCreds, ClientSpec, TestServer};
use valet_wire::{Message, STREAM};

/// The goal for a takeover, from the leader's last progress to the stream growing again.
const TAKEOVER_GOAL: Duration = Duration::from_secs(5);
/// When the NATS node leading the stream dies: JetStream's election (4-9 s) plus the
/// relay's stall limit and a standby's start.
const NATS_ELECTION_BOUND: Duration = Duration::from_secs(15);

struct Replica {
    server: TestServer,
    /// One per NATS node: the replica reaches NATS only through these.
    proxies: Vec<NatsProxy>,
}

impl Replica {
    fn holder(&self) -> String {
        format!("{}:{}", hostname(), self.server.pid())
    }

    fn cut_off_nats(&self) {
        self.proxies.iter().for_each(NatsProxy::cut);
    }

    fn restore_nats(&self) {
        self.proxies.iter().for_each(NatsProxy::restore);
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

const STREAM_REPLICAS: (&str, &str) = ("VALET_NATS_STREAM_REPLICAS", "3");

async fn replica_of(first: &TestServer, nats: &[TestNats]) -> Replica {
    let (proxies, urls) = NatsProxy::per_node(nats).await;
    let server = first
        .replica(&[("VALET_NATS_URL", &urls), STREAM_REPLICAS])
        .await;
    Replica { server, proxies }
}

/// `/readyz`'s relay object, or `None` if the replica does not answer within a second
/// (a paused process).
async fn relay_state(server: &TestServer) -> Option<Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let resp = client.get(server.url("/readyz")).send().await.ok()?;
    let body: Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
    Some(body["relay"].clone())
}

/// Waits until the answering replicas agree: exactly one of `candidates` is active and
/// every answering replica names it as leader. Returns its index.
async fn agreed_leader(replicas: &[&Replica], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let mut states = Vec::new();
        for r in replicas {
            states.push(relay_state(&r.server).await);
        }
        let active: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s["active"] == true))
            .map(|(i, _)| i)
            .collect();
        if let [leader] = active[..] {
            let holder = replicas[leader].holder();
            if states
                .iter()
                .flatten()
                .all(|s| s["leader"].as_str() == Some(holder.as_str()))
            {
                return leader;
            }
        }
        assert!(
            start.elapsed() < within,
            "the replicas did not agree on one relay leader within {within:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tokens issued (and every other one revoked) through the replicas in `live`, round
/// robin, until stopped.
struct Load {
    live: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    fn start(client: &ClientCreds, live: Vec<String>) -> Load {
        let live = Arc::new(Mutex::new(live));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|worker| {
                let (live, stop) = (live.clone(), stop.clone());
                let (id, secret) = (client.client_id.clone(), client.secret().to_owned());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(3))
                        .build()
                        .expect("client");
                    let mut issued = 0u64;
                    let mut n = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let base = {
                            let live = live.lock().expect("live");
                            live[n % live.len()].clone()
                        };
                        n += 1;
                        let Ok(resp) = http
                            .post(format!("{base}/token"))
                            .basic_auth(&id, Some(&secret))
                            .form(&[("grant_type", "client_credentials")])
                            .send()
                            .await
                        else {
                            continue;
                        };
                        let Some(body) = resp
                            .bytes()
                            .await
                            .ok()
                            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        else {
                            continue;
                        };
                        let Some(token) = body["access_token"].as_str() else {
                            continue;
                        };
                        issued += 1;
                        if issued % 2 == 0 {
                            let _ = http
                                .post(format!("{base}/revoke"))
                                .basic_auth(&id, Some(&secret))
                                .form(&[("token", token)])
                                .send()
                                .await;
                        }
                    }
                    issued
                })
            })
            .collect();
        Load { live, stop, tasks }
    }

    fn set_live(&self, live: Vec<String>) {
        *self.live.lock().expect("live") = live;
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut issued = 0;
        for task in self.tasks {
            issued += task.await.expect("load task");
        }
        issued
    }
}

/// When a node answered, and the stream's leader it named (`None`: no leader).
type LeaderSeen = (Instant, Option<String>);

/// The stream as its nodes answer, sampled every 20 ms through each node on its own
/// connection (a node killed under the watch does not blind it): when the stream's last
/// sequence grew, and when its leader changed or was missing (a JetStream election).
struct Watch {
    growth: Arc<Mutex<Vec<(Instant, u64)>>>,
    leaders: Arc<Mutex<Vec<LeaderSeen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    async fn start(nats: &[TestNats]) -> Watch {
        let growth = Arc::new(Mutex::new(Vec::new()));
        let leaders = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for node in nats {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(node.url())
                .await
                .expect("connect");
            let mut js = async_nats::jetstream::new(client);
            // A request sent to a node as it dies is not answered: give up soon.
            js.set_timeout(Duration::from_secs(1));
            let (growth, leaders) = (growth.clone(), leaders.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Ok(info) = stream_info(&js).await {
                        let now = Instant::now();
                        let seq = info.state.last_sequence;
                        let mut growth = growth.lock().expect("growth");
                        if growth.last().is_none_or(|(_, last)| seq > *last) {
                            growth.push((now, seq));
                        }
                        drop(growth);
                        let leader = info.cluster.and_then(|c| c.leader);
                        let mut leaders = leaders.lock().expect("leaders");
                        if leaders.last().is_none_or(|(_, last)| *last != leader) {
                            leaders.push((now, leader));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Watch {
            growth,
            leaders,
            tasks,
        }
    }

    /// Whether the stream's leader was missing, or another than before `from`, at any
    /// answer between `from` and `to`.
    fn election_between(&self, from: Instant, to: Instant) -> bool {
        let (known, after) = self.leaders_since(from);
        after
            .iter()
            .filter(|(offset, _)| from + *offset <= to)
            .any(|(_, leader)| leader.is_none() || *leader != known)
    }

    /// The stream's leader at `from`, and each change after it (offsets from `from`).
    fn leaders_since(&self, from: Instant) -> (Option<String>, Vec<(Duration, Option<String>)>) {
        let leaders = self.leaders.lock().expect("leaders");
        let at = leaders
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .and_then(|(_, l)| l.clone());
        let after = leaders
            .iter()
            .filter(|(t, _)| *t > from)
            .map(|(t, l)| (t.duration_since(from), l.clone()))
            .collect();
        (at, after)
    }

    /// The takeover after `fault`: the longest pause in the stream's growth from its last
    /// growth before `fault` (the leader's last progress), once the stream has grown
    /// steadily for a second after that pause.
    async fn takeover_after(&self, fault: Instant, within: Duration) -> Duration {
        const STEADY: Duration = Duration::from_secs(1);
        loop {
            {
                let growth = self.growth.lock().expect("growth");
                let times: Vec<Instant> = growth.iter().map(|(t, _)| *t).collect();
                // From the last growth before the fault.
                let start = times.iter().rposition(|t| *t <= fault).unwrap_or(0);
                let times = &times[start..];
                let longest = times
                    .windows(2)
                    .map(|w| (w[1].duration_since(w[0]), w[1]))
                    .max_by_key(|(gap, _)| *gap);
                if let (Some((gap, end)), Some(last)) = (longest, times.last()) {
                    if *last >= end + STEADY && *last >= fault + STEADY {
                        return gap;
                    }
                }
            }
            assert!(
                fault.elapsed() < within,
                "the stream did not grow steadily again within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

async fn stream_info(
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::stream::Info, String> {
    let mut stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
    stream.info().await.cloned().map_err(|e| e.to_string())
}

/// Waits until every replica's `/readyz` says it is connected to NATS.
async fn until_every_replica_has_nats(replicas: &[Replica], within: Duration) {
    let start = Instant::now();
    loop {
        let mut states = Vec::new();
        for r in replicas {
            states.push(relay_state(&r.server).await);
        }
        if states
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| s["nats_connected"] == true))
        {
            return;
        }
        assert!(
            start.elapsed() < within,
            "not every replica reconnected to NATS within {within:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Faults {
    /// The relay leader killed, paused, and cut off from NATS.
    Relay,
    /// Those, then NATS nodes killed one at a time.
    RelayAndNatsNodes,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_within_5_s_when_the_leader_dies_pauses_or_loses_nats() {
    run(Faults::Relay).await;
}

/// On nats-server 2.9.10 under CPU contention, killing one node of the three has lost
/// messages JetStream had acknowledged (the stream ended before them). The relay finds
/// such a stream end (a refused message, or its idle check) and publishes again from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_under_load_loses_nothing() {
    run(Faults::RelayAndNatsNodes).await;
}

async fn run(faults: Faults) {
    let mut nats = TestNats::cluster(3).await;
    let (first_proxies, urls) = NatsProxy::per_node(&nats).await;
    let first = TestServer::start_with(&[("VALET_NATS_URL", &urls), STREAM_REPLICAS]).await;
    let client = first
        .create_client(
            &ClientSpec::confidential("Load")
                .grant("client_credentials")
                .scopes("read"),
        )
        .await;
    let mut replicas = vec![Replica {
        server: first,
        proxies: first_proxies,
    }];
    replicas.push(replica_of(&replicas[0].server, &nats).await);
    replicas.push(replica_of(&replicas[0].server, &nats).await);
    let urls = |rs: &[Replica]| -> Vec<String> {
        rs.iter().map(|r| r.server.base_url().to_owned()).collect()
    };

    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = agreed_leader(&all, Duration::from_secs(15)).await;
    let watch = Watch::start(&nats).await;
    let load = Load::start(&client, urls(&replicas));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut takeovers = Vec::new();

    // 1. kill -9 of the leader.
    let fault = Instant::now();
    replicas[leader].server.signal("KILL");
    let killed = replicas.remove(leader);
    load.set_live(urls(&replicas));
    takeovers.push((
        "kill -9",
        watch.takeover_after(fault, Duration::from_secs(20)).await,
    ));
    let survivors: Vec<&Replica> = replicas.iter().collect();
    let leader = agreed_leader(&survivors, Duration::from_secs(5)).await;
    // A replacement joins as a standby.
    replicas.push(replica_of(&replicas[0].server, &nats).await);
    load.set_live(urls(&replicas));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. SIGSTOP of the leader; once resumed, it has stepped down and says so.
    let fault = Instant::now();
    let paused = leader;
    replicas[paused].server.signal("STOP");
    load.set_live(
        replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != paused)
            .map(|(_, r)| r.server.base_url().to_owned())
            .collect(),
    );
    takeovers.push((
        "SIGSTOP",
        watch.takeover_after(fault, Duration::from_secs(20)).await,
    ));
    replicas[paused].server.signal("CONT");
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = agreed_leader(&all, Duration::from_secs(10)).await;
    assert_ne!(leader, paused, "the paused leader took the lease back");
    load.set_live(urls(&replicas));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The leader loses NATS (only it: the others keep their connections).
    let fault = Instant::now();
    let cut = leader;
    replicas[cut].cut_off_nats();
    takeovers.push((
        "NATS cut",
        watch.takeover_after(fault, Duration::from_secs(20)).await,
    ));
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = agreed_leader(&all, Duration::from_secs(5)).await;
    assert_ne!(leader, cut, "the leader cut off from NATS kept the lease");
    let cut_state = relay_state(&replicas[cut].server).await.expect("answers");
    assert_eq!(cut_state["nats_connected"], false, "{cut_state}");
    replicas[cut].restore_nats();
    tokio::time::sleep(Duration::from_secs(2)).await;

    if faults == Faults::RelayAndNatsNodes {
        kill_nats_nodes(&mut nats, &replicas, leader, &watch, &mut takeovers).await;
    }

    let issued = load.stop().await;
    let expected = publishable_event_ids(replicas[0].server.pg().await).await;
    // Every replica's /readyz drains to a zero backlog (standbys count from the
    // checkpoint).
    let start = Instant::now();
    loop {
        let mut backlogs = Vec::new();
        for r in &replicas {
            backlogs.push(relay_state(&r.server).await.map(|s| s["backlog"].clone()));
        }
        if backlogs
            .iter()
            .all(|b| b.as_ref().and_then(Value::as_i64) == Some(0))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "backlogs did not drain: {backlogs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    TestNats::until_stream_settled(&nats, STREAM, Duration::from_secs(20)).await;
    // Each node's view of the stream once every node is back (a node restarted last
    // may still be catching up; the stream's answers come from its leader).
    let start = Instant::now();
    let views = loop {
        let mut views = Vec::new();
        for node in &nats {
            views.push(node.stream_state(STREAM).await);
        }
        if views.iter().all(|v| {
            v.as_ref()
                .is_some_and(|(messages, _)| *messages as usize >= expected.len())
        }) || start.elapsed() > Duration::from_secs(20)
        {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("the stream as each node answers (messages, leader): {views:?}");
    let most = views.iter().flatten().map(|(n, _)| *n).max().unwrap_or(0);
    let events: Vec<Message> = nats[0]
        .stream_messages_at_least(STREAM, most)
        .await
        .iter()
        .map(|m| Message::from_json(&m.payload).expect("a stream message"))
        .collect();
    if let Err(difference) = stream_matches_log(&events, &expected) {
        // What each relay said about the stream's end, to tell a lost message from a
        // backlog.
        for (i, r) in replicas.iter().chain([&killed]).enumerate() {
            let said: Vec<String> = r
                .server
                .log()
                .lines()
                .filter(|l| l.contains("WARN") && (l.contains("stream") || l.contains("NATS")))
                .map(str::to_owned)
                .collect();
            eprintln!("replica {i}'s relay warnings:\n{}", said.join("\n"));
        }
        panic!(
            "the stream is not the log's token events, each once, in log order: {difference}; \
             takeovers {takeovers:?}; the stream per node {views:?}"
        );
    }
    eprintln!(
        "{issued} tokens issued; {} events; takeovers: {takeovers:?}",
        events.len()
    );
    for (fault, gap) in &takeovers {
        assert!(
            *gap <= TAKEOVER_GOAL,
            "takeover after {fault} took {gap:?} from the leader's last progress"
        );
    }
    drop(watch);
    // The killed replica may own the database: stopping it drops it.
    for r in replicas.into_iter().chain([killed]) {
        r.server.stop().await;
    }
}

/// Kills the NATS node the relay leader uses, then the one leading the stream, one at
/// a time, each restarted and caught up before the next.
async fn kill_nats_nodes(
    nats: &mut [TestNats],
    replicas: &[Replica],
    leader: usize,
    watch: &Watch,
    takeovers: &mut Vec<(&'static str, Duration)>,
) {
    // 4. The NATS node the relay leader is connected to is killed (the stream led from
    // another node): the relay reconnects to another node and goes on.
    let node = replicas[leader]
        .proxies
        .iter()
        .position(|p| p.open_connections() > 0)
        .expect("the relay leader is connected to a NATS node");
    let other = (node + 1) % nats.len();
    if nats[other].stream_leader(STREAM).await == Some(format!("n{node}")) {
        nats[other].move_stream_leader(STREAM).await;
    }
    TestNats::until_stream_settled(nats, STREAM, Duration::from_secs(20)).await;
    assert_ne!(
        nats[other].stream_leader(STREAM).await,
        Some(format!("n{node}")),
        "the stream's leadership came back to the node about to be killed"
    );
    let fault = Instant::now();
    nats[node].stop().await;
    let gap = watch.takeover_after(fault, Duration::from_secs(20)).await;
    eprintln!(
        "the leader's NATS node killed: the stream's leader then, and its changes (offset, leader): {:?}",
        watch.leaders_since(fault)
    );
    // Settled after the gap: an election that ends it has been seen by then.
    if !watch.election_between(fault, Instant::now()) {
        takeovers.push(("the leader's NATS node killed", gap));
    } else {
        // A busy cluster can lose its stream leader with the node (heartbeats late):
        // the stream is writable again after JetStream's election, not the relay's.
        eprintln!(
            "the stream re-elected its leader with the node killed: grew again after {gap:?}"
        );
        assert!(
            gap <= NATS_ELECTION_BOUND,
            "the stream grew again only {gap:?} after the node was killed"
        );
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    agreed_leader(&all, Duration::from_secs(5)).await;
    until_every_replica_has_nats(replicas, Duration::from_secs(5)).await;
    nats[node].resume().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 5. The NATS node leading the stream is killed: the stream takes writes again once
    // JetStream has elected another leader, which its Raft election timeout bounds (a
    // follower waits 4-9 s for a lost leader in nats-server 2.9), not the relay.
    // One node down at a time: the one restarted last has caught up first.
    TestNats::until_stream_settled(nats, STREAM, Duration::from_secs(20)).await;
    let stream_leader = nats[0]
        .stream_leader(STREAM)
        .await
        .expect("the stream has a leader");
    let node: usize = stream_leader
        .trim_start_matches('n')
        .parse()
        .expect("nodes are named n0, n1, n2");
    let fault = Instant::now();
    nats[node].stop().await;
    let gap = watch.takeover_after(fault, Duration::from_secs(40)).await;
    eprintln!("the stream's NATS leader killed: the stream grew again after {gap:?}");
    assert!(
        gap <= NATS_ELECTION_BOUND,
        "the stream grew again only {gap:?} after its leader node was killed"
    );
    let all: Vec<&Replica> = replicas.iter().collect();
    agreed_leader(&all, Duration::from_secs(10)).await;
    until_every_replica_has_nats(replicas, Duration::from_secs(5)).await;
    nats[node].resume().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
}
