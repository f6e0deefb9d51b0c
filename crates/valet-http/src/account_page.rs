//! The account page's HTML: the apps that can act for the user, with "Remove access",
//! and the user's sessions, with "Sign out" each and "Sign out everywhere". Same look
//! as the other pages; every form carries the CSRF field; every value is escaped.

use std::fmt::Write;

use crate::html::{escape, layout, push_hidden, Hidden};

pub struct AppRow<'a> {
    pub client_id: &'a str,
    pub name: &'a str,
    pub scopes: Vec<&'a str>,
    pub since: String,
    pub last_used: String,
}

pub struct SessionRow<'a> {
    pub session_id: String,
    pub started: String,
    pub last_used: String,
    pub apps: Vec<&'a str>,
    pub current: bool,
}

/// What the page says above the lists, after an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    None,
    AppRemoved,
    SessionEnded,
}

impl Notice {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("app_removed") => Notice::AppRemoved,
            Some("session_ended") => Notice::SessionEnded,
            _ => Notice::None,
        }
    }
}

pub struct AccountView<'a> {
    pub username: &'a str,
    pub csrf: &'a str,
    pub apps: Vec<AppRow<'a>>,
    pub sessions: Vec<SessionRow<'a>>,
    pub notice: Notice,
}

pub fn account_page(view: &AccountView<'_>) -> String {
    let csrf = [Hidden {
        name: "csrf_token",
        value: view.csrf,
    }];
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<h1>Your account</h1>
<p class="lead">Signed in as <strong>{}</strong>.</p>
"#,
        escape(view.username)
    );
    match view.notice {
        Notice::None => {}
        Notice::AppRemoved => body.push_str(
            "<p class=\"notice\" role=\"status\">Access removed. The app can no longer act for you.</p>\n",
        ),
        Notice::SessionEnded => {
            body.push_str("<p class=\"notice\" role=\"status\">That session is signed out.</p>\n")
        }
    }
    body.push_str("<h2>Apps with access</h2>\n");
    if view.apps.is_empty() {
        body.push_str("<p class=\"muted\">No app can act for you.</p>\n");
    } else {
        body.push_str("<ul class=\"rows\">\n");
        for app in &view.apps {
            let _ = write!(
                body,
                r#"<li><p class="row-title">{name}</p>
<p class="row-detail">Can: <span class="uri">{scopes}</span></p>
<p class="row-detail">Since {since} · last used {last}</p>
<form method="post" action="/account/apps/remove">
"#,
                name = escape(app.name),
                scopes = escape(&app.scopes.join(" ")),
                since = escape(&app.since),
                last = escape(&app.last_used),
            );
            push_hidden(&mut body, &csrf);
            push_hidden(
                &mut body,
                &[Hidden {
                    name: "client_id",
                    value: app.client_id,
                }],
            );
            let _ = write!(
                body,
                r#"<button class="secondary small" type="submit" aria-label="Remove access of {name}">Remove access</button>
</form></li>
"#,
                name = escape(app.name),
            );
        }
        body.push_str("</ul>\n");
    }
    body.push_str("<h2>Where you are signed in</h2>\n<ul class=\"rows\">\n");
    for session in &view.sessions {
        let apps = match session.apps.is_empty() {
            true => "no app yet".to_owned(),
            false => session.apps.join(", "),
        };
        let _ = write!(
            body,
            r#"<li><p class="row-title">Signed in {started}{current}</p>
<p class="row-detail">Last used {last} · {apps}</p>
<form method="post" action="/account/sessions/end">
"#,
            started = escape(&session.started),
            current = match session.current {
                true => " <span class=\"tag\">this browser</span>",
                false => "",
            },
            last = escape(&session.last_used),
            apps = escape(&apps),
        );
        push_hidden(&mut body, &csrf);
        push_hidden(
            &mut body,
            &[Hidden {
                name: "session_id",
                value: &session.session_id,
            }],
        );
        body.push_str(
            "<button class=\"secondary small\" type=\"submit\">Sign out</button>\n</form></li>\n",
        );
    }
    body.push_str("</ul>\n<form method=\"post\" action=\"/account/sessions/end-all\">\n");
    push_hidden(&mut body, &csrf);
    body.push_str(
        "<button class=\"primary\" type=\"submit\">Sign out everywhere</button>\n</form>\n",
    );
    layout("Your account", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(evil: &'a str, notice: Notice) -> AccountView<'a> {
        AccountView {
            username: evil,
            csrf: "t",
            apps: vec![AppRow {
                client_id: evil,
                name: evil,
                scopes: vec![evil, "read"],
                since: evil.to_owned(),
                last_used: evil.to_owned(),
            }],
            sessions: vec![SessionRow {
                session_id: evil.to_owned(),
                started: evil.to_owned(),
                last_used: evil.to_owned(),
                apps: vec![evil],
                current: true,
            }],
            notice,
        }
    }

    #[test]
    fn every_value_is_escaped_and_every_form_has_the_csrf_field() {
        let evil = r#""><script>alert(1)</script>"#;
        let page = account_page(&view(evil, Notice::AppRemoved));
        assert!(!page.contains("<script>"), "{page}");
        let forms = page.matches("<form method=\"post\"").count();
        assert_eq!(forms, 3);
        assert_eq!(
            page.matches(r#"<input type="hidden" name="csrf_token" value="t">"#)
                .count(),
            forms
        );
        assert!(page.contains("Access removed"));
        assert!(page.contains("this browser"));
    }

    #[test]
    fn an_account_without_apps_says_so() {
        let mut v = view("alice", Notice::None);
        v.apps.clear();
        let page = account_page(&v);
        assert!(page.contains("No app can act for you."));
        assert!(!page.contains("/account/apps/remove"));
        assert_eq!(Notice::parse(Some("session_ended")), Notice::SessionEnded);
        assert_eq!(Notice::parse(Some("x")), Notice::None);
    }
}
