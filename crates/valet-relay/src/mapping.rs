//! Log events → wire messages: the relay's rendering of the grant fold and the key
//! ring's. Only token and signing-key changes concern resource services; a grant's client
//! and user come from its opening, which the relay remembers (or reloads from the grant's
//! stream after a restart).

use std::collections::HashMap;

use valet_app::{EventStore, ReplayEvent, StoreError};
use valet_domain::grant::{self, Subject};
use valet_domain::{changes, Change, ClientId, GrantId, RevocationReason, StreamId, Timestamp};
use valet_wire::{rfc3339_from_unix_millis, EventType, Message, TokenEvent, SCHEMA_VERSION};

use crate::key_mapping::{key_message, RingLog};

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("grant {0} has no GrantIssued event")]
    UnknownGrant(GrantId),
    #[error("signing-key event {0} is not in the key ring's stream")]
    UnknownKeyEvent(uuid::Uuid),
    /// Includes an event the relay cannot read: it stops rather than skip a revocation.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who holds a grant, as the wire names them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    client_id: String,
    sub: Option<String>,
    username: Option<String>,
}

impl Holder {
    fn of(client_id: &ClientId, subject: Option<&Subject>) -> Self {
        Holder {
            client_id: client_id.to_string(),
            // A client acting for itself is its own subject (RFC 9068 §2.2).
            sub: Some(subject.map_or_else(|| client_id.to_string(), |s| s.user_id.to_string())),
            username: subject.map(|s| s.username.to_string()),
        }
    }
}

/// Remembers who each grant belongs to; bounded, reloaded from the log on a miss.
#[derive(Default)]
pub struct GrantDirectory {
    grants: HashMap<GrantId, Holder>,
}

const DIRECTORY_LIMIT: usize = 200_000;

fn reason(reason: RevocationReason) -> valet_wire::RevocationReason {
    use valet_wire::RevocationReason as W;
    match reason {
        RevocationReason::ClientRequest => W::ClientRequest,
        RevocationReason::CodeReplay => W::CodeReplay,
        RevocationReason::RefreshReuse => W::RefreshReuse,
        RevocationReason::ConsentRevoked => W::ConsentRevoked,
        RevocationReason::UserDisabled => W::UserDisabled,
        RevocationReason::ClientDisabled => W::ClientDisabled,
        RevocationReason::Admin => W::Admin,
    }
}

impl GrantDirectory {
    /// The wire messages of a batch, in log order.
    pub async fn map_batch<S: EventStore>(
        &mut self,
        store: &S,
        batch: &[ReplayEvent],
    ) -> Result<Vec<Message>, MappingError> {
        let mut out = Vec::new();
        let mut ring_log = RingLog::default();
        for event in batch {
            for change in changes(&event.stream, &event.event) {
                let (grant_id, change) = match change {
                    Change::Grant { grant_id, change } => (grant_id, change),
                    Change::SigningKey { event: key } => {
                        out.extend(
                            key_message(store, &mut ring_log, event, key)
                                .await?
                                .map(Message::Key),
                        );
                        continue;
                    }
                    _ => continue,
                };
                if let grant::Change::Opened {
                    client_id, subject, ..
                } = change
                {
                    self.remember(grant_id, Holder::of(client_id, subject));
                }
                if !is_visible(&change) {
                    continue;
                }
                let holder = self.holder(store, grant_id).await?;
                out.extend(to_wire(event, grant_id, &holder, change).map(Message::Token));
            }
        }
        Ok(out)
    }

    fn remember(&mut self, grant_id: GrantId, holder: Holder) {
        if self.grants.len() >= DIRECTORY_LIMIT {
            self.grants.clear();
        }
        self.grants.insert(grant_id, holder);
    }

    async fn holder<S: EventStore>(
        &mut self,
        store: &S,
        grant_id: GrantId,
    ) -> Result<Holder, MappingError> {
        if let Some(holder) = self.grants.get(&grant_id) {
            return Ok(holder.clone());
        }
        let stream = StreamId::grant(&grant_id);
        let first = store.read_stream(&stream).await?.into_iter().next();
        let holder = first
            .as_ref()
            .and_then(|e| {
                changes(&e.stream, &e.event).find_map(|change| match change {
                    Change::Grant {
                        change:
                            grant::Change::Opened {
                                client_id, subject, ..
                            },
                        ..
                    } => Some(Holder::of(client_id, subject)),
                    _ => None,
                })
            })
            .ok_or(MappingError::UnknownGrant(grant_id))?;
        self.remember(grant_id, holder.clone());
        Ok(holder)
    }
}

/// Whether resource services hear of a change.
fn is_visible(change: &grant::Change<'_>) -> bool {
    matches!(
        change,
        grant::Change::AccessIssued(_)
            | grant::Change::AccessRevoked { .. }
            | grant::Change::Revoked { .. }
    )
}

/// The wire message of one visible change.
fn to_wire(
    event: &ReplayEvent,
    grant_id: GrantId,
    holder: &Holder,
    change: grant::Change<'_>,
) -> Option<TokenEvent> {
    let base = |event_type: EventType, occurred_at: Timestamp| TokenEvent {
        schema_version: SCHEMA_VERSION,
        event_id: event.event_id.to_string(),
        position: event.position,
        event_type,
        occurred_at: rfc3339_from_unix_millis(occurred_at.as_unix_millis()),
        client_id: holder.client_id.clone(),
        grant_id: grant_id.to_string(),
        token_sha256: None,
        token_type: None,
        sub: None,
        username: None,
        scope: None,
        expires_at: None,
        reason: None,
    };
    match change {
        grant::Change::AccessIssued(issue) => Some(TokenEvent {
            token_sha256: Some(issue.hash.to_string()),
            token_type: Some("access_token".to_owned()),
            sub: holder.sub.clone(),
            username: holder.username.clone(),
            scope: Some(issue.scope.to_string()),
            expires_at: Some(issue.expires_at.as_unix_seconds()),
            ..base(EventType::TokenIssued, issue.issued_at)
        }),
        grant::Change::AccessRevoked {
            hash,
            reason: why,
            at,
        } => Some(TokenEvent {
            token_sha256: Some(hash.to_string()),
            token_type: Some("access_token".to_owned()),
            reason: Some(reason(why)),
            ..base(EventType::TokenRevoked, at)
        }),
        grant::Change::Revoked {
            reason: why, at, ..
        } => Some(TokenEvent {
            sub: holder.sub.clone(),
            reason: Some(reason(why)),
            ..base(EventType::GrantRevoked, at)
        }),
        // Refresh tokens never reach resource services; a reuse is followed by the
        // revocation they act on.
        grant::Change::Opened { .. }
        | grant::Change::RefreshIssued(_)
        | grant::Change::RefreshRotated(_)
        | grant::Change::RefreshReused { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;
    use valet_app::memory::MemoryEventStore;
    use valet_app::{EventMetadata, ExpectedVersion, NewEvent};
    use valet_domain::grant::{AccessTokenIssue, GrantOrigin, RefreshTokenIssue};
    use valet_domain::signing_key::{Algorithm, Event as KeyChange, KeyId, PublicJwk};
    use valet_domain::{Event, ScopeSet, TokenHash, UserId, Username};
    use valet_wire::{KeyEvent, KeyEventType};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn gid() -> GrantId {
        GrantId::new(Uuid::from_u128(3))
    }

    fn issued() -> Event {
        grant::Event::GrantIssued {
            grant_id: gid(),
            client_id: ClientId::parse("web").unwrap(),
            subject: Some(Subject {
                user_id: UserId::new(Uuid::from_u128(7)),
                username: Username::parse("alice").unwrap(),
            }),
            scope: ScopeSet::parse("read").unwrap(),
            origin: GrantOrigin::ClientCredentials,
            access: AccessTokenIssue {
                jti: None,
                hash: TokenHash::of("at"),
                scope: ScopeSet::parse("read").unwrap(),
                issued_at: t(1000),
                expires_at: t(4_000),
            },
            refresh: Some(RefreshTokenIssue {
                hash: TokenHash::of("rt"),
                issued_at: t(1000),
                expires_at: t(9_000),
            }),
            at: t(1000),
        }
        .into()
    }

    fn replay(position: i64, event: Event) -> ReplayEvent {
        ReplayEvent {
            position,
            xact: position,
            event_id: Uuid::from_u128(position as u128),
            stream: StreamId::grant(&gid()),
            event,
            recorded_at_micros: 0,
        }
    }

    fn tokens(messages: Vec<Message>) -> Vec<TokenEvent> {
        messages
            .into_iter()
            .filter_map(Message::into_token)
            .collect()
    }

    #[tokio::test]
    async fn key_events_become_wire_messages_carrying_the_public_key_as_it_then_stood() {
        let key_id = KeyId::new(Uuid::from_u128(5));
        let public = PublicJwk::new(
            [("kty", "OKP"), ("crv", "Ed25519"), ("x", "AQID")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
        .expect("public");
        let ring = [
            KeyChange::SigningKeyGenerated {
                key_id,
                algorithm: Algorithm::EdDSA,
                public,
                at: t(1000),
            },
            KeyChange::SigningKeyPublished {
                key_id,
                activates_at: t(301_000),
                at: t(1000),
            },
            KeyChange::SigningKeyActivated {
                key_id,
                at: t(301_000),
            },
            KeyChange::SigningKeyRetired {
                key_id,
                published_until: t(900_000),
                at: t(500_000),
            },
        ];
        let store = MemoryEventStore::new();
        let new_events = ring
            .iter()
            .enumerate()
            .map(|(i, e)| {
                NewEvent::new(
                    Uuid::from_u128(100 + i as u128),
                    Event::SigningKey(e.clone()),
                    EventMetadata::default(),
                )
            })
            .collect();
        store
            .append(
                &StreamId::SigningKeys,
                ExpectedVersion::NoStream,
                new_events,
            )
            .await
            .expect("appended");
        let batch: Vec<ReplayEvent> = ring
            .iter()
            .enumerate()
            .map(|(i, e)| ReplayEvent {
                position: 100 + i as i64,
                xact: 100 + i as i64,
                event_id: Uuid::from_u128(100 + i as u128),
                stream: StreamId::SigningKeys,
                event: Event::SigningKey(e.clone()),
                recorded_at_micros: 0,
            })
            .collect();
        let out = GrantDirectory::default()
            .map_batch(&store, &batch)
            .await
            .expect("mapped");
        let keys: Vec<KeyEvent> = out
            .into_iter()
            .map(|m| match m {
                Message::Key(key) => key,
                Message::Token(token) => panic!("a token event from the ring: {token:?}"),
            })
            .collect();
        let types: Vec<KeyEventType> = keys.iter().map(|k| k.event_type).collect();
        // Generation is not a step resource services see: publication carries the key.
        assert_eq!(
            types,
            [
                KeyEventType::KeyPublished,
                KeyEventType::KeyActivated,
                KeyEventType::KeyRetired
            ]
        );
        let published = &keys[0];
        assert_eq!(published.kid, key_id.to_string());
        assert_eq!(published.alg, "EdDSA");
        assert_eq!(published.activates_at, 301);
        assert_eq!(published.jwk["kid"], key_id.to_string());
        assert_eq!(published.jwk["x"], "AQID");
        assert_eq!(published.jwk["use"], "sig");
        assert_eq!(published.event_id, Uuid::from_u128(101).to_string());
        // Each message is the key as it stood then: not yet retired when published.
        assert_eq!(published.published_until, None);
        assert_eq!(keys[2].published_until, Some(900));
        assert_eq!(keys[2].retired_at, Some(500));
        assert_eq!(keys[2].occurred_at, rfc3339_from_unix_millis(500_000));
    }

    #[tokio::test]
    async fn token_changes_become_wire_messages_with_their_holder() {
        let store = MemoryEventStore::new();
        let revoked: Event = grant::Event::GrantRevoked {
            reason: RevocationReason::Admin,
            cause: None,
            at: t(2000),
        }
        .into();
        let mut directory = GrantDirectory::default();
        let out = tokens(
            directory
                .map_batch(&store, &[replay(1, issued()), replay(2, revoked)])
                .await
                .expect("mapped"),
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].event_type, EventType::TokenIssued);
        assert_eq!(out[0].token_sha256, Some(TokenHash::of("at").to_string()));
        assert_eq!(out[0].username.as_deref(), Some("alice"));
        assert_eq!(out[0].expires_at, Some(4));
        assert_eq!(out[1].event_type, EventType::GrantRevoked);
        assert_eq!(out[1].client_id, "web");
        assert_eq!(out[1].reason, Some(valet_wire::RevocationReason::Admin));
    }

    #[tokio::test]
    async fn a_grant_opened_before_the_relay_started_is_read_from_its_stream() {
        let store = MemoryEventStore::new();
        store
            .append(
                &StreamId::grant(&gid()),
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    Uuid::from_u128(1),
                    issued(),
                    EventMetadata::default(),
                )],
            )
            .await
            .expect("appended");
        let revoked: Event = grant::Event::AccessTokenRevoked {
            hash: TokenHash::of("at"),
            reason: RevocationReason::ClientRequest,
            at: t(2000),
        }
        .into();
        let out = tokens(
            GrantDirectory::default()
                .map_batch(&store, &[replay(9, revoked.clone())])
                .await
                .expect("mapped"),
        );
        assert_eq!(out[0].event_type, EventType::TokenRevoked);
        assert_eq!(out[0].client_id, "web");
        // A grant with no opening in the log is an error, not a guess.
        let unknown = GrantDirectory::default()
            .map_batch(&MemoryEventStore::new(), &[replay(9, revoked)])
            .await;
        assert!(matches!(unknown, Err(MappingError::UnknownGrant(_))));
    }
}
