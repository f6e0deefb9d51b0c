//! Wake-ups for readers of the log. Writers do not NOTIFY inside their transaction:
//! PostgreSQL serialises the commits of all notifying transactions on one global lock.
//! Instead, after a commit the store bumps an in-process `watch` channel (readers in
//! this process wake at once) and a background task sends one NOTIFY, coalescing
//! bursts; every store keeps a LISTEN connection that bumps the same channel.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::AsyncMessage;

use crate::endpoint::PgEndpoint;

const CHANNEL: &str = "valet_events";

/// The least time between two NOTIFYs of one process.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// Keeps a LISTEN connection open and turns notifications into wake-ups; reconnects with
/// backoff, waking readers after each reconnect since notifications may have been lost.
pub(super) async fn listen_forever(endpoint: PgEndpoint, wake: Arc<watch::Sender<u64>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&endpoint, &wake).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(error) => tracing::warn!(%error, "event log LISTEN connection lost"),
        }
        wake.send_modify(|v| *v = v.wrapping_add(1));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    endpoint: &PgEndpoint,
    wake: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = endpoint.config().connect(endpoint.tls()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    wake.send_modify(|v| *v = v.wrapping_add(1));
    while rx.recv().await.is_some() {
        wake.send_modify(|v| *v = v.wrapping_add(1));
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Sends at most one NOTIFY at a time; appends made meanwhile are covered by the next.
pub(super) async fn notify_forever(pool: Pool, needed: Arc<Notify>) {
    let sql = format!("NOTIFY {CHANNEL}");
    loop {
        needed.notified().await;
        let sent = match pool.get().await {
            Ok(client) => client.batch_execute(&sql).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "event log NOTIFY failed; readers fall back to polling");
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            // At most one NOTIFY per interval: under load every append would otherwise
            // cost a notification transaction. Readers in this process are woken directly;
            // other processes learn of commits at most this much later.
            tokio::time::sleep(NOTIFY_INTERVAL).await;
        }
    }
}
