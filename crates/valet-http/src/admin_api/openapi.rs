//! The admin API's OpenAPI 3.1 document, built from the handlers' `#[utoipa::path]`
//! annotations and the request and response types, and served at
//! `/admin/v1/openapi.json` (without a token: it holds no data).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::OpenApi;

use super::{audit, clients, grants, keys, registration, users, ApiError};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Valet admin API",
        version = "1",
        description = "Clients, users, grants, signing keys and the audit log of a Valet \
            authorization server. Every route needs an access token with scope valet:admin."
    ),
    paths(
        clients::list, clients::create, clients::show, clients::update, clients::delete,
        clients::disable, clients::enable, clients::rotate_secret,
        users::list, users::create, users::show, users::update, users::set_password,
        users::disable, users::enable, users::sign_out_everywhere,
        grants::list, grants::show, grants::revoke,
        keys::list, keys::rotate, keys::retire,
        registration::issue,
        audit::log, audit::token, audit::at,
    ),
    components(schemas(ApiError)),
    tags(
        (name = "clients"), (name = "users"), (name = "grants"), (name = "keys"), (name = "registration"),
        (name = "audit"),
    )
)]
struct AdminDoc;

/// Refusals every admin route may answer, beside what its annotation lists.
const REFUSALS: [(&str, &str); 5] = [
    (
        "400",
        "the request is malformed: `error_description` says what is wrong",
    ),
    ("401", "no active access token (`invalid_token`)"),
    (
        "403",
        "the token lacks scope valet:admin (`insufficient_scope`)",
    ),
    ("404", "no such client, user or grant (`not_found`)"),
    (
        "503",
        "the store is unavailable (`temporarily_unavailable`); try again",
    ),
];

/// The document, with the bearer scheme and the shared refusals on every operation.
pub(crate) fn build() -> utoipa::openapi::OpenApi {
    let mut doc = AdminDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    let error = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ApiError")))
            .build()
    };
    let refuse = |op: &mut Operation, conflict: bool| {
        let mut refusals = REFUSALS.to_vec();
        if conflict {
            refusals.push((
                "409",
                "it exists already, or the change would cut off the caller (`conflict`)",
            ));
        }
        for (status, description) in refusals {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(description)
                        .content("application/json", error())
                        .into()
                });
        }
        op.security = Some(vec![SecurityRequirement::new("bearer", ["valet:admin"])]);
    };
    for item in doc.paths.paths.values_mut() {
        if let Some(op) = item.get.as_mut() {
            refuse(op, false);
        }
        if let Some(op) = item.post.as_mut() {
            refuse(op, true);
        }
        if let Some(op) = item.delete.as_mut() {
            refuse(op, true);
        }
        for op in [item.put.as_mut(), item.patch.as_mut()]
            .into_iter()
            .flatten()
        {
            refuse(op, false);
        }
    }
    doc
}

/// `GET /admin/v1/openapi.json`.
pub(crate) async fn document() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| build().to_json().unwrap_or_default());
    let mut res = json.clone().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
