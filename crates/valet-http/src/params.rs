//! `application/x-www-form-urlencoded` parsing (bodies and query strings) into a multimap.
//!
//! Written by hand rather than with a serde deserializer because OAuth needs what those
//! hide: a repeated parameter is an error (RFC 6749 §3.1, §3.2), and bytes that are not
//! UTF-8 must be refused, not silently replaced.

use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("a percent escape is not followed by two hex digits")]
    BadEscape,
    #[error("a name or value is not UTF-8")]
    NotUtf8,
}

/// One parameter as the request carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Absent,
    /// Present once with a non-empty value.
    Value(&'a str),
    Repeated,
}

impl<'a> Field<'a> {
    pub fn is_repeated(self) -> bool {
        matches!(self, Field::Repeated)
    }

    /// The value, with a repeat treated like an absence (for callers that have already
    /// refused repeats, or that decide about them separately).
    pub fn value(self) -> Option<&'a str> {
        match self {
            Field::Value(v) => Some(v),
            Field::Absent | Field::Repeated => None,
        }
    }
}

/// The decoded pairs in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(input: &[u8]) -> Result<Self, FormError> {
        let mut pairs = Vec::new();
        for piece in input.split(|b| *b == b'&') {
            if piece.is_empty() {
                continue;
            }
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(eq) => (&piece[..eq], &piece[eq + 1..]),
                None => (piece, &piece[..0]),
            };
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(Params { pairs })
    }

    /// RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were
    /// omitted", so an empty value reads as absent (but still counts towards a repeat).
    pub fn field(&self, name: &str) -> Field<'_> {
        let mut found = Field::Absent;
        let mut seen = false;
        for (n, v) in &self.pairs {
            if n == name {
                if seen {
                    return Field::Repeated;
                }
                seen = true;
                if !v.is_empty() {
                    found = Field::Value(v);
                }
            }
        }
        found
    }

    /// The first parameter name that occurs more than once, if any.
    pub fn first_repeated(&self) -> Option<&str> {
        let mut seen = HashSet::with_capacity(self.pairs.len());
        self.pairs
            .iter()
            .map(|(n, _)| n.as_str())
            .find(|n| !seen.insert(*n))
    }

    /// Whether the parameter occurs more than once.
    pub fn is_repeated(&self, name: &str) -> bool {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .nth(1)
            .is_some()
    }
}

/// `+` is a space and `%XX` a byte; the decoded bytes must be UTF-8.
pub fn decode(raw: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).and_then(|b| hex_value(*b));
                let lo = raw.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::BadEscape);
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters. A space becomes `%20`
/// (not `+`), so strict URI decoders and form decoders read back the same string.
pub fn encode_component(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

/// `name=value&…`, each part encoded with [`encode_component`].
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode_component(name));
        out.push('=');
        out.push_str(&encode_component(value));
    }
    out
}

/// `uri` with `pairs` appended to its query (`?` or `&` as the URI needs), before any
/// fragment. Values are percent-encoded so the client decodes exactly what we hold.
pub fn append_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let (base, fragment) = uri.split_at(uri.find('#').unwrap_or(uri.len()));
    let separator = match base.find('?') {
        None => "?",
        Some(_) if base.ends_with('?') || base.ends_with('&') => "",
        Some(_) => "&",
    };
    format!(
        "{base}{separator}{}{fragment}",
        encode_pairs(pairs.iter().copied())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_percent_and_unicode() {
        let p = Params::parse(b"a=x+y%2Bz&b=%E2%9C%93&c&d=%26%3D").unwrap();
        assert_eq!(p.field("a"), Field::Value("x y+z"));
        assert_eq!(p.field("b"), Field::Value("\u{2713}"));
        assert_eq!(p.field("d"), Field::Value("&="));
        assert_eq!(p.field("e"), Field::Absent);
    }

    #[test]
    fn empty_values_read_as_absent() {
        let p = Params::parse(b"c&d=&&").unwrap();
        assert_eq!(p.field("c"), Field::Absent);
        assert_eq!(p.field("d"), Field::Absent);
        assert_eq!(p.first_repeated(), None);
    }

    #[test]
    fn repeats_are_reported_even_when_empty() {
        let p = Params::parse(b"grant_type=a&x=1&grant_type=").unwrap();
        assert_eq!(p.field("grant_type"), Field::Repeated);
        assert_eq!(p.first_repeated(), Some("grant_type"));
        assert!(p.is_repeated("grant_type"));
        assert!(!p.is_repeated("x"));
        // A percent-encoded name is the same name.
        let p = Params::parse(b"state=1&st%61te=2").unwrap();
        assert!(p.field("state").is_repeated());
    }

    #[test]
    fn refuses_non_utf8_and_bad_escapes() {
        assert_eq!(Params::parse(b"a=%FF"), Err(FormError::NotUtf8));
        assert_eq!(Params::parse(b"a=\xC3"), Err(FormError::NotUtf8));
        assert_eq!(Params::parse(b"%C3=1"), Err(FormError::NotUtf8));
        assert_eq!(Params::parse(b"a=%2"), Err(FormError::BadEscape));
        assert_eq!(Params::parse(b"a=%zz"), Err(FormError::BadEscape));
        assert_eq!(Params::parse(b"a=100%"), Err(FormError::BadEscape));
    }

    #[test]
    fn binary_input_fails_in_linear_time() {
        let junk: Vec<u8> = (0..64 * 1024).map(|i| (i % 256) as u8).collect();
        assert!(Params::parse(&junk).is_err());
    }

    #[test]
    fn encoding_round_trips() {
        for s in ["&#+% =?/", "caf\u{e9} \u{1F600}", "", &"x".repeat(2048)] {
            let encoded = encode_component(s);
            assert!(encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            assert_eq!(decode(encoded.as_bytes()).unwrap(), s);
        }
        assert_eq!(encode_component("a b+c"), "a%20b%2Bc");
        assert_eq!(
            encode_pairs([("a", "1 2"), ("b&", "=")]),
            "a=1%202&b%26=%3D"
        );
    }

    #[test]
    fn appends_to_the_query_the_uri_has() {
        let p = [("error", "access_denied"), ("state", "s")];
        assert_eq!(
            append_query("https://a.example/cb", &p),
            "https://a.example/cb?error=access_denied&state=s"
        );
        assert_eq!(
            append_query("https://a.example/cb?x=1", &p),
            "https://a.example/cb?x=1&error=access_denied&state=s"
        );
        assert_eq!(
            append_query("https://a.example/cb?", &p),
            "https://a.example/cb?error=access_denied&state=s"
        );
        assert_eq!(
            append_query("https://a.example/cb?x=1&", &p),
            "https://a.example/cb?x=1&error=access_denied&state=s"
        );
    }

    #[test]
    fn state_comes_back_byte_exact() {
        let long = "\u{e9}&#+%".repeat(300);
        for state in [
            "&#+%",
            "a b+c=d&e",
            "\u{1F600} caf\u{e9} \u{4e2d}",
            long.as_str(),
        ] {
            let uri = append_query(
                "https://a.example/cb?keep=%2B",
                &[("code", "c"), ("state", state)],
            );
            let query = &uri[uri.find('?').unwrap() + 1..];
            assert!(!query.contains('#'));
            let back = Params::parse(query.as_bytes()).unwrap();
            assert_eq!(back.field("state"), Field::Value(state));
            assert_eq!(back.field("keep"), Field::Value("+"));
        }
    }
}
