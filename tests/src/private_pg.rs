//! A PostgreSQL cluster of the test's own (initdb + pg_ctl from the machine's
//! PostgreSQL packages), for tests that must stop or restart the database under the
//! server without disturbing the other tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// A private cluster on a free port of 127.0.0.1, with trust authentication for the
/// `postgres` role. Stopped (immediately) and deleted when dropped.
pub struct PrivatePg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

/// The directory of `initdb` and `pg_ctl`: `VALET_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("VALET_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_default()
}

/// Whether this process runs as root: `/proc/self` belongs to the effective user.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl PrivatePg {
    /// Creates and starts the cluster. PostgreSQL refuses to run as root, so as root
    /// its commands run as the `postgres` user (`runuser`).
    pub fn start() -> PrivatePg {
        let pg = PrivatePg::init();
        pg.pg_ctl(&["start"]);
        pg
    }

    /// A cluster that accepts TCP connections over TLS only (`hostssl` in pg_hba.conf,
    /// no `host` line), serving the certificate chain and key given as PEM.
    pub fn start_tls_only(cert_pem: &str, key_pem: &str) -> PrivatePg {
        let pg = PrivatePg::init();
        let data = pg.data();
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, pem).expect("write the server's certificate");
            // PostgreSQL refuses a key others can read, or one it does not own.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if running_as_root() {
                let status = Command::new("chown")
                    .arg("postgres:")
                    .arg(&path)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown postgres: {}", path.display());
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .expect("append to postgresql.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("write pg_hba.conf");
        pg.pg_ctl(&["start"]);
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn init() -> PrivatePg {
        let bin = pg_bin();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("valet-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let pg = PrivatePg { bin, dir, port };
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&pg.dir)
                .status()
                .expect("chown the cluster directory");
            assert!(status.success(), "chown postgres: {}", pg.dir.display());
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the cluster (fast: open sessions are terminated), then starts it again.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-m", "fast"]);
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.display()
        );
        let mut all = vec![
            "-D",
            data.to_str().expect("utf-8 path"),
            "-l",
            log.to_str().expect("utf-8 path"),
            "-o",
            &options,
            "-w",
        ];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let program = if path.is_file() {
            path
        } else {
            PathBuf::from(program)
        };
        if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {program} (PostgreSQL's server binaries: install Debian's \
                     postgresql, or set VALET_PG_BIN): {e}"
                )
            });
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\nlog: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
