//! Pipelining: several requests on one connection, one round trip for the lot.

use tokio_postgres::Row;

/// A request in flight on a connection.
pub(super) type Flight<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>,
>;

/// Drives `requests` to completion, polling them in order every time. tokio-postgres
/// sends a request when its future is first polled, so they reach PostgreSQL in this
/// order, all before the first answer comes back.
pub(super) async fn in_order(
    mut requests: Vec<Flight<'_>>,
) -> Vec<Result<Vec<Row>, tokio_postgres::Error>> {
    let mut done: Vec<Option<Result<Vec<Row>, tokio_postgres::Error>>> =
        requests.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (request, slot) in requests.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match request.as_mut().poll(cx) {
                    std::task::Poll::Ready(result) => *slot = Some(result),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}
