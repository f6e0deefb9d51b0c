//! Which waiting appends go into the next group: pure, so its rules are tested without
//! a database or a clock.
//!
//! Appends in one group must not touch a stream that another one in it writes: the
//! group's statement sees one snapshot, so a version check would not see the other's
//! write (and a projection sweep, e.g. of a disabled client, would miss the other's
//! rows). Such an append waits for the next group, ahead of newer ones.

use std::collections::{HashSet, VecDeque};

use valet_app::StreamWrite;
use valet_domain::StreamId;

/// What formation needs to know of an append.
pub(super) trait Writes {
    fn writes(&self) -> &[StreamWrite];
}

impl Writes for Vec<StreamWrite> {
    fn writes(&self) -> &[StreamWrite] {
        self
    }
}

/// The appends put back for the next group.
pub(super) struct Formation<J> {
    carry: VecDeque<J>,
    limit: usize,
}

impl<J: Writes> Formation<J> {
    /// Groups of at most `limit` appends.
    pub fn new(limit: usize) -> Self {
        Formation {
            carry: VecDeque::new(),
            limit: limit.max(1),
        }
    }

    /// The oldest append put back, which starts the next group.
    pub fn carried(&mut self) -> Option<J> {
        self.carry.pop_front()
    }

    /// A group: `first`, then every compatible append among those put back and those
    /// `ready` hands out (without waiting), in order, up to the limit. The others are
    /// put back, in order.
    pub fn form(&mut self, first: J, mut ready: impl FnMut() -> Option<J>) -> Vec<J> {
        let mut group = Group::default();
        group.admit(first);
        let mut deferred = VecDeque::new();
        while group.jobs.len() < self.limit {
            let Some(next) = self.carry.pop_front().or_else(&mut ready) else {
                break;
            };
            if group.fits(&next) {
                group.admit(next);
            } else {
                deferred.push_back(next);
            }
        }
        deferred.append(&mut self.carry);
        self.carry = deferred;
        group.jobs
    }
}

struct Group<J> {
    jobs: Vec<J>,
    written: HashSet<StreamId>,
    touched: HashSet<StreamId>,
}

impl<J> Default for Group<J> {
    fn default() -> Self {
        Group {
            jobs: Vec::new(),
            written: HashSet::new(),
            touched: HashSet::new(),
        }
    }
}

impl<J: Writes> Group<J> {
    /// A check (no events) may share a stream with other checks; a write may share it
    /// with nothing.
    fn fits(&self, job: &J) -> bool {
        job.writes().iter().all(|w| {
            if w.events.is_empty() {
                !self.written.contains(&w.stream)
            } else {
                !self.touched.contains(&w.stream)
            }
        })
    }

    fn admit(&mut self, job: J) {
        for w in job.writes() {
            if !w.events.is_empty() {
                self.written.insert(w.stream.clone());
            }
            self.touched.insert(w.stream.clone());
        }
        self.jobs.push(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;
    use valet_app::{EventMetadata, ExpectedVersion, NewEvent};
    use valet_domain::{user, ClientId, GrantId, Timestamp};

    fn client(name: &str) -> StreamId {
        StreamId::client(&ClientId::parse(name).unwrap())
    }

    fn grant(n: u128) -> StreamId {
        StreamId::grant(&GrantId::new(Uuid::from_u128(n)))
    }

    /// A write of one event to `stream` (which event does not matter to formation).
    fn write(stream: StreamId) -> StreamWrite {
        let event = user::Event::UserDisabled {
            at: Timestamp::from_unix_millis(0),
        };
        StreamWrite {
            stream,
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new(Uuid::nil(), event, EventMetadata::default())],
        }
    }

    fn check(stream: StreamId) -> StreamWrite {
        StreamWrite {
            stream,
            expected: ExpectedVersion::NoStream,
            events: vec![],
        }
    }

    /// A token issued to `name`: the client's version checked, a new grant written.
    fn token(name: &str, n: u128) -> Vec<StreamWrite> {
        vec![check(client(name)), write(grant(n))]
    }

    fn streams(group: &[Vec<StreamWrite>]) -> Vec<Vec<String>> {
        group
            .iter()
            .map(|job| job.iter().map(|w| w.stream.to_string()).collect())
            .collect()
    }

    fn drain(waiting: Vec<Vec<StreamWrite>>) -> impl FnMut() -> Option<Vec<StreamWrite>> {
        let mut waiting = VecDeque::from(waiting);
        move || waiting.pop_front()
    }

    #[test]
    fn tokens_of_one_client_share_a_group() {
        let mut formation = Formation::new(64);
        let group = formation.form(token("a", 1), drain(vec![token("a", 2), token("b", 3)]));
        assert_eq!(group.len(), 3);
        assert!(formation.carried().is_none());
    }

    #[test]
    fn a_write_to_a_stream_the_group_touches_waits_for_the_next_group() {
        let mut formation = Formation::new(64);
        let disable = vec![write(client("a"))];
        let group = formation.form(
            token("a", 1),
            drain(vec![disable.clone(), token("b", 2), token("a", 3)]),
        );
        // The client's disabling must not share a snapshot with a token that checks it.
        assert_eq!(
            streams(&group),
            streams(&[token("a", 1), token("b", 2), token("a", 3)])
        );
        let first = formation.carried().expect("the disabling is carried");
        assert_eq!(first, disable);
        // Next time it starts the group, and a later token of that client waits in turn.
        let next = formation.form(first, drain(vec![token("a", 4), token("c", 5)]));
        assert_eq!(streams(&next), streams(&[disable, token("c", 5)]));
        assert_eq!(formation.carried(), Some(token("a", 4)));
    }

    #[test]
    fn two_writes_to_one_stream_never_share_a_group() {
        let mut formation = Formation::new(64);
        let group = formation.form(
            vec![write(grant(1))],
            drain(vec![vec![write(grant(1))], vec![write(grant(2))]]),
        );
        assert_eq!(
            streams(&group),
            vec![vec![grant(1).to_string()], vec![grant(2).to_string()]]
        );
        assert_eq!(formation.carried(), Some(vec![write(grant(1))]));
    }

    #[test]
    fn carried_appends_keep_their_order_ahead_of_new_ones() {
        let mut formation = Formation::new(64);
        let _ = formation.form(
            vec![write(grant(1))],
            drain(vec![vec![write(grant(1))], vec![check(grant(1))]]),
        );
        // Both wait, in arrival order.
        assert_eq!(formation.carried(), Some(vec![write(grant(1))]));
        let next = formation.form(vec![write(grant(9))], drain(vec![vec![write(grant(2))]]));
        // The carried check comes before the newly ready write.
        assert_eq!(
            streams(&next),
            vec![
                vec![grant(9).to_string()],
                vec![grant(1).to_string()],
                vec![grant(2).to_string()]
            ]
        );
    }

    #[test]
    fn a_group_stops_at_its_limit_and_leaves_the_rest_waiting() {
        let mut formation = Formation::new(2);
        let mut waiting = drain(vec![token("a", 2), token("a", 3)]);
        let group = formation.form(token("a", 1), &mut waiting);
        assert_eq!(group.len(), 2);
        // The third was never taken from the queue.
        assert_eq!(waiting(), Some(token("a", 3)));
        assert!(formation.carried().is_none());
    }
}
