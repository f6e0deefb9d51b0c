//! The read models' rendering of the fold ([`valet_domain::changes`]): a batch of
//! events becomes the rows it creates and the changes it makes to rows of earlier
//! batches. Pure: no database, no clock; `statements` turns it into SQL.
//!
//! Rows created by the batch are assembled in memory (a change to one of them is made
//! in place); changes to rows of earlier batches are kept, in log order, for set-based
//! UPDATEs (or a rebuild's deferred tables).

use std::collections::HashMap;

use uuid::Uuid;
use valet_domain::client::{self, ClientKind};
use valet_domain::grant::{self, GrantOrigin};
use valet_domain::oidc::SessionId;
use valet_domain::{
    changes, consent, session, user, Change, ClientId, Event, GrantId, StreamId, UserId,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GrantRow {
    pub grant_id: Uuid,
    pub client_id: String,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub scope: String,
    pub origin: &'static str,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AccessRow {
    pub hash: Vec<u8>,
    pub grant_id: Uuid,
    /// Filled at flush time for grants created before the batch (`owners`).
    pub owner: Option<Owner>,
    pub scope: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RefreshRow {
    pub hash: Vec<u8>,
    pub grant_id: Uuid,
    /// Filled at flush time for grants created before the batch (`owners`).
    pub client_id: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub status: &'static str,
}

/// Who holds a grant: copied into its token rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub client_id: String,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientRow {
    pub client_id: String,
    pub name: String,
    pub kind: &'static str,
    pub secret: Option<Vec<u8>>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub scopes: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UserRow {
    pub user_id: Uuid,
    pub username: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

/// A consent change, applied in order at flush time (consents are rare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConsentChange {
    Given {
        user_id: Uuid,
        client_id: String,
        scope: String,
        at: i64,
    },
    Revoked {
        user_id: Uuid,
        client_id: String,
    },
}

/// A client change after its registration, applied in order at flush time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClientChange {
    Disabled {
        client_id: String,
        at: i64,
    },
    Enabled {
        client_id: String,
    },
    SecretRotated {
        client_id: String,
        secret: Vec<u8>,
    },
    Deleted {
        client_id: String,
        at: i64,
    },
    Updated {
        client_id: String,
        name: String,
        redirect_uris: Vec<String>,
        grant_types: Vec<String>,
        scopes: String,
    },
}

/// A user's disable or enable, applied in order at flush time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UserChange {
    Disabled { user_id: Uuid, at: i64 },
    Enabled { user_id: Uuid },
}

/// A session change, applied in order at flush time (sessions are rare next to tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionChange {
    Started {
        session_id: Uuid,
        user_id: Uuid,
        started_at: i64,
        expires_at: i64,
    },
    Used {
        session_id: Uuid,
        client_id: Option<String>,
        at: i64,
    },
    Ended {
        session_id: Uuid,
        reason: &'static str,
        at: i64,
    },
}

/// The batch's indexes are keyed by SHA-256 digests and random UUIDs from the log:
/// uniform already, and not chosen by a caller, so a multiply-rotate hash (FxHash's)
/// serves, at a fraction of SipHash's cost.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.add(word);
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Index<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A change to a row of an earlier batch: (key, at millis, reason).
pub(super) type Dated<K> = (K, i64, &'static str);

#[derive(Default)]
pub(super) struct Batch {
    pub clients: Vec<ClientRow>,
    client_index: Index<String, usize>,
    pub users: Vec<UserRow>,
    user_index: Index<Uuid, usize>,
    pub grants: Vec<GrantRow>,
    grant_index: Index<Uuid, usize>,
    pub access: Vec<AccessRow>,
    access_index: Index<Vec<u8>, usize>,
    pub refresh: Vec<RefreshRow>,
    refresh_index: Index<Vec<u8>, usize>,
    /// The token rows of this batch per grant (a grant revocation touches only those).
    tokens_of_grant: Index<Uuid, (Vec<usize>, Vec<usize>)>,
    pub consents: Vec<ConsentChange>,
    pub sessions: Vec<SessionChange>,
    /// Changes to clients after their registration, in log order (applied after the
    /// batch's inserts, so they reach rows of this batch and of earlier ones alike).
    pub client_changes: Vec<ClientChange>,
    /// A user's disables and enables, in log order, applied like `client_changes`.
    pub user_changes: Vec<UserChange>,
    // Changes to rows from earlier batches, in log order.
    pub old_rotations: Vec<Vec<u8>>,
    pub old_access_revocations: Vec<Dated<Vec<u8>>>,
    pub old_grant_revocations: Vec<Dated<Uuid>>,
}

impl Batch {
    /// Room for `events` events, nearly all of which add a grant or a token: sized once,
    /// the rows and indexes are not copied over and over as they grow.
    pub fn with_capacity(events: usize) -> Self {
        Batch {
            grants: Vec::with_capacity(events),
            grant_index: Index::with_capacity_and_hasher(events, Default::default()),
            access: Vec::with_capacity(events),
            access_index: Index::with_capacity_and_hasher(events, Default::default()),
            refresh: Vec::with_capacity(events),
            refresh_index: Index::with_capacity_and_hasher(events, Default::default()),
            tokens_of_grant: Index::with_capacity_and_hasher(events, Default::default()),
            ..Batch::default()
        }
    }

    /// Adds one event of `stream` (in log order).
    pub fn add(&mut self, stream: &StreamId, event: &Event) {
        for change in changes(stream, event) {
            match change {
                Change::Grant { grant_id, change } => self.grant(grant_id, change),
                Change::Client { client_id, event } => self.client(client_id, event),
                Change::User { user_id, event } => self.user(user_id, event),
                Change::Consent {
                    user_id,
                    client_id,
                    event,
                } => self.consent(user_id, client_id, event),
                Change::Session { session_id, event } => self.session(session_id, event),
                // Codes, the key ring and deliveries have no read model: they are read
                // from their streams.
                Change::Code { .. } | Change::SigningKey { .. } | Change::Logout { .. } => {}
            }
        }
    }

    /// The grants created before this batch that its token rows belong to.
    pub fn grants_without_owner(&self) -> Vec<Uuid> {
        let mut missing: Vec<Uuid> = self
            .access
            .iter()
            .filter(|r| r.owner.is_none())
            .map(|r| r.grant_id)
            .chain(
                self.refresh
                    .iter()
                    .filter(|r| r.client_id.is_none())
                    .map(|r| r.grant_id),
            )
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Fills in the owners of token rows of earlier grants; `None` for a grant that
    /// `owners` lacks.
    pub fn set_owners(&mut self, owners: &HashMap<Uuid, Owner>) -> Result<(), Uuid> {
        for row in &mut self.access {
            if row.owner.is_none() {
                row.owner = Some(owners.get(&row.grant_id).cloned().ok_or(row.grant_id)?);
            }
        }
        for row in &mut self.refresh {
            if row.client_id.is_none() {
                let owner = owners.get(&row.grant_id).ok_or(row.grant_id)?;
                row.client_id = Some(owner.client_id.clone());
            }
        }
        Ok(())
    }

    fn owner_in_batch(&self, grant_id: Uuid) -> Option<Owner> {
        self.grant_index.get(&grant_id).map(|&i| {
            let g = &self.grants[i];
            Owner {
                client_id: g.client_id.clone(),
                user_id: g.user_id,
                username: g.username.clone(),
            }
        })
    }

    fn grant(&mut self, grant_id: GrantId, change: grant::Change<'_>) {
        let grant_id = grant_id.as_uuid();
        match change {
            grant::Change::Opened {
                client_id,
                subject,
                scope,
                origin,
                at,
                ..
            } => {
                self.grant_index.insert(grant_id, self.grants.len());
                self.grants.push(GrantRow {
                    grant_id,
                    client_id: client_id.to_string(),
                    user_id: subject.map(|s| s.user_id.as_uuid()),
                    username: subject.map(|s| s.username.to_string()),
                    scope: scope.to_string(),
                    origin: match origin {
                        GrantOrigin::AuthorizationCode { .. } => "authorization_code",
                        GrantOrigin::ClientCredentials => "client_credentials",
                    },
                    created_at: at.as_unix_millis(),
                    revoked_at: None,
                    revoked_reason: None,
                });
            }
            grant::Change::AccessIssued(issue) => {
                let hash = issue.hash.as_bytes().to_vec();
                self.access_index.insert(hash.clone(), self.access.len());
                self.tokens_of_grant
                    .entry(grant_id)
                    .or_default()
                    .0
                    .push(self.access.len());
                self.access.push(AccessRow {
                    hash,
                    grant_id,
                    owner: self.owner_in_batch(grant_id),
                    scope: issue.scope.to_string(),
                    issued_at: issue.issued_at.as_unix_millis(),
                    expires_at: issue.expires_at.as_unix_millis(),
                    revoked_at: None,
                    revoked_reason: None,
                });
            }
            grant::Change::RefreshIssued(issue) => {
                let hash = issue.hash.as_bytes().to_vec();
                self.refresh_index.insert(hash.clone(), self.refresh.len());
                self.tokens_of_grant
                    .entry(grant_id)
                    .or_default()
                    .1
                    .push(self.refresh.len());
                self.refresh.push(RefreshRow {
                    hash,
                    grant_id,
                    client_id: self.owner_in_batch(grant_id).map(|o| o.client_id),
                    issued_at: issue.issued_at.as_unix_millis(),
                    expires_at: issue.expires_at.as_unix_millis(),
                    status: "current",
                });
            }
            grant::Change::RefreshRotated(hash) => {
                let previous = hash.as_bytes().to_vec();
                match self.refresh_index.get(&previous) {
                    Some(&i) if self.refresh[i].status == "current" => {
                        self.refresh[i].status = "rotated";
                    }
                    Some(_) => {}
                    None => self.old_rotations.push(previous),
                }
            }
            grant::Change::AccessRevoked { hash, reason, at } => {
                let hash = hash.as_bytes().to_vec();
                let (at, reason) = (at.as_unix_millis(), reason.as_str());
                match self.access_index.get(&hash) {
                    Some(&i) => {
                        let row = &mut self.access[i];
                        if row.revoked_at.is_none() {
                            row.revoked_at = Some(at);
                            row.revoked_reason = Some(reason);
                        }
                    }
                    None => self.old_access_revocations.push((hash, at, reason)),
                }
            }
            grant::Change::Revoked { reason, at, .. } => {
                let (at, reason) = (at.as_unix_millis(), reason.as_str());
                let (access, refresh) = self
                    .tokens_of_grant
                    .get(&grant_id)
                    .map(|(a, r)| (a.as_slice(), r.as_slice()))
                    .unwrap_or_default();
                for &i in access {
                    let row = &mut self.access[i];
                    if row.revoked_at.is_none() {
                        row.revoked_at = Some(at);
                        row.revoked_reason = Some(reason);
                    }
                }
                for &i in refresh {
                    self.refresh[i].status = "revoked";
                }
                match self.grant_index.get(&grant_id) {
                    Some(&i) => {
                        let row = &mut self.grants[i];
                        if row.revoked_at.is_none() {
                            row.revoked_at = Some(at);
                            row.revoked_reason = Some(reason);
                        }
                    }
                    None => self.old_grant_revocations.push((grant_id, at, reason)),
                }
            }
            // The audit's fact; the revocation that follows is what changes rows.
            grant::Change::RefreshReused { .. } => {}
        }
    }

    fn client(&mut self, client_id: &ClientId, event: &client::Event) {
        match event {
            client::Event::ClientRegistered {
                name,
                kind,
                redirect_uris,
                grant_types,
                scopes,
                at,
                ..
            } => {
                let (kind, secret) = match kind {
                    ClientKind::Confidential { secret_hash } => {
                        ("confidential", Some(secret_hash.as_bytes().to_vec()))
                    }
                    ClientKind::Public => ("public", None),
                };
                self.client_index
                    .insert(client_id.to_string(), self.clients.len());
                self.clients.push(ClientRow {
                    client_id: client_id.to_string(),
                    name: name.to_string(),
                    kind,
                    secret,
                    redirect_uris: redirect_uris
                        .iter()
                        .map(|u| u.as_str().to_owned())
                        .collect(),
                    grant_types: grant_types.iter().map(|g| g.as_str().to_owned()).collect(),
                    scopes: scopes.to_string(),
                    created_at: at.as_unix_millis(),
                    disabled_at: None,
                });
            }
            client::Event::ClientDisabled { at } => {
                self.client_changes.push(ClientChange::Disabled {
                    client_id: client_id.to_string(),
                    at: at.as_unix_millis(),
                })
            }
            client::Event::ClientEnabled { .. } => {
                self.client_changes.push(ClientChange::Enabled {
                    client_id: client_id.to_string(),
                })
            }
            client::Event::ClientSecretRotated { secret_hash, .. } => {
                self.client_changes.push(ClientChange::SecretRotated {
                    client_id: client_id.to_string(),
                    secret: secret_hash.as_bytes().to_vec(),
                })
            }
            client::Event::ClientUpdated {
                name,
                redirect_uris,
                grant_types,
                scopes,
                ..
            } => self.client_changes.push(ClientChange::Updated {
                client_id: client_id.to_string(),
                name: name.to_string(),
                redirect_uris: redirect_uris
                    .iter()
                    .map(|u| u.as_str().to_owned())
                    .collect(),
                grant_types: grant_types.iter().map(|g| g.as_str().to_owned()).collect(),
                scopes: scopes.to_string(),
            }),
            client::Event::ClientDeleted { at } => {
                self.client_changes.push(ClientChange::Deleted {
                    client_id: client_id.to_string(),
                    at: at.as_unix_millis(),
                })
            }
            // Read from the client's stream when a token is issued, not a read model.
            client::Event::ClientIdTokenAlgorithmSet { .. }
            | client::Event::ClientPostLogoutRedirectUrisSet { .. }
            | client::Event::ClientAccessTokenFormatSet { .. }
            | client::Event::ClientBackchannelLogoutSet { .. }
            | client::Event::ClientRegistrationTokenSet { .. } => {}
        }
    }

    fn user(&mut self, user_id: UserId, event: &user::Event) {
        let user_id = user_id.as_uuid();
        match event {
            user::Event::UserRegistered { username, at, .. } => {
                self.user_index.insert(user_id, self.users.len());
                self.users.push(UserRow {
                    user_id,
                    username: username.to_string(),
                    created_at: at.as_unix_millis(),
                    disabled_at: None,
                });
            }
            user::Event::UserDisabled { at } => self.user_changes.push(UserChange::Disabled {
                user_id,
                at: at.as_unix_millis(),
            }),
            user::Event::UserEnabled { .. } => {
                self.user_changes.push(UserChange::Enabled { user_id })
            }
            // Profiles have no read model: UserInfo reads the user's stream.
            // Read from the user's stream when a session is used, not a read model.
            user::Event::UserProfileChanged { .. }
            | user::Event::UserSignedOutEverywhere { .. }
            | user::Event::UserPasswordChanged { .. } => {}
        }
    }

    fn session(&mut self, session_id: SessionId, event: &session::Event) {
        let session_id = session_id.as_uuid();
        self.sessions.push(match event {
            session::Event::SessionStarted {
                user_id,
                expires_at,
                at,
                ..
            } => SessionChange::Started {
                session_id,
                user_id: user_id.as_uuid(),
                started_at: at.as_unix_millis(),
                expires_at: expires_at.as_unix_millis(),
            },
            session::Event::SessionUsed { client_id, at } => SessionChange::Used {
                session_id,
                client_id: client_id.as_ref().map(ClientId::to_string),
                at: at.as_unix_millis(),
            },
            session::Event::SessionEnded { reason, at } => SessionChange::Ended {
                session_id,
                reason: reason.as_str(),
                at: at.as_unix_millis(),
            },
        });
    }

    fn consent(&mut self, user_id: UserId, client_id: &ClientId, event: &consent::Event) {
        let (user_id, client_id) = (user_id.as_uuid(), client_id.to_string());
        self.consents.push(match event {
            consent::Event::ConsentGiven { scope, at } => ConsentChange::Given {
                user_id,
                client_id,
                scope: scope.to_string(),
                at: at.as_unix_millis(),
            },
            consent::Event::ConsentRevoked { .. } => ConsentChange::Revoked { user_id, client_id },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valet_domain::grant::{AccessTokenIssue, RefreshTokenIssue, Subject};
    use valet_domain::{RevocationReason, ScopeSet, Timestamp, TokenHash, Username};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn gid(n: u128) -> GrantId {
        GrantId::new(Uuid::from_u128(n))
    }

    fn access(name: &str) -> AccessTokenIssue {
        AccessTokenIssue {
            jti: None,
            hash: TokenHash::of(name),
            scope: ScopeSet::parse("read").unwrap(),
            issued_at: t(1),
            expires_at: t(100),
        }
    }

    fn refresh(name: &str) -> RefreshTokenIssue {
        RefreshTokenIssue {
            hash: TokenHash::of(name),
            issued_at: t(1),
            expires_at: t(1000),
        }
    }

    fn issued(n: u128, with_refresh: bool) -> (StreamId, Event) {
        let subject = Subject {
            user_id: UserId::new(Uuid::from_u128(7)),
            username: Username::parse("alice").unwrap(),
        };
        let event = grant::Event::GrantIssued {
            grant_id: gid(n),
            client_id: ClientId::parse("web").unwrap(),
            subject: Some(subject),
            scope: ScopeSet::parse("read").unwrap(),
            origin: GrantOrigin::AuthorizationCode {
                code_hash: TokenHash::of("code"),
            },
            access: access(&format!("at{n}")),
            refresh: with_refresh.then(|| refresh(&format!("rt{n}"))),
            at: t(1),
        };
        (StreamId::grant(&gid(n)), event.into())
    }

    fn on(n: u128, event: grant::Event) -> (StreamId, Event) {
        (StreamId::grant(&gid(n)), event.into())
    }

    fn batch(events: &[(StreamId, Event)]) -> Batch {
        let mut batch = Batch::with_capacity(events.len());
        for (stream, event) in events {
            batch.add(stream, event);
        }
        batch
    }

    #[test]
    fn a_grant_issued_in_the_batch_becomes_rows_with_their_owner() {
        let b = batch(&[issued(1, true)]);
        assert_eq!(b.grants.len(), 1);
        assert_eq!(b.grants[0].username.as_deref(), Some("alice"));
        assert_eq!(b.grants[0].origin, "authorization_code");
        assert_eq!(b.access[0].owner.as_ref().unwrap().client_id, "web");
        assert_eq!(b.refresh[0].client_id.as_deref(), Some("web"));
        assert_eq!(b.refresh[0].status, "current");
        assert!(b.grants_without_owner().is_empty());
    }

    #[test]
    fn changes_to_rows_of_the_batch_are_made_in_place() {
        let b = batch(&[
            issued(1, true),
            on(
                1,
                grant::Event::TokensRefreshed {
                    previous_refresh: TokenHash::of("rt1"),
                    access: access("at1b"),
                    refresh: refresh("rt1b"),
                    at: t(2),
                },
            ),
            on(
                1,
                grant::Event::AccessTokenRevoked {
                    hash: TokenHash::of("at1b"),
                    reason: RevocationReason::ClientRequest,
                    at: t(3),
                },
            ),
            on(
                1,
                grant::Event::GrantRevoked {
                    reason: RevocationReason::Admin,
                    cause: None,
                    at: t(4),
                },
            ),
        ]);
        let statuses: Vec<&str> = b.refresh.iter().map(|r| r.status).collect();
        assert_eq!(statuses, ["revoked", "revoked"]);
        // The first revocation of a token wins; the grant's reaches the others.
        let revoked: Vec<_> = b
            .access
            .iter()
            .map(|r| (r.revoked_at, r.revoked_reason))
            .collect();
        assert_eq!(
            revoked,
            [(Some(4), Some("admin")), (Some(3), Some("client_request"))]
        );
        assert_eq!(b.grants[0].revoked_reason, Some("admin"));
        assert!(b.old_rotations.is_empty() && b.old_grant_revocations.is_empty());
    }

    #[test]
    fn changes_to_earlier_rows_are_kept_in_log_order() {
        let mut b = batch(&[
            on(
                9,
                grant::Event::TokensRefreshed {
                    previous_refresh: TokenHash::of("old-rt"),
                    access: access("new-at"),
                    refresh: refresh("new-rt"),
                    at: t(2),
                },
            ),
            on(
                9,
                grant::Event::GrantRevoked {
                    reason: RevocationReason::RefreshReuse,
                    cause: None,
                    at: t(5),
                },
            ),
        ]);
        assert_eq!(
            b.old_rotations,
            vec![TokenHash::of("old-rt").as_bytes().to_vec()]
        );
        assert_eq!(
            b.old_grant_revocations,
            vec![(gid(9).as_uuid(), 5, "refresh_reuse")]
        );
        // The new tokens of an earlier grant wait for its owner.
        assert_eq!(b.grants_without_owner(), vec![gid(9).as_uuid()]);
        assert_eq!(b.set_owners(&HashMap::new()), Err(gid(9).as_uuid()));
        let owner = Owner {
            client_id: "web".into(),
            user_id: None,
            username: None,
        };
        b.set_owners(&HashMap::from([(gid(9).as_uuid(), owner)]))
            .unwrap();
        assert_eq!(b.refresh[0].client_id.as_deref(), Some("web"));
        // In-batch tokens of the earlier grant were revoked with it.
        assert_eq!(b.access[0].revoked_reason, Some("refresh_reuse"));
    }

    #[test]
    fn codes_change_no_rows() {
        let code = valet_domain::code::Event::CodeRedeemed {
            grant_id: gid(1),
            client_id: ClientId::parse("web").unwrap(),
            at: t(1),
        };
        let b = batch(&[(StreamId::code(&TokenHash::of("c")), code.into())]);
        assert!(b.grants.is_empty() && b.access.is_empty() && b.consents.is_empty());
    }
}
