//! Since when the leading relay has had work in hand that JetStream has not confirmed,
//! shared between the relay loop and the task that renews its lease.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Progress(Mutex<Option<Instant>>);

impl Progress {
    /// Work begins (kept if it had already begun).
    pub fn busy(&self) {
        self.with(|since| {
            since.get_or_insert_with(Instant::now);
        });
    }

    /// Work confirmed, or nothing to do.
    pub fn idle(&self) {
        self.with(|since| *since = None);
    }

    pub fn busy_since(&self) -> Option<Instant> {
        self.with(|since| *since)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Option<Instant>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_keeps_the_first_moment_until_idle() {
        let progress = Progress::default();
        assert_eq!(progress.busy_since(), None);
        progress.busy();
        let first = progress.busy_since().expect("busy");
        progress.busy();
        assert_eq!(progress.busy_since(), Some(first));
        progress.idle();
        assert_eq!(progress.busy_since(), None);
    }
}
