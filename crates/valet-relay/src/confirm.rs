//! How the relay keeps the stream in log order and learns that JetStream stored a batch:
//! pure, with acks as inputs.
//!
//! Every message names its predecessor (`Nats-Expected-Last-Msg-Id`: the event id of the
//! message before it in the log, or of the last one confirmed). JetStream stores a
//! message only right after its predecessor, so a message whose predecessor was lost
//! (a NATS crash, a reconnect that sends buffered messages late) is refused instead of
//! landing ahead of it. JetStream checks `Nats-Msg-Id` first: a message it already has
//! is answered as a duplicate whatever it names, so a republish after a takeover walks
//! through what is stored and goes on after it.
//!
//! Once a batch has been confirmed, the next is sent with one ack, on its last message:
//! that message was stored right after its predecessor, which was stored right after
//! its own, and so on back to the last confirmed message, so the one answer proves the
//! whole batch stored in order. Any other answer, and the batch is sent again with an
//! ack per message. A message refused there (the stream's last message is not its
//! predecessor: another publisher's message, or a predecessor past the duplicate window)
//! is first checked against the stream's real end: when the stream ends with an event of
//! the log at or before the batch, JetStream has lost messages it had confirmed (seen
//! when a NATS node dies under load) and the relay publishes again from the event after
//! that end ([`Recovery::Rewind`]). When that rewind makes no progress (the stream still
//! ends there: JetStream answers the lost messages as duplicates, because a stream
//! leader records a message id when it takes the message in, before the cluster has
//! stored it, and keeps it for the duplicate window even when the write is lost), the
//! messages are published once more under new ids ([`Recovery::Reissue`]). Otherwise the
//! message is sent again naming none, so the relay always makes progress: after the
//! stream's current last message, which is where a consumer would expect it.

use valet_app::outbox::Confirmation;
use valet_app::LogCursor;

/// JetStream's answer to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Stored,
    /// Already in the stream (its `Nats-Msg-Id` is within the duplicate window).
    Duplicate,
    /// Not stored: the stream's last message is not the one it named.
    Refused,
}

/// How to publish the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Ask for one ack, on the last message; it confirms the batch.
    LastAck,
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

/// What the acks of a [`Plan::EveryAck`] batch say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EveryAck {
    pub duplicates: u64,
    /// The first message refused, if any: send the batch again from there.
    pub resume_at: Option<usize>,
}

/// The relay's end of the stream: the last message it knows is stored, and whether the
/// stream is known to end there (so a batch can be confirmed by its last ack).
#[derive(Debug, Clone, Default)]
pub(crate) struct Chain {
    last: Option<String>,
    trusted: bool,
}

impl Chain {
    /// A chain whose stream is known to end with the message `id`, whose acks are not
    /// trusted yet (the next batch is sent with an ack per message).
    pub fn ending_at(id: &str) -> Chain {
        Chain {
            last: Some(id.to_owned()),
            trusted: false,
        }
    }

    /// How to publish the next batch. Until an answer confirms it again, the end of the
    /// stream is not trusted (a publish that fails half-way proves nothing).
    pub fn plan(&mut self) -> Plan {
        match (std::mem::take(&mut self.trusted), &self.last) {
            (true, Some(_)) => Plan::LastAck,
            _ => Plan::EveryAck,
        }
    }

    /// The last message known to be stored, if any.
    pub fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// The predecessor each message names, for messages sent in this order.
    pub fn expectations<'a>(&'a self, ids: &[&'a str]) -> Vec<Option<&'a str>> {
        std::iter::once(self.last.as_deref())
            .chain(ids.iter().map(|id| Some(*id)))
            .take(ids.len())
            .collect()
    }

    /// The answer to a [`Plan::LastAck`] batch's last message, `last_id` (`None`: no
    /// answer).
    pub fn on_last_ack(&mut self, last_id: &str, answer: Option<Answer>) -> Verdict {
        match answer {
            Some(Answer::Stored) => {
                self.last = Some(last_id.to_owned());
                self.trusted = true;
                Verdict::Confirmed
            }
            // A duplicate is in the stream, but whether the stream ends there is not known.
            _ => Verdict::Republish,
        }
    }

    /// Every message's answer, in order, of a batch sent with [`Plan::EveryAck`].
    pub fn on_every_ack(&mut self, ids: &[&str], answers: &[Answer]) -> EveryAck {
        let mut duplicates = 0;
        for (i, (id, answer)) in ids.iter().zip(answers).enumerate() {
            match answer {
                Answer::Stored => self.last = Some((*id).to_owned()),
                Answer::Duplicate => {
                    duplicates += 1;
                    self.last = Some((*id).to_owned());
                }
                Answer::Refused => {
                    // Resend it naming no predecessor: after whatever ends the stream.
                    self.last = None;
                    return EveryAck {
                        duplicates,
                        resume_at: Some(i),
                    };
                }
            }
        }
        self.trusted = true;
        EveryAck {
            duplicates,
            resume_at: None,
        }
    }
}

/// Where the stream ends, as read after a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Empty, or ending with a message that is no event of this log.
    Unknown,
    /// Ending with the message of the log event `id`, which sits at `cursor`.
    Event { id: String, cursor: LogCursor },
}

/// What to do after JetStream refused a message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// The stream ends before messages it had confirmed, with the message `id` (of the
    /// event at `cursor`): publish again from the event after it.
    Rewind { id: String, cursor: LogCursor },
    /// A rewind to `cursor` made no progress: publish again from there with new message
    /// ids, which JetStream has not seen.
    Reissue { id: String, cursor: LogCursor },
    /// Send the refused message naming no predecessor, after whatever ends the stream.
    AfterLast,
}

/// Where the relay last published again from, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastRewind {
    pub cursor: LogCursor,
    pub reissued: bool,
}

/// What to do about a refusal in a batch that ends at `batch_end`, given where the stream
/// ends and where the relay last rewound to. Finding the stream ending at the last
/// rewind's place again means that rewind made no progress: the messages after it are
/// reissued under new ids, once; after that the relay goes on after the stream's end
/// instead of looping.
pub(crate) fn recovery(
    end: StreamEnd,
    batch_end: LogCursor,
    last_rewind: Option<LastRewind>,
) -> Recovery {
    match end {
        StreamEnd::Event { id, cursor } if cursor <= batch_end => match last_rewind {
            Some(last) if last.cursor == cursor && last.reissued => Recovery::AfterLast,
            Some(last) if last.cursor == cursor => Recovery::Reissue { id, cursor },
            _ => Recovery::Rewind { id, cursor },
        },
        // Empty or foreign (another publisher), or ahead of this relay (it was deposed):
        // never republish the whole log by guesswork.
        _ => Recovery::AfterLast,
    }
}

/// Where to publish again from: after the message `id` (the event at `to`), with new
/// message ids for the events up to `reissue_through` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewind {
    pub id: String,
    pub to: LogCursor,
    pub reissue_through: Option<LogCursor>,
}

impl Recovery {
    /// The rewind it asks for (`None`: go on after the stream's last message), for a
    /// refusal in a batch ending at `batch_end`.
    pub fn rewind(self, batch_end: LogCursor) -> Option<Rewind> {
        match self {
            Recovery::Rewind { id, cursor } => Some(Rewind {
                id,
                to: cursor,
                reissue_through: None,
            }),
            Recovery::Reissue { id, cursor } => Some(Rewind {
                id,
                to: cursor,
                reissue_through: Some(batch_end),
            }),
            Recovery::AfterLast => None,
        }
    }
}

/// How a batch was confirmed, for the relay's status.
pub(crate) fn confirmation(plan: Plan, verdict: Option<Verdict>) -> Confirmation {
    match (plan, verdict) {
        (Plan::LastAck, Some(Verdict::Confirmed)) => Confirmation::LastAck,
        (Plan::LastAck, _) => Confirmation::Republished,
        (Plan::EveryAck, _) => Confirmation::EveryAck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 3] = ["e1", "e2", "e3"];

    fn confirmed_at(id: &str) -> Chain {
        let mut chain = Chain::default();
        assert_eq!(chain.plan(), Plan::EveryAck);
        chain.on_every_ack(&[id], &[Answer::Stored]);
        chain
    }

    #[test]
    fn each_message_names_its_predecessor_in_the_log() {
        let chain = Chain::default();
        assert_eq!(
            chain.expectations(&IDS),
            vec![None, Some("e1"), Some("e2")],
            "a relay that starts knows no predecessor for its first message"
        );
        let chain = confirmed_at("e0");
        assert_eq!(
            chain.expectations(&IDS),
            vec![Some("e0"), Some("e1"), Some("e2")]
        );
    }

    #[test]
    fn the_first_batch_asks_every_ack_then_the_last_ack_suffices() {
        let mut chain = confirmed_at("e0");
        assert_eq!(chain.plan(), Plan::LastAck);
        assert_eq!(
            chain.on_last_ack("e3", Some(Answer::Stored)),
            Verdict::Confirmed
        );
        assert_eq!(chain.plan(), Plan::LastAck);
        assert_eq!(chain.expectations(&["e4"]), vec![Some("e3")]);
    }

    #[test]
    fn no_answer_a_refusal_or_a_duplicate_means_republishing_with_every_ack() {
        for answer in [None, Some(Answer::Refused), Some(Answer::Duplicate)] {
            let mut chain = confirmed_at("e0");
            assert_eq!(chain.plan(), Plan::LastAck);
            assert_eq!(
                chain.on_last_ack("e3", answer),
                Verdict::Republish,
                "{answer:?}"
            );
            assert_eq!(chain.plan(), Plan::EveryAck, "{answer:?}");
            // The republish still names the last confirmed message first.
            assert_eq!(chain.expectations(&IDS)[0], Some("e0"));
        }
    }

    #[test]
    fn a_republish_walks_through_duplicates_and_goes_on_after_them() {
        let mut chain = confirmed_at("e0");
        let _ = chain.plan();
        let outcome = chain.on_every_ack(
            &IDS,
            &[Answer::Duplicate, Answer::Duplicate, Answer::Stored],
        );
        assert_eq!(
            outcome,
            EveryAck {
                duplicates: 2,
                resume_at: None
            }
        );
        assert_eq!(chain.plan(), Plan::LastAck);
        assert_eq!(chain.expectations(&["e4"]), vec![Some("e3")]);
    }

    #[test]
    fn a_refused_message_is_resent_naming_no_predecessor() {
        let mut chain = confirmed_at("e0");
        let _ = chain.plan();
        // Another publisher's message ended the stream: e1 is refused, and e2 and e3,
        // which name e1 and e2, with it.
        let outcome =
            chain.on_every_ack(&IDS, &[Answer::Refused, Answer::Refused, Answer::Refused]);
        assert_eq!(
            outcome,
            EveryAck {
                duplicates: 0,
                resume_at: Some(0)
            }
        );
        assert_eq!(chain.plan(), Plan::EveryAck);
        assert_eq!(chain.expectations(&IDS), vec![None, Some("e1"), Some("e2")]);
        chain.on_every_ack(&IDS, &[Answer::Stored; 3]);
        assert_eq!(chain.plan(), Plan::LastAck);
    }

    fn at(position: i64) -> LogCursor {
        LogCursor {
            xact: position,
            position,
        }
    }

    fn ends_with(position: i64) -> StreamEnd {
        StreamEnd::Event {
            id: format!("e{position}"),
            cursor: at(position),
        }
    }

    #[test]
    fn a_stream_that_lost_confirmed_messages_is_rewound_to_its_end() {
        // Given a batch up to e9, when the stream is found to end with e4 (JetStream lost
        // e5.. after confirming them), then the relay publishes again after e4.
        assert_eq!(
            recovery(ends_with(4), at(9), None),
            Recovery::Rewind {
                id: "e4".into(),
                cursor: at(4)
            }
        );
        // An end inside the batch is rewound to as well.
        assert!(matches!(
            recovery(ends_with(9), at(9), None),
            Recovery::Rewind { .. }
        ));
    }

    fn rewound(position: i64) -> Option<LastRewind> {
        Some(LastRewind {
            cursor: at(position),
            reissued: false,
        })
    }

    fn reissued(position: i64) -> Option<LastRewind> {
        Some(LastRewind {
            cursor: at(position),
            reissued: true,
        })
    }

    #[test]
    fn an_unknown_foreign_or_later_end_goes_on_after_the_last_message() {
        assert_eq!(
            recovery(StreamEnd::Unknown, at(9), None),
            Recovery::AfterLast
        );
        // Another relay published past this one's batch: it was deposed.
        assert_eq!(recovery(ends_with(12), at(9), None), Recovery::AfterLast);
        assert!(matches!(
            recovery(ends_with(4), at(9), rewound(2)),
            Recovery::Rewind { .. }
        ));
    }

    #[test]
    fn a_fruitless_rewind_is_reissued_under_new_ids_once() {
        // Given a rewind to e4 whose messages JetStream answered as duplicates, when the
        // stream still ends with e4, then the events after it go out under new ids.
        let recovery_now = recovery(ends_with(4), at(9), rewound(4));
        assert_eq!(
            recovery_now,
            Recovery::Reissue {
                id: "e4".into(),
                cursor: at(4)
            }
        );
        assert_eq!(
            recovery_now.rewind(at(9)),
            Some(Rewind {
                id: "e4".into(),
                to: at(4),
                reissue_through: Some(at(9))
            })
        );
        // And when even that left the stream ending there, the relay goes on after it.
        assert_eq!(
            recovery(ends_with(4), at(9), reissued(4)),
            Recovery::AfterLast
        );
        assert_eq!(Recovery::AfterLast.rewind(at(9)), None);
    }

    #[test]
    fn a_chain_rewound_to_the_streams_end_names_it_and_asks_for_every_ack() {
        let mut chain = Chain::ending_at("e0");
        assert_eq!(chain.plan(), Plan::EveryAck);
        assert_eq!(chain.expectations(&IDS)[0], Some("e0"));
    }

    #[test]
    fn a_refusal_after_stored_messages_resumes_at_the_refused_one() {
        let mut chain = Chain::default();
        let _ = chain.plan();
        let outcome = chain.on_every_ack(&IDS, &[Answer::Stored, Answer::Refused, Answer::Refused]);
        assert_eq!(outcome.resume_at, Some(1));
        assert_eq!(chain.expectations(&IDS[1..]), vec![None, Some("e2")]);
    }

    #[test]
    fn a_publish_that_failed_half_way_is_not_trusted() {
        let mut chain = confirmed_at("e0");
        let _ = chain.plan(); // ...and the connection drops before any answer
        assert_eq!(chain.plan(), Plan::EveryAck);
        assert_eq!(chain.expectations(&IDS)[0], Some("e0"));
    }

    #[test]
    fn confirmations_are_counted_by_how_they_came() {
        assert_eq!(
            confirmation(Plan::LastAck, Some(Verdict::Confirmed)),
            Confirmation::LastAck
        );
        assert_eq!(
            confirmation(Plan::LastAck, Some(Verdict::Republish)),
            Confirmation::Republished
        );
        assert_eq!(confirmation(Plan::EveryAck, None), Confirmation::EveryAck);
    }
}
