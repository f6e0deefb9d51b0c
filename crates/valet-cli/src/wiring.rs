//! Builds the use cases over PostgreSQL: the event store with the read-model projection
//! applied inline, and the read-model queries on the same pool.

use anyhow::Context;
use valet_app::oauth::{OAuth, Settings};
use valet_app::SystemClock;
use valet_domain::{AccessTokenTtl, CodeTtl, RefreshTokenTtl};
use valet_projector::{PgReadModels, ReadModelProjection};
use valet_store::{PgEventStore, PgStoreConfig};

use crate::ServeArgs;

pub type PgOAuth = OAuth<PgEventStore, PgReadModels, SystemClock>;

/// The server's settings from its options (TTLs checked here).
pub fn settings(config: &ServeArgs, issuer: String) -> anyhow::Result<Settings> {
    Ok(Settings {
        issuer,
        access_ttl: AccessTokenTtl::new(config.access_token_ttl).context("--access-token-ttl")?,
        refresh_ttl: RefreshTokenTtl::new(config.refresh_token_ttl)
            .context("--refresh-token-ttl")?,
        code_ttl: CodeTtl::new(config.code_ttl).context("--code-ttl")?,
    })
}

/// Settings for commands that issue no tokens (administration): the defaults.
pub fn admin_settings() -> Settings {
    Settings {
        issuer: "http://127.0.0.1:8080".to_owned(),
        access_ttl: AccessTokenTtl::default(),
        refresh_ttl: RefreshTokenTtl::default(),
        code_ttl: CodeTtl::default(),
    }
}

pub async fn oauth(
    database_url: &str,
    settings: Settings,
    pool_size: usize,
) -> anyhow::Result<PgOAuth> {
    let mut store_config = PgStoreConfig::new(database_url);
    store_config.pool_size = pool_size;
    let store =
        PgEventStore::connect_with(store_config, Some(std::sync::Arc::new(ReadModelProjection)))
            .await
            .context("connect to PostgreSQL (is it running, and did `valet migrate` run?)")?;
    let reads = PgReadModels::new(store.pool().clone());
    Ok(OAuth::new(store, reads, SystemClock, settings))
}
