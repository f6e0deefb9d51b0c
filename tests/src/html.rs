//! Just enough HTML reading for the login and consent pages: forms, their action and
//! method, and the name/value of their inputs and buttons. No HTML parser crate: the
//! pages are the server's own, and a tolerant scanner over tags is all the tests need.

/// One `<input>` or `<button>` of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// `input` or `button` (lowercase).
    pub tag: String,
    /// The `type` attribute, lowercase; `text` for inputs and `submit` for buttons when absent.
    pub kind: String,
    pub name: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The raw (entity-decoded) `action` attribute; empty when absent.
    pub action: String,
    /// Lowercase; `get` when absent.
    pub method: String,
    pub fields: Vec<Field>,
}

impl Form {
    /// `(name, value)` of every hidden input.
    pub fn hidden(&self) -> Vec<(String, String)> {
        self.fields
            .iter()
            .filter(|f| f.tag == "input" && f.kind == "hidden")
            .filter_map(|f| f.name.clone().map(|n| (n, f.value.clone())))
            .collect()
    }

    pub fn hidden_value(&self, name: &str) -> Option<String> {
        self.hidden()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name.as_deref() == Some(name))
    }

    /// A submit control (`<button>` or `<input type=submit>`) with this name and value.
    pub fn has_submit(&self, name: &str, value: &str) -> bool {
        self.fields.iter().any(|f| {
            f.name.as_deref() == Some(name)
                && f.value == value
                && (f.tag == "button" || f.kind == "submit")
                && f.kind != "button"
                && f.kind != "reset"
        })
    }

    pub fn is_login(&self) -> bool {
        self.has_field("username") && self.has_field("password")
    }

    pub fn is_consent(&self) -> bool {
        self.has_submit("decision", "approve")
    }
}

/// Every `<form>` of the page, with the fields between it and its `</form>`.
pub fn forms(html: &str) -> Vec<Form> {
    let mut out = Vec::new();
    let mut current: Option<Form> = None;
    for tag in tags(html) {
        match tag.name.as_str() {
            "form" if !tag.closing => {
                if let Some(form) = current.take() {
                    out.push(form);
                }
                current = Some(Form {
                    action: tag.attr("action").unwrap_or_default(),
                    method: tag
                        .attr("method")
                        .unwrap_or_else(|| "get".to_owned())
                        .to_ascii_lowercase(),
                    fields: Vec::new(),
                });
            }
            "form" => {
                if let Some(form) = current.take() {
                    out.push(form);
                }
            }
            "input" | "button" if !tag.closing => {
                if let Some(form) = current.as_mut() {
                    let default_kind = if tag.name == "input" {
                        "text"
                    } else {
                        "submit"
                    };
                    form.fields.push(Field {
                        tag: tag.name.clone(),
                        kind: tag
                            .attr("type")
                            .unwrap_or_else(|| default_kind.to_owned())
                            .to_ascii_lowercase(),
                        name: tag.attr("name"),
                        value: tag.attr("value").unwrap_or_default(),
                    });
                }
            }
            _ => {}
        }
    }
    if let Some(form) = current {
        out.push(form);
    }
    out
}

/// The first form that satisfies `pred`.
pub fn find_form(html: &str, pred: impl Fn(&Form) -> bool) -> Option<Form> {
    forms(html).into_iter().find(|f| pred(f))
}

struct Tag {
    name: String,
    closing: bool,
    attrs: Vec<(String, String)>,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<String> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

/// Start and end tags in document order; comments, doctype and text are skipped.
fn tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while let Some(off) = html[i..].find('<') {
        i += off + 1;
        if html[i..].starts_with("!--") {
            i = html[i..].find("-->").map_or(b.len(), |e| i + e + 3);
            continue;
        }
        if html[i..].starts_with('!') || html[i..].starts_with('?') {
            i = html[i..].find('>').map_or(b.len(), |e| i + e + 1);
            continue;
        }
        let closing = html[i..].starts_with('/');
        if closing {
            i += 1;
        }
        let name_len = html[i..]
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'-')
            .count();
        if name_len == 0 {
            continue;
        }
        let name = html[i..i + name_len].to_ascii_lowercase();
        i += name_len;
        let mut attrs = Vec::new();
        // Attributes until '>' (quoted values may contain '>').
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            if b[i] == b'>' {
                i += 1;
                break;
            }
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && !b"=>/".contains(&b[i]) {
                i += 1;
            }
            let attr_name = html[start..i].to_ascii_lowercase();
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if i < b.len() && b[i] == b'=' {
                i += 1;
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                    let quote = b[i] as char;
                    i += 1;
                    let end = html[i..].find(quote).map_or(b.len(), |e| i + e);
                    value = unescape(&html[i..end]);
                    i = (end + 1).min(b.len());
                } else {
                    let start = i;
                    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                        i += 1;
                    }
                    value = unescape(&html[start..i]);
                }
            } else if attr_name.is_empty() {
                // A stray character: skip it so the loop always advances.
                i += 1;
                continue;
            }
            attrs.push((attr_name, value));
        }
        out.push(Tag {
            name,
            closing,
            attrs,
        });
    }
    out
}

/// Decodes the character references an attribute value may contain.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // Entities are short; look for the ';' within the first 12 bytes (on a char
        // boundary: `rest` may hold multi-byte characters).
        let window = rest.char_indices().nth(12).map_or(rest.len(), |(i, _)| i);
        let Some(semi) = rest[..window].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_forms_inputs_and_buttons() {
        let html = r#"<!doctype html><html><body><!-- <form action="/nope"> -->
            <form method="POST" action="/login?a=1&amp;b=%2F">
              <input type="hidden" name="csrf_token" value="x&quot;y">
              <input name=username><input type="password" name="password" />
              <button type="submit">Sign in</button>
            </form>
            <form method=post action='/consent'>
              <input type=hidden name='csrf_token' value='t'>
              <button name="decision" value="approve">Allow</button>
              <input type="submit" name="decision" value="deny">
            </form></body></html>"#;
        let all = forms(html);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].action, "/login?a=1&b=%2F");
        assert_eq!(all[0].method, "post");
        assert!(all[0].is_login());
        assert_eq!(all[0].hidden_value("csrf_token").as_deref(), Some("x\"y"));
        assert!(all[1].is_consent());
        assert!(all[1].has_submit("decision", "deny"));
        assert_eq!(all[1].hidden(), vec![("csrf_token".into(), "t".into())]);
    }

    #[test]
    fn unescapes_numeric_references() {
        assert_eq!(unescape("&#38;&#x26;&#X41;&bogus;&"), "&&A&bogus;&");
    }
}
