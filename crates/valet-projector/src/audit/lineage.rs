//! `valet audit token`: the story of one token, from the log.

use valet_app::{EventStore, RecordedEvent, StoreError};
use valet_domain::grant::{self, GrantOrigin};
use valet_domain::{changes, Change, EventRef, RevocationReason, StreamId, TokenHash};
use valet_store::PgEventStore;

use crate::db_error;

pub use valet_app::admin::TokenKind;
use valet_app::admin::{TokenRevocation, TokenStory};

/// Every event of a token's grant, of the code and consent it came from, and the
/// client's, each in log order.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub token: TokenHash,
    pub kind: TokenKind,
    pub grant: StreamId,
    pub client: Vec<RecordedEvent>,
    pub consent: Vec<RecordedEvent>,
    pub code: Vec<RecordedEvent>,
    pub grant_events: Vec<RecordedEvent>,
}

/// How a token stopped working: the event, why, and what caused it when the log says.
#[derive(Debug, Clone, Copy)]
pub struct Revocation<'l> {
    pub event: &'l RecordedEvent,
    pub reason: RevocationReason,
    /// The event named as the cause, if any (a code replay names it).
    pub cause: Option<&'l EventRef>,
}

impl Lineage {
    /// The change that ended the token, if one did: its own revocation or its grant's.
    pub fn revocation(&self) -> Option<Revocation<'_>> {
        self.grant_events.iter().find_map(|event| {
            changes(&event.stream, &event.event).find_map(|change| match change {
                Change::Grant {
                    change: grant::Change::Revoked { reason, cause, .. },
                    ..
                } => Some(Revocation {
                    event,
                    reason,
                    cause,
                }),
                Change::Grant {
                    change: grant::Change::AccessRevoked { hash, reason, .. },
                    ..
                } if *hash == self.token => Some(Revocation {
                    event,
                    reason,
                    cause: None,
                }),
                _ => None,
            })
        })
    }

    /// The reuse of a rotated refresh token recorded just before `revocation`, which is
    /// what caused it when it names no cause.
    pub fn reuse_before(&self, revocation: &RecordedEvent) -> Option<&RecordedEvent> {
        self.grant_events
            .iter()
            .rev()
            .skip_while(|e| e.event_id != revocation.event_id)
            .nth(1)
            .filter(|e| {
                changes(&e.stream, &e.event).any(|change| {
                    matches!(
                        change,
                        Change::Grant {
                            change: grant::Change::RefreshReused { .. },
                            ..
                        }
                    )
                })
            })
    }
}

impl Lineage {
    /// The lineage as the admin API answers it: each event labelled with what it is
    /// part of, and how the token stopped working, with its cause when the log says.
    pub fn story(&self) -> TokenStory {
        let revocation = self.revocation().map(|revocation| TokenRevocation {
            event: revocation.event.clone(),
            reason: revocation.reason.as_str().to_owned(),
            cause: match revocation.cause {
                Some(cause) => Some((cause.event_id, cause.stream_id.to_string())),
                None => self
                    .reuse_before(revocation.event)
                    .map(|e| (e.event_id, e.stream.to_string())),
            },
        });
        let grant_id = self.grant.to_string();
        TokenStory {
            token_sha256: self.token.to_string(),
            kind: self.kind,
            grant_id: grant_id
                .strip_prefix("grant-")
                .unwrap_or(&grant_id)
                .to_owned(),
            events: [
                ("client", &self.client),
                ("consent", &self.consent),
                ("code", &self.code),
                ("grant", &self.grant_events),
            ]
            .into_iter()
            .flat_map(|(label, events)| events.iter().map(move |e| (label, e.clone())))
            .collect(),
            revocation,
        }
    }
}

/// Finds the grant a token belongs to, by the token or its SHA-256 (64 hex characters).
pub async fn lineage(
    store: &PgEventStore,
    token_or_sha256: &str,
) -> Result<Option<Lineage>, StoreError> {
    let token =
        TokenHash::from_hex(token_or_sha256).unwrap_or_else(|_| TokenHash::of(token_or_sha256));
    let hex = token.to_string();
    let client = store
        .pool()
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    // The log is the authority (read models may be mid-rebuild): search the stored grant
    // events for the digest where tokens appear in them.
    let found = client
        .query_opt(
            "SELECT stream_id, payload->'access'->>'hash' = $1
             FROM events
             WHERE stream_id LIKE 'grant-%'
               AND (payload->'access'->>'hash' = $1 OR payload->'refresh'->>'hash' = $1)
             LIMIT 1",
            &[&hex],
        )
        .await
        .map_err(db_error)?;
    let Some(found) = found else { return Ok(None) };
    let grant = StreamId::parse(found.get(0))
        .map_err(|_| StoreError::Malformed(format!("stream id {:?}", found.get::<_, &str>(0))))?;
    let kind = if found.get::<_, Option<bool>>(1) == Some(true) {
        TokenKind::AccessToken
    } else {
        TokenKind::RefreshToken
    };
    let grant_events = store.read_stream(&grant).await?;
    let opened = grant_events.first().and_then(|e| {
        changes(&e.stream, &e.event).find_map(|change| match change {
            Change::Grant {
                change:
                    grant::Change::Opened {
                        client_id,
                        subject,
                        origin,
                        ..
                    },
                ..
            } => Some((
                StreamId::client(client_id),
                subject.map(|s| StreamId::consent(&s.user_id, client_id)),
                match origin {
                    GrantOrigin::AuthorizationCode { code_hash } => Some(StreamId::code(code_hash)),
                    GrantOrigin::ClientCredentials => None,
                },
            )),
            _ => None,
        })
    });
    let (mut client_events, mut consent, mut code) = (Vec::new(), Vec::new(), Vec::new());
    if let Some((client_stream, consent_stream, code_stream)) = opened {
        client_events = store.read_stream(&client_stream).await?;
        if let Some(stream) = consent_stream {
            consent = store.read_stream(&stream).await?;
        }
        if let Some(stream) = code_stream {
            code = store.read_stream(&stream).await?;
        }
    }
    Ok(Some(Lineage {
        token,
        kind,
        grant,
        client: client_events,
        consent,
        code,
        grant_events,
    }))
}
