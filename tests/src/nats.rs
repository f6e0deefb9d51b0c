//! A private nats-server with JetStream per test, on a free loopback port, so tests can
//! stop and restart it (NATS outages) without disturbing anyone else.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::process::{Child, Command};

pub struct TestNats {
    pub port: u16,
    dir: PathBuf,
    /// Options beyond the port and the JetStream store (a cluster node's).
    args: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn nats_server() -> String {
    std::env::var("VALET_NATS_SERVER").unwrap_or_else(|_| {
        [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
        .to_owned()
    })
}

impl TestNats {
    pub async fn start() -> TestNats {
        let mut nats = TestNats::unstarted(Vec::new());
        nats.resume().await;
        nats
    }

    /// A server that speaks TLS only, with the certificate and key (PEM files) given;
    /// with `client_ca`, it also verifies clients' certificates against it (mutual TLS).
    /// Reach it at [`TestNats::tls_url`].
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> TestNats {
        let mut args = vec![
            "--tls".to_owned(),
            "--tlscert".to_owned(),
            cert.display().to_string(),
            "--tlskey".to_owned(),
            key.display().to_string(),
        ];
        if let Some(ca) = client_ca {
            args.extend([
                "--tlsverify".to_owned(),
                "--tlscacert".to_owned(),
                ca.display().to_string(),
            ]);
        }
        let mut nats = TestNats::unstarted(args);
        nats.resume().await;
        nats
    }

    /// The URL of a server started with [`TestNats::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    fn unstarted(args: Vec<String>) -> TestNats {
        let dir =
            std::env::temp_dir().join(format!("valet-test-nats-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("nats store dir");
        TestNats {
            port: free_port(),
            dir,
            args,
            child: None,
        }
    }

    /// A cluster of `nodes` servers with JetStream, routed to each other, once JetStream
    /// answers on every node. Clients are not told of the other nodes
    /// (`no_advertise`): each knows only the URLs it was given, so a proxy in front of a
    /// node can cut a client off.
    pub async fn cluster(nodes: usize) -> Vec<TestNats> {
        let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let name = format!("valet-test-{}", uuid::Uuid::now_v7().simple());
        let mut cluster = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let mut node = TestNats::unstarted(vec![
                "--cluster_name".into(),
                name.clone(),
                "--server_name".into(),
                format!("n{i}"),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                all_routes.clone(),
                "--no_advertise=true".into(),
            ]);
            node.resume().await;
            cluster.push(node);
        }
        cluster[0].until_streams_can_be_placed(nodes).await;
        cluster
    }

    /// The client URL of every node of `cluster`, comma-separated.
    pub fn urls(cluster: &[TestNats]) -> String {
        cluster
            .iter()
            .map(TestNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a stream with `replicas` copies can be created (the cluster has formed
    /// and elected its JetStream leader).
    async fn until_streams_can_be_placed(&self, replicas: usize) {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let probe = async_nats::jetstream::stream::Config {
            name: "VALET_TEST_PROBE".into(),
            subjects: vec!["valet-test-probe".into()],
            num_replicas: replicas,
            ..Default::default()
        };
        let mut last = None;
        for _ in 0..300 {
            match js.create_stream(probe.clone()).await {
                Ok(_) => {
                    js.delete_stream("VALET_TEST_PROBE")
                        .await
                        .expect("delete the probe stream");
                    return;
                }
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the NATS cluster cannot place a stream: {last:?}");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Asks the server leading `stream` to hand the leadership to another node, and waits
    /// until another node leads it.
    pub async fn move_stream_leader(&self, stream: &str) {
        let before = self.stream_leader(stream).await;
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        for _ in 0..100 {
            let _ = client
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                    "".into(),
                )
                .await;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = self.stream_leader(stream).await;
                if now.is_some() && now != before {
                    return;
                }
            }
        }
        panic!("stream {stream} is still led by {before:?}");
    }

    /// Waits until every node of `cluster` answers that `stream` has a leader and every
    /// other node is a current replica with the same message count: a node restarted
    /// last has caught up, so the next node lost is the only one down.
    pub async fn until_stream_settled(cluster: &[TestNats], stream: &str, within: Duration) {
        let start = std::time::Instant::now();
        loop {
            let mut views = Vec::new();
            for node in cluster {
                views.push(node.stream_view(stream).await);
            }
            let settled = views.iter().all(|view| {
                view.as_ref().is_some_and(|(_, cluster_info)| {
                    cluster_info.leader.is_some()
                        && cluster_info.replicas.len() + 1 == cluster.len()
                        && cluster_info
                            .replicas
                            .iter()
                            .all(|peer| peer.current && !peer.offline && peer.lag.unwrap_or(0) == 0)
                })
            }) && views
                .windows(2)
                .all(|w| w[0].as_ref().map(|v| v.0) == w[1].as_ref().map(|v| v.0));
            if settled {
                return;
            }
            assert!(
                start.elapsed() < within,
                "stream {stream} did not settle within {within:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The stream's info as this node's client is answered.
    async fn stream_info(&self, stream: &str) -> Option<async_nats::jetstream::stream::Info> {
        let client = async_nats::connect(self.url()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.ok()?;
        stream.info().await.ok().cloned()
    }

    async fn stream_view(
        &self,
        stream: &str,
    ) -> Option<(u64, async_nats::jetstream::stream::ClusterInfo)> {
        let info = self.stream_info(stream).await?;
        Some((info.state.messages, info.cluster?))
    }

    /// The stream's message count and leader as this node's client is answered.
    pub async fn stream_state(&self, stream: &str) -> Option<(u64, Option<String>)> {
        let info = self.stream_info(stream).await?;
        Some((info.state.messages, info.cluster.and_then(|c| c.leader)))
    }

    /// The name of the server leading `stream` (its JetStream cluster leader), if any.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        self.stream_info(stream).await?.cluster?.leader
    }

    /// Kills the server (a NATS outage); its JetStream store stays on disk.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(nats_server())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server (install Debian's nats-server, or `make setup`)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not start on port {}", self.port);
    }

    /// Every message of the stream, in stream order (an ordered consumer from the start;
    /// a new one from where it stopped if it stalls, as one may while a cluster settles
    /// after a node restarts).
    pub async fn stream_messages(&self, stream: &str) -> Vec<async_nats::jetstream::Message> {
        self.stream_messages_at_least(stream, 0).await
    }

    /// As [`stream_messages`](Self::stream_messages), reading on until at least
    /// `at_least` messages came even if the stream's info counts fewer (in a cluster, a
    /// restarted node may answer with its own stale count).
    pub async fn stream_messages_at_least(
        &self,
        stream: &str,
        at_least: u64,
    ) -> Vec<async_nats::jetstream::Message> {
        use async_nats::jetstream::consumer::DeliverPolicy;
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        let total = stream
            .info()
            .await
            .expect("stream info")
            .state
            .messages
            .max(at_least);
        let mut out: Vec<async_nats::jetstream::Message> = Vec::new();
        let mut stalls = 0;
        while (out.len() as u64) < total {
            let deliver_policy = match out.last() {
                None => DeliverPolicy::All,
                Some(last) => DeliverPolicy::ByStartSequence {
                    start_sequence: last.info().expect("message info").stream_sequence + 1,
                },
            };
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .expect("ordered consumer");
            let mut messages = consumer.messages().await.expect("messages");
            while (out.len() as u64) < total {
                match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                    Ok(Some(Ok(message))) => out.push(message),
                    other => {
                        stalls += 1;
                        assert!(
                            stalls <= 5,
                            "reading the stream failed after {} of {total} messages: {other:?}",
                            out.len()
                        );
                        break;
                    }
                }
            }
        }
        out
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a nats-server, one per client under test, so a test can cut
/// one process off NATS while the others keep it (`cut`, `restore`).
pub struct NatsProxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl NatsProxy {
    /// One proxy in front of each node of `cluster`, and the URL list through them.
    pub async fn per_node(cluster: &[TestNats]) -> (Vec<NatsProxy>, String) {
        let mut proxies = Vec::new();
        for node in cluster {
            proxies.push(NatsProxy::start(node).await);
        }
        let urls = proxies
            .iter()
            .map(NatsProxy::url)
            .collect::<Vec<_>>()
            .join(",");
        (proxies, urls)
    }

    pub async fn start(nats: &TestNats) -> NatsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = nats.port;
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(cut);
        let accepting = cut.clone();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *accepting.borrow() {
                    // Cut off: the connection is refused by closing it at once.
                    continue;
                }
                let mut cut_off = accepting.subscribe();
                let open = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_off.wait_for(|cut| *cut) => {}
                    }
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        NatsProxy {
            port,
            open,
            cut,
            task,
        }
    }

    /// Connections through the proxy now open.
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for NatsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The event ids the relay publishes (token and signing-key events), in log (commit)
/// order.
pub async fn publishable_event_ids(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query(
        "SELECT event_id::text FROM events WHERE (stream_id LIKE 'grant-%' AND event_type IN \
         ('GrantIssued', 'TokensRefreshed', 'AccessTokenRevoked', 'GrantRevoked')) \
         OR (stream_id = 'signing-keys' AND event_type IN \
         ('SigningKeyPublished', 'SigningKeyActivated', 'SigningKeyRetired')) \
         ORDER BY xact, position",
        &[],
    )
    .await
    .expect("publishable events")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Whether the stream holds exactly the log's publishable events (`log`: their event ids
/// in commit order), each once, in that order; if not, a short account of how it differs.
pub fn stream_matches_log(stream: &[valet_wire::Message], log: &[String]) -> Result<(), String> {
    let ids: Vec<&str> = stream.iter().map(valet_wire::Message::event_id).collect();
    let log: Vec<&str> = log.iter().map(String::as_str).collect();
    if ids == log {
        return Ok(());
    }
    let stored: std::collections::HashSet<&str> = ids.iter().copied().collect();
    let logged: std::collections::HashSet<&str> = log.iter().copied().collect();
    let first_difference = ids.iter().zip(&log).position(|(a, b)| a != b);
    // Per grant, events must come in the order of their positions.
    let mut last_of_grant = std::collections::HashMap::new();
    let backwards = stream
        .iter()
        .filter_map(valet_wire::Message::token)
        .filter(|e| {
            let previous = last_of_grant.insert(e.grant_id.as_str(), e.position);
            previous.is_some_and(|p| p >= e.position)
        })
        .count();
    // Where the missing events sit in the log, as runs of log indexes: a tail not yet
    // published, or a hole inside the stream.
    let mut missing_runs: Vec<(usize, usize)> = Vec::new();
    for (i, id) in log.iter().enumerate() {
        if stored.contains(id) {
            continue;
        }
        match missing_runs.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => missing_runs.push((i, i)),
        }
    }
    let runs = missing_runs.len();
    missing_runs.truncate(5);
    Err(format!(
        "{} messages ({} distinct) for {} events: missing {} in {runs} runs of log indexes \
         (first: {missing_runs:?}), foreign {}, {backwards} behind a later event of their \
         grant; first difference at {first_difference:?}",
        ids.len(),
        stored.len(),
        log.len(),
        logged.difference(&stored).count(),
        stored.difference(&logged).count(),
    ))
}
