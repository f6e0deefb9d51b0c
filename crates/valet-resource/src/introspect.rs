//! The RFC 7662 introspection fallback for tokens unknown locally.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::{
    digest_prefix, unix_now, Rejection, Source, TokenDetails, TokenDigest, TokenInfo, Unavailable,
};

/// How to reach Valet's `/introspect` (as a confidential client).
#[derive(Clone)]
pub struct IntrospectionConfig {
    /// E.g. `https://valet.example/introspect` (plain `http://` only to loopback unless
    /// [`ValidatorConfig::allow_plain_http`](crate::ValidatorConfig::allow_plain_http)).
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    /// How long an inactive answer is remembered. Default: 5 s.
    pub negative_ttl: Duration,
    /// At most this many inactive answers are remembered. Default: 10,000.
    pub negative_capacity: usize,
    /// At most this many calls in flight; others wait up to `timeout` for a slot.
    /// Default: 32.
    pub max_concurrency: usize,
    /// Per call (and for a free slot). Default: 2 s.
    pub timeout: Duration,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("negative_ttl", &self.negative_ttl)
            .field("negative_capacity", &self.negative_capacity)
            .field("max_concurrency", &self.max_concurrency)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl IntrospectionConfig {
    pub fn new(
        url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        IntrospectionConfig {
            url: url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            negative_ttl: Duration::from_secs(5),
            negative_capacity: 10_000,
            max_concurrency: 32,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Inactive answers, expiring in insertion order (the TTL is constant).
struct NegativeCache {
    until: HashMap<TokenDigest, Instant>,
    order: VecDeque<(TokenDigest, Instant)>,
    capacity: usize,
}

impl NegativeCache {
    fn contains(&mut self, digest: &TokenDigest, now: Instant) -> bool {
        self.purge(now);
        self.until.get(digest).is_some_and(|until| *until > now)
    }

    fn insert(&mut self, digest: TokenDigest, until: Instant, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        self.purge(now);
        while self.until.len() >= self.capacity {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.until.get(&old) == Some(&at) {
                self.until.remove(&old);
            }
        }
        self.until.insert(digest, until);
        self.order.push_back((digest, until));
    }

    fn purge(&mut self, now: Instant) {
        while let Some((digest, at)) = self.order.front().copied() {
            if at > now {
                break;
            }
            self.order.pop_front();
            if self.until.get(&digest) == Some(&at) {
                self.until.remove(&digest);
            }
        }
    }
}

/// RFC 7662 §2.2, the fields the SDK reads.
#[derive(Deserialize)]
struct Response {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

pub(crate) struct Introspector {
    http: reqwest::Client,
    config: IntrospectionConfig,
    authorization: String,
    negative: Mutex<NegativeCache>,
    permits: Semaphore,
    calls: AtomicU64,
    negative_hits: AtomicU64,
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Introspector {
    pub(crate) fn new(
        config: IntrospectionConfig,
        https: &crate::https::HttpsConfig,
    ) -> Result<Self, String> {
        crate::https::check_url(&config.url, https.plain_http)?;
        let http = crate::https::client(https, config.timeout)?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
        let credentials = format!(
            "{}:{}",
            form_encode(&config.client_id),
            form_encode(&config.client_secret)
        );
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        Ok(Introspector {
            http,
            authorization,
            negative: Mutex::new(NegativeCache {
                until: HashMap::new(),
                order: VecDeque::new(),
                capacity: config.negative_capacity,
            }),
            permits: Semaphore::new(config.max_concurrency.max(1)),
            calls: AtomicU64::new(0),
            negative_hits: AtomicU64::new(0),
            config,
        })
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub(crate) fn negative_hits(&self) -> u64 {
        self.negative_hits.load(Ordering::Relaxed)
    }

    fn cached_inactive(&self, digest: &TokenDigest) -> bool {
        let hit = self
            .negative
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest, Instant::now());
        if hit {
            self.negative_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn remember_inactive(&self, digest: TokenDigest) {
        let now = Instant::now();
        self.negative
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest, now + self.config.negative_ttl, now);
    }

    pub(crate) async fn introspect(
        &self,
        token: &str,
        digest: &TokenDigest,
    ) -> Result<TokenInfo, Rejection> {
        if self.cached_inactive(digest) {
            return Err(Rejection::Inactive);
        }
        let _permit = match tokio::time::timeout(self.config.timeout, self.permits.acquire()).await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                tracing::warn!(token = %digest_prefix(digest), "introspection: too many calls in flight");
                return Err(Rejection::Unavailable(Unavailable::Busy));
            }
        };
        // Someone may have got the answer while we waited for a slot.
        if self.cached_inactive(digest) {
            return Err(Rejection::Inactive);
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let response = self
            .http
            .post(&self.config.url)
            .header(reqwest::header::AUTHORIZATION, &self.authorization)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        let unavailable = Rejection::Unavailable(Unavailable::Introspection);
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                // reqwest errors name the URL, never the body (which holds the token).
                tracing::warn!(token = %digest_prefix(digest), error = %error.without_url(), "introspection request failed");
                return Err(unavailable);
            }
        };
        let status = response.status();
        if !status.is_success() {
            if status == reqwest::StatusCode::UNAUTHORIZED {
                tracing::error!(client_id = %self.config.client_id, "introspection refused this resource server's client credentials");
            } else {
                tracing::warn!(%status, "introspection answered an error");
            }
            return Err(unavailable);
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(error = %error.without_url(), "introspection response unreadable");
                return Err(unavailable);
            }
        };
        let answer: Response = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(%error, "introspection response is not RFC 7662 JSON");
                return Err(unavailable);
            }
        };
        match interpret(answer, unix_now()) {
            Ok(info) => {
                tracing::debug!(token = %digest_prefix(digest), "introspection: active");
                Ok(info)
            }
            Err(Rejection::Inactive) => {
                tracing::debug!(token = %digest_prefix(digest), "introspection: inactive");
                self.remember_inactive(*digest);
                Err(Rejection::Inactive)
            }
            Err(other) => Err(other),
        }
    }
}

fn interpret(answer: Response, now: i64) -> Result<TokenInfo, Rejection> {
    if !answer.active {
        return Err(Rejection::Inactive);
    }
    // A refresh token (or anything else) introspects active too: it is no bearer credential.
    let access = match answer.token_type.as_deref() {
        None => true,
        Some(kind) => {
            kind.eq_ignore_ascii_case("access_token") || kind.eq_ignore_ascii_case("bearer")
        }
    };
    if !access {
        return Err(Rejection::Inactive);
    }
    let (Some(exp), Some(client_id)) = (answer.exp, answer.client_id) else {
        tracing::warn!("introspection answered active without exp or client_id; refusing");
        return Err(Rejection::Unavailable(Unavailable::Introspection));
    };
    if exp <= now {
        return Err(Rejection::Inactive);
    }
    Ok(TokenInfo::new(TokenDetails {
        sub: answer.sub,
        username: answer.username,
        client_id,
        scopes: TokenInfo::parse_scope(answer.scope.as_deref().unwrap_or("")),
        expires_at: exp,
        grant_id: None,
        source: Source::Introspection,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Response {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn interprets_rfc7662_answers() {
        let now = 1_000;
        let info = interpret(
            answer(r#"{"active":true,"scope":"a b","client_id":"c","token_type":"access_token","exp":2000,"iat":1,"iss":"x","sub":"u","username":"alice"}"#),
            now,
        )
        .unwrap();
        assert_eq!(info.subject(), Some("alice"));
        assert!(info.has_scope("b"));
        assert_eq!(info.source, Source::Introspection);
        assert_eq!(
            interpret(answer(r#"{"active":false}"#), now),
            Err(Rejection::Inactive)
        );
        assert_eq!(
            interpret(
                answer(
                    r#"{"active":true,"client_id":"c","token_type":"refresh_token","exp":2000}"#
                ),
                now
            ),
            Err(Rejection::Inactive)
        );
        assert_eq!(
            interpret(answer(r#"{"active":true,"client_id":"c","exp":999}"#), now),
            Err(Rejection::Inactive)
        );
        assert!(matches!(
            interpret(answer(r#"{"active":true}"#), now),
            Err(Rejection::Unavailable(_))
        ));
    }

    #[test]
    fn negative_cache_expires_and_is_bounded() {
        let mut cache = NegativeCache {
            until: HashMap::new(),
            order: VecDeque::new(),
            capacity: 2,
        };
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        cache.insert([1; 32], t0 + ttl, t0);
        cache.insert([2; 32], t0 + ttl, t0);
        cache.insert([3; 32], t0 + ttl, t0);
        assert!(!cache.contains(&[1; 32], t0), "oldest dropped at capacity");
        assert!(cache.contains(&[2; 32], t0) && cache.contains(&[3; 32], t0));
        assert!(!cache.contains(&[3; 32], t0 + ttl));
        assert!(cache.until.is_empty() && cache.order.is_empty());
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        let introspector = Introspector::new(
            IntrospectionConfig::new("http://127.0.0.1/introspect", "res:srv", "p&ss wd"),
            &crate::https::HttpsConfig::default(),
        )
        .unwrap();
        let encoded = introspector.authorization.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, b"res%3Asrv:p%26ss+wd");
    }
}
