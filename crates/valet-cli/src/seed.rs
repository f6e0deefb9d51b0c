//! `valet seed --events N [--clients C]`: fills a database with a realistic log for the replay
//! benchmarks: service tokens, user grants with rotations, and revocations, written
//! through the domain (so every event is valid) with read models kept in step.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use uuid::Uuid;
use valet_app::aggregate::{Aggregate, Client as ClientAgg, Grant as GrantAgg, User as UserAgg};
use valet_app::{
    Clock, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamWrite, SystemClock,
};
use valet_domain::client::{self, ClientKind};
use valet_domain::grant::{self, AccessTokenIssue, GrantOrigin, RefreshTokenIssue, Subject};
use valet_domain::{
    user, ClientId, ClientName, GrantId, RedirectUri, RevocationReason, ScopeSet, StreamId,
    TokenHash, UserId, Username,
};
use valet_projector::ReadModelProjection;
use valet_store::{PgEventStore, PgStoreConfig};

fn events<E: Clone + Into<valet_domain::Event>>(events: &[E]) -> Vec<NewEvent> {
    let metadata = EventMetadata {
        actor: Some("seed".to_owned()),
        ..EventMetadata::default()
    };
    events
        .iter()
        .map(|e| NewEvent::new(Uuid::now_v7(), e.clone(), metadata.clone()))
        .collect()
}

fn decided<A: Aggregate>(state: &A::State, command: A::Command) -> anyhow::Result<Vec<A::Event>>
where
    A::Error: std::fmt::Debug,
{
    A::decide(state, command).map_err(|r| anyhow::anyhow!("seed command refused: {:?}", r.error))
}

fn hash(n: u64, kind: &str) -> TokenHash {
    TokenHash::of(&format!("seed-{kind}-{n}-{}", Uuid::now_v7()))
}

pub async fn seed(database_url: &str, target: u64, clients: u64) -> anyhow::Result<()> {
    let mut config = PgStoreConfig::new(database_url);
    config.pool_size = 4;
    let store = PgEventStore::connect_with(config, Some(Arc::new(ReadModelProjection)))
        .await
        .context("connect to PostgreSQL (did `valet migrate` run?)")?;
    let now = SystemClock.now();
    let scopes = ScopeSet::parse("read write").expect("valid scopes");
    let services = (0..clients)
        .map(|_| ClientId::parse(&format!("seed-service-{}", Uuid::now_v7().simple())))
        .collect::<Result<Vec<_>, _>>()?;
    let app = ClientId::parse(&format!("seed-app-{}", Uuid::now_v7().simple()))?;
    let mut setup = Vec::new();
    let app_client = (
        &app,
        ClientKind::Public,
        vec![RedirectUri::parse("https://app.example/cb")?],
    );
    let service_clients = services.iter().map(|id| {
        (
            id,
            ClientKind::Confidential {
                secret_hash: hash(0, "secret"),
            },
            vec![],
        )
    });
    for (id, kind, uris) in service_clients.chain([app_client]) {
        let registered = decided::<ClientAgg>(
            &Default::default(),
            client::Command::Register {
                client_id: id.clone(),
                name: ClientName::parse("seeded client")?,
                kind,
                redirect_uris: uris,
                grant_types: vec![],
                scopes: scopes.clone(),
                id_token_alg: valet_domain::signing_key::Algorithm::RS256,
                post_logout_redirect_uris: vec![],
                access_token_format: client::AccessTokenFormat::Opaque,
                backchannel_logout: None,
                at: now,
            },
        )?;
        setup.push(StreamWrite {
            stream: StreamId::client(id),
            expected: ExpectedVersion::NoStream,
            events: events(&registered),
        });
        if setup.len() == 2000 {
            store
                .append_all(std::mem::take(&mut setup))
                .await
                .context("seed clients")?;
        }
    }
    let user_id = UserId::new(Uuid::now_v7());
    let username = Username::parse(&format!(
        "seed-{}",
        &Uuid::now_v7().simple().to_string()[..12]
    ))?;
    let registered = decided::<UserAgg>(
        &Default::default(),
        user::Command::Register {
            user_id,
            username: username.clone(),
            at: now,
        },
    )?;
    setup.push(StreamWrite {
        stream: StreamId::user(&user_id),
        expected: ExpectedVersion::NoStream,
        events: events(&registered),
    });
    store
        .append_all(setup)
        .await
        .context("seed clients and user")?;

    let started = Instant::now();
    let mut written = 0u64;
    let mut n = 0u64;
    let mut last_report = Instant::now();
    while written < target {
        let mut batch = Vec::new();
        let mut in_batch = 0u64;
        while in_batch < 2000 && written + in_batch < target {
            n += 1;
            let grant_id = GrantId::new(Uuid::now_v7());
            let access = AccessTokenIssue {
                jti: None,
                hash: hash(n, "at"),
                scope: scopes.clone(),
                issued_at: now,
                expires_at: now.plus_seconds(3600),
            };
            // One grant in ten belongs to a user and rotates its refresh token twice;
            // one in twenty is revoked; the rest are service tokens.
            let user_grant = n % 10 == 0;
            let refresh = user_grant.then(|| RefreshTokenIssue {
                hash: hash(n, "rt"),
                issued_at: now,
                expires_at: now.plus_seconds(86_400),
            });
            let mut state = grant::State::default();
            let mut stream_events = decided::<GrantAgg>(
                &state,
                grant::Command::Issue {
                    grant_id,
                    client_id: if user_grant {
                        app.clone()
                    } else {
                        services[(n as usize) % services.len()].clone()
                    },
                    subject: user_grant.then(|| Subject {
                        user_id,
                        username: username.clone(),
                    }),
                    scope: scopes.clone(),
                    origin: if user_grant {
                        GrantOrigin::AuthorizationCode {
                            code_hash: hash(n, "code"),
                        }
                    } else {
                        GrantOrigin::ClientCredentials
                    },
                    access,
                    refresh: refresh.clone(),
                    at: now,
                },
            )?;
            state = stream_events.iter().fold(state, GrantAgg::evolve);
            let mut presented = refresh.map(|r| r.hash);
            for round in 0..2 {
                let Some(current) = presented else { break };
                let next = hash(n * 10 + round, "rt");
                let rotated = decided::<GrantAgg>(
                    &state,
                    grant::Command::Refresh {
                        client_id: app.clone(),
                        presented: current,
                        requested_scope: None,
                        access: AccessTokenIssue {
                            jti: None,
                            hash: hash(n * 10 + round, "at"),
                            scope: scopes.clone(),
                            issued_at: now,
                            expires_at: now.plus_seconds(3600),
                        },
                        refresh: RefreshTokenIssue {
                            hash: next,
                            issued_at: now,
                            expires_at: now.plus_seconds(86_400),
                        },
                        at: now,
                    },
                )?;
                state = rotated.iter().fold(state, GrantAgg::evolve);
                stream_events.extend(rotated);
                presented = Some(next);
            }
            if n % 20 == 5 {
                let revoked = decided::<GrantAgg>(
                    &state,
                    grant::Command::RevokeGrant {
                        reason: RevocationReason::Admin,
                        cause: None,
                        at: now,
                    },
                )?;
                stream_events.extend(revoked);
            }
            in_batch += stream_events.len() as u64;
            batch.push(StreamWrite {
                stream: StreamId::grant(&grant_id),
                expected: ExpectedVersion::NoStream,
                events: events(&stream_events),
            });
        }
        store
            .append_all(batch)
            .await
            .context("append a seed batch")?;
        written += in_batch;
        if last_report.elapsed().as_secs() >= 2 {
            eprintln!("seed: {written}/{target} events");
            last_report = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seeded {written} events in {seconds:.1} s ({:.0} events/s)",
        written as f64 / seconds.max(1e-9)
    );
    Ok(())
}
