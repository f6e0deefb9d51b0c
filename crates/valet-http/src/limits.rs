//! Failed-authentication limits at the endpoints, over the shared counts of
//! `valet_app::attempts`. A count that cannot be read or written is logged and does not
//! refuse anyone: the limits slow attackers, they must not take the service down.

use std::time::Duration;

use valet_app::attempts::{AttemptKey, AttemptPolicy, Attempts, Verdict};
use valet_domain::Timestamp;

/// The policies the endpoints apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimits {
    /// Failures from one address (client authentication and sign-ins).
    pub source: AttemptPolicy,
    /// Failed sign-ins under one username.
    pub user: AttemptPolicy,
}

impl FailureLimits {
    /// Failures per source address allowed in a minute, then 429 until a minute has
    /// passed since the last; users' backoff as [`AttemptPolicy::USER`].
    pub fn per_minute(limit: u32) -> Self {
        FailureLimits {
            source: AttemptPolicy::Window {
                limit,
                window_secs: 60,
            },
            user: AttemptPolicy::USER,
        }
    }
}

impl Default for FailureLimits {
    fn default() -> Self {
        FailureLimits {
            source: AttemptPolicy::SOURCE,
            user: AttemptPolicy::USER,
        }
    }
}

/// The verdict of `policy` on one more attempt under `key`.
pub(crate) async fn verdict(
    attempts: &dyn Attempts,
    key: &AttemptKey,
    policy: AttemptPolicy,
    now: Timestamp,
) -> Verdict {
    match attempts.failures(key).await {
        Ok(failures) => policy.verdict(failures, now),
        Err(error) => {
            tracing::warn!(%error, "cannot read failed-authentication counts; not limiting");
            Verdict::Allowed
        }
    }
}

/// Counts one more failure under `key`.
pub(crate) async fn record_failure(
    attempts: &dyn Attempts,
    key: &AttemptKey,
    policy: AttemptPolicy,
    now: Timestamp,
) {
    if let Err(error) = attempts
        .record_failure(key, now, policy.forget_after_secs())
        .await
    {
        tracing::warn!(%error, "cannot count a failed authentication");
    }
}

/// Forgets the failures under `key`.
pub(crate) async fn clear(attempts: &dyn Attempts, key: &AttemptKey) {
    if let Err(error) = attempts.clear(key).await {
        tracing::warn!(%error, "cannot clear failed-authentication counts");
    }
}

/// `Retry-After` of a limited verdict.
pub(crate) fn retry_after(verdict: Verdict) -> Option<Duration> {
    match verdict {
        Verdict::Limited { retry_after_secs } => {
            Some(Duration::from_secs(u64::from(retry_after_secs.max(1))))
        }
        Verdict::Allowed => None,
    }
}
