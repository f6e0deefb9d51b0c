//! HTTPS served by `valet serve` itself (rustls, HTTP/1.1 and HTTP/2 by ALPN), the
//! certificate reloaded when its files change, and the start-up checks that keep a
//! plain-HTTP Valet off the network unless a trusted proxy ends TLS in front of it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

/// How often the certificate files are looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Where TLS ends for the listener: here, at a proxy in front, or nowhere (loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Valet serves HTTPS with this certificate chain and key (PEM files).
    Tls { cert: PathBuf, key: PathBuf },
    /// A trusted proxy in front ends TLS (`--behind-proxy`); Valet serves plain HTTP
    /// and believes the forwarded client addresses of this many `--trusted-proxy` peers.
    BehindProxy { trusted_proxies: usize },
    /// Plain HTTP, for loopback only.
    Plain,
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of an `http(s)://host[:port][/…]` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(end) = authority.strip_prefix('[').and_then(|a| a.find(']')) {
        return &authority[..end + 2];
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// The start-up rules: a listener on the network, or an issuer named on it, needs TLS
/// here or a trusted proxy that ends it; with TLS (here or at the proxy) the issuer is
/// https. Each refusal is one line that says what to change.
pub fn check(listen: SocketAddr, issuer: &str, transport: &Transport) -> Result<(), String> {
    let issuer_local = is_loopback_host(url_host(issuer));
    match transport {
        Transport::Tls { .. } if !is_https(issuer) => Err(format!(
            "--issuer {issuer} is not https:// but Valet serves TLS (--tls-cert): name the \
             https:// URL clients use"
        )),
        Transport::BehindProxy { .. } if !is_https(issuer) && !issuer_local => Err(format!(
            "--issuer {issuer} is plain http on the network: behind a TLS proxy, name the \
             https:// URL clients use"
        )),
        Transport::BehindProxy { trusted_proxies: 0 } => Err(
            "--behind-proxy needs the proxy's address in --trusted-proxy (VALET_TRUSTED_PROXIES), \
             so that clients' addresses are read from its X-Forwarded-For"
                .to_owned(),
        ),
        Transport::Plain if !listen.ip().is_loopback() => Err(format!(
            "listening on {listen} without TLS: give --tls-cert and --tls-key, or \
             --behind-proxy (with --trusted-proxy) when a proxy in front ends TLS"
        )),
        Transport::Plain if !issuer_local => Err(format!(
            "--issuer {issuer} is on the network but Valet serves plain HTTP: give \
             --tls-cert and --tls-key, or --behind-proxy when a proxy in front ends TLS"
        )),
        Transport::Plain if is_https(issuer) => Err(format!(
            "--issuer {issuer} is https:// but nothing ends TLS: give --tls-cert and \
             --tls-key, or --behind-proxy"
        )),
        _ => Ok(()),
    }
}

/// The certificate chain and key, loaded (checked at start: a bad file stops it).
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    // One crypto provider for the process (ring, as async-nats and jsonwebtoken use);
    // a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "load the TLS certificate chain {} and key {} (PEM)",
                cert.display(),
                key.display()
            )
        })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads the certificate and key when either file changes (renewal without a
/// restart). Connections open keep the certificate they began with; a file that does
/// not load is reported and the current certificate stays.
pub fn reload_on_change(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
    tokio::spawn(async move {
        let mut seen = (modified(&cert), modified(&key));
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            let now = (modified(&cert), modified(&key));
            if now == seen {
                continue;
            }
            match config.reload_from_pem_file(&cert, &key).await {
                Ok(()) => {
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    seen = now;
                }
                // Half-written files (a renewal in progress) fail here; the next look
                // tries again.
                Err(error) => {
                    tracing::warn!(%error, cert = %cert.display(), "cannot reload the TLS certificate; serving the current one")
                }
            }
        }
    });
}

/// The rustls acceptor, with TCP_NODELAY on every accepted connection (as the plain
/// listener has): a small TLS record must not wait for the peer's delayed ACK.
#[derive(Clone)]
pub struct NoDelayAcceptor(pub RustlsAcceptor);

impl<S> Accept<tokio::net::TcpStream, S> for NoDelayAcceptor
where
    RustlsAcceptor: Accept<tokio::net::TcpStream, S>,
{
    type Stream = <RustlsAcceptor as Accept<tokio::net::TcpStream, S>>::Stream;
    type Service = <RustlsAcceptor as Accept<tokio::net::TcpStream, S>>::Service;
    type Future = <RustlsAcceptor as Accept<tokio::net::TcpStream, S>>::Future;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
        self.0.accept(stream, service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Transport {
        Transport::Tls {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        }
    }

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn plain_http_stays_on_loopback() {
        assert!(check(
            at("127.0.0.1:8080"),
            "http://127.0.0.1:8080",
            &Transport::Plain
        )
        .is_ok());
        assert!(check(at("[::1]:8080"), "http://localhost:8080", &Transport::Plain).is_ok());
        let network = check(at("0.0.0.0:8080"), "http://0.0.0.0:8080", &Transport::Plain);
        assert!(network.unwrap_err().contains("--tls-cert"));
        let named = check(
            at("127.0.0.1:8080"),
            "http://auth.example.com",
            &Transport::Plain,
        );
        assert!(named.unwrap_err().contains("--behind-proxy"));
        assert!(check(
            at("127.0.0.1:8080"),
            "https://127.0.0.1:8080",
            &Transport::Plain
        )
        .is_err());
    }

    #[test]
    fn tls_here_or_at_a_proxy_needs_an_https_issuer() {
        assert!(check(at("0.0.0.0:443"), "https://auth.example.com", &tls()).is_ok());
        assert!(check(at("0.0.0.0:443"), "http://auth.example.com", &tls()).is_err());
        let proxied = Transport::BehindProxy { trusted_proxies: 1 };
        assert!(check(at("0.0.0.0:8080"), "https://auth.example.com", &proxied).is_ok());
        assert!(check(at("0.0.0.0:8080"), "http://auth.example.com", &proxied).is_err());
        let unnamed = check(
            at("0.0.0.0:8080"),
            "https://auth.example.com",
            &Transport::BehindProxy { trusted_proxies: 0 },
        );
        assert!(unnamed.unwrap_err().contains("--trusted-proxy"));
    }

    #[test]
    fn hosts_are_read_from_urls() {
        assert_eq!(
            url_host("https://auth.example.com:8443/x"),
            "auth.example.com"
        );
        assert_eq!(url_host("http://[::1]:8080"), "[::1]");
        assert_eq!(url_host("http://127.0.0.1"), "127.0.0.1");
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("10.0.0.1"));
    }
}
