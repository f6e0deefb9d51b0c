//! Failed-attempt limiting per (name, client IP), in memory.
//!
//! A sliding log of the last `limit` failures per key: once `limit` failures fall inside
//! `window`, further attempts are refused without checking the credential until the
//! oldest of them leaves the window. Keys are SHA-256 digests, so an attacker's long
//! names cost the same memory as short ones, and the map holds at most `max_keys`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitKey {
    name: [u8; 32],
    ip: IpAddr,
}

impl LimitKey {
    pub fn new(name: &str, ip: IpAddr) -> Self {
        LimitKey {
            name: Sha256::digest(name.as_bytes()).into(),
            ip,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
pub struct LimitPolicy {
    pub limit: usize,
    pub window: Duration,
    pub max_keys: usize,
}

impl LimitPolicy {
    /// 10 failures per client (or user) and IP within 60 s.
    pub const DEFAULT: LimitPolicy = LimitPolicy {
        limit: 10,
        window: Duration::from_secs(60),
        max_keys: 10_000,
    };
}

pub struct FailureLimiter {
    policy: LimitPolicy,
    failures: Mutex<HashMap<LimitKey, VecDeque<Instant>>>,
}

impl FailureLimiter {
    pub fn new(policy: LimitPolicy) -> Self {
        FailureLimiter {
            policy,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, key: &LimitKey, now: Instant) -> Verdict {
        let map = self.lock();
        let Some(log) = map.get(key) else {
            return Verdict::Allowed;
        };
        let recent: Vec<&Instant> = log
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.policy.window)
            .collect();
        if recent.len() < self.policy.limit {
            return Verdict::Allowed;
        }
        let oldest = **recent.first().expect("limit is at least one");
        let remaining = (oldest + self.policy.window).saturating_duration_since(now);
        // Whole seconds for Retry-After, never 0 (that would invite an instant retry).
        Verdict::Limited {
            retry_after: Duration::from_secs(remaining.as_secs_f64().ceil().max(1.0) as u64),
        }
    }

    pub fn record_failure(&self, key: LimitKey, now: Instant) {
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= self.policy.max_keys {
            self.evict(&mut map, now);
        }
        let log = map.entry(key).or_default();
        log.push_back(now);
        while log.len() > self.policy.limit {
            log.pop_front();
        }
    }

    /// Drops stale keys; if every key is recent, the one whose last failure is oldest,
    /// so the map stays bounded without forgetting the most active offenders.
    fn evict(&self, map: &mut HashMap<LimitKey, VecDeque<Instant>>, now: Instant) {
        let window = self.policy.window;
        map.retain(|_, log| {
            log.back()
                .is_some_and(|t| now.saturating_duration_since(*t) < window)
        });
        if map.len() >= self.policy.max_keys {
            let stalest = map
                .iter()
                .min_by_key(|(_, log)| log.back().copied())
                .map(|(k, _)| *k);
            if let Some(k) = stalest {
                map.remove(&k);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LimitKey, VecDeque<Instant>>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn limits_after_ten_failures_in_the_window() {
        let limiter = FailureLimiter::new(LimitPolicy::DEFAULT);
        let key = LimitKey::new("client", IP);
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.check(&key, t0 + secs(i)), Verdict::Allowed);
            limiter.record_failure(key, t0 + secs(i));
        }
        assert_eq!(
            limiter.check(&key, t0 + secs(10)),
            Verdict::Limited {
                retry_after: secs(50)
            }
        );
        // Other clients and other addresses are unaffected.
        assert_eq!(
            limiter.check(&LimitKey::new("other", IP), t0),
            Verdict::Allowed
        );
        let elsewhere = LimitKey::new("client", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(limiter.check(&elsewhere, t0 + secs(10)), Verdict::Allowed);
    }

    #[test]
    fn the_window_slides() {
        let limiter = FailureLimiter::new(LimitPolicy::DEFAULT);
        let key = LimitKey::new("client", IP);
        let t0 = Instant::now();
        for i in 0..10 {
            limiter.record_failure(key, t0 + secs(i * 5));
        }
        // The first failure (t0) leaves the window at t0 + 60.
        assert!(matches!(
            limiter.check(&key, t0 + secs(59)),
            Verdict::Limited { .. }
        ));
        assert_eq!(limiter.check(&key, t0 + secs(60)), Verdict::Allowed);
        limiter.record_failure(key, t0 + secs(60));
        assert_eq!(
            limiter.check(&key, t0 + secs(61)),
            Verdict::Limited {
                retry_after: secs(4)
            }
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let limiter = FailureLimiter::new(LimitPolicy::DEFAULT);
        let key = LimitKey::new("client", IP);
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.record_failure(key, t0);
        }
        let almost = t0 + Duration::from_millis(59_900);
        assert_eq!(
            limiter.check(&key, almost),
            Verdict::Limited {
                retry_after: secs(1)
            }
        );
    }

    #[test]
    fn the_map_is_bounded() {
        let limiter = FailureLimiter::new(LimitPolicy {
            max_keys: 3,
            ..LimitPolicy::DEFAULT
        });
        let t0 = Instant::now();
        for i in 0..10u64 {
            limiter.record_failure(LimitKey::new(&format!("c{i}"), IP), t0 + secs(i));
        }
        assert_eq!(limiter.len(), 3);
        // The newest keys survive.
        let newest = LimitKey::new("c9", IP);
        assert_eq!(limiter.lock().get(&newest).map(VecDeque::len), Some(1));
    }
}
