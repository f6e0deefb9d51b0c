//! Waiting on a resource service's SDK (`valet-resource`) to hear of a token over NATS.

use std::time::{Duration, Instant};

use valet_resource::{Rejection, TokenInfo, Validator};

/// Waits until the SDK knows `token` as valid from its local store (no introspection);
/// fails the test after `within`.
pub async fn until_valid_locally(
    validator: &Validator,
    token: &str,
    within: Duration,
) -> TokenInfo {
    until(validator, within, "the SDK to receive the token", |v| {
        v.check(token).ok()
    })
    .await
}

/// Waits until the SDK refuses `token` as revoked from its local store; fails the test
/// after `within`.
pub async fn until_revoked_locally(validator: &Validator, token: &str, within: Duration) {
    until(
        validator,
        within,
        "the SDK to receive the revocation",
        |v| (v.check(token) == Err(Rejection::Revoked)).then_some(()),
    )
    .await
}

async fn until<T>(
    validator: &Validator,
    within: Duration,
    what: &str,
    probe: impl Fn(&Validator) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe(validator) {
            return found;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}: {:?}",
            validator.status()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
