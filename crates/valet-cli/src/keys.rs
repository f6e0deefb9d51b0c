//! `valet keys …`, the key-encryption key (KEK), and the server's key-ring loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::watch;
use valet_app::keys::{ActiveKeys, Jwks, Kek, KeyPolicy, SigningKeys, ACTOR_OPERATOR};
use valet_app::SystemClock;
use valet_domain::signing_key::{Algorithm, Key, KeyId, Stage};
use valet_store::PgEventStore;

use crate::{timefmt, KekArgs, KeysCommand};

pub type PgSigningKeys = SigningKeys<PgEventStore, PgEventStore, SystemClock>;

/// The KEK: `VALET_KEY_ENCRYPTION_KEY`, else the file (created on first use, mode 0600,
/// and said where).
pub fn load_kek(args: &KekArgs) -> anyhow::Result<Kek> {
    if let Some(text) = &args.key_encryption_key {
        return Kek::parse(text).context("VALET_KEY_ENCRYPTION_KEY");
    }
    let path = match &args.key_encryption_key_file {
        Some(path) => path.clone(),
        None => default_kek_path().context(
            "no key-encryption key: set --key-encryption-key-file or VALET_KEY_ENCRYPTION_KEY \
             (HOME is not set, so there is no default file)",
        )?,
    };
    read_or_create(&path)
}

/// `$XDG_STATE_HOME/valet/key-encryption-key`, else `~/.local/state/valet/…`.
fn default_kek_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        })?;
    Some(state.join("valet/key-encryption-key"))
}

fn read_or_create(path: &Path) -> anyhow::Result<Kek> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => return Kek::parse(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let (kek, text) = Kek::generate().context("draw a key-encryption key")?;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut file) => {
            file.write_all(format!("{text}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("write {}", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                "created a key-encryption key for the signing keys: back it up, and give every \
                 replica and the CLI the same one (--key-encryption-key-file)"
            );
            Ok(kek)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            Kek::parse(&text).with_context(|| format!("{}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("create {}", path.display())),
    }
}

pub fn signing_keys(store: &PgEventStore, kek: Kek, policy: KeyPolicy) -> PgSigningKeys {
    SigningKeys::new(store.clone(), store.clone(), SystemClock, kek, policy)
}

/// What the key ring gives the server: the JWKS to serve and the keys to sign with.
pub struct Ring {
    pub jwks: watch::Receiver<Arc<Jwks>>,
    pub signer: Arc<ActiveKeys>,
}

/// The server's key ring: checked and bootstrapped at start, then every second keys
/// whose publication lead has passed are activated, and the JWKS and the signer
/// refreshed.
pub async fn start_ring(keys: PgSigningKeys) -> anyhow::Result<Ring> {
    keys.check_kek().await.context(
        "the key-encryption key does not open the signing keys: give this replica the KEK the \
         others use (--key-encryption-key-file or VALET_KEY_ENCRYPTION_KEY)",
    )?;
    keys.ensure()
        .await
        .context("create the first signing keys")?;
    let signer = Arc::new(ActiveKeys::default());
    signer
        .refresh(&keys)
        .await
        .context("load the active signing keys")?;
    let (tx, rx) = watch::channel(Arc::new(keys.jwks().await.context("read the JWKS")?));
    let active = signer.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(error) = keys.activate_due().await {
                tracing::warn!(%error, "cannot activate due signing keys; retrying");
            }
            if let Err(error) = active.refresh(&keys).await {
                tracing::warn!(%error, "cannot load the active signing keys; signing with the last ones");
            }
            match keys.jwks().await {
                Ok(jwks) => {
                    tx.send_if_modified(|current| {
                        let changed = serde_json::to_value(&**current).ok()
                            != serde_json::to_value(&jwks).ok();
                        if changed {
                            *current = Arc::new(jwks);
                        }
                        changed
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot read the JWKS; keeping the last one"),
            }
        }
    });
    Ok(Ring { jwks: rx, signer })
}

fn row(key: &Key) -> serde_json::Value {
    json!({
        "kid": key.key_id.to_string(),
        "alg": key.algorithm.as_str(),
        "stage": key.stage().as_str(),
        "generated_at": timefmt::format_millis(key.generated_at.as_unix_millis()),
        "activates_at": timefmt::format_millis(key.activates_at.as_unix_millis()),
        "activated_at": key.activated_at.map(|t| timefmt::format_millis(t.as_unix_millis())),
        "retired_at": key.retired_at.map(|t| timefmt::format_millis(t.as_unix_millis())),
        "published_until": key.published_until.map(|t| timefmt::format_millis(t.as_unix_millis())),
    })
}

fn print_key(key: &Key, json: bool) {
    if json {
        println!("{}", row(key));
        return;
    }
    println!("kid:        {}", key.key_id);
    println!("algorithm:  {}", key.algorithm);
    println!("stage:      {}", key.stage().as_str());
    match key.stage() {
        Stage::Published => println!(
            "signs from: {}",
            timefmt::format_millis(key.activates_at.as_unix_millis())
        ),
        Stage::Active => {}
        Stage::Retired => println!(
            "published until: {}",
            key.published_until
                .map(|t| timefmt::format_millis(t.as_unix_millis()))
                .unwrap_or_default()
        ),
    }
}

pub async fn keys(
    database_url: &str,
    kek: &KekArgs,
    policy: KeyPolicy,
    command: KeysCommand,
) -> anyhow::Result<()> {
    let oauth = crate::wiring::oauth(database_url, crate::wiring::admin_settings(), 2).await?;
    match command {
        KeysCommand::List { json } => {
            // Listing needs no private key: no KEK is read or created.
            let ring = valet_app::keys::ring(&oauth.store)
                .await
                .context("keys list")?;
            if json {
                let rows: Vec<_> = ring.keys().iter().map(row).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else if ring.keys().is_empty() {
                println!("no signing keys yet (`valet serve` creates the first ones)");
            } else {
                println!(
                    "{:<36}  {:<5}  {:<9}  {:<24}  {:<24}",
                    "KID", "ALG", "STAGE", "SIGNS FROM", "PUBLISHED UNTIL"
                );
                for key in ring.keys() {
                    let from = key.activated_at.unwrap_or(key.activates_at);
                    println!(
                        "{:<36}  {:<5}  {:<9}  {:<24}  {:<24}",
                        key.key_id.to_string(),
                        key.algorithm.as_str(),
                        key.stage().as_str(),
                        timefmt::format_millis(from.as_unix_millis()),
                        key.published_until
                            .map(|t| timefmt::format_millis(t.as_unix_millis()))
                            .unwrap_or_else(|| "-".into()),
                    );
                }
            }
            Ok(())
        }
        KeysCommand::Rotate { algorithm, json } => {
            let algorithm = Algorithm::parse(&algorithm).context("--algorithm")?;
            let keys = signing_keys(&oauth.store, load_kek(kek)?, policy);
            keys.check_kek().await.context(
                "the key-encryption key does not open the signing keys: use the one the \
                 server uses (--key-encryption-key-file or VALET_KEY_ENCRYPTION_KEY)",
            )?;
            let key = keys
                .rotate(algorithm, ACTOR_OPERATOR)
                .await
                .context("keys rotate")?;
            print_key(&key, json);
            Ok(())
        }
        KeysCommand::Retire { kid, json } => {
            let Ok(key_id) = KeyId::parse(&kid) else {
                bail!("{kid:?} is not a key id (see `valet keys list`)");
            };
            let keys = signing_keys(&oauth.store, load_kek(kek)?, policy);
            let key = keys
                .retire(key_id, ACTOR_OPERATOR)
                .await
                .context("keys retire")?;
            print_key(&key, json);
            Ok(())
        }
    }
}
