//! How the relay learns that JetStream stored a batch: pure, with acks as inputs.
//!
//! Once the stream's sequence is known, only the batch's last message asks for an ack:
//! one connection's messages are stored in the order sent, so an ack at
//! `known + n` proves that all n were stored (sparing NATS and the relay n − 1 acks,
//! about a third of NATS's CPU per token under load). Any other answer (a duplicate, a
//! failed store, a message from another publisher in between, no answer) and the batch
//! is sent again with an ack per message, which JetStream deduplicates by
//! `Nats-Msg-Id`, so nothing is lost or doubled either way. The one case the count
//! cannot tell apart, a message of ours refused while exactly as many from another
//! publisher land in the same batch, would need a refusal that spares the batch's last
//! message, and JetStream refuses for a full store, which refuses every later one too.

use valet_app::outbox::Confirmation;

/// One JetStream ack: where the message was stored, and whether it was a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ack {
    pub sequence: u64,
    pub duplicate: bool,
}

/// How to publish a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Ask for one ack, on the last message; it confirms the batch at this sequence.
    LastAck { expected: u64 },
    /// Ask for an ack per message.
    EveryAck,
}

/// What the last ack of a [`Plan::LastAck`] batch proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Confirmed,
    /// Not enough: send the batch again with an ack per message.
    Republish,
}

/// The stream's sequence after the relay's last confirmed batch, when it is known.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sequence(Option<u64>);

impl Sequence {
    /// How to publish the next batch of `len` messages. Forgets the sequence until an
    /// answer confirms a new one (a publish that fails half-way proves nothing).
    pub fn plan(&mut self, len: usize) -> Plan {
        match self.0.take() {
            Some(known) => Plan::LastAck {
                expected: known + len as u64,
            },
            None => Plan::EveryAck,
        }
    }

    /// The answer to a [`Plan::LastAck`] batch's last message (`None`: no answer).
    pub fn on_last_ack(&mut self, expected: u64, ack: Option<Ack>) -> Verdict {
        match ack {
            Some(ack) if !ack.duplicate && ack.sequence == expected => {
                self.0 = Some(ack.sequence);
                Verdict::Confirmed
            }
            _ => Verdict::Republish,
        }
    }

    /// Every message's ack, in order, of a batch sent with [`Plan::EveryAck`]; how many
    /// were duplicates.
    pub fn on_every_ack(&mut self, acks: &[Ack]) -> u64 {
        // A duplicate's sequence is the original's, not necessarily the stream's last.
        self.0 = acks.last().filter(|a| !a.duplicate).map(|a| a.sequence);
        acks.iter().filter(|a| a.duplicate).count() as u64
    }
}

/// How a batch was confirmed, for the relay's status.
pub(crate) fn confirmation(plan: Plan, verdict: Option<Verdict>) -> Confirmation {
    match (plan, verdict) {
        (Plan::LastAck { .. }, Some(Verdict::Confirmed)) => Confirmation::LastAck,
        (Plan::LastAck { .. }, _) => Confirmation::Republished,
        (Plan::EveryAck, _) => Confirmation::EveryAck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(sequence: u64) -> Ack {
        Ack {
            sequence,
            duplicate: false,
        }
    }

    fn duplicate(sequence: u64) -> Ack {
        Ack {
            sequence,
            duplicate: true,
        }
    }

    #[test]
    fn the_first_batch_asks_every_ack_then_the_last_ack_suffices() {
        let mut sequence = Sequence::default();
        assert_eq!(sequence.plan(3), Plan::EveryAck);
        assert_eq!(sequence.on_every_ack(&[ack(10), ack(11), ack(12)]), 0);
        assert_eq!(sequence.plan(5), Plan::LastAck { expected: 17 });
        assert_eq!(sequence.on_last_ack(17, Some(ack(17))), Verdict::Confirmed);
        assert_eq!(sequence.plan(1), Plan::LastAck { expected: 18 });
    }

    #[test]
    fn another_publishers_message_in_between_means_republishing() {
        let mut sequence = Sequence::default();
        sequence.on_every_ack(&[ack(10)]);
        let Plan::LastAck { expected } = sequence.plan(2) else {
            panic!("the sequence is known")
        };
        // Someone else's message landed at 11: ours are at 12 and 13.
        assert_eq!(
            sequence.on_last_ack(expected, Some(ack(13))),
            Verdict::Republish
        );
        // The republish asks every ack; JetStream reports ours as duplicates.
        assert_eq!(sequence.plan(2), Plan::EveryAck);
        assert_eq!(sequence.on_every_ack(&[duplicate(12), duplicate(13)]), 2);
        // A duplicate's sequence is not the stream's: it is not known any more.
        assert_eq!(sequence.plan(1), Plan::EveryAck);
    }

    #[test]
    fn no_answer_or_a_duplicate_confirms_nothing() {
        for answer in [None, Some(duplicate(12))] {
            let mut sequence = Sequence::default();
            sequence.on_every_ack(&[ack(10)]);
            assert_eq!(sequence.plan(2), Plan::LastAck { expected: 12 });
            assert_eq!(
                sequence.on_last_ack(12, answer),
                Verdict::Republish,
                "{answer:?}"
            );
            assert_eq!(sequence.plan(2), Plan::EveryAck);
        }
    }

    #[test]
    fn a_publish_that_failed_half_way_forgets_the_sequence() {
        let mut sequence = Sequence::default();
        sequence.on_every_ack(&[ack(10)]);
        let _ = sequence.plan(4); // ...and the connection drops before any answer
        assert_eq!(sequence.plan(4), Plan::EveryAck);
    }

    #[test]
    fn confirmations_are_counted_by_how_they_came() {
        let last = Plan::LastAck { expected: 1 };
        assert_eq!(
            confirmation(last, Some(Verdict::Confirmed)),
            Confirmation::LastAck
        );
        assert_eq!(
            confirmation(last, Some(Verdict::Republish)),
            Confirmation::Republished
        );
        assert_eq!(confirmation(Plan::EveryAck, None), Confirmation::EveryAck);
    }
}
