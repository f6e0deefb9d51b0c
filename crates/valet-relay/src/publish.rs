//! Publishing a batch to JetStream and reading where the stream ends: the relay's wire
//! side. Which acks to ask for and what their answers prove is `confirm`'s.

use std::borrow::Cow;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_nats::HeaderMap;
use valet_app::outbox::Confirmation;
use valet_app::{EventStore, LogCursor};
use valet_wire::{event_id_of_msg_id, Message, MSG_ID_HEADER, STREAM};

use crate::confirm::{self, Answer, Chain, LastRewind, Plan, Rewind, StreamEnd, Verdict};
use crate::{nats_error, RelayError};

/// The `Nats-Msg-Id` of each message: its event id (borrowed: no copy on the relay's
/// usual path), or with `reissue` a new id JetStream has not seen (`<event id>:<reissue>`).
pub(crate) fn message_ids(messages: &[Message], reissue: Option<u64>) -> Vec<Cow<'_, str>> {
    messages
        .iter()
        .map(|message| match reissue {
            Some(suffix) => Cow::Owned(format!("{}:{suffix}", message.event_id())),
            None => Cow::Borrowed(message.event_id()),
        })
        .collect()
}

/// The wire form of one message: its headers (`Nats-Msg-Id` = `id`, and the predecessor
/// it must follow in the stream) and payload.
fn outgoing(message: &Message, id: &str, after: Option<&str>) -> (HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, id);
    if let Some(after) = after {
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID, after);
    }
    (headers, message.to_json().into())
}

/// JetStream's answer to one message; an error for a failure that says nothing of where
/// the stream ends (a timeout, a broken connection).
pub(crate) fn answer(
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Answer, RelayError> {
    match ack {
        Ok(ack) if ack.duplicate => Ok(Answer::Duplicate),
        Ok(_) => Ok(Answer::Stored),
        Err(error) if error.kind() == PublishErrorKind::WrongLastMessageId => Ok(Answer::Refused),
        Err(error) => Err(nats_error(error)),
    }
}

/// What became of a batch.
pub(crate) enum Published {
    /// Stored: how JetStream confirmed it (`None`: nothing to publish) and how many
    /// messages it reported as duplicates (a republish after a crash).
    Confirmed(Option<Confirmation>, u64),
    /// The message at this index was refused: the stream does not end with its
    /// predecessor. The messages before it are stored. The plan the batch was sent with.
    Refused(usize, Plan),
}

/// Publishes a batch under the message ids `ids` (one per message). Which acks it asks
/// for, and what their answers prove, is `confirm`'s.
pub(crate) async fn publish(
    nats: &async_nats::Client,
    js: &jetstream::Context,
    messages: &[Message],
    ids: &[Cow<'_, str>],
    chain: &mut Chain,
) -> Result<Published, RelayError> {
    let Some((last, rest)) = messages.split_last() else {
        // A batch of events resource services do not see: nothing to confirm.
        return Ok(Published::Confirmed(None, 0));
    };
    let ids: Vec<&str> = ids.iter().map(|id| id.as_ref()).collect();
    let last_id = ids[ids.len() - 1];
    let plan = chain.plan();
    if plan == Plan::LastAck {
        let after = chain.expectations(&ids);
        for ((message, id), after) in rest.iter().zip(&ids).zip(&after) {
            let (headers, payload) = outgoing(message, id, *after);
            nats.publish_with_headers(message.subject(), headers, payload)
                .await
                .map_err(nats_error)?;
        }
        let (headers, payload) = outgoing(last, last_id, after[after.len() - 1]);
        // An ack that fails (e.g. times out) confirms nothing either: the republish below
        // reports a real outage as its own error.
        let ack = js
            .send_publish(
                last.subject(),
                PublishMessage::build().payload(payload).headers(headers),
            )
            .await
            .map_err(nats_error)?
            .await;
        let answer = answer(ack)
            .inspect_err(|error| tracing::debug!(%error, "the batch's last ack failed"))
            .ok();
        match chain.on_last_ack(last_id, answer) {
            Verdict::Confirmed => {
                return Ok(Published::Confirmed(
                    Some(confirm::confirmation(plan, Some(Verdict::Confirmed))),
                    0,
                ))
            }
            Verdict::Republish => tracing::debug!(
                "the last ack does not prove the batch stored in order; republishing it with an ack per message"
            ),
        }
    }
    let after = chain.expectations(&ids);
    let mut pending = Vec::with_capacity(messages.len());
    for ((message, id), after) in messages.iter().zip(&ids).zip(&after) {
        let (headers, payload) = outgoing(message, id, *after);
        let publish = PublishMessage::build().payload(payload).headers(headers);
        let ack = js
            .send_publish(message.subject(), publish)
            .await
            .map_err(nats_error)?;
        pending.push(ack);
    }
    let mut answers = Vec::with_capacity(pending.len());
    for ack in pending {
        answers.push(answer(ack.await)?);
    }
    let outcome = chain.on_every_ack(&ids, &answers);
    if let Some(at) = outcome.resume_at {
        return Ok(Published::Refused(at, plan));
    }
    let verdict = (plan == Plan::LastAck).then_some(Verdict::Republish);
    Ok(Published::Confirmed(
        Some(confirm::confirmation(plan, verdict)),
        outcome.duplicates,
    ))
}

/// Where to publish again from, when the stream no longer ends with the chain's last
/// confirmed message but with an earlier event of the log (`confirmed`: the log cursor
/// the chain's end was confirmed at).
pub(crate) async fn lost_tail<S: EventStore>(
    store: &S,
    js: &jetstream::Context,
    chain: &Chain,
    confirmed: LogCursor,
    last_rewind: Option<LastRewind>,
) -> Option<Rewind> {
    let expected = chain.last()?;
    let last_id = stream_last_id(js)
        .await
        .inspect_err(|error| tracing::debug!(%error, "cannot read where the stream ends"))
        .ok()?;
    if last_id.as_deref() == Some(expected) {
        return None;
    }
    let end = stream_end(store, last_id)
        .await
        .inspect_err(|error| tracing::debug!(%error, "cannot find the stream's end in the log"))
        .ok()?;
    // Another publisher's message, or one ahead of this relay (`None`): the fencing and
    // the next refusal deal with those.
    let rewind = confirm::recovery(end, confirmed, last_rewind).rewind(confirmed)?;
    tracing::warn!(
        confirmed_last = expected,
        stream_ends_with = %rewind.id,
        new_ids = rewind.reissue_through.is_some(),
        "the stream lost messages NATS confirmed; publishing again from its end"
    );
    Some(rewind)
}

/// Where a relay that starts leading publishes from, given its checkpoint: after the
/// stream's last message when that is an event at or before the checkpoint. JetStream
/// confirmed everything up to the checkpoint, so an earlier end means the stream lost
/// messages (a NATS node that missed writes became the stream's leader), or that only
/// events resource services do not see follow it. Starting there, with the first
/// message naming that end as its predecessor, keeps such a loss from turning into a
/// hole under the messages published after it. `None`: the stream ends after the
/// checkpoint, or with no event of this log (start at the checkpoint).
pub(crate) async fn start_at_stream_end<S: EventStore>(
    store: &S,
    js: &jetstream::Context,
    checkpoint: LogCursor,
) -> Result<Option<Rewind>, RelayError> {
    Ok(match stream_end(store, stream_last_id(js).await?).await? {
        StreamEnd::Event { id, cursor } if cursor <= checkpoint => Some(Rewind {
            id,
            to: cursor,
            reissue_through: None,
        }),
        _ => None,
    })
}

/// The `Nats-Msg-Id` of the stream's last message (`None`: empty, or a message without).
pub(crate) async fn stream_last_id(js: &jetstream::Context) -> Result<Option<String>, RelayError> {
    let mut stream = js.get_stream(STREAM).await.map_err(nats_error)?;
    let last = stream.info().await.map_err(nats_error)?.state.last_sequence;
    if last == 0 {
        return Ok(None);
    }
    let message = stream.get_raw_message(last).await.map_err(nats_error)?;
    Ok(message
        .headers
        .get(MSG_ID_HEADER)
        .map(|v| v.as_str().to_owned()))
}

/// Where the stream ends: its last message's `Nats-Msg-Id`, looked up in the log.
pub(crate) async fn stream_end<S: EventStore>(
    store: &S,
    last_id: Option<String>,
) -> Result<StreamEnd, RelayError> {
    let Some(id) = last_id else {
        return Ok(StreamEnd::Unknown);
    };
    let Ok(event_id) = uuid::Uuid::parse_str(event_id_of_msg_id(&id)) else {
        return Ok(StreamEnd::Unknown);
    };
    Ok(match store.cursor_of(event_id).await? {
        Some(cursor) => StreamEnd::Event { id, cursor },
        None => StreamEnd::Unknown,
    })
}
