//! What an event of the log changed, and for whom: the one fold that every reader of
//! the log renders its own way (read models, rebuild, audit answers, wire messages).
//!
//! Grants have a fold of their own ([`grant::changes`]): their events speak of token
//! families, readers speak of tokens. For clients, users, consents and codes the event
//! already names the change; what the fold adds is whose it is, taken from the typed
//! stream id (a `UserDisabled` does not repeat its user, a `ConsentGiven` neither its
//! user nor its client).

use crate::backchannel::DeliveryId;
use crate::few::Few;
use crate::ids::{ClientId, GrantId, StreamId, UserId};
use crate::log_event::Event;
use crate::oidc::SessionId;
use crate::secret::TokenHash;
use crate::{backchannel, client, code, consent, grant, session, signing_key, user};

/// One change of one event, with the identity of what it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'e> {
    Client {
        client_id: &'e ClientId,
        event: &'e client::Event,
    },
    User {
        user_id: UserId,
        event: &'e user::Event,
    },
    Consent {
        user_id: UserId,
        client_id: &'e ClientId,
        event: &'e consent::Event,
    },
    Code {
        code_hash: TokenHash,
        event: &'e code::Event,
    },
    Grant {
        grant_id: GrantId,
        change: grant::Change<'e>,
    },
    /// The key ring's events name their key.
    SigningKey { event: &'e signing_key::Event },
    Session {
        session_id: SessionId,
        event: &'e session::Event,
    },
    Logout {
        delivery_id: DeliveryId,
        event: &'e backchannel::Event,
    },
}

/// The changes `event`, recorded in `stream`, makes, in the order they apply.
pub fn changes<'e>(stream: &'e StreamId, event: &'e Event) -> Few<Change<'e>> {
    match (stream, event) {
        (StreamId::Grant(grant_id), Event::Grant(event)) => {
            grant::changes(event).map_each(|change| Change::Grant {
                grant_id: *grant_id,
                change,
            })
        }
        (StreamId::Client(client_id), Event::Client(event)) => {
            Few::one(Change::Client { client_id, event })
        }
        (StreamId::User(user_id), Event::User(event)) => Few::one(Change::User {
            user_id: *user_id,
            event,
        }),
        (StreamId::Consent(user_id, client_id), Event::Consent(event)) => {
            Few::one(Change::Consent {
                user_id: *user_id,
                client_id,
                event,
            })
        }
        (StreamId::Code(code_hash), Event::Code(event)) => Few::one(Change::Code {
            code_hash: *code_hash,
            event,
        }),
        (StreamId::SigningKeys, Event::SigningKey(event)) => Few::one(Change::SigningKey { event }),
        (StreamId::Session(session_id), Event::Session(event)) => Few::one(Change::Session {
            session_id: *session_id,
            event,
        }),
        (StreamId::Logout(delivery_id), Event::Backchannel(event)) => Few::one(Change::Logout {
            delivery_id: *delivery_id,
            event,
        }),
        // An event never lands in another aggregate's stream (decoding goes by the
        // stream's kind, appends check it).
        _ => Few::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::RevocationReason;
    use crate::grant::{AccessTokenIssue, GrantOrigin, RefreshTokenIssue};
    use crate::scope::scopes;
    use crate::time::Timestamp;
    use crate::Username;
    use uuid::Uuid;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn a_grant_event_changes_tokens_of_the_streams_grant() {
        let grant_id = GrantId::new(Uuid::from_u128(1));
        let client_id = ClientId::parse("web").unwrap();
        let access = AccessTokenIssue {
            jti: None,
            hash: TokenHash::of("at"),
            scope: scopes("read"),
            issued_at: t(1),
            expires_at: t(2),
        };
        let refresh = RefreshTokenIssue {
            hash: TokenHash::of("rt"),
            issued_at: t(1),
            expires_at: t(3),
        };
        let stream = StreamId::grant(&grant_id);
        let issued = Event::Grant(grant::Event::GrantIssued {
            grant_id,
            client_id: client_id.clone(),
            subject: None,
            scope: scopes("read"),
            origin: GrantOrigin::ClientCredentials,
            access: access.clone(),
            refresh: Some(refresh.clone()),
            at: t(1),
        });
        let kinds: Vec<grant::Change> = changes(&stream, &issued)
            .map(|c| match c {
                Change::Grant {
                    grant_id: id,
                    change,
                } => {
                    assert_eq!(id, grant_id);
                    change
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                grant::Change::Opened {
                    grant_id,
                    client_id: &client_id,
                    subject: None,
                    scope: &scopes("read"),
                    origin: &GrantOrigin::ClientCredentials,
                    at: t(1),
                },
                grant::Change::AccessIssued(&access),
                grant::Change::RefreshIssued(&refresh),
            ]
        );
        let revoked = Event::Grant(grant::Event::GrantRevoked {
            reason: RevocationReason::Admin,
            cause: None,
            at: t(5),
        });
        assert_eq!(
            changes(&stream, &revoked).collect::<Vec<_>>(),
            vec![Change::Grant {
                grant_id,
                change: grant::Change::Revoked {
                    reason: RevocationReason::Admin,
                    cause: None,
                    at: t(5)
                }
            }]
        );
    }

    #[test]
    fn other_events_are_named_with_their_streams_identity() {
        let user_id = UserId::new(Uuid::from_u128(7));
        let client_id = ClientId::parse("web").unwrap();
        let given = Event::Consent(consent::Event::ConsentGiven {
            scope: scopes("read"),
            at: t(1),
        });
        let stream = StreamId::consent(&user_id, &client_id);
        let Event::Consent(inner) = &given else {
            unreachable!()
        };
        assert_eq!(
            changes(&stream, &given).collect::<Vec<_>>(),
            vec![Change::Consent {
                user_id,
                client_id: &client_id,
                event: inner
            }]
        );
        let registered = Event::User(user::Event::UserRegistered {
            user_id,
            username: Username::parse("alice").unwrap(),
            at: t(1),
        });
        assert_eq!(changes(&StreamId::user(&user_id), &registered).count(), 1);
        // An event in another aggregate's stream changes nothing.
        assert_eq!(
            changes(&StreamId::client(&client_id), &registered).count(),
            0
        );
    }
}
