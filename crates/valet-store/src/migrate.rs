//! `valet migrate`: create the database if needed and apply the SQL in migrations/.

use crate::endpoint::{PgEndpoint, PgUrlError};
use tokio_postgres::error::SqlState;

/// One migration file, embedded at build time so the binary carries its schema.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        sql: include_str!("../../../migrations/0001_event_log.sql"),
    },
    Migration {
        version: 2,
        name: "read_models",
        sql: include_str!("../../../migrations/0002_read_models.sql"),
    },
    Migration {
        version: 3,
        name: "server_secrets",
        sql: include_str!("../../../migrations/0003_server_secrets.sql"),
    },
    Migration {
        version: 4,
        name: "version_conflict",
        sql: include_str!("../../../migrations/0004_version_conflict.sql"),
    },
    Migration {
        version: 5,
        name: "auth_failures",
        sql: include_str!("../../../migrations/0005_auth_failures.sql"),
    },
    Migration {
        version: 6,
        name: "leases",
        sql: include_str!("../../../migrations/0006_leases.sql"),
    },
    Migration {
        version: 7,
        name: "lease_sessions",
        sql: include_str!("../../../migrations/0007_lease_sessions.sql"),
    },
    Migration {
        version: 8,
        name: "signing_key_material",
        sql: include_str!("../../../migrations/0008_signing_key_material.sql"),
    },
    Migration {
        version: 9,
        name: "sessions",
        sql: include_str!("../../../migrations/0009_sessions.sql"),
    },
    Migration {
        version: 10,
        name: "client_deleted",
        sql: include_str!("../../../migrations/0010_client_deleted.sql"),
    },
    Migration {
        version: 11,
        name: "admin_list_indexes",
        sql: include_str!("../../../migrations/0011_admin_list_indexes.sql"),
    },
];

/// Serialises concurrent `valet migrate` runs (several replicas starting at once).
const MIGRATION_LOCK: i64 = 0x7661_6c65_745f_6d67; // "valet_mg"

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub database_created: bool,
    pub applied: Vec<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("the database URL names no database")]
    NoDatabase,
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(String),
    #[error("creating database {database} failed: {source}")]
    CreateDatabase {
        database: String,
        source: tokio_postgres::Error,
    },
    #[error("migration {version} ({name}) failed: {source}")]
    Apply {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("reading the migration state failed: {0}")]
    State(tokio_postgres::Error),
}

/// Creates the database named in `database_url` if it does not exist, then applies every
/// migration not yet applied, each in its own transaction. Idempotent.
pub async fn migrate(database_url: &str) -> Result<MigrationReport, MigrateError> {
    let endpoint: PgEndpoint = database_url
        .parse()
        .map_err(|e: PgUrlError| MigrateError::InvalidUrl(e.to_string()))?;
    let database = endpoint
        .config()
        .get_dbname()
        .ok_or(MigrateError::NoDatabase)?
        .to_owned();
    let database_created = create_database_if_missing(&endpoint, &database).await?;

    let mut client = endpoint.connect().await.map_err(connect_error)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(MigrateError::State)?;
    let result = apply_pending(&mut client).await;
    // The lock is session-scoped: dropping the connection releases it even on error.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    Ok(MigrationReport {
        database_created,
        applied: result?,
    })
}

async fn apply_pending(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(MigrateError::State)?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(MigrateError::State)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        let fail = |source| MigrateError::Apply {
            version: migration.version,
            name: migration.name,
            source,
        };
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(migration.sql).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        newly.push(migration.version);
    }
    Ok(newly)
}

fn connect_error(e: tokio_postgres::Error) -> MigrateError {
    MigrateError::Connect(crate::describe(&e))
}

async fn create_database_if_missing(
    endpoint: &PgEndpoint,
    database: &str,
) -> Result<bool, MigrateError> {
    let admin = endpoint.with_config(|c| {
        c.dbname("postgres");
    });
    let client = admin.connect().await.map_err(connect_error)?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(MigrateError::State)?
        .is_some();
    if exists {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(true),
        // Another migrate created it between our check and our CREATE.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(false),
        Err(source) => Err(MigrateError::CreateDatabase {
            database: database.to_owned(),
            source,
        }),
    }
}
