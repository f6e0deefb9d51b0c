//! `valet audit token`: the lineage of one token, each event described for a person,
//! then the verdict: when, why and by whom it stopped working, and what caused it.

use std::io::Write;

use anyhow::bail;
use valet_domain::backchannel::Outcome;
use valet_domain::{
    backchannel, client, code, consent, grant, session, signing_key, user, Event, TokenHash,
};
use valet_projector::audit;

use crate::audit::store;
use crate::timefmt;

/// `sha256:<first 12 hex>…`: enough to tell tokens apart on a screen.
/// An access token as the lineage names it: its digest, and a JWT's `jti`.
fn access_token(access: &grant::AccessTokenIssue) -> String {
    match access.jti {
        Some(jti) => format!("{} (JWT jti {jti})", short(&access.hash)),
        None => short(&access.hash),
    }
}

fn short(hash: &TokenHash) -> String {
    format!("sha256:{}…", &hash.to_string()[..12])
}

/// One event in words. Every event type is named here: the lineage shows them all.
fn describe(event: &Event) -> String {
    match event {
        Event::Client(client::Event::ClientRegistered {
            client_id,
            name,
            scopes,
            ..
        }) => format!("client {client_id} \"{name}\" registered, scopes \"{scopes}\""),
        Event::Client(client::Event::ClientDisabled { .. }) => "client disabled".to_owned(),
        Event::Client(client::Event::ClientIdTokenAlgorithmSet { algorithm, .. }) => {
            format!("client id_tokens signed with {algorithm}")
        }
        Event::Client(client::Event::ClientPostLogoutRedirectUrisSet { uris, .. }) => {
            format!("client may be returned to {} after logout", uris.len())
        }
        Event::Client(client::Event::ClientAccessTokenFormatSet { format, .. }) => match format {
            client::AccessTokenFormat::Opaque => "client access tokens opaque".to_owned(),
            client::AccessTokenFormat::Jwt { alg } => {
                format!("client access tokens are JWTs signed with {alg}")
            }
        },
        Event::Client(client::Event::ClientEnabled { .. }) => "client enabled".to_owned(),
        Event::Client(client::Event::ClientUpdated { name, scopes, .. }) => {
            format!("client updated: \"{name}\", scopes \"{scopes}\"")
        }
        Event::Client(client::Event::ClientDeleted { .. }) => "client deleted".to_owned(),
        Event::Client(client::Event::ClientRegistrationTokenSet { .. }) => {
            "registration access token issued".to_owned()
        }
        Event::Client(client::Event::ClientSecretRotated {
            previous_valid_until,
            ..
        }) => format!(
            "client secret rotated; the previous one works until {}",
            timefmt::format_millis(previous_valid_until.as_unix_millis())
        ),
        Event::Client(client::Event::ClientBackchannelLogoutSet { logout, .. }) => {
            format!("client receives logout tokens at {}", logout.uri.as_str())
        }
        Event::Session(session::Event::SessionStarted { session_id, .. }) => {
            format!("session {session_id} started (signed in)")
        }
        Event::Session(session::Event::SessionUsed { client_id, .. }) => match client_id {
            Some(client) => format!("session signed in to client {client}"),
            None => "session used".to_owned(),
        },
        Event::Session(session::Event::SessionEnded { reason, .. }) => {
            format!("session ended ({})", reason.as_str())
        }
        Event::Backchannel(backchannel::Event::BackchannelLogoutAttempted {
            delivery,
            attempt,
            outcome,
            ..
        }) => {
            let result = match outcome {
                Outcome::Delivered { status } => format!("delivered (HTTP {status})"),
                Outcome::Refused { status } => format!("refused (HTTP {status})"),
                Outcome::Unreachable { error } => format!("unreachable ({error})"),
            };
            format!(
                "logout token to client {} attempt {attempt}: {result}",
                delivery.client_id
            )
        }
        Event::Backchannel(backchannel::Event::BackchannelLogoutAbandoned { attempts, .. }) => {
            format!("logout token abandoned after {attempts} attempt(s)")
        }
        Event::User(user::Event::UserRegistered { username, .. }) => {
            format!("user {username} registered")
        }
        Event::User(user::Event::UserDisabled { .. }) => "user disabled".to_owned(),
        Event::User(user::Event::UserEnabled { .. }) => "user enabled".to_owned(),
        Event::User(user::Event::UserProfileChanged { .. }) => "user profile changed".to_owned(),
        Event::User(user::Event::UserSignedOutEverywhere { .. }) => {
            "user signed out everywhere".to_owned()
        }
        Event::User(user::Event::UserPasswordChanged { .. }) => {
            "user password changed (sessions ended)".to_owned()
        }
        Event::Consent(consent::Event::ConsentGiven { scope, .. }) => {
            format!("consent given for \"{scope}\"")
        }
        Event::Consent(consent::Event::ConsentRevoked { .. }) => "consent revoked".to_owned(),
        Event::SigningKey(signing_key::Event::SigningKeyGenerated {
            key_id, algorithm, ..
        }) => format!("signing key {key_id} ({algorithm}) generated"),
        Event::SigningKey(signing_key::Event::SigningKeyPublished {
            key_id,
            activates_at,
            ..
        }) => format!(
            "signing key {key_id} published, to sign from {}",
            timefmt::format_millis(activates_at.as_unix_millis())
        ),
        Event::SigningKey(signing_key::Event::SigningKeyActivated { key_id, .. }) => {
            format!("signing key {key_id} signs")
        }
        Event::SigningKey(signing_key::Event::SigningKeyRetired {
            key_id,
            published_until,
            ..
        }) => format!(
            "signing key {key_id} retired, published until {}",
            timefmt::format_millis(published_until.as_unix_millis())
        ),
        Event::Code(code::Event::CodeIssued {
            code_hash,
            username,
            scope,
            ..
        }) => format!(
            "code {} issued to user {username} for \"{scope}\"",
            short(code_hash)
        ),
        Event::Code(code::Event::CodeRedeemed { .. }) => "code redeemed".to_owned(),
        Event::Code(code::Event::CodeReplayed { .. }) => {
            "code presented again (replay): its grant is revoked".to_owned()
        }
        Event::Grant(grant::Event::GrantIssued {
            scope,
            access,
            refresh,
            ..
        }) => format!(
            "grant issued, scope \"{scope}\"; access {}{}",
            access_token(access),
            refresh
                .as_ref()
                .map(|r| format!(", refresh {}", short(&r.hash)))
                .unwrap_or_default()
        ),
        Event::Grant(grant::Event::TokensRefreshed {
            previous_refresh,
            access,
            refresh,
            ..
        }) => format!(
            "refresh {} rotated → access {}, refresh {}",
            short(previous_refresh),
            access_token(access),
            short(&refresh.hash)
        ),
        Event::Grant(grant::Event::RefreshTokenReused { presented, .. }) => format!(
            "rotated refresh token {} presented again (reuse)",
            short(presented)
        ),
        Event::Grant(grant::Event::AccessTokenRevoked { hash, reason, .. }) => {
            format!("access {} revoked: {}", short(hash), reason.as_str())
        }
        Event::Grant(grant::Event::GrantRevoked { reason, .. }) => {
            format!("grant revoked: {}", reason.as_str())
        }
    }
}

/// What caused a revocation: the event it names, or the reuse recorded just before it.
fn cause(lineage: &audit::Lineage, revocation: &audit::Revocation<'_>) -> Option<String> {
    if let Some(cause) = revocation.cause {
        return Some(format!(
            "event {} in stream {}",
            cause.event_id, cause.stream_id
        ));
    }
    lineage.reuse_before(revocation.event).map(|e| {
        format!(
            "event {} ({} at #{})",
            e.event_id,
            e.event.event_type(),
            e.position
        )
    })
}

pub async fn token(database_url: &str, token: &str) -> anyhow::Result<()> {
    let store = store(database_url).await?;
    let Some(lineage) = audit::lineage(&store, token).await? else {
        bail!("no token with that value or SHA-256 was ever issued");
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "token   sha256:{} ({})",
        lineage.token,
        lineage.kind.as_str()
    )?;
    let grant_id = lineage.grant.to_string();
    writeln!(
        out,
        "grant   {}",
        grant_id.strip_prefix("grant-").unwrap_or(&grant_id)
    )?;
    for (label, entries) in [
        ("client", &lineage.client),
        ("consent", &lineage.consent),
        ("code", &lineage.code),
        ("grant", &lineage.grant_events),
    ] {
        for e in entries {
            writeln!(
                out,
                "  {:<8} {}  #{:<8} {:<20} by {:<26} {}",
                label,
                timefmt::format_micros(e.recorded_at_micros),
                e.position,
                e.event.event_type(),
                e.metadata.actor.as_deref().unwrap_or("-"),
                describe(&e.event)
            )?;
        }
    }
    match lineage.revocation() {
        None => writeln!(out, "status  not revoked (see `valet audit at` for expiry)")?,
        Some(revocation) => {
            let event = revocation.event;
            writeln!(
                out,
                "status  revoked at {} by {}: {} (event {} at #{})",
                timefmt::format_micros(event.recorded_at_micros),
                event.metadata.actor.as_deref().unwrap_or("-"),
                revocation.reason.as_str(),
                event.event_id,
                event.position
            )?;
            if let Some(cause) = cause(&lineage, &revocation) {
                writeln!(out, "cause   {cause}")?;
            }
        }
    }
    Ok(())
}
