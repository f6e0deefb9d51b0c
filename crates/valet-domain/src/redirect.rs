//! Redirect URIs: strict validation at registration (SECURITY 3) and
//! byte-exact matching at request time (SECURITY 2, RFC 9700 §4.1.3).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("redirect URI is empty or longer than 2000 characters")]
    Length,
    #[error("redirect URI contains whitespace, control or non-ASCII characters")]
    ForbiddenCharacter,
    #[error("redirect URI must not contain a fragment")]
    Fragment,
    #[error("redirect URI must not contain a wildcard")]
    Wildcard,
    #[error("redirect URI must start with https:// (or http:// for a loopback host)")]
    Scheme,
    #[error("plain http is only allowed for loopback hosts")]
    InsecureHttp,
    #[error("redirect URI must not contain userinfo")]
    UserInfo,
    #[error("redirect URI has an empty host")]
    EmptyHost,
    #[error("redirect URI has an invalid host")]
    InvalidHost,
    #[error("redirect URI has an invalid port")]
    InvalidPort,
    #[error("redirect URI must have a path starting with /")]
    MissingPath,
    #[error("redirect URI path must not contain . or .. segments")]
    DotSegment,
    #[error("redirect URI contains a character not allowed in a path or query")]
    InvalidPathCharacter,
    #[error("redirect URI contains a malformed percent-encoding")]
    InvalidPercentEncoding,
}

/// Whether a loopback IP redirect URI may be requested with another port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackPortRule {
    /// Byte-exact match only (confidential clients).
    Exact,
    /// RFC 8252 §7.3: native apps bind an ephemeral port, so a registered
    /// `http://127.0.0.1/...` or `http://[::1]/...` matches any port.
    AnyPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scheme {
    Http,
    Https,
}

/// A registered redirect URI: `https://host[:port]/path[?query]`, or `http://`
/// on a loopback host. Stored exactly as registered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RedirectUri {
    raw: String,
    scheme: Scheme,
    /// Byte offsets into `raw`.
    host_start: usize,
    host_end: usize,
    path_start: usize,
}

const MAX_LEN: usize = 2000;
const LOOPBACK_HOSTS: [&str; 3] = ["127.0.0.1", "[::1]", "localhost"];
/// Only the IP literals get port freedom; RFC 8252 §8.3 advises against `localhost`.
const LOOPBACK_IPS: [&str; 2] = ["127.0.0.1", "[::1]"];

impl RedirectUri {
    pub fn parse(s: &str) -> Result<Self, RedirectUriError> {
        use RedirectUriError as E;
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(E::Length);
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(E::ForbiddenCharacter);
        }
        if s.contains('#') {
            return Err(E::Fragment);
        }
        if s.contains('*') {
            return Err(E::Wildcard);
        }
        // Lowercase schemes only: registration fixes one spelling, matching is byte-exact.
        let (scheme, host_start) = if s.starts_with("https://") {
            (Scheme::Https, "https://".len())
        } else if s.starts_with("http://") {
            (Scheme::Http, "http://".len())
        } else {
            return Err(E::Scheme);
        };
        let rest = &s[host_start..];
        let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if authority.contains('@') {
            return Err(E::UserInfo);
        }
        let host_len = parse_authority(authority)?;
        let host = &authority[..host_len];
        let path_start = host_start + authority_len;
        check_path_and_query(&s[path_start..])?;
        if scheme == Scheme::Http && !LOOPBACK_HOSTS.contains(&host) {
            return Err(E::InsecureHttp);
        }
        Ok(Self {
            raw: s.to_owned(),
            scheme,
            host_start,
            host_end: host_start + host_len,
            path_start,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn is_loopback(&self) -> bool {
        LOOPBACK_HOSTS.contains(&self.host())
    }

    fn host(&self) -> &str {
        &self.raw[self.host_start..self.host_end]
    }

    /// Byte-exact comparison with the value sent in a request: no decoding, no
    /// case folding, no default ports. The only leeway is `AnyPort` on an
    /// `http` loopback IP URI, where solely the port may differ.
    pub fn matches_request(&self, requested: &str, rule: LoopbackPortRule) -> bool {
        if requested == self.raw {
            return true;
        }
        if rule == LoopbackPortRule::Exact
            || self.scheme != Scheme::Http
            || !LOOPBACK_IPS.contains(&self.host())
        {
            return false;
        }
        // "http://127.0.0.1" or "http://[::1]" must be followed by an optional
        // valid port and then exactly the registered path and query.
        let Some(after_host) = requested.strip_prefix(&self.raw[..self.host_end]) else {
            return false;
        };
        let rest = match after_host.strip_prefix(':') {
            Some(port_and_rest) => {
                let digits = port_and_rest.bytes().take_while(u8::is_ascii_digit).count();
                if !valid_port(&port_and_rest[..digits]) {
                    return false;
                }
                &port_and_rest[digits..]
            }
            None => after_host,
        };
        rest == &self.raw[self.path_start..]
    }
}

/// Validates `host[:port]` and returns the length of the host part.
fn parse_authority(authority: &str) -> Result<usize, RedirectUriError> {
    use RedirectUriError as E;
    if authority.is_empty() {
        return Err(E::EmptyHost);
    }
    let host_len = if authority.starts_with('[') {
        let close = authority.find(']').ok_or(E::InvalidHost)?;
        let inner = &authority[1..close];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(E::InvalidHost);
        }
        close + 1
    } else {
        let host = &authority[..authority.find(':').unwrap_or(authority.len())];
        if host.is_empty() {
            return Err(E::EmptyHost);
        }
        // DNS names and IPv4 only; empty labels (leading/trailing/double dots) are
        // refused because browsers and resolvers disagree about them.
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !host.split('.').all(label_ok) {
            return Err(E::InvalidHost);
        }
        host.len()
    };
    match &authority[host_len..] {
        "" => Ok(host_len),
        port => match port.strip_prefix(':') {
            Some(digits) if valid_port(digits) => Ok(host_len),
            Some(_) => Err(E::InvalidPort),
            None => Err(E::InvalidHost),
        },
    }
}

/// 1..=65535 written canonically (no sign, no leading zero).
fn valid_port(digits: &str) -> bool {
    !digits.is_empty()
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u16>().is_ok()
}

fn check_path_and_query(path_and_query: &str) -> Result<(), RedirectUriError> {
    use RedirectUriError as E;
    if !path_and_query.starts_with('/') {
        return Err(E::MissingPath);
    }
    // RFC 3986 pchar plus '/' and '?'; '*' and '#' were refused earlier. Anything
    // else (backslash, quotes, brackets...) is normalised differently by browsers.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@/?%".contains(&b);
    if !path_and_query.bytes().all(allowed) {
        return Err(E::InvalidPathCharacter);
    }
    let bytes = path_and_query.as_bytes();
    for (i, _) in path_and_query.match_indices('%') {
        let hex_pair = bytes.get(i + 1..i + 3);
        if !hex_pair.is_some_and(|p| p.iter().all(u8::is_ascii_hexdigit)) {
            return Err(E::InvalidPercentEncoding);
        }
    }
    // A browser resolves dot segments (also percent-encoded ones) before
    // requesting, so such a URI would not land where it says.
    let path = &path_and_query[..path_and_query.find('?').unwrap_or(path_and_query.len())];
    for segment in path.split('/') {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(E::DotSegment);
        }
    }
    Ok(())
}

impl fmt::Display for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl TryFrom<String> for RedirectUri {
    type Error = RedirectUriError;
    fn try_from(s: String) -> Result<Self, RedirectUriError> {
        Self::parse(&s)
    }
}

impl From<RedirectUri> for String {
    fn from(u: RedirectUri) -> String {
        u.raw
    }
}

#[cfg(test)]
pub(crate) fn uri(s: &str) -> RedirectUri {
    RedirectUri::parse(s).expect("test redirect uri")
}

#[cfg(test)]
mod tests {
    use super::*;
    use LoopbackPortRule::{AnyPort, Exact};
    use RedirectUriError as E;

    #[test]
    fn accepted_at_registration() {
        let max = format!("https://app.example/{}", "a".repeat(MAX_LEN - 20));
        assert_eq!(max.len(), MAX_LEN);
        for ok in [
            "https://app.example/cb",
            "https://app.example/",
            "https://app.example:8443/cb?x=1&y=%2F",
            "https://sub.app.example/a/b.c/~d",
            "https://10.0.0.1/cb",
            "https://[2001:db8::1]:443/cb",
            "https://app.example/cb?next=/a:b@c",
            "http://127.0.0.1/cb",
            "http://127.0.0.1:8080/cb",
            "http://[::1]/cb",
            "http://localhost/cb",
            "http://localhost:3000/",
            &max,
        ] {
            assert!(RedirectUri::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refused_at_registration() {
        let too_long = format!("https://app.example/{}", "a".repeat(MAX_LEN - 19));
        let table: &[(&str, RedirectUriError)] = &[
            ("", E::Length),
            (&too_long, E::Length),
            ("https://app.example/cb#x", E::Fragment),
            ("https://app.example/cb#", E::Fragment),
            ("https://*.app.example/cb", E::Wildcard),
            ("https://app.example/*", E::Wildcard),
            ("https://app.example/cb?x=*", E::Wildcard),
            ("http://app.example/cb", E::InsecureHttp),
            ("http://127.0.0.2/cb", E::InsecureHttp),
            ("http://localhost.evil.example/cb", E::InsecureHttp),
            ("http://127.0.0.1.evil.example/cb", E::InsecureHttp),
            ("ftp://app.example/cb", E::Scheme),
            ("javascript:alert(1)", E::Scheme),
            ("com.example.app:/cb", E::Scheme),
            ("HTTPS://app.example/cb", E::Scheme),
            ("//app.example/cb", E::Scheme),
            ("/cb", E::Scheme),
            ("https:/app.example/cb", E::Scheme),
            ("https://user@app.example/cb", E::UserInfo),
            ("https://user:pw@app.example/cb", E::UserInfo),
            ("https://app.example@evil.example/cb", E::UserInfo),
            ("https:///cb", E::EmptyHost),
            ("https://:443/cb", E::EmptyHost),
            ("https://", E::EmptyHost),
            ("https://app..example/cb", E::InvalidHost),
            ("https://.app.example/cb", E::InvalidHost),
            ("https://app.example./cb", E::InvalidHost),
            ("https://app_example/cb", E::InvalidHost),
            ("https://app.example%2Eevil/cb", E::InvalidHost),
            ("https://evil.example\\@app.example/cb", E::UserInfo),
            ("https://evil.example\\.app.example/cb", E::InvalidHost),
            ("https://[::1/cb", E::InvalidHost),
            ("https://[]/cb", E::InvalidHost),
            ("https://[::1]x/cb", E::InvalidHost),
            ("https://app.example:/cb", E::InvalidPort),
            ("https://app.example:0/cb", E::InvalidPort),
            ("https://app.example:080/cb", E::InvalidPort),
            ("https://app.example:65536/cb", E::InvalidPort),
            ("https://app.example:+80/cb", E::InvalidPort),
            ("https://app.example:80:81/cb", E::InvalidPort),
            ("https://app.example", E::MissingPath),
            ("https://app.example?x=1", E::MissingPath),
            ("https://app.example/a/../b", E::DotSegment),
            ("https://app.example/a/./b", E::DotSegment),
            ("https://app.example/a/..", E::DotSegment),
            ("https://app.example/a/%2e%2E/b", E::DotSegment),
            ("https://app.example/a/.%2e/b", E::DotSegment),
            ("https://app.example/a\\b", E::InvalidPathCharacter),
            ("https://app.example/a\"b", E::InvalidPathCharacter),
            ("https://app.example/a<b>", E::InvalidPathCharacter),
            ("https://app.example/a[0]", E::InvalidPathCharacter),
            ("https://app.example/%zz", E::InvalidPercentEncoding),
            ("https://app.example/%2", E::InvalidPercentEncoding),
            ("https://app.example/c b", E::ForbiddenCharacter),
            ("https://app.example/cb\n", E::ForbiddenCharacter),
            (" https://app.example/cb", E::ForbiddenCharacter),
            ("https://app.example/cb\t", E::ForbiddenCharacter),
            ("https://app.example/\u{0}", E::ForbiddenCharacter),
            ("https://exämple.com/cb", E::ForbiddenCharacter),
        ];
        for (s, err) in table {
            assert_eq!(RedirectUri::parse(s), Err(*err), "{s:?}");
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(uri("http://127.0.0.1/cb").is_loopback());
        assert!(uri("http://[::1]:5/cb").is_loopback());
        assert!(uri("http://localhost/cb").is_loopback());
        assert!(uri("https://localhost/cb").is_loopback());
        assert!(!uri("https://app.example/cb").is_loopback());
        assert!(!uri("https://127.0.0.2/cb").is_loopback());
    }

    /// SECURITY 2: every trick fails under both rules.
    #[test]
    fn exact_match_refuses_every_trick() {
        let registered = uri("https://app.example/cb");
        for rule in [Exact, AnyPort] {
            assert!(registered.matches_request("https://app.example/cb", rule));
        }
        let tricks = [
            // path tricks
            "https://app.example/cb/../x",
            "https://app.example/x/../cb",
            "https://app.example/cb/./",
            "https://app.example/cb%2F",
            "https://app.example%2Fcb",
            "https://app.example/c%62",
            "https://app.example/%63b",
            "https://app.example/cb/",
            "https://app.example//cb",
            "https://app.example/CB",
            "https://app.example/Cb",
            // host and userinfo tricks
            "https://APP.example/cb",
            "https://app.example@evil.example/cb",
            "https://app.example:@evil.example/cb",
            "https://evil.example@app.example/cb",
            "https://app.example.evil.example/cb",
            "https://evil.app.example/cb",
            "https://www.app.example/cb",
            "https://evilapp.example/cb",
            "https://app.example.com/cb",
            "https://app.exampl/cb",
            "https://app.example./cb",
            // scheme and port
            "http://app.example/cb",
            "HTTPS://app.example/cb",
            "Https://app.example/cb",
            "wss://app.example/cb",
            "https://app.example:443/cb",
            "https://app.example:8443/cb",
            // query and fragment
            "https://app.example/cb?",
            "https://app.example/cb?x=1",
            "https://app.example/cb?redirect=https://evil.example",
            "https://app.example/cb#",
            "https://app.example/cb#frag",
            // whitespace and encoding
            " https://app.example/cb",
            "https://app.example/cb ",
            "https://app.example/cb%20",
            "https://app.example/cb\n",
            "https://app.example/cb\0",
            "https://app.example/cb\\",
            "",
        ];
        for trick in tricks {
            for rule in [Exact, AnyPort] {
                assert!(
                    !registered.matches_request(trick, rule),
                    "{trick:?} {rule:?}"
                );
            }
        }
    }

    #[test]
    fn registered_query_must_match_exactly() {
        let registered = uri("https://app.example/cb?tenant=a");
        assert!(registered.matches_request("https://app.example/cb?tenant=a", Exact));
        for trick in [
            "https://app.example/cb",
            "https://app.example/cb?tenant=a&x=1",
            "https://app.example/cb?x=1&tenant=a",
            "https://app.example/cb?tenant=b",
            "https://app.example/cb?tenant=%61",
        ] {
            assert!(!registered.matches_request(trick, Exact), "{trick}");
        }
    }

    #[test]
    fn loopback_ip_may_vary_port_only() {
        for (registered, host) in [
            ("http://127.0.0.1/cb", "127.0.0.1"),
            ("http://[::1]/cb", "[::1]"),
            ("http://127.0.0.1:8080/cb", "127.0.0.1"),
        ] {
            let registered = uri(registered);
            for port in ["", ":1", ":8080", ":51234", ":65535"] {
                let requested = format!("http://{host}{port}/cb");
                assert!(
                    registered.matches_request(&requested, AnyPort),
                    "{requested}"
                );
            }
            for bad in [
                format!("http://{host}:51234/cb/"),
                format!("http://{host}:51234/cb?x=1"),
                format!("http://{host}:51234/other"),
                format!("http://{host}:51234/CB"),
                format!("http://{host}:51234"),
                format!("http://{host}:/cb"),
                format!("http://{host}:0/cb"),
                format!("http://{host}:051234/cb"),
                format!("http://{host}:65536/cb"),
                format!("http://{host}:-1/cb"),
                format!("http://{host}:80@evil.example/cb"),
                format!("http://{host}@evil.example/cb"),
                format!("http://{host}.evil.example/cb"),
                format!("http://{host}:80.evil.example/cb"),
                format!("https://{host}:51234/cb"),
                "http://localhost:51234/cb".to_owned(),
                format!("http://{host}:51234/cb#x"),
            ] {
                assert!(!registered.matches_request(&bad, AnyPort), "{bad}");
            }
        }
        // Exact rule: a different port is refused even on loopback.
        assert!(!uri("http://127.0.0.1/cb").matches_request("http://127.0.0.1:5000/cb", Exact));
        // localhost and https loopback get no port freedom.
        assert!(!uri("http://localhost/cb").matches_request("http://localhost:5000/cb", AnyPort));
        assert!(!uri("https://127.0.0.1/cb").matches_request("https://127.0.0.1:5000/cb", AnyPort));
        // Non-loopback hosts never get port freedom.
        assert!(!uri("https://app.example/cb").matches_request("https://app.example:1/cb", AnyPort));
    }

    #[test]
    fn serde_validates() {
        let u = uri("https://app.example/cb");
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, "\"https://app.example/cb\"");
        assert_eq!(serde_json::from_str::<RedirectUri>(&json).unwrap(), u);
        assert!(serde_json::from_str::<RedirectUri>("\"http://app.example/cb\"").is_err());
    }
}
