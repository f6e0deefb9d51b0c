//! `valet`: the composition root. Parses options (flags win over the environment),
//! wires the store, use cases and HTTP server together, and runs one command.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use axum::serve::ListenerExt as _;
use clap::{Args, Parser, Subcommand};
/// mimalloc instead of glibc malloc: under load glibc spent about a quarter of the
/// server's CPU in malloc/free (cross-thread frees, consolidation), and a rebuild most of
/// its writer thread's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod admin_args;
mod audit;
mod keys;
mod lineage;
mod logwriter;
mod rebuild;
mod seed;
mod timefmt;
mod tls;
mod wiring;

use std::sync::Arc;
use std::time::Duration;

use valet_app::outbox::RelayStatus;
use valet_relay::RelayConfig;

use admin_args::{ClientCommand, UserCommand};

#[derive(Parser, Debug)]
#[command(
    name = "valet",
    version,
    about = "Valet: an event-sourced OAuth 2.0 authorization server",
    long_about = "Valet: an event-sourced OAuth 2.0 authorization server.\n\n\
        Every option has an environment variable; a flag wins over the environment.\n\
        Exit status is 0 on success, non-zero with a one-line error on stderr otherwise."
)]
struct Cli {
    /// PostgreSQL URL of the event log and read models.
    #[arg(
        long,
        env = "VALET_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/valet",
        global = true
    )]
    database_url: String,
    #[command(flatten)]
    kek: KekArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the key-encryption key (KEK) that seals private signing keys comes from.
/// `valet serve` and `valet keys rotate|retire` need the same one.
#[derive(Args, Debug, Clone)]
struct KekArgs {
    /// File holding the KEK (32 bytes, base64 or hex). Created with a new key on first
    /// use if missing. Default: $XDG_STATE_HOME/valet/key-encryption-key, else
    /// ~/.local/state/valet/key-encryption-key.
    #[arg(
        long,
        env = "VALET_KEY_ENCRYPTION_KEY_FILE",
        global = true,
        value_name = "PATH"
    )]
    key_encryption_key_file: Option<std::path::PathBuf>,
    /// The KEK itself (base64 or hex), instead of a file.
    #[arg(
        long = "key-encryption-key",
        env = "VALET_KEY_ENCRYPTION_KEY",
        hide_env_values = true,
        global = true,
        hide = true
    )]
    key_encryption_key: Option<String>,
    /// Seconds a rotated-in signing key is published (in the JWKS) before it signs:
    /// at least as long as relying parties cache the JWKS (it says max-age=300).
    #[arg(long, env = "VALET_KEY_PUBLISH_LEAD", default_value_t = 300, global = true,
          value_parser = clap::value_parser!(u32).range(0..=2_592_000))]
    key_publish_lead: u32,
}

impl KekArgs {
    /// A retired key stays published for the longest access-token lifetime Valet
    /// allows, whatever the server's setting: everything it signed has expired by then.
    fn policy(&self) -> valet_app::keys::KeyPolicy {
        valet_app::keys::KeyPolicy {
            publish_lead_seconds: self.key_publish_lead,
            keep_for_seconds: valet_domain::AccessTokenTtl::MAX_SECONDS,
        }
    }
}

/// The options of `valet serve`.
#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// NATS server that token lifecycle events are published to, or a comma-separated
    /// list of a cluster's servers.
    #[arg(long, env = "VALET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Seconds JetStream remembers event ids, dropping a republished event (a relay
    /// taking over after a crash republishes at most what came after the last
    /// checkpoint). At most the stream's max age.
    #[arg(long, env = "VALET_NATS_DUPLICATE_WINDOW", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    nats_duplicate_window: u64,
    /// Copies of the stream JetStream keeps: 1, or 3 (or 5) on a NATS cluster, so the
    /// stream survives the loss of a node.
    #[arg(long, env = "VALET_NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_stream_replicas: u8,
    /// Address the HTTP server listens on.
    #[arg(long, env = "VALET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Issuer identifier (RFC 8414); defaults to http://<listen address>.
    #[arg(long, env = "VALET_ISSUER")]
    issuer: Option<String>,
    /// The `aud` of JWT access tokens (clients registered with `--access-token-format
    /// jwt`): the identifier resource services check. Defaults to the issuer.
    #[arg(long, env = "VALET_ACCESS_TOKEN_AUDIENCE")]
    access_token_audience: Option<String>,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "VALET_ACCESS_TOKEN_TTL", default_value_t = 3600)]
    access_token_ttl: u32,
    /// Refresh-token lifetime in seconds.
    #[arg(long, env = "VALET_REFRESH_TOKEN_TTL", default_value_t = 2_592_000)]
    refresh_token_ttl: u32,
    /// Authorization-code lifetime in seconds (at most 600).
    #[arg(long, env = "VALET_CODE_TTL", default_value_t = 60)]
    code_ttl: u32,
    /// PostgreSQL connections of the server.
    #[arg(long, env = "VALET_DB_POOL_SIZE", default_value_t = 32)]
    db_pool_size: usize,
    /// A reverse proxy whose `Forwarded` / `X-Forwarded-For` headers name the client's
    /// address (for failed-authentication limits and the audit log). Repeat, or
    /// comma-separate in the environment. Without it those headers are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "VALET_TRUSTED_PROXIES",
        value_name = "IP",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// CA (PEM) that signed NATS's certificate, trusted instead of the system's roots
    /// (TLS to NATS is then required; a `tls://` URL requires it too).
    #[arg(long, env = "VALET_NATS_CA_FILE", value_name = "PEM")]
    nats_ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) for a NATS server that verifies clients.
    #[arg(
        long,
        env = "VALET_NATS_CLIENT_CERT",
        requires = "nats_client_key",
        value_name = "PEM"
    )]
    nats_client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --nats-client-cert.
    #[arg(
        long,
        env = "VALET_NATS_CLIENT_KEY",
        requires = "nats_client_cert",
        value_name = "PEM"
    )]
    nats_client_key: Option<std::path::PathBuf>,
    /// PEM certificate chain to serve HTTPS with (with --tls-key); reloaded when the file
    /// changes, so a renewal needs no restart.
    #[arg(long, env = "VALET_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "VALET_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,
    /// TLS ends at a trusted proxy in front (give its address with --trusted-proxy and
    /// the https:// --issuer clients use): plain HTTP may then listen on the network.
    #[arg(long, env = "VALET_BEHIND_PROXY", conflicts_with = "tls_cert")]
    behind_proxy: bool,
    /// Failed authentications (wrong client secrets, failed sign-ins) one address may
    /// make in a minute before it gets 429 for a minute. Raise it when many clients
    /// share one address (NAT) and no trusted proxy names them.
    #[arg(long, env = "VALET_FAILED_AUTH_PER_MINUTE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    failed_auth_per_minute: u32,
    /// How long a sign-in lasts, in seconds: after it the user signs in again.
    #[arg(long, env = "VALET_SESSION_LIFETIME", default_value_t = 28_800,
          value_parser = clap::value_parser!(u32).range(1..=2_592_000))]
    session_lifetime: u32,
    /// How long a sign-in lasts without use, in seconds (signing in to an app or opening
    /// the account page uses it); 0: no idle timeout.
    #[arg(long, env = "VALET_SESSION_IDLE_TIMEOUT", default_value_t = 1_800,
          value_parser = clap::value_parser!(u32).range(0..=2_592_000))]
    session_idle_timeout: u32,
    /// Dynamic client registration at /register (RFC 7591, 7592): `off`, `open` (anyone
    /// may register a client) or `initial-access-token` (only bearers of a token from
    /// `POST /admin/v1/initial-access-tokens`).
    #[arg(long, env = "VALET_REGISTRATION", default_value = "off",
          value_parser = ["off", "open", "initial-access-token"])]
    registration: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the database if it does not exist and apply migrations (idempotent).
    Migrate,
    /// Serve the OAuth endpoints and relay token events to NATS (read models are
    /// maintained inline with every write).
    Serve(ServeArgs),
    /// Register, list and disable clients (applications).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Create and disable users (resource owners who log in on the authorization page).
    #[command(subcommand)]
    User(UserCommand),
    /// List, rotate and retire the keys that sign id_tokens (published at /jwks.json).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Answer questions from the event log: the timeline, a token's lineage, and who
    /// held which grants at a moment in the past.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rebuild (or verify) the read models from the event log.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Fill the database with a generated log of about N events (for the replay benchmarks).
    Seed {
        /// How many events to write.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// How many service clients hold the service grants (round robin).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        clients: u64,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Every signing key: its stage (published, active, retired) and dates.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Publish a new key now; it signs once the publication lead has passed
    /// (--key-publish-lead), and the key it replaces stays published until what it
    /// signed has expired.
    Rotate {
        /// RS256, ES256 or EdDSA.
        #[arg(long, default_value = "RS256")]
        algorithm: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Stop signing with a key now (a compromised key, say). The active key of an
    /// algorithm can be retired only once a successor is published (`rotate` first),
    /// which then signs at once.
    Retire {
        #[arg(value_name = "KID")]
        kid: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// The timeline of events, oldest first. Times: RFC 3339, YYYY-MM-DD, `now` or @<unix seconds>.
    Log {
        /// Only this stream (e.g. grant-<uuid>, client-<id>).
        #[arg(long)]
        stream: Option<String>,
        /// Only events about this client (its registration, codes, grants, consents).
        #[arg(long)]
        client: Option<String>,
        /// Only events about this user (by username).
        #[arg(long)]
        user: Option<String>,
        /// Recorded at or after this time.
        #[arg(long)]
        since: Option<String>,
        /// Recorded at or before this time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = audit::Format::Table)]
        format: audit::Format,
    },
    /// The lineage of one token: client, user, consent, code, every rotation, and when,
    /// why and by whom it was revoked.
    Token {
        /// The token itself, or its SHA-256 as 64 lowercase hex characters.
        #[arg(value_name = "TOKEN_OR_SHA256")]
        token: String,
    },
    /// The grants and access tokens active at TIME, by replaying the log up to it.
    At {
        #[arg(value_name = "TIME")]
        time: String,
        #[arg(long)]
        client: Option<String>,
        /// By username.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_enum, default_value_t = audit::Format::Table)]
        format: audit::Format,
    },
}

#[derive(Subcommand, Debug)]
enum ProjectionsCommand {
    /// Rebuild every read model from the log into a scratch schema, then replace the live
    /// ones (or, with --verify, compare and exit non-zero on any difference). An
    /// interrupted rebuild resumes where it stopped.
    Rebuild {
        /// Compare with the live read models instead of replacing them.
        #[arg(long)]
        verify: bool,
        /// Events applied per transaction.
        #[arg(long, default_value_t = 2000)]
        batch_size: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    log.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() -> logwriter::LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VALET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = logwriter::start();
    // Colours only for a person at a terminal: a log file or journald would keep the
    // escape codes (and formatting them costs the request log a fifth of its time).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(colour)
        .init();
    guard
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let database_url = cli.database_url;
    match cli.command {
        Command::Migrate => {
            let report = valet_store::migrate(&database_url)
                .await
                .context("migrate")?;
            if report.database_created {
                println!("created database");
            }
            if report.applied.is_empty() {
                println!("schema up to date");
            } else {
                println!("applied migrations {:?}", report.applied);
            }
            Ok(())
        }
        Command::Serve(args) => serve(&database_url, &cli.kek, args).await,
        Command::Keys(command) => {
            keys::keys(&database_url, &cli.kek, cli.kek.policy(), command).await
        }
        Command::Client(command) => admin::client(&database_url, command).await,
        Command::User(command) => admin::user(&database_url, command).await,
        Command::Audit(AuditCommand::Log {
            stream,
            client,
            user,
            since,
            until,
            format,
        }) => {
            let args = audit::LogArgs {
                stream,
                client,
                user,
                since,
                until,
                format,
            };
            audit::log(&database_url, args).await
        }
        Command::Audit(AuditCommand::Token { token }) => {
            lineage::token(&database_url, &token).await
        }
        Command::Audit(AuditCommand::At {
            time,
            client,
            user,
            format,
        }) => audit::at(&database_url, &time, client, user, format).await,
        Command::Projections(ProjectionsCommand::Rebuild { verify, batch_size }) => {
            rebuild::rebuild(&database_url, verify, batch_size).await
        }
        Command::Seed { events, clients } => seed::seed(&database_url, events, clients).await,
    }
}

async fn serve(database_url: &str, kek: &KekArgs, config: ServeArgs) -> anyhow::Result<()> {
    // Refuse bad settings before binding the port.
    let settings = wiring::settings(&config, String::new())?;
    let transport = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => tls::Transport::Tls {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ if config.behind_proxy => tls::Transport::BehindProxy {
            trusted_proxies: config.trusted_proxies.len(),
        },
        _ => tls::Transport::Plain,
    };
    let scheme = match transport {
        tls::Transport::Tls { .. } => "https",
        _ => "http",
    };
    let issuer_for = |addr: SocketAddr| {
        config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"))
    };
    tls::check(config.listen, &issuer_for(config.listen), &transport)
        .map_err(anyhow::Error::msg)?;
    let nats_tls = valet_wire::NatsTls {
        ca_file: config.nats_ca_file.clone(),
        client_cert: config
            .nats_client_cert
            .clone()
            .zip(config.nats_client_key.clone()),
    };
    valet_relay::check_nats_tls(&config.nats_url, &nats_tls)
        .await
        .map_err(anyhow::Error::msg)?;
    let tls_config = match &transport {
        tls::Transport::Tls { cert, key } => Some(tls::load(cert, key).await?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr().context("read the bound address")?;
    let issuer = issuer_for(addr);
    let settings = valet_app::oauth::Settings {
        issuer: issuer.clone(),
        ..settings
    };
    let mut oauth = wiring::oauth(database_url, settings.clone(), config.db_pool_size).await?;
    if let Some(host) = oauth.store.endpoint().unprotected_remote() {
        tracing::warn!(
            %host,
            "PostgreSQL is reached off this machine without checking its certificate: add sslmode=verify-full and sslrootcert=<CA file> to the database URL"
        );
    }
    if let Some(audience) = &config.access_token_audience {
        oauth = oauth.with_access_token_audience(audience.clone());
    }
    let candidate = valet_app::entropy::random_bytes::<32>(&valet_app::OsRandom)
        .context("draw a session key")?;
    let session_key = oauth
        .store
        .shared_secret("session_key", candidate)
        .await
        .context("load the session key")?;
    let ring = keys::start_ring(keys::signing_keys(
        &oauth.store,
        keys::load_kek(kek)?,
        kek.policy(),
    ))
    .await?;

    let relay_status = Arc::new(RelayStatus::default());
    let relay = valet_relay::start(
        oauth
            .store
            .with_own_pool(2)
            .context("create the relay's pool")?,
        RelayConfig {
            nats_url: config.nats_url.clone(),
            // Resource services bootstrap by replaying the stream: keep at least a day,
            // and never less than an access token lives.
            max_age: Duration::from_secs(u64::from(config.access_token_ttl).max(86_400)),
            duplicate_window: Duration::from_secs(config.nats_duplicate_window),
            batch: 500,
            holder: valet_relay::this_process(),
            stream_replicas: usize::from(config.nats_stream_replicas),
            tls: nats_tls,
        },
        relay_status.clone(),
    )
    .context("start the relay")?;

    // Back-channel logout: its own pool and thread, the same signing keys and session
    // policy as the HTTP side (it reads which sessions still stand).
    let session_policy = valet_app::sessions::SessionPolicy {
        lifetime_seconds: config.session_lifetime,
        idle: valet_domain::session::IdleTimeout(
            (config.session_idle_timeout > 0).then_some(config.session_idle_timeout),
        ),
    };
    let backchannel_status = Arc::new(RelayStatus::default());
    let dispatcher_store = oauth
        .store
        .with_own_pool(2)
        .context("create the back-channel logout dispatcher's pool")?;
    let dispatcher_reads = valet_projector::PgReadModels::new(dispatcher_store.pool().clone());
    let dispatcher = valet_relay::start_dispatcher(
        valet_app::oauth::OAuth::new(
            dispatcher_store,
            dispatcher_reads,
            valet_app::SystemClock,
            settings,
        )
        .with_jwt_signer(ring.signer.clone())
        .with_session_policy(session_policy),
        valet_relay::DispatcherConfig {
            holder: valet_relay::this_process(),
            retry: valet_relay::DEFAULT_RETRY,
            timeout: Duration::from_secs(5),
        },
        backchannel_status.clone(),
    )
    .context("start the back-channel logout dispatcher")?;

    // The admin API's lists (sea-orm) and audit replays: pools of their own.
    let admin_reads = valet_admin_read::PgAdminReads::connect(
        oauth
            .store
            .with_own_pool(2)
            .context("create the admin audit pool")?,
    )
    .await
    .context("set up the admin API's read side")?;
    // The admin API's rotations and retirements: the ring's use cases with the same KEK.
    let key_admin = keys::signing_keys(&oauth.store, keys::load_kek(kek)?, kek.policy());
    let attempts = Arc::new(valet_store::PgAttempts::new(oauth.store.clone()));
    let state =
        Arc::new(
            valet_http::AppState::new(oauth.with_jwt_signer(ring.signer), session_key)
                .with_attempts(attempts)
                .with_trusted_proxies(valet_http::TrustedProxies::new(config.trusted_proxies))
                .with_failure_limits(valet_http::FailureLimits::per_minute(
                    config.failed_auth_per_minute,
                ))
                .with_relay(relay_status)
                .with_backchannel(backchannel_status)
                .with_jwks(ring.jwks)
                .with_admin_reads(Arc::new(admin_reads))
                .with_key_admin(Arc::new(key_admin))
                .with_registration(
                    valet_app::registration::RegistrationPolicy::parse(&config.registration)
                        .map_err(anyhow::Error::msg)
                        .context("--registration")?,
                )
                .with_session_lifetime(std::time::Duration::from_secs(u64::from(
                    config.session_lifetime,
                )))
                .with_session_idle_timeout((config.session_idle_timeout > 0).then(|| {
                    std::time::Duration::from_secs(u64::from(config.session_idle_timeout))
                })),
        );
    let app = valet_http::router(state);
    tracing::info!(listen = %addr, %issuer, "valet serving");
    // Scripts and tests wait for this line: the socket is bound and accepting.
    println!("valet listening on {scheme}://{addr}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    match (tls_config, transport) {
        (Some(tls_config), tls::Transport::Tls { cert, key }) => {
            tls::reload_on_change(tls_config.clone(), cert, key);
            let handle = axum_server::Handle::new();
            let stopping = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stopping.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            axum_server::from_tcp(listener.into_std().context("take the listening socket")?)
                .context("serve HTTPS")?
                .acceptor(tls::NoDelayAcceptor(
                    axum_server::tls_rustls::RustlsAcceptor::new(tls_config),
                ))
                .handle(handle)
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .context("https server")?;
        }
        _ => {
            // No Nagle delay on responses: a small write that follows another one
            // unacknowledged (HTTP/2 frames, a body after its headers) would otherwise
            // wait for the peer's delayed ACK. A socket that refuses it is served anyway.
            let listener = listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
                }
            });
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("http server")?;
        }
    }
    relay.stop();
    dispatcher.stop();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
