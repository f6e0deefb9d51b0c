//! How the SDK reaches Valet over HTTP (the introspection fallback, the JWKS): HTTPS with
//! rustls by default, trusting the system's roots or only the roots the service gives;
//! plain `http://` only to a loopback host, unless the service allows it explicitly.

use std::net::IpAddr;
use std::time::Duration;

/// Where plain `http://` may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// Only to `localhost` and loopback addresses (the default).
    #[default]
    LoopbackOnly,
    /// Anywhere: for a network you trust end to end. Tokens and the service's client
    /// secret then cross it in clear text.
    Allowed,
}

/// Trust for Valet's endpoints.
#[derive(Clone, Default)]
pub struct HttpsConfig {
    /// Root certificates (PEM) to trust instead of the system's, e.g. a private CA.
    pub root_certificates_pem: Vec<Vec<u8>>,
    pub plain_http: PlainHttp,
}

impl std::fmt::Debug for HttpsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConfig")
            .field("root_certificates", &self.root_certificates_pem.len())
            .field("plain_http", &self.plain_http)
            .finish()
    }
}

/// Refuses a URL the configuration does not allow, saying what to change.
pub(crate) fn check_url(url: &str, plain: PlainHttp) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if plain == PlainHttp::Allowed => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url} is plain http off loopback: use https (or allow plain http \
                     explicitly with PlainHttp::Allowed)"
                ))
            }
        }
        other => Err(format!("{url}: scheme {other} is neither https nor http")),
    }
}

/// A client for Valet's endpoints under `config`.
pub(crate) fn client(config: &HttpsConfig, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout);
    if !config.root_certificates_pem.is_empty() {
        builder = builder.tls_built_in_root_certs(false);
        for pem in &config.root_certificates_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("a root certificate: {e}"))?;
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
    }
    if config.plain_http == PlainHttp::LoopbackOnly {
        // Redirects would bypass check_url: none are followed.
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let only = PlainHttp::LoopbackOnly;
        assert!(check_url("https://valet.example/introspect", only).is_ok());
        assert!(check_url("http://127.0.0.1:8080/introspect", only).is_ok());
        assert!(check_url("http://[::1]:8080/introspect", only).is_ok());
        assert!(check_url("http://localhost/jwks.json", only).is_ok());
        let refused = check_url("http://valet.example/introspect", only).unwrap_err();
        assert!(refused.contains("https"), "{refused}");
        assert!(check_url("http://10.0.0.1/introspect", only).is_err());
        assert!(check_url("http://valet.example/introspect", PlainHttp::Allowed).is_ok());
        assert!(check_url("ftp://valet.example/x", PlainHttp::Allowed).is_err());
        assert!(check_url("not a url", only).is_err());
    }
}
