//! The cloud storage of 3D designs from the classic OAuth story: a printing service asks
//! Valet for a token with scope `designs:read` and lists the user's designs here.
//!
//! ```text
//! cargo run -p valet-resource --example designs
//! ```
//!
//! Environment:
//! - `VALET_NATS_URL` (default `nats://127.0.0.1:4222`)
//! - `VALET_INTROSPECT_URL` (default `http://127.0.0.1:8080/introspect`)
//! - `DESIGNS_CLIENT_ID` / `DESIGNS_CLIENT_SECRET`: a confidential client of Valet for the
//!   introspection fallback (without them the fallback is off)
//! - `DESIGNS_LISTEN` (default `127.0.0.1:8081`)
//! - `VALET_ISSUER` (default `http://127.0.0.1:8080`) and `DESIGNS_AUDIENCE` (default: the
//!   issuer, as Valet's `--access-token-audience`): JWT access tokens are verified
//!   offline against them; opaque tokens and JWTs are both accepted.
//!
//! `GET /designs` (scope `designs:read`), `GET /healthz`, `GET /readyz`. Prints
//! `designs listening on http://ADDR` once the token store has caught up.

use std::io::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use valet_resource::{
    Bearer, BearerRejection, IntrospectionConfig, JwtConfig, Validator, ValidatorConfig,
};

#[derive(Serialize)]
struct Design {
    id: String,
    name: &'static str,
    format: &'static str,
    owner: String,
}

const CATALOGUE: [(&str, &str); 3] = [
    ("Articulated dragon", "stl"),
    ("Replacement dishwasher wheel", "step"),
    ("Desk cable organiser", "3mf"),
];

async fn designs(auth: Bearer) -> Result<Json<Vec<Design>>, BearerRejection> {
    auth.require_scope("designs:read")?;
    // Designs belong to users; a client_credentials token acts for nobody.
    let Some(owner) = auth.subject() else {
        return Ok(Json(Vec::new()));
    };
    let designs = CATALOGUE
        .iter()
        .enumerate()
        .map(|(i, (name, format))| Design {
            id: format!("{owner}-{}", i + 1),
            name,
            format,
            owner: owner.to_owned(),
        })
        .collect();
    Ok(Json(designs))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(validator): State<Validator>) -> impl IntoResponse {
    let status = validator.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status))
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let issuer = env("VALET_ISSUER", "http://127.0.0.1:8080");
    let audience = env("DESIGNS_AUDIENCE", &issuer);
    // Keys from the stream, and from the issuer's /jwks.json at start.
    let jwt = JwtConfig::new(&issuer, audience);
    let mut config =
        ValidatorConfig::new(env("VALET_NATS_URL", "nats://127.0.0.1:4222")).with_jwt(jwt);
    match (
        std::env::var("DESIGNS_CLIENT_ID")
            .ok()
            .filter(|v| !v.is_empty()),
        std::env::var("DESIGNS_CLIENT_SECRET")
            .ok()
            .filter(|v| !v.is_empty()),
    ) {
        (Some(id), Some(secret)) => {
            let url = env("VALET_INTROSPECT_URL", "http://127.0.0.1:8080/introspect");
            tracing::info!(%url, client_id = %id, "introspection fallback on");
            config = config.with_introspection(IntrospectionConfig::new(url, id, secret));
        }
        _ => tracing::info!(
            "DESIGNS_CLIENT_ID/DESIGNS_CLIENT_SECRET unset: introspection fallback off"
        ),
    }
    let validator = Validator::connect(config).await?;

    let app = Router::new()
        .route("/designs", get(designs))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(validator.clone());
    let listener = tokio::net::TcpListener::bind(env("DESIGNS_LISTEN", "127.0.0.1:8081")).await?;
    let addr = listener.local_addr()?;
    // Serve at once (healthz/readyz answer during the catch-up); announce when ready.
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    validator.wait_ready(None).await?;
    println!("designs listening on http://{addr}");
    std::io::stdout().flush()?;
    tokio::select! {
        result = server => result??,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
