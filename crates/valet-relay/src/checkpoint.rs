//! When the relay saves its checkpoint: pure, with time as an input.
//!
//! Each save is a statement and a commit in PostgreSQL; saving per batch cost one per
//! few dozen tokens. So while batches keep coming the checkpoint is saved at most every
//! interval, and always before the relay waits for new commits. A takeover republishes
//! at most one interval's worth, which JetStream drops as duplicates.

use std::time::{Duration, Instant};

use valet_app::LogCursor;

#[derive(Debug, Clone)]
pub(crate) struct Checkpoints {
    saved: LogCursor,
    saved_at: Instant,
    every: Duration,
}

impl Checkpoints {
    /// Starting from the checkpoint the lease holds, read at `now`.
    pub fn new(saved: LogCursor, now: Instant, every: Duration) -> Self {
        Checkpoints {
            saved,
            saved_at: now,
            every,
        }
    }

    /// Whether to save `published` (the cursor after the last confirmed batch) now.
    /// `caught_up`: the last read found nothing new.
    pub fn due(&self, published: LogCursor, caught_up: bool, now: Instant) -> bool {
        published != self.saved
            && (caught_up || now.saturating_duration_since(self.saved_at) >= self.every)
    }

    pub fn saved(&mut self, cursor: LogCursor, now: Instant) {
        self.saved = cursor;
        self.saved_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(100);

    fn at(position: i64) -> LogCursor {
        LogCursor {
            xact: position,
            position,
        }
    }

    #[test]
    fn nothing_new_is_never_saved() {
        let start = Instant::now();
        let checkpoints = Checkpoints::new(at(5), start, EVERY);
        assert!(!checkpoints.due(at(5), true, start + EVERY * 10));
    }

    #[test]
    fn a_relay_that_caught_up_saves_at_once() {
        let start = Instant::now();
        let checkpoints = Checkpoints::new(at(5), start, EVERY);
        assert!(checkpoints.due(at(6), true, start));
    }

    #[test]
    fn a_busy_relay_saves_once_per_interval() {
        let start = Instant::now();
        let mut checkpoints = Checkpoints::new(at(0), start, EVERY);
        assert!(!checkpoints.due(at(1), false, start + Duration::from_millis(99)));
        assert!(checkpoints.due(at(2), false, start + EVERY));
        checkpoints.saved(at(2), start + EVERY);
        assert!(!checkpoints.due(at(3), false, start + EVERY + Duration::from_millis(50)));
        assert!(checkpoints.due(at(4), false, start + EVERY * 2));
    }
}
