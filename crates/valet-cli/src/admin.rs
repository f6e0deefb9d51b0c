//! `valet client …` and `valet user …`.

use std::io::Read;

use anyhow::Context;
use serde_json::json;
use valet_app::admin::{
    ClientChanges, ClientType, GrantsOnPasswordChange, NewClient, ProfileUpdate,
};
use valet_app::oauth::RequestMeta;
use valet_domain::client::LogoutSid;
use valet_domain::user::EmailStatus;

use valet_app::read::SessionView;

use crate::admin_args::{ClientCommand, ClientOptions, ProfileArgs, UserCommand};
use crate::{timefmt, wiring};

fn profile_update(args: ProfileArgs) -> ProfileUpdate {
    ProfileUpdate {
        name: args.name,
        email: args.email,
        email_status: args.email_verified.map(|verified| match verified {
            true => EmailStatus::Verified,
            false => EmailStatus::Unverified,
        }),
    }
}

/// The options of `client create` and `update` as the use cases take them.
fn client_changes(options: ClientOptions, name: Option<String>) -> ClientChanges {
    ClientChanges {
        name,
        redirect_uris: options.redirect_uris,
        grant_types: options.grant_types,
        scopes: options.scopes,
        id_token_alg: options.id_token_signed_response_alg,
        post_logout_redirect_uris: options.post_logout_redirect_uris,
        access_token_format: options.access_token_format,
        access_token_alg: options.access_token_signed_response_alg,
        backchannel_logout_uri: options.backchannel_logout_uri,
        backchannel_logout_sid: match options.backchannel_logout_session_required {
            true => LogoutSid::Required,
            false => LogoutSid::Optional,
        },
    }
}

pub async fn client(database_url: &str, command: ClientCommand) -> anyhow::Result<()> {
    let oauth = wiring::oauth(database_url, wiring::admin_settings(), 4).await?;
    let meta = RequestMeta::default();
    match command {
        ClientCommand::Create {
            name,
            public,
            options,
            json,
        } => {
            let client_type = match public {
                true => ClientType::Public,
                false => ClientType::Confidential,
            };
            let created = oauth
                .create_client(
                    NewClient::new(name, client_type, client_changes(options, None)),
                    &meta,
                )
                .await
                .context("client create")?;
            if json {
                let mut out = json!({ "client_id": created.client_id });
                if let Some(secret) = &created.client_secret {
                    out["client_secret"] = json!(secret);
                }
                println!("{out}");
            } else {
                println!("client_id:     {}", created.client_id);
                if let Some(secret) = &created.client_secret {
                    println!("client_secret: {secret}");
                    println!("(the secret is shown once; only its SHA-256 digest is kept)");
                }
            }
        }
        ClientCommand::List { json } => {
            let clients = oauth.list_clients().await.context("client list")?;
            if json {
                let list: Vec<_> = clients
                    .iter()
                    .map(|c| {
                        json!({
                            "client_id": c.client_id,
                            "name": c.name,
                            "type": c.kind,
                            "redirect_uris": c.redirect_uris,
                            "grant_types": c.grant_types,
                            "scope": c.scopes,
                            "active": c.active,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<34} {:<12} {:<9} {:<24} NAME",
                    "CLIENT_ID", "TYPE", "STATUS", "SCOPE"
                );
                for c in &clients {
                    println!(
                        "{:<34} {:<12} {:<9} {:<24} {}",
                        c.client_id,
                        c.kind,
                        if c.active { "active" } else { "disabled" },
                        c.scopes,
                        c.name
                    );
                }
            }
        }
        ClientCommand::Disable { client_id } => {
            let revoked = oauth
                .disable_client(&client_id, &meta)
                .await
                .context("client disable")?;
            println!("disabled client {client_id}; revoked {revoked} grant(s)");
        }
        ClientCommand::Update {
            client_id,
            name,
            options,
        } => {
            let changes = client_changes(options, name);
            let changed = oauth
                .update_client(&client_id, changes, &meta)
                .await
                .context("client update")?;
            match changed {
                true => println!("updated client {client_id}"),
                false => println!("client {client_id} unchanged"),
            }
        }
        ClientCommand::Enable { client_id } => {
            oauth
                .enable_client(&client_id, &meta)
                .await
                .context("client enable")?;
            println!("enabled client {client_id}");
        }
        ClientCommand::RotateSecret {
            client_id,
            overlap,
            json,
        } => {
            let rotated = oauth
                .rotate_client_secret(&client_id, overlap, &meta)
                .await
                .context("client rotate-secret")?;
            let until = timefmt::format_millis(rotated.previous_valid_until.as_unix_millis());
            if json {
                let out = json!({
                    "client_id": client_id,
                    "client_secret": rotated.client_secret,
                    "previous_valid_until": until,
                });
                println!("{out}");
            } else {
                println!("client_id:     {client_id}");
                println!("client_secret: {}", rotated.client_secret);
                println!("(shown once; the previous secret works until {until})");
            }
        }
        ClientCommand::Delete { client_id } => {
            let revoked = oauth
                .delete_client(&client_id, &meta)
                .await
                .context("client delete")?;
            println!("deleted client {client_id}; revoked {revoked} grant(s)");
        }
    }
    Ok(())
}

pub async fn user(database_url: &str, command: UserCommand) -> anyhow::Result<()> {
    let oauth = wiring::oauth(database_url, wiring::admin_settings(), 4).await?;
    let meta = RequestMeta::default();
    match command {
        UserCommand::Create {
            username, profile, ..
        } => {
            let password = password_from_stdin()?;
            let user_id = oauth
                .create_user(&username, &password, &meta)
                .await
                .context("user create")?;
            if !profile.is_empty() {
                oauth
                    .update_user_profile(&username, profile_update(profile), &meta)
                    .await
                    .context("user create")?;
            }
            println!("created user {username} ({user_id})");
        }
        UserCommand::Update { username, profile } => {
            let profile = oauth
                .update_user_profile(&username, profile_update(profile), &meta)
                .await
                .context("user update")?;
            println!(
                "user {username}: name {}, email {} ({})",
                profile.name.as_ref().map_or("-", |n| n.as_str()),
                profile.email.as_ref().map_or("-", |e| e.as_str()),
                match profile.email_status {
                    EmailStatus::Verified => "verified",
                    EmailStatus::Unverified => "not verified",
                }
            );
        }
        UserCommand::Disable { username } => {
            let revoked = oauth
                .disable_user(&username, &meta)
                .await
                .context("user disable")?;
            println!("disabled user {username}; revoked {revoked} grant(s)");
        }
        UserCommand::Enable { username } => {
            oauth
                .enable_user(&username, &meta)
                .await
                .context("user enable")?;
            println!("enabled user {username}");
        }
        UserCommand::List { json } => {
            let users = oauth.list_users().await.context("user list")?;
            if json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| {
                        json!({
                            "user_id": u.user_id.to_string(),
                            "username": u.username.as_str(),
                            "active": u.active,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for u in &users {
                    let state = if u.active { "active" } else { "disabled" };
                    println!("{}  {}  {state}", u.user_id, u.username);
                }
            }
        }
        UserCommand::Show { username, json } => {
            let shown = oauth.show_user(&username).await.context("user show")?;
            let u = &shown.user;
            let out = json!({
                "user_id": u.user_id.to_string(),
                "username": u.username.as_str(),
                "registered_at": timefmt::format_millis(u.registered_at.as_unix_millis()),
                "active": u.disabled_at.is_none(),
                "name": u.profile.name.as_ref().map(|n| n.as_str()),
                "email": u.profile.email.as_ref().map(|e| e.as_str()),
                "email_verified": u.profile.email_status == EmailStatus::Verified,
                "active_sessions": shown.sessions.len(),
                "apps": shown.apps.iter().map(|a| json!({
                    "client_id": a.client_id.as_str(),
                    "name": a.name,
                    "scope": a.scope.to_string(),
                })).collect::<Vec<_>>(),
            });
            if json {
                println!("{out}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).context("user show")?
                );
            }
        }
        UserCommand::Password {
            username,
            keep_grants,
            ..
        } => {
            let password = password_from_stdin()?;
            let grants = match keep_grants {
                true => GrantsOnPasswordChange::Keep,
                false => GrantsOnPasswordChange::Revoke,
            };
            let revoked = oauth
                .change_password(&username, &password, grants, &meta)
                .await
                .context("user password")?;
            println!(
                "changed the password of user {username}; ended their sessions; revoked {revoked} grant(s)"
            );
        }
        UserCommand::Logout { username } => {
            let ended = oauth
                .sign_out_everywhere(&username, &meta)
                .await
                .context("user logout")?;
            println!("signed user {username} out everywhere; ended {ended} session(s)");
        }
        UserCommand::Sessions {
            username,
            active,
            json,
        } => {
            let mut sessions = oauth
                .user_sessions(&username, 1000)
                .await
                .context("user sessions")?;
            let now = oauth.now();
            // The CLI does not know the server's idle timeout: "active" means not ended
            // and within its lifetime; the last use says how idle it is.
            let status = |s: &SessionView| match s.ended {
                Some((reason, _)) => format!("ended ({})", reason.as_str()),
                None if now >= s.expires_at => "expired".to_owned(),
                None => "active".to_owned(),
            };
            if active {
                sessions.retain(|s| status(s) == "active");
            }
            if json {
                let list: Vec<_> = sessions
                    .iter()
                    .map(|s| {
                        json!({
                            "session_id": s.session_id.to_string(),
                            "started_at": timefmt::format_millis(s.started_at.as_unix_millis()),
                            "last_used_at": timefmt::format_millis(s.last_used_at.as_unix_millis()),
                            "expires_at": timefmt::format_millis(s.expires_at.as_unix_millis()),
                            "clients": s.clients.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                            "ended_at": s.ended.map(|(_, at)| timefmt::format_millis(at.as_unix_millis())),
                            "end_reason": s.ended.map(|(reason, _)| reason.as_str()),
                            "status": status(s),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else if sessions.is_empty() {
                println!("user {username} has no sessions");
            } else {
                for s in &sessions {
                    let clients: Vec<&str> = s.clients.iter().map(|c| c.as_str()).collect();
                    println!(
                        "{}  started {}  last used {}  {}  clients: {}",
                        s.session_id,
                        timefmt::format_millis(s.started_at.as_unix_millis()),
                        timefmt::format_millis(s.last_used_at.as_unix_millis()),
                        status(s),
                        if clients.is_empty() {
                            "-".to_owned()
                        } else {
                            clients.join(",")
                        }
                    );
                }
            }
        }
        UserCommand::RevokeGrants { username, client } => {
            let revoked = oauth
                .revoke_user_grants(&username, client.as_deref(), &meta)
                .await
                .context("user revoke-grants")?;
            println!("revoked {revoked} grant(s) of user {username}");
        }
    }
    Ok(())
}

/// The password on standard input, one trailing newline (or CRLF) stripped.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("read the password from standard input")?;
    let trimmed = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password);
    Ok(trimmed.to_owned())
}
