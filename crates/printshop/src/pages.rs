//! Printshop's pages: small, escaped, readable on a phone.

use serde::Deserialize;

/// One design, as the `designs` service lists it.
#[derive(Debug, Deserialize)]
pub struct Design {
    pub name: String,
    pub format: String,
}

pub enum Page<'a> {
    SignedOut,
    SignedIn {
        name: &'a str,
        email: Option<&'a str>,
        designs: &'a Result<Vec<Design>, String>,
    },
    Failed {
        why: String,
    },
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;\
padding:0 1rem;color:#1d2330}h1{font-size:1.6rem}a.button{display:inline-block;\
background:#2b59c3;color:#fff;padding:.7rem 1.2rem;border-radius:.4rem;text-decoration:none}\
ul{padding-left:1.2rem}li{margin:.3rem 0}.muted{color:#5b6475}";

impl Page<'_> {
    pub fn render(&self) -> String {
        let body = match self {
            Page::SignedOut => "<h1>Printshop</h1>\n<p>We print your 3D designs. Sign in with \
                 your Valet account to pick one.</p>\n<p><a class=\"button\" href=\"/login\">Sign \
                 in with Valet</a></p>\n"
                .to_owned(),
            Page::SignedIn {
                name,
                email,
                designs,
            } => {
                let mut body = format!(
                    "<h1>Printshop</h1>\n<p>Signed in as <strong>{}</strong>{}.</p>\n",
                    escape(name),
                    email
                        .map(|e| format!(" <span class=\"muted\">({})</span>", escape(e)))
                        .unwrap_or_default()
                );
                match designs {
                    Ok(designs) if designs.is_empty() => {
                        body.push_str("<p>You have no designs yet.</p>\n")
                    }
                    Ok(designs) => {
                        body.push_str("<h2>Your designs</h2>\n<ul>\n");
                        for d in designs {
                            body.push_str(&format!(
                                "<li>{} <span class=\"muted\">({})</span></li>\n",
                                escape(&d.name),
                                escape(&d.format)
                            ));
                        }
                        body.push_str("</ul>\n");
                    }
                    Err(why) => body.push_str(&format!(
                        "<p>Your designs are out of reach: {}</p>\n",
                        escape(why)
                    )),
                }
                body.push_str("<p><a href=\"/logout\">Sign out</a></p>\n");
                body
            }
            Page::Failed { why } => format!(
                "<h1>Printshop</h1>\n<p>{}</p>\n<p><a href=\"/\">Back</a></p>\n",
                escape(why)
            ),
        };
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>Printshop</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        let designs = Ok(vec![Design {
            name: "<script>".into(),
            format: "stl".into(),
        }]);
        let page = Page::SignedIn {
            name: "Alice & <b>",
            email: None,
            designs: &designs,
        }
        .render();
        assert!(page.contains("Alice &amp; &lt;b&gt;"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(!page.contains("<script>"));
    }
}
