//! Test harness: throwaway databases on the real PostgreSQL, and the event store
//! contract suite that every `EventStore` implementation must pass.

pub mod ca;
pub mod contract;
pub mod html;
pub mod nats;
pub mod private_pg;
pub mod receiver;
pub mod sdk;
pub mod server;

use std::sync::atomic::{AtomicU32, Ordering};

/// The server the tests use; each test creates its own database on it.
pub fn server_url() -> String {
    std::env::var("VALET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A freshly created and migrated database, dropped by [`TestDb::drop_database`].
/// Databases of crashed runs are named `valet_t_*`; `make test` removes stale ones.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The server it lives on (`postgres://…:PORT`, no database).
    server: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        Self::create_on(&server_url()).await
    }

    /// A database on another server than the tests' (e.g. a [`private_pg::PrivatePg`]).
    pub async fn create_on(server: &str) -> TestDb {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "valet_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::now_v7().simple()
        );
        let server = server.trim_end_matches('/').to_owned();
        let url = format!("{server}/{name}");
        let report = valet_store::migrate(&url).await.unwrap_or_else(|e| {
            panic!(
                "cannot create test database {name}: {e} (is PostgreSQL running? try `make setup`)"
            )
        });
        assert!(
            report.database_created,
            "test database {name} already existed"
        );
        TestDb { name, url, server }
    }

    /// A raw connection for test setup and assertions.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(connection);
        client
    }

    pub async fn drop_database(self) {
        let (client, connection) =
            tokio_postgres::connect(&format!("{}/postgres", self.server), tokio_postgres::NoTls)
                .await
                .expect("connect to the postgres database");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop test database");
    }
}
