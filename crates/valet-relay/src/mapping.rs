//! Log events → wire messages. Only grant events concern resource services; a grant's
//! client and user come from its first event, which the relay remembers (or reloads
//! from the grant's stream after a restart).

use std::collections::HashMap;

use valet_app::{EventStore, RecordedEvent, ReplayEvent, StoreError};
use valet_domain::grant;
use valet_domain::{DomainEvent, GrantId, RevocationReason, StreamId};
use valet_wire::{rfc3339_from_unix_millis, EventType, TokenEvent, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// An event the relay cannot read: stop rather than skip a revocation.
    #[error("event {event_id} cannot be decoded: {reason}")]
    Undecodable { event_id: String, reason: String },
    #[error("grant {0} has no GrantIssued event")]
    UnknownGrant(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
struct GrantInfo {
    client_id: String,
    sub: Option<String>,
    username: Option<String>,
}

/// Remembers who each grant belongs to; bounded, reloaded from the log on a miss.
#[derive(Default)]
pub struct GrantDirectory {
    grants: HashMap<uuid::Uuid, GrantInfo>,
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

fn undecodable(
    event_id: uuid::Uuid,
) -> impl FnOnce(valet_domain::event::DecodeError) -> MappingError {
    move |e| MappingError::Undecodable {
        event_id: event_id.to_string(),
        reason: e.to_string(),
    }
}

/// A followed event, parsed from its JSON text.
fn decode(event: &ReplayEvent) -> Result<grant::Event, MappingError> {
    grant::Event::from_payload_json(&event.event_type, event.schema_version, &event.payload)
        .map_err(undecodable(event.event_id))
}

/// A grant's first event, reloaded from its stream.
fn decode_recorded(event: &RecordedEvent) -> Result<grant::Event, MappingError> {
    event.decode().map_err(undecodable(event.event_id))
}

impl GrantDirectory {
    /// The wire messages of a batch, in log order.
    pub async fn map_batch<S: EventStore>(
        &mut self,
        store: &S,
        batch: &[ReplayEvent],
    ) -> Result<Vec<TokenEvent>, MappingError> {
        let mut out = Vec::new();
        for event in batch {
            let Some(grant_id) = event
                .stream_id
                .strip_prefix("grant-")
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
            else {
                continue;
            };
            let decoded = decode(event)?;
            if let grant::Event::GrantIssued {
                client_id, subject, ..
            } = &decoded
            {
                if self.grants.len() >= DIRECTORY_LIMIT {
                    self.grants.clear();
                }
                self.grants.insert(
                    grant_id,
                    GrantInfo {
                        client_id: client_id.to_string(),
                        sub: subject.as_ref().map(|s| s.user_id.to_string()),
                        username: subject.as_ref().map(|s| s.username.to_string()),
                    },
                );
            }
            let info = self.info(store, grant_id).await?;
            if let Some(message) = to_wire(event, grant_id, &info, decoded) {
                out.push(message);
            }
        }
        Ok(out)
    }

    async fn info<S: EventStore>(
        &mut self,
        store: &S,
        grant_id: uuid::Uuid,
    ) -> Result<GrantInfo, MappingError> {
        if let Some(info) = self.grants.get(&grant_id) {
            return Ok(info.clone());
        }
        let stream = StreamId::grant(&GrantId::new(grant_id));
        let first = store.read_stream(&stream).await?.into_iter().next();
        let Some(grant::Event::GrantIssued {
            client_id, subject, ..
        }) = first.as_ref().map(decode_recorded).transpose()?
        else {
            return Err(MappingError::UnknownGrant(grant_id.to_string()));
        };
        let info = GrantInfo {
            client_id: client_id.to_string(),
            sub: subject.as_ref().map(|s| s.user_id.to_string()),
            username: subject.as_ref().map(|s| s.username.to_string()),
        };
        self.grants.insert(grant_id, info.clone());
        Ok(info)
    }
}

fn to_wire(
    event: &ReplayEvent,
    grant_id: uuid::Uuid,
    info: &GrantInfo,
    decoded: grant::Event,
) -> Option<TokenEvent> {
    let base = |event_type: EventType, occurred_at: i64| TokenEvent {
        schema_version: SCHEMA_VERSION,
        event_id: event.event_id.to_string(),
        position: event.position,
        event_type,
        occurred_at: rfc3339_from_unix_millis(occurred_at),
        client_id: info.client_id.clone(),
        grant_id: grant_id.to_string(),
        token_sha256: None,
        token_type: None,
        sub: None,
        username: None,
        scope: None,
        expires_at: None,
        reason: None,
    };
    let issued = |access: &grant::AccessTokenIssue, at: i64| TokenEvent {
        token_sha256: Some(access.hash.to_string()),
        token_type: Some("access_token".to_owned()),
        sub: info.sub.clone(),
        username: info.username.clone(),
        scope: Some(access.scope.to_string()),
        expires_at: Some(access.expires_at.as_unix_seconds()),
        ..base(EventType::TokenIssued, at)
    };
    match decoded {
        grant::Event::GrantIssued { access, at, .. } => Some(issued(&access, at.as_unix_millis())),
        grant::Event::TokensRefreshed { access, at, .. } => {
            Some(issued(&access, at.as_unix_millis()))
        }
        grant::Event::AccessTokenRevoked {
            hash,
            reason: why,
            at,
        } => Some(TokenEvent {
            token_sha256: Some(hash.to_string()),
            token_type: Some("access_token".to_owned()),
            reason: Some(reason(why)),
            ..base(EventType::TokenRevoked, at.as_unix_millis())
        }),
        grant::Event::GrantRevoked {
            reason: why, at, ..
        } => Some(TokenEvent {
            sub: info.sub.clone(),
            reason: Some(reason(why)),
            ..base(EventType::GrantRevoked, at.as_unix_millis())
        }),
        // The GrantRevoked that follows it is what consumers act on.
        grant::Event::RefreshTokenReused { .. } => None,
    }
}
