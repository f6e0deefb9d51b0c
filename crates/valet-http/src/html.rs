//! The server-rendered pages: login, consent and errors. One small stylesheet inline (the
//! CSP allows inline styles and nothing else), no scripts, no external assets. Every
//! dynamic value goes through [`escape`].

use std::fmt::Write;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// RFC 6749 §10.13 and RFC 9700 §4.15: no framing (clickjacking), no leaking the
/// authorization request through the Referer. No `form-action`: browsers apply it to
/// the redirect that follows the consent POST, which goes to the client.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'";

/// Escapes text for element content and double-quoted attribute values. Control
/// characters become numeric references so a value survives the HTML parser's newline
/// normalisation and comes back from a hidden input unchanged.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// An HTML page with the security headers every page carries.
pub fn response(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A hidden form field.
pub struct Hidden<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

pub struct LoginView<'a> {
    /// Where the form posts (`/authorize/login`, `/account/login`).
    pub action: &'a str,
    pub client_name: &'a str,
    pub hidden: &'a [Hidden<'a>],
    /// Shown again after a failed attempt, so only the password has to be retyped.
    pub username: &'a str,
    pub notice: LoginNotice,
}

/// What the sign-in form says above its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginNotice {
    None,
    WrongCredentials,
    /// Failed attempts are being limited; the next one is taken after this wait.
    TooManyAttempts {
        retry_after_secs: u64,
    },
}

pub struct ConsentView<'a> {
    pub client_name: &'a str,
    pub username: &'a str,
    pub scopes: Vec<&'a str>,
    pub redirect_uri: &'a str,
    pub hidden: &'a [Hidden<'a>],
}

pub fn login_page(view: &LoginView<'_>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>Sign in</h1>
<p class="lead">to continue to <strong>{client}</strong></p>
"#,
        client = escape(view.client_name)
    );
    match view.notice {
        LoginNotice::None => {}
        LoginNotice::WrongCredentials => {
            body.push_str(r#"<p class="alert" role="alert">Wrong username or password.</p>"#);
            body.push('\n');
        }
        LoginNotice::TooManyAttempts { retry_after_secs } => {
            let wait = match retry_after_secs {
                0 | 1 => "a second".to_owned(),
                secs if secs < 120 => format!("{secs} seconds"),
                secs => format!("{} minutes", secs.div_ceil(60)),
            };
            let _ = writeln!(
                body,
                r#"<p class="alert" role="alert">Too many failed sign-in attempts. Please wait {wait} and try again.</p>"#
            );
        }
    }
    let _ = writeln!(
        body,
        r#"<form method="post" action="{}">"#,
        escape(view.action)
    );
    push_hidden(&mut body, view.hidden);
    let _ = write!(
        body,
        r#"<label for="username">Username</label>
<input id="username" type="text" name="username" value="{username}" autocomplete="username" autocapitalize="none" spellcheck="false" required autofocus>
<label for="password">Password</label>
<input id="password" type="password" name="password" autocomplete="current-password" required>
<button class="primary" type="submit">Sign in</button>
</form>
"#,
        username = escape(view.username)
    );
    layout("Sign in", &body)
}

pub fn consent_page(view: &ConsentView<'_>) -> String {
    let client = escape(view.client_name);
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>Allow access?</h1>
<p class="lead"><strong>{client}</strong> would like to access your account with these permissions:</p>
<ul class="scopes">
"#
    );
    for scope in &view.scopes {
        let _ = writeln!(body, "<li>{}</li>", escape(scope));
    }
    let _ = write!(
        body,
        r#"</ul>
<p class="muted">Signed in as <strong>{user}</strong>. After you choose, you will be sent to <span class="uri">{uri}</span>.</p>
<form method="post" action="/authorize/consent">
"#,
        user = escape(view.username),
        uri = escape(view.redirect_uri),
    );
    push_hidden(&mut body, view.hidden);
    body.push_str(
        r#"<div class="actions">
<button class="secondary" type="submit" name="decision" value="deny">Deny</button>
<button class="primary" type="submit" name="decision" value="approve">Allow</button>
</div>
</form>
"#,
    );
    layout("Allow access", &body)
}

/// Asks the user to confirm signing out (a logout request that did not prove it came
/// from an application).
pub fn logout_page(hidden: &[Hidden<'_>]) -> String {
    let mut body = String::from(
        r#"<h1>Sign out?</h1>
<p class="lead">An application asked to sign you out of this service.</p>
<form method="post" action="/logout">
"#,
    );
    push_hidden(&mut body, hidden);
    body.push_str(
        r#"<div class="actions">
<button class="primary" type="submit" name="decision" value="sign_out">Sign out</button>
</div>
</form>
"#,
    );
    layout("Sign out", &body)
}

/// A page that explains and offers nothing to click: used for requests that cannot be
/// sent back to the client.
pub fn message_page(title: &str, message: &str) -> String {
    let body = format!(
        "<h1>{}</h1>\n<p class=\"lead\">{}</p>\n",
        escape(title),
        escape(message)
    );
    layout(title, &body)
}

pub(crate) fn push_hidden(out: &mut String, fields: &[Hidden<'_>]) {
    for f in fields {
        let _ = writeln!(
            out,
            r#"<input type="hidden" name="{}" value="{}">"#,
            escape(f.name),
            escape(f.value)
        );
    }
}

pub(crate) fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · Valet</title>
<style>{STYLE}</style>
</head>
<body>
<main class="card">
<p class="brand">Valet</p>
{body}</main>
</body>
</html>
"#,
        title = escape(title),
    )
}

const STYLE: &str = "\
:root{color-scheme:light;--accent:#4338ca;--accent-hover:#3730a3;--text:#111827;--muted:#6b7280;--line:#e5e7eb}\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:24px 16px;\
font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif;background:#f3f4f6;color:var(--text)}\
.card{width:100%;max-width:400px;background:#fff;border:1px solid var(--line);border-radius:14px;\
box-shadow:0 1px 2px rgba(0,0,0,.04),0 12px 32px rgba(17,24,39,.08);padding:32px 28px}\
.brand{margin:0 0 20px;font-size:13px;font-weight:700;letter-spacing:.08em;text-transform:uppercase;color:var(--accent)}\
h1{margin:0 0 6px;font-size:22px;line-height:1.3}\
.lead{margin:0 0 20px;color:#374151;overflow-wrap:anywhere}\
.muted{margin:16px 0 0;font-size:13px;color:var(--muted);overflow-wrap:anywhere}\
.uri{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
.alert{margin:0 0 16px;padding:10px 12px;border-radius:8px;background:#fef2f2;border:1px solid #fecaca;color:#991b1b;font-size:14px}\
label{display:block;margin:14px 0 6px;font-size:14px;font-weight:600}\
input[type=text],input[type=password]{width:100%;padding:10px 12px;font:inherit;color:inherit;background:#fff;\
border:1px solid #d1d5db;border-radius:8px}\
input:focus{outline:2px solid var(--accent);outline-offset:1px;border-color:var(--accent)}\
button{width:100%;margin-top:22px;padding:11px 16px;font:inherit;font-weight:600;border-radius:8px;border:1px solid transparent;cursor:pointer}\
button:focus-visible{outline:2px solid var(--accent);outline-offset:2px}\
.primary{background:var(--accent);color:#fff}.primary:hover{background:var(--accent-hover)}\
.secondary{background:#fff;color:#374151;border-color:#d1d5db}.secondary:hover{background:#f9fafb}\
.scopes{list-style:none;margin:0;padding:0;border:1px solid var(--line);border-radius:10px}\
.scopes li{padding:10px 14px;border-top:1px solid var(--line);font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;\
font-size:14px;overflow-wrap:anywhere}\
.scopes li:first-child{border-top:0}\
.actions{display:flex;gap:12px}.actions button{flex:1}\
h2{margin:28px 0 10px;font-size:16px}\
.rows{list-style:none;margin:0;padding:0;border:1px solid var(--line);border-radius:10px}\
.rows li{padding:12px 14px;border-top:1px solid var(--line)}.rows li:first-child{border-top:0}\
.row-title{margin:0;font-weight:600;overflow-wrap:anywhere}\
.row-detail{margin:2px 0 0;font-size:13px;color:var(--muted);overflow-wrap:anywhere}\
button.small{width:auto;margin-top:8px;padding:6px 12px;font-size:14px}\
.tag{margin-left:6px;padding:1px 8px;border-radius:999px;background:#eef2ff;color:var(--accent);font-size:12px;font-weight:600}\
.notice{margin:0 0 16px;padding:10px 12px;border-radius:8px;background:#f0fdf4;border:1px solid #bbf7d0;color:#166534;font-size:14px}\
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            escape(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("a\r\nb\0"), "a&#13;&#10;b&#0;");
        assert_eq!(escape("caf\u{e9} \u{1F600}"), "caf\u{e9} \u{1F600}");
    }

    #[test]
    fn pages_escape_every_dynamic_value() {
        let evil = r#""><script>alert(1)</script>"#;
        let hidden = [Hidden {
            name: "state",
            value: evil,
        }];
        let login = login_page(&LoginView {
            action: "/authorize/login",
            client_name: evil,
            hidden: &hidden,
            username: evil,
            notice: LoginNotice::WrongCredentials,
        });
        let consent = consent_page(&ConsentView {
            client_name: evil,
            username: evil,
            scopes: vec![evil],
            redirect_uri: evil,
            hidden: &hidden,
        });
        for page in [login, consent, message_page(evil, evil)] {
            assert!(!page.contains("<script>"), "{page}");
            assert!(page.contains("&quot;&gt;&lt;script&gt;"));
        }
    }

    #[test]
    fn forms_carry_the_expected_controls() {
        let hidden = [
            Hidden {
                name: "csrf_token",
                value: "t",
            },
            Hidden {
                name: "client_id",
                value: "c",
            },
        ];
        let consent = consent_page(&ConsentView {
            client_name: "App",
            username: "alice",
            scopes: vec!["read", "write"],
            redirect_uri: "https://app.example/cb",
            hidden: &hidden,
        });
        assert!(consent.contains(r#"<form method="post" action="/authorize/consent">"#));
        assert!(consent.contains(r#"name="decision" value="approve""#));
        assert!(consent.contains(r#"name="decision" value="deny""#));
        assert!(consent.contains(r#"<input type="hidden" name="csrf_token" value="t">"#));
        let login = login_page(&LoginView {
            action: "/authorize/login",
            client_name: "App",
            hidden: &hidden,
            username: "",
            notice: LoginNotice::None,
        });
        assert!(login.contains(r#"<form method="post" action="/authorize/login">"#));
        assert!(login.contains(r#"name="username""#) && login.contains(r#"name="password""#));
        assert!(!login.contains("Wrong username"));
    }

    #[test]
    fn the_sign_in_form_says_how_long_to_wait_when_limited() {
        let view = |retry_after_secs| {
            login_page(&LoginView {
                action: "/authorize/login",
                client_name: "App",
                hidden: &[],
                username: "alice",
                notice: LoginNotice::TooManyAttempts { retry_after_secs },
            })
        };
        assert!(view(1).contains("Please wait a second and try again."));
        assert!(view(8).contains("Please wait 8 seconds and try again."));
        assert!(view(900).contains("Please wait 15 minutes and try again."));
        assert!(view(61).contains(r#"value="alice""#));
    }
}
