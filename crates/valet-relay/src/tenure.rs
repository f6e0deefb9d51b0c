//! When a leading relay renews its lease and when it steps down: pure, with time and
//! the relay's progress as inputs.
//!
//! The lease lasts `ttl` from each renewal, by PostgreSQL's clock. The leader counts
//! from the moment it sent its last successful renewal (never later than PostgreSQL's
//! reading of it) and stops a `margin` before the ttl runs out, so it has stopped before
//! a standby can take the lease, unless its whole process was paused (then the epoch
//! refuses its checkpoint, and the message chain keeps the stream in order). A leader
//! that has held a batch for `stall_limit` without JetStream confirming it (NATS
//! unreachable from this process) stops renewing and steps down, so a standby that can
//! reach NATS takes over.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub ttl: Duration,
    /// How long before the ttl runs out the leader stops (at least one renewal interval
    /// plus a renewal's timeout).
    pub margin: Duration,
    pub stall_limit: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepDown {
    /// Renewals have not succeeded in time (PostgreSQL unreachable or silent).
    LeaseRunningOut,
    /// A batch has waited too long for JetStream.
    Stalled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Renew,
    StepDown(StepDown),
}

#[derive(Debug, Clone)]
pub(crate) struct Tenure {
    bounds: Bounds,
    /// When the last successful renewal (or the acquisition) was sent.
    renewed_at: Instant,
}

impl Tenure {
    /// A lease acquired by a request sent at `sent_at`.
    pub fn new(bounds: Bounds, sent_at: Instant) -> Self {
        Tenure {
            bounds,
            renewed_at: sent_at,
        }
    }

    /// What to do at `now`, given since when the relay has held an unconfirmed batch.
    pub fn decide(&self, now: Instant, busy_since: Option<Instant>) -> Decision {
        let valid_until = self.renewed_at + self.bounds.ttl;
        if now + self.bounds.margin >= valid_until {
            return Decision::StepDown(StepDown::LeaseRunningOut);
        }
        if busy_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.bounds.stall_limit)
        {
            return Decision::StepDown(StepDown::Stalled);
        }
        Decision::Renew
    }

    /// A renewal sent at `sent_at` succeeded.
    pub fn renewed(&mut self, sent_at: Instant) {
        self.renewed_at = self.renewed_at.max(sent_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        ttl: Duration::from_secs(3),
        margin: Duration::from_secs(1),
        stall_limit: Duration::from_secs(3),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_healthy_leader_renews() {
        let start = Instant::now();
        let tenure = Tenure::new(BOUNDS, start);
        assert_eq!(tenure.decide(start + ms(500), None), Decision::Renew);
        assert_eq!(
            tenure.decide(start + ms(1500), Some(start + ms(1400))),
            Decision::Renew
        );
    }

    #[test]
    fn a_leader_whose_renewals_fail_stops_a_margin_before_the_lease_expires() {
        let start = Instant::now();
        let mut tenure = Tenure::new(BOUNDS, start);
        tenure.renewed(start + ms(500));
        assert_eq!(tenure.decide(start + ms(2400), None), Decision::Renew);
        assert_eq!(
            tenure.decide(start + ms(2500), None),
            Decision::StepDown(StepDown::LeaseRunningOut)
        );
    }

    #[test]
    fn a_late_answer_to_an_older_renewal_does_not_move_the_deadline_back() {
        let start = Instant::now();
        let mut tenure = Tenure::new(BOUNDS, start);
        tenure.renewed(start + ms(1000));
        tenure.renewed(start + ms(500));
        assert_eq!(tenure.decide(start + ms(2900), None), Decision::Renew);
    }

    #[test]
    fn a_batch_unconfirmed_for_the_stall_limit_means_stepping_down() {
        let start = Instant::now();
        let mut tenure = Tenure::new(BOUNDS, start);
        tenure.renewed(start + ms(4000));
        let busy = Some(start + ms(2000));
        assert_eq!(tenure.decide(start + ms(4900), busy), Decision::Renew);
        assert_eq!(
            tenure.decide(start + ms(5000), busy),
            Decision::StepDown(StepDown::Stalled)
        );
    }

    #[test]
    fn a_paused_leader_steps_down_as_soon_as_it_runs_again() {
        let start = Instant::now();
        let tenure = Tenure::new(BOUNDS, start);
        assert_eq!(
            tenure.decide(start + ms(20_000), None),
            Decision::StepDown(StepDown::LeaseRunningOut)
        );
    }
}
