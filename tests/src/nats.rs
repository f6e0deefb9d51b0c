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
        let dir =
            std::env::temp_dir().join(format!("valet-test-nats-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("nats store dir");
        let mut nats = TestNats {
            port: free_port(),
            dir,
            child: None,
        };
        nats.resume().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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

    /// Every message of the stream, in stream order (an ordered consumer from the start).
    pub async fn stream_messages(&self, stream: &str) -> Vec<async_nats::jetstream::Message> {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        let total = stream.info().await.expect("stream info").state.messages;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut out = Vec::new();
        while (out.len() as u64) < total {
            match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                Ok(Some(Ok(message))) => out.push(message),
                other => panic!(
                    "reading the stream failed after {} messages: {other:?}",
                    out.len()
                ),
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
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl NatsProxy {
    pub async fn start(nats: &TestNats) -> NatsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = nats.port;
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(cut);
        let accepting = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *accepting.borrow() {
                    // Cut off: the connection is refused by closing it at once.
                    continue;
                }
                let mut cut_off = accepting.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_off.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        NatsProxy { port, cut, task }
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

/// The event ids the relay publishes, in log (commit) order.
pub async fn publishable_event_ids(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query(
        "SELECT event_id::text FROM events WHERE stream_id LIKE 'grant-%' AND event_type IN \
         ('GrantIssued', 'TokensRefreshed', 'AccessTokenRevoked', 'GrantRevoked') \
         ORDER BY xact, position",
        &[],
    )
    .await
    .expect("publishable events")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Whether the stream holds exactly the log's token events (`log`: their event ids in
/// commit order), each once, in that order; if not, a short account of how it differs.
pub fn stream_matches_log(stream: &[valet_wire::TokenEvent], log: &[String]) -> Result<(), String> {
    let ids: Vec<&str> = stream.iter().map(|e| e.event_id.as_str()).collect();
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
        .filter(|e| {
            let previous = last_of_grant.insert(e.grant_id.as_str(), e.position);
            previous.is_some_and(|p| p >= e.position)
        })
        .count();
    Err(format!(
        "{} messages ({} distinct) for {} events: missing {}, foreign {}, {backwards} behind a \
         later event of their grant; first difference at {first_difference:?}",
        ids.len(),
        stored.len(),
        log.len(),
        logged.difference(&stored).count(),
        stored.difference(&logged).count(),
    ))
}
