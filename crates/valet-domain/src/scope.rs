//! Scopes (RFC 6749 §3.3).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeParseError {
    #[error("scope is empty")]
    Empty,
    #[error("scope contains an empty token (leading, trailing or double space)")]
    EmptyToken,
    #[error("scope token is longer than 128 characters")]
    TooLong,
    #[error("scope token contains a character outside %x21 / %x23-5B / %x5D-7E")]
    InvalidChar,
}

/// One scope-token: 1*( %x21 / %x23-5B / %x5D-7E ), capped at 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, ScopeParseError> {
        if s.is_empty() {
            return Err(ScopeParseError::EmptyToken);
        }
        if s.len() > Self::MAX_LEN {
            return Err(ScopeParseError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        {
            return Err(ScopeParseError::InvalidChar);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeParseError;
    fn try_from(s: String) -> Result<Self, ScopeParseError> {
        Self::parse(&s)
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

/// A set of scopes; order and duplicates in the request do not matter (§3.3).
///
/// `parse` refuses the empty string (a request either omits `scope` or names
/// something). The empty set still exists as a value (`default()`), and is
/// (de)serialised as `""` so that every value round-trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    pub fn parse(s: &str) -> Result<Self, ScopeParseError> {
        if s.is_empty() {
            return Err(ScopeParseError::Empty);
        }
        s.split(' ')
            .map(Scope::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        Self(self.0.union(&other.0).cloned().collect())
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a Scope;
    type IntoIter = std::collections::btree_set::Iter<'a, Scope>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.is_empty() {
            return Ok(Self::default());
        }
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) fn scopes(s: &str) -> ScopeSet {
    ScopeSet::parse(s).expect("test scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_token_charset_table() {
        let max = "a".repeat(128);
        let over = "a".repeat(129);
        let table: &[(&str, bool)] = &[
            ("read", true),
            ("!#[]^~:/.", true), // edges of the allowed ranges
            ("files:read", true),
            ("https://api.example/read", true),
            ("!", true),
            ("#[^~", true),
            ("]", true),
            ("\"", false), // %x22
            ("\\", false), // %x5C
            (" ", false),  // %x20
            ("\t", false),
            ("\u{7f}", false),
            ("é", false),
            ("", false),
            (&max, true),
            (&over, false),
        ];
        for &(s, ok) in table {
            assert_eq!(Scope::parse(s).is_ok(), ok, "{s:?}");
        }
    }

    #[test]
    fn set_parsing_table() {
        let table: &[(&str, Option<&str>)] = &[
            ("read", Some("read")),
            ("write read", Some("read write")),
            ("read read", Some("read")),
            ("b a c", Some("a b c")),
            ("", None),
            (" read", None),
            ("read ", None),
            ("read  write", None),
            ("read\twrite", None),
            ("read\"x", None),
        ];
        for &(input, expected) in table {
            let parsed = ScopeSet::parse(input).ok().map(|s| s.to_string());
            assert_eq!(parsed.as_deref(), expected, "{input:?}");
        }
        assert_eq!(ScopeSet::parse(""), Err(ScopeParseError::Empty));
        assert_eq!(ScopeSet::parse("a  b"), Err(ScopeParseError::EmptyToken));
    }

    #[test]
    fn set_operations() {
        let rw = scopes("read write");
        assert!(scopes("read").is_subset(&rw));
        assert!(rw.is_subset(&rw));
        assert!(!scopes("read admin").is_subset(&rw));
        assert_eq!(scopes("read").union(&scopes("admin")), scopes("admin read"));
        assert!(ScopeSet::default().is_empty());
        assert!(!rw.is_empty());
        assert_eq!(rw.len(), 2);
        assert!(rw.contains(&Scope::parse("write").unwrap()));
        let names: Vec<&str> = rw.iter().map(Scope::as_str).collect();
        assert_eq!(names, ["read", "write"]);
    }

    #[test]
    fn serde_is_space_separated() {
        let s = scopes("write read");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"read write\"");
        assert_eq!(
            serde_json::from_str::<ScopeSet>("\"read write\"").unwrap(),
            s
        );
        assert!(serde_json::from_str::<ScopeSet>("\"read  write\"").is_err());
        let empty = serde_json::to_string(&ScopeSet::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<ScopeSet>(&empty).unwrap(),
            ScopeSet::default()
        );
    }
}
