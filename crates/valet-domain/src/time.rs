//! Points in time and bounded lifetimes. The domain never reads a clock.

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds, serialised as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_unix_millis(self) -> i64 {
        self.0
    }

    /// Saturates, so an absurd input can never wrap an expiry into the past.
    pub fn plus_seconds(self, seconds: u32) -> Self {
        Self(self.0.saturating_add(i64::from(seconds) * 1000))
    }

    /// Floors (also for negative values), as JWT-style `exp`/`iat` fields expect.
    pub const fn as_unix_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be between 1 and {max} seconds")]
pub struct TtlError {
    pub what: &'static str,
    pub max: u32,
}

macro_rules! ttl {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, default $default:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "u32", into = "u32")]
        pub struct $name(u32);

        impl $name {
            pub const MAX_SECONDS: u32 = $max;

            pub fn new(seconds: u32) -> Result<Self, TtlError> {
                if (1..=Self::MAX_SECONDS).contains(&seconds) {
                    Ok(Self(seconds))
                } else {
                    Err(TtlError { what: $what, max: Self::MAX_SECONDS })
                }
            }

            pub const fn seconds(self) -> u32 {
                self.0
            }
        }

        /// The server's default (`valet serve` without the option).
        impl Default for $name {
            fn default() -> Self {
                Self($default)
            }
        }

        impl TryFrom<u32> for $name {
            type Error = TtlError;
            fn try_from(seconds: u32) -> Result<Self, TtlError> {
                Self::new(seconds)
            }
        }

        impl From<$name> for u32 {
            fn from(ttl: $name) -> u32 {
                ttl.0
            }
        }
    };
}

ttl!(
    /// Authorization code lifetime; RFC 6749 §4.1.2 recommends at most 10 minutes.
    CodeTtl, "code lifetime", 600, default 60
);
ttl!(
    /// Access token lifetime, at most one day.
    AccessTokenTtl, "access token lifetime", 86_400, default 3600
);
ttl!(
    /// Initial access token lifetime (dynamic client registration), at most 30 days;
    /// the default is the access tokens' default, as before it could be chosen.
    InitialAccessTokenTtl, "initial access token lifetime", 2_592_000, default 3600
);
ttl!(
    /// Refresh token lifetime, at most one year.
    RefreshTokenTtl, "refresh token lifetime", 31_536_000, default 2_592_000
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_and_serde() {
        let t = Timestamp::from_unix_millis(1_700_000_000_999);
        assert_eq!(t.plus_seconds(1).as_unix_millis(), 1_700_000_001_999);
        assert_eq!(t.as_unix_seconds(), 1_700_000_000);
        assert_eq!(Timestamp::from_unix_millis(-1).as_unix_seconds(), -1);
        assert_eq!(
            Timestamp::from_unix_millis(i64::MAX - 5).plus_seconds(10),
            Timestamp::from_unix_millis(i64::MAX)
        );
        assert!(t < t.plus_seconds(1));
        assert_eq!(serde_json::to_string(&t).unwrap(), "1700000000999");
        assert_eq!(
            serde_json::from_str::<Timestamp>("1700000000999").unwrap(),
            t
        );
    }

    #[test]
    fn ttl_bounds() {
        let table: &[(u32, bool, bool, bool)] = &[
            // seconds, code ok, access ok, refresh ok
            (0, false, false, false),
            (1, true, true, true),
            (600, true, true, true),
            (601, false, true, true),
            (86_400, false, true, true),
            (86_401, false, false, true),
            (31_536_000, false, false, true),
            (31_536_001, false, false, false),
        ];
        for &(s, code, access, refresh) in table {
            assert_eq!(CodeTtl::new(s).is_ok(), code, "code {s}");
            assert_eq!(AccessTokenTtl::new(s).is_ok(), access, "access {s}");
            assert_eq!(RefreshTokenTtl::new(s).is_ok(), refresh, "refresh {s}");
        }
        assert_eq!(CodeTtl::new(600).unwrap().seconds(), 600);
        assert!(serde_json::from_str::<CodeTtl>("601").is_err());
        assert_eq!(serde_json::from_str::<CodeTtl>("60").unwrap().seconds(), 60);
    }
}
