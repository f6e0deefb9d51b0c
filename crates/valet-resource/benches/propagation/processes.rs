//! The processes a run starts: nats-server and `valet`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Error;

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private nats-server (killed and its store removed on drop).
pub(crate) struct PrivateNats {
    pub(crate) url: String,
    pub(crate) dir: PathBuf,
    pub(crate) child: Child,
}

impl PrivateNats {
    pub(crate) async fn start() -> Result<PrivateNats, Error> {
        let bin = std::env::var("VALET_NATS_SERVER").unwrap_or_else(|_| {
            [
                "/usr/sbin/nats-server",
                "/usr/bin/nats-server",
                "/usr/local/bin/nats-server",
            ]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server")
            .to_owned()
        });
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "valet-lag-bench-nats-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e} (run scripts/services.sh)"))?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(PrivateNats {
                    url: format!("nats://127.0.0.1:{port}"),
                    dir,
                    child,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("nats-server did not listen on {port}").into())
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn valet(bin: &Path, db_url: &str, nats_url: &str) -> Command {
    let mut cmd = Command::new(bin);
    for key in [
        "VALET_ISSUER",
        "VALET_CODE_TTL",
        "VALET_ACCESS_TOKEN_TTL",
        "VALET_REFRESH_TOKEN_TTL",
    ] {
        cmd.env_remove(key);
    }
    cmd.env("VALET_DATABASE_URL", db_url)
        .env("VALET_NATS_URL", nats_url)
        .env("VALET_LISTEN", "127.0.0.1:0")
        .env("VALET_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub(crate) async fn run(mut cmd: Command, what: &str) -> Result<String, Error> {
    let out = cmd.output().await.map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) id: String,
    /// `Authorization: Basic ...` (RFC 6749 §2.3.1 encoding).
    pub(crate) basic: String,
}

pub(crate) async fn create_client(
    bin: &Path,
    db_url: &str,
    nats: &str,
    name: &str,
    extra: &[&str],
) -> Result<Client, Error> {
    let mut cmd = valet(bin, db_url, nats);
    cmd.args([
        "client",
        "create",
        "--name",
        name,
        "--grant-type",
        "client_credentials",
        "--scope",
        "read",
        "--json",
    ])
    .args(extra);
    let out = run(cmd, "valet client create").await?;
    let json: serde_json::Value = serde_json::from_str(out.trim())?;
    let id = json["client_id"].as_str().ok_or("no client_id")?.to_owned();
    let secret = json["client_secret"].as_str().ok_or("no client_secret")?;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(&id), enc(secret)))
    );
    Ok(Client { id, basic })
}

/// `valet serve` on `listen` (`127.0.0.1:0` for any free port), its log appended to
/// `log_path`; returns the process and its base URL.
pub(crate) async fn serve(
    bin: &Path,
    db_url: &str,
    nats: &str,
    log_path: &Path,
    listen: &str,
) -> Result<(Child, String), Error> {
    let mut cmd = valet(bin, db_url, nats);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    cmd.arg("serve")
        .env("VALET_LISTEN", listen)
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("valet listening on ") {
                return Some(url.trim().to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| format!("valet serve did not start (log: {})", log_path.display()))?;
    // Keep draining stdout so the server never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}
