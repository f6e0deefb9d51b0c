//! Limits on failed authentications, kept where every replica sees them.
//!
//! What is limited is the failing party, never the one it names: a source address that
//! keeps failing is slowed, and so is the guessing of one user's password. A client
//! presenting its right secret is never refused because someone else presented wrong
//! ones under its id (client secrets are 256 random bits: there is nothing to guess).
//!
//! The rules ([`AttemptPolicy::verdict`]) are pure; the counts are a port ([`Attempts`]):
//! in PostgreSQL for `valet serve`, in memory for tests.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use valet_domain::Timestamp;

use crate::ports::StoreError;

/// Whose failures a count is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttemptKey {
    /// Everything that failed from one address.
    Source(IpAddr),
    /// Failed sign-ins under one username (as typed: unknown names count too, so the
    /// answer does not tell them apart).
    User(String),
}

impl AttemptKey {
    /// A stable text form, for storage (hashed there).
    pub fn storage_key(&self) -> String {
        match self {
            AttemptKey::Source(ip) => format!("source:{ip}"),
            AttemptKey::User(name) => format!("user:{name}"),
        }
    }
}

/// The failures counted for a key: how many in a row, and when the last one was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub last: Timestamp,
}

/// What a limit says of one more attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; the caller may try again after this many seconds (at least one).
    Limited {
        retry_after_secs: u32,
    },
}

impl Verdict {
    /// The stricter of two verdicts.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (
                Verdict::Limited {
                    retry_after_secs: a,
                },
                Verdict::Limited {
                    retry_after_secs: b,
                },
            ) => Verdict::Limited {
                retry_after_secs: a.max(b),
            },
            (limited @ Verdict::Limited { .. }, _) | (_, limited @ Verdict::Limited { .. }) => {
                limited
            }
            (Verdict::Allowed, Verdict::Allowed) => Verdict::Allowed,
        }
    }
}

/// How the failures of one kind of key are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptPolicy {
    /// After `limit` failures in a row, refused until `window_secs` have passed since
    /// the last one.
    Window { limit: u32, window_secs: u32 },
    /// After `free` failures in a row, each attempt waits 2^(failures − free) seconds
    /// after the last failure, at most `max_secs`: guessing slows down, the rightful
    /// user is delayed, never locked out for good.
    Backoff { free: u32, max_secs: u32 },
}

impl AttemptPolicy {
    /// Failures from one address: ten a minute.
    pub const SOURCE: AttemptPolicy = AttemptPolicy::Window {
        limit: 10,
        window_secs: 60,
    };
    /// Failed sign-ins of one user: five free, then 1, 2, 4… seconds, at most 15 minutes.
    pub const USER: AttemptPolicy = AttemptPolicy::Backoff {
        free: 5,
        max_secs: 900,
    };

    /// After this long without a failure, the count starts again from zero.
    pub fn forget_after_secs(&self) -> u32 {
        match self {
            AttemptPolicy::Window { window_secs, .. } => *window_secs,
            // Long enough to outlast the longest wait, so the backoff keeps growing.
            AttemptPolicy::Backoff { max_secs, .. } => max_secs.saturating_mul(4).max(3600),
        }
    }

    /// The verdict on an attempt at `now`, given the failures counted so far.
    pub fn verdict(&self, failures: Option<Failures>, now: Timestamp) -> Verdict {
        let Some(failures) = failures else {
            return Verdict::Allowed;
        };
        let since_ms = now
            .as_unix_millis()
            .saturating_sub(failures.last.as_unix_millis());
        let wait_secs = match *self {
            AttemptPolicy::Window { limit, window_secs } if failures.count >= limit => window_secs,
            AttemptPolicy::Backoff { free, max_secs } if failures.count >= free => {
                let doublings = failures.count - free;
                if doublings >= 31 {
                    max_secs
                } else {
                    (1u32 << doublings).min(max_secs)
                }
            }
            _ => return Verdict::Allowed,
        };
        let wait_ms = i64::from(wait_secs) * 1000;
        if since_ms >= wait_ms {
            return Verdict::Allowed;
        }
        // A clock set back counts the whole wait; never less than a second.
        let remaining_ms = (wait_ms - since_ms.max(0)).max(1);
        Verdict::Limited {
            retry_after_secs: u32::try_from((remaining_ms + 999) / 1000).unwrap_or(u32::MAX),
        }
    }
}

/// A boxed future, so the port can be a trait object shared by the HTTP handlers.
pub type AttemptsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where failures are counted. Every replica must see the same counts.
pub trait Attempts: Send + Sync + 'static {
    fn failures<'a>(&'a self, key: &'a AttemptKey) -> AttemptsFuture<'a, Option<Failures>>;

    /// One more failure at `now`; a count whose last failure is older than
    /// `forget_after_secs` starts again from one.
    fn record_failure<'a>(
        &'a self,
        key: &'a AttemptKey,
        now: Timestamp,
        forget_after_secs: u32,
    ) -> AttemptsFuture<'a, ()>;

    /// Forgets the failures of `key` (a user who signed in).
    fn clear<'a>(&'a self, key: &'a AttemptKey) -> AttemptsFuture<'a, ()>;
}

/// The count after one more failure at `now` (the same rule every store applies).
pub fn after_failure(
    previous: Option<Failures>,
    now: Timestamp,
    forget_after_secs: u32,
) -> Failures {
    let forget_ms = i64::from(forget_after_secs) * 1000;
    let count = match previous {
        Some(f) if now.as_unix_millis().saturating_sub(f.last.as_unix_millis()) < forget_ms => {
            f.count.saturating_add(1)
        }
        _ => 1,
    };
    Failures { count, last: now }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + secs * 1000)
    }

    fn failures(count: u32, last: i64) -> Option<Failures> {
        Some(Failures {
            count,
            last: at(last),
        })
    }

    #[test]
    fn a_source_is_refused_for_the_window_after_ten_failures() {
        let policy = AttemptPolicy::SOURCE;
        assert_eq!(policy.verdict(None, at(0)), Verdict::Allowed);
        assert_eq!(policy.verdict(failures(9, 0), at(0)), Verdict::Allowed);
        assert_eq!(
            policy.verdict(failures(10, 0), at(0)),
            Verdict::Limited {
                retry_after_secs: 60
            }
        );
        assert_eq!(
            policy.verdict(failures(10, 0), at(59)),
            Verdict::Limited {
                retry_after_secs: 1
            }
        );
        assert_eq!(policy.verdict(failures(10, 0), at(60)), Verdict::Allowed);
    }

    #[test]
    fn a_users_failures_back_off_exponentially_up_to_a_bound() {
        let policy = AttemptPolicy::USER;
        assert_eq!(policy.verdict(failures(4, 0), at(0)), Verdict::Allowed);
        let wait = |count| match policy.verdict(failures(count, 0), at(0)) {
            Verdict::Limited { retry_after_secs } => retry_after_secs,
            Verdict::Allowed => 0,
        };
        assert_eq!(
            [5, 6, 7, 8, 14, 15, 40, u32::MAX].map(wait),
            [1, 2, 4, 8, 512, 900, 900, 900]
        );
        // Once the wait has passed, one more attempt is allowed.
        assert_eq!(policy.verdict(failures(8, 0), at(8)), Verdict::Allowed);
    }

    #[test]
    fn counts_restart_after_a_quiet_spell_and_a_clock_set_back_waits() {
        let one = after_failure(None, at(0), 60);
        assert_eq!(one.count, 1);
        let two = after_failure(Some(one), at(59), 60);
        assert_eq!((two.count, two.last), (2, at(59)));
        assert_eq!(after_failure(Some(two), at(119), 60).count, 1);
        // The last failure "in the future": the whole wait still applies.
        assert_eq!(
            AttemptPolicy::SOURCE.verdict(failures(10, 30), at(0)),
            Verdict::Limited {
                retry_after_secs: 60
            }
        );
    }

    #[test]
    fn the_stricter_verdict_wins() {
        let limited = |s| Verdict::Limited {
            retry_after_secs: s,
        };
        assert_eq!(Verdict::Allowed.and(Verdict::Allowed), Verdict::Allowed);
        assert_eq!(Verdict::Allowed.and(limited(3)), limited(3));
        assert_eq!(limited(3).and(Verdict::Allowed), limited(3));
        assert_eq!(limited(3).and(limited(9)), limited(9));
    }
}
