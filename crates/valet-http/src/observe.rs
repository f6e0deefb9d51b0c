//! Request ids, the one-line request log and Prometheus metrics.
//!
//! Requests are labelled by their matched route, never by the raw path or query: those
//! may carry codes or tokens, and an unbounded label set would grow without limit.

use std::fmt::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use valet_app::oauth::RequestMeta;
use valet_app::outbox::RelaySnapshot;

use crate::MAX_BODY_BYTES;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Who is asking, for the handlers (event metadata, rate limits).
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// The TCP peer, or the client a trusted proxy names; `None` when served without
    /// connect info (in-process tests).
    pub client_ip: Option<IpAddr>,
}

impl RequestContext {
    /// The address rate limits are keyed by.
    pub fn ip(&self) -> IpAddr {
        self.client_ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    }

    /// What the use cases record in event metadata.
    pub fn meta(&self) -> RequestMeta {
        RequestMeta {
            request_id: Some(self.request_id.clone()),
            client_ip: self.client_ip.map(|ip| ip.to_string()),
            admin: None,
        }
    }
}

/// The routes metrics are kept for; anything else counts as `unmatched`.
pub const ROUTES: [&str; 10] = [
    "/authorize",
    "/authorize/login",
    "/authorize/consent",
    "/token",
    "/revoke",
    "/introspect",
    "/.well-known/oauth-authorization-server",
    "/healthz",
    "/readyz",
    "/metrics",
];
const UNMATCHED: usize = ROUTES.len();
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
struct RouteMetrics {
    by_class: [AtomicU64; 5],
    latency_micros: AtomicU64,
    count: AtomicU64,
}

/// Counters only (atomics), so recording never blocks a request.
pub struct Metrics {
    routes: [RouteMetrics; ROUTES.len() + 1],
    rate_limited: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: std::array::from_fn(|_| RouteMetrics::default()),
            rate_limited: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record(&self, route: Option<&str>, status: StatusCode, latency: Duration) {
        let index = route
            .and_then(|r| ROUTES.iter().position(|known| *known == r))
            .unwrap_or(UNMATCHED);
        let m = &self.routes[index];
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        m.by_class[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        m.latency_micros.fetch_add(micros, Ordering::Relaxed);
        m.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let labels = ROUTES.iter().copied().chain(["unmatched"]);
        let mut out = String::new();
        out.push_str("# HELP valet_http_requests_total HTTP requests by route and status class.\n");
        out.push_str("# TYPE valet_http_requests_total counter\n");
        for (route, m) in labels.clone().zip(&self.routes) {
            for (class, n) in CLASSES.iter().zip(&m.by_class) {
                let _ = writeln!(
                    out,
                    "valet_http_requests_total{{route=\"{route}\",status=\"{class}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP valet_http_request_duration_seconds Time to produce a response.\n");
        out.push_str("# TYPE valet_http_request_duration_seconds summary\n");
        for (route, m) in labels.zip(&self.routes) {
            let micros = m.latency_micros.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "valet_http_request_duration_seconds_sum{{route=\"{route}\"}} {}.{:06}",
                micros / 1_000_000,
                micros % 1_000_000
            );
            let _ = writeln!(
                out,
                "valet_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                m.count.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP valet_http_rate_limited_total Attempts refused after repeated authentication failures.\n",
        );
        out.push_str("# TYPE valet_http_rate_limited_total counter\n");
        let _ = writeln!(
            out,
            "valet_http_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
        out
    }
}

/// The back-channel logout dispatcher's state in Prometheus text format.
pub fn render_backchannel(out: &mut String, s: &RelaySnapshot) {
    let metrics = [
        (
            "valet_backchannel_active",
            "gauge",
            "1 if this process holds the back-channel logout dispatcher's lease.",
            u64::from(s.active),
        ),
        (
            "valet_backchannel_delivered_total",
            "counter",
            "Logout tokens a client took (2xx).",
            s.published,
        ),
        (
            "valet_backchannel_failed_attempts_total",
            "counter",
            "Attempts to deliver a logout token that a client refused or did not answer.",
            s.publish_failures,
        ),
        (
            "valet_backchannel_step_downs_total",
            "counter",
            "Times this process gave up the dispatcher's lease.",
            s.step_downs,
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
}

/// The relay's state in Prometheus text format.
pub fn render_relay(out: &mut String, s: &RelaySnapshot) {
    let gauges = [
        (
            "valet_relay_active",
            "1 if this process holds the relay lease.",
            i64::from(s.active),
        ),
        (
            "valet_relay_nats_connected",
            "1 while the relay is connected to NATS.",
            i64::from(s.nats_connected),
        ),
        (
            "valet_relay_backlog",
            "Events in the log not yet published to NATS.",
            s.backlog,
        ),
        (
            "valet_relay_last_position",
            "Log position of the last published event.",
            s.last_position,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        );
    }
    let counters = [
        (
            "valet_relay_published_total",
            "Events published to NATS.",
            s.published,
        ),
        (
            "valet_relay_duplicates_total",
            "Publications NATS reported as duplicates.",
            s.duplicates,
        ),
        (
            "valet_relay_publish_failures_total",
            "Failed publish attempts.",
            s.publish_failures,
        ),
        (
            "valet_relay_step_downs_total",
            "Times this process gave up the relay lease (could not publish or renew in time).",
            s.step_downs,
        ),
        (
            "valet_relay_rewinds_total",
            "Times the stream ended before messages NATS had confirmed and the relay published them again.",
            s.rewinds,
        ),
        (
            "valet_relay_reissues_total",
            "Rewinds JetStream answered with duplicates of messages it did not hold, published again under new message ids.",
            s.reissues,
        ),
    ];
    for (name, help, value) in counters {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        );
    }
    let name = "valet_relay_batches_total";
    let _ = write!(
        out,
        "# HELP {name} Published batches by how JetStream confirmed them: last_ack (one ack \
         for the batch), every_ack (an ack per message), republished (sent again with an \
         ack per message after the last ack did not account for the batch).\n\
         # TYPE {name} counter\n"
    );
    for (confirmed, value) in [
        ("last_ack", s.confirmed_by_last_ack),
        ("every_ack", s.confirmed_by_every_ack),
        ("republished", s.republished),
    ] {
        let _ = writeln!(out, "{name}{{confirmed=\"{confirmed}\"}} {value}");
    }
}

/// What the observing middleware needs: the metrics it counts into, and whose forwarding
/// headers name the client.
#[derive(Clone)]
pub(crate) struct Observer {
    pub metrics: Arc<Metrics>,
    pub proxies: crate::TrustedProxies,
}

/// Assigns the request id (any the client sent is ignored: ids in our logs are ours),
/// finds the client's address, then logs and counts the response.
pub(crate) async fn observe(
    State(Observer { metrics, proxies }): State<Observer>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = Uuid::now_v7().to_string();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client_ip = proxies.client_address(peer, req.headers());
    req.headers_mut().remove(&X_REQUEST_ID);
    req.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        client_ip,
    });

    let mut res = next.run(req).await;

    let latency = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    metrics.record(route.as_deref(), res.status(), latency);
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = route.as_deref().unwrap_or("unmatched"),
        status = res.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
    res
}

/// 413 for any declared body over the limit, on every route, before a handler runs
/// (routes that never read a body would otherwise accept it). Bodies without a length
/// are cut off by `DefaultBodyLimit` when read.
pub async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            "request body too large\n",
        )
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_route_and_class() {
        let m = Metrics::default();
        m.record(Some("/token"), StatusCode::OK, Duration::from_millis(1500));
        m.record(
            Some("/token"),
            StatusCode::UNAUTHORIZED,
            Duration::from_micros(250),
        );
        m.record(Some("/nope"), StatusCode::NOT_FOUND, Duration::ZERO);
        m.record(None, StatusCode::NOT_FOUND, Duration::ZERO);
        let text = m.render();
        assert!(text.contains("valet_http_requests_total{route=\"/token\",status=\"2xx\"} 1\n"));
        assert!(text.contains("valet_http_requests_total{route=\"/token\",status=\"4xx\"} 1\n"));
        assert!(text.contains("valet_http_requests_total{route=\"unmatched\",status=\"4xx\"} 2\n"));
        assert!(
            text.contains("valet_http_request_duration_seconds_sum{route=\"/token\"} 1.500250\n")
        );
        assert!(text.contains("valet_http_request_duration_seconds_count{route=\"/token\"} 2\n"));
    }

    #[test]
    fn renders_the_relay_state() {
        let mut text = String::new();
        let snapshot = RelaySnapshot {
            active: true,
            nats_connected: false,
            backlog: 12,
            published: 30,
            duplicates: 1,
            publish_failures: 4,
            last_position: 42,
            confirmed_by_last_ack: 7,
            confirmed_by_every_ack: 2,
            republished: 1,
            step_downs: 3,
            rewinds: 5,
            reissues: 2,
        };
        render_relay(&mut text, &snapshot);
        assert!(text.contains("# TYPE valet_relay_backlog gauge\nvalet_relay_backlog 12\n"));
        assert!(text.contains("valet_relay_nats_connected 0\n"));
        assert!(text.contains("valet_relay_step_downs_total 3\n"));
        assert!(text.contains("valet_relay_rewinds_total 5\n"));
        assert!(text.contains("valet_relay_reissues_total 2\n"));
        assert!(text.contains("valet_relay_publish_failures_total 4\n"));
        assert!(text.contains("valet_relay_batches_total{confirmed=\"last_ack\"} 7\n"));
        assert!(text.contains("valet_relay_batches_total{confirmed=\"republished\"} 1\n"));
    }
}
