//! Builds the use cases over PostgreSQL: the event store with the read-model projection
//! applied inline, and the read-model queries on the same pool.

use anyhow::Context;
use valet_app::oauth::{OAuth, Settings};
use valet_app::SystemClock;
use valet_domain::{AccessTokenTtl, CodeTtl, RefreshTokenTtl};
use valet_projector::{PgReadModels, ReadModelProjection};
use valet_store::{PgEventStore, PgStoreConfig};

use crate::Config;

pub type PgOAuth = OAuth<PgEventStore, PgReadModels, SystemClock>;

pub fn settings(config: &Config, issuer: String) -> anyhow::Result<Settings> {
    Ok(Settings {
        issuer,
        access_ttl: AccessTokenTtl::new(config.access_token_ttl).context("--access-token-ttl")?,
        refresh_ttl: RefreshTokenTtl::new(config.refresh_token_ttl)
            .context("--refresh-token-ttl")?,
        code_ttl: CodeTtl::new(config.code_ttl).context("--code-ttl")?,
    })
}

pub async fn oauth(config: &Config, issuer: String, pool_size: usize) -> anyhow::Result<PgOAuth> {
    let mut store_config = PgStoreConfig::new(config.database_url.clone());
    store_config.pool_size = pool_size;
    let store =
        PgEventStore::connect_with(store_config, Some(std::sync::Arc::new(ReadModelProjection)))
            .await
            .context("connect to PostgreSQL (is it running, and did `valet migrate` run?)")?;
    let reads = PgReadModels::new(store.pool().clone());
    Ok(OAuth::new(
        store,
        reads,
        SystemClock,
        settings(config, issuer)?,
    ))
}
