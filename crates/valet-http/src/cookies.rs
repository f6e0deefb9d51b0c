//! The browser's cookies: the signed session, the CSRF cookie and the hidden field that
//! goes with it, and the attributes every cookie gets.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use valet_app::Clock;

use crate::params::Params;
use crate::signing::{self, Session};
use crate::AppState;

pub const SESSION_COOKIE: &str = "valet_session";
pub const CSRF_COOKIE: &str = "valet_csrf";

/// The values of every cookie called `name`, across all Cookie headers.
pub(crate) fn cookies<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name).then_some(value.trim())
        })
}

pub(crate) fn set_cookie_attributes<S, R, C>(app: &AppState<S, R, C>) -> &'static str {
    match app.cookie_transport {
        CookieTransport::HttpsOnly => "; Path=/; HttpOnly; SameSite=Lax; Secure",
        CookieTransport::Any => "; Path=/; HttpOnly; SameSite=Lax",
    }
}

/// Whether cookies get the `Secure` attribute (when the issuer is https).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieTransport {
    HttpsOnly,
    Any,
}

impl CookieTransport {
    pub fn for_issuer(issuer: &str) -> Self {
        if issuer
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        {
            CookieTransport::HttpsOnly
        } else {
            CookieTransport::Any
        }
    }
}

/// The user of a valid session cookie, if any.
pub(crate) fn session<S, R, C: Clock>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
) -> Option<Session> {
    let now = app.oauth.clock.now().as_unix_seconds();
    cookies(headers, SESSION_COOKIE).find_map(|v| app.signer.verify_session(v, now).ok())
}

pub(crate) fn csrf_matches<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
    form: &Params,
) -> bool {
    let Some(field) = form.field("csrf_token").value() else {
        return false;
    };
    cookies(headers, CSRF_COOKIE).any(|cookie| app.signer.verify_csrf(cookie, field))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create a CSRF cookie: {0}")]
pub(crate) struct CsrfCookieError(String);

/// The CSRF cookie to use for a page: the browser's own if it has one, else a new one
/// (with its Set-Cookie header).
pub(crate) fn csrf_cookie<S, R, C>(
    app: &AppState<S, R, C>,
    headers: &HeaderMap,
) -> Result<(String, Option<HeaderValue>), CsrfCookieError> {
    if let Some(existing) = cookies(headers, CSRF_COOKIE).find(|v| signing::is_csrf_cookie(v)) {
        return Ok((existing.to_owned(), None));
    }
    let fresh = signing::new_csrf_cookie().map_err(|e| CsrfCookieError(e.to_string()))?;
    let header = format!("{CSRF_COOKIE}={fresh}{}", set_cookie_attributes(app));
    let header = HeaderValue::from_str(&header).map_err(|e| CsrfCookieError(e.to_string()))?;
    Ok((fresh, Some(header)))
}

pub(crate) fn with_cookie(mut res: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        res.headers_mut().append(header::SET_COOKIE, cookie);
    }
    res
}

/// The Set-Cookie header that ends the session cookie.
pub(crate) fn end_session<S, R, C>(app: &AppState<S, R, C>) -> Option<HeaderValue> {
    let cookie = format!("{SESSION_COOKIE}=; Max-Age=0{}", set_cookie_attributes(app));
    HeaderValue::from_str(&cookie).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies_across_headers() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; valet_csrf=x"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("valet_csrf=y;b=2"));
        assert_eq!(cookies(&h, CSRF_COOKIE).collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(cookies(&h, "b").collect::<Vec<_>>(), ["2"]);
        assert_eq!(cookies(&h, "c").count(), 0);
    }

    #[test]
    fn cookies_are_secure_behind_https() {
        assert_eq!(
            CookieTransport::for_issuer("https://id.example"),
            CookieTransport::HttpsOnly
        );
        assert_eq!(
            CookieTransport::for_issuer("HTTPS://id.example"),
            CookieTransport::HttpsOnly
        );
        assert_eq!(
            CookieTransport::for_issuer("http://127.0.0.1:8080"),
            CookieTransport::Any
        );
    }
}
