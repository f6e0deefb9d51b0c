//! Where PostgreSQL is and how to reach it: the connection string, and TLS as its
//! `sslmode` and `sslrootcert` ask, with libpq's meanings.
//!
//! tokio-postgres understands only `sslmode=disable|prefer|require` and verifies nothing
//! itself, so the TLS settings are taken out of the string here and turned into a rustls
//! configuration:
//!
//! | `sslmode`       | encrypted | certificate checked                           |
//! |-----------------|-----------|-----------------------------------------------|
//! | (absent)        | no        | —                                             |
//! | `disable`       | no        | —                                             |
//! | `prefer`        | if offered| no (as `verify-ca` with `sslrootcert`)        |
//! | `require`       | yes       | no (as `verify-ca` with `sslrootcert`)        |
//! | `verify-ca`     | yes       | signed by a trusted root                      |
//! | `verify-full`   | yes       | signed by a trusted root, and for the host    |
//!
//! Without `sslmode` the connection is plain: libpq's default, `prefer`, protects
//! against nothing an attacker on the path cannot undo, and Valet says so at start
//! instead of pretending (see [`PgEndpoint::unprotected_remote`]). Trusted roots are the
//! PEM file `sslrootcert` names, or the system's (`sslrootcert=system`, or no
//! `sslrootcert` with `verify-ca`/`verify-full`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// TLS as the connection string's `sslmode` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl PgSslMode {
    fn parse(value: &str) -> Result<PgSslMode, PgUrlError> {
        Ok(match value {
            "disable" => PgSslMode::Disable,
            "prefer" => PgSslMode::Prefer,
            "require" => PgSslMode::Require,
            "verify-ca" => PgSslMode::VerifyCa,
            "verify-full" => PgSslMode::VerifyFull,
            // libpq's `allow` tries plain first: nothing to gain over `prefer` here.
            other => return Err(PgUrlError::SslMode(other.to_owned())),
        })
    }

    /// Whether an attacker on the path can neither read nor impersonate the server.
    pub fn verifies_the_server(self) -> bool {
        matches!(self, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgRoots {
    System,
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum PgUrlError {
    #[error("the database URL does not parse: {0}")]
    Invalid(String),
    #[error(
        "sslmode={0} in the database URL: use disable, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error(
        "{0} in the database URL: client certificates for PostgreSQL are not supported; authenticate with a password"
    )]
    ClientCertificate(&'static str),
}

/// A PostgreSQL server to connect to, with TLS as the connection string asks.
#[derive(Clone)]
pub struct PgEndpoint {
    config: tokio_postgres::Config,
    mode: PgSslMode,
    roots: Option<PgRoots>,
    tls: MakeRustlsConnect,
    /// The connection string without its TLS settings, for clients that take a string.
    url_without_tls: String,
}

impl std::fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEndpoint")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for PgEndpoint {
    type Err = PgUrlError;

    /// A URL (`postgres://user@host/db?sslmode=verify-full&sslrootcert=/etc/ca.pem`)
    /// or key=value pairs (`host=db sslmode=require`, values without quotes).
    fn from_str(url: &str) -> Result<PgEndpoint, PgUrlError> {
        let (rest, settings) = take_tls_settings(url)?;
        let mut config: tokio_postgres::Config = rest
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| PgUrlError::Invalid(e.to_string()))?;
        let mode = match settings.mode.as_deref() {
            Some(mode) => PgSslMode::parse(mode)?,
            None => PgSslMode::Disable,
        };
        let roots = settings.root_cert.map(|value| match value.as_str() {
            "system" => PgRoots::System,
            path => PgRoots::File(PathBuf::from(path)),
        });
        config.ssl_mode(match mode {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, roots.as_ref())?);
        Ok(PgEndpoint {
            config,
            mode,
            roots,
            tls,
            url_without_tls: rest,
        })
    }
}

impl PgEndpoint {
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The same server with changed settings (another database, server options).
    pub fn with_config(&self, change: impl FnOnce(&mut tokio_postgres::Config)) -> PgEndpoint {
        let mut endpoint = self.clone();
        change(&mut endpoint.config);
        endpoint
    }

    pub fn ssl_mode(&self) -> PgSslMode {
        self.mode
    }

    /// The roots `sslrootcert` names (`None`: not given).
    pub fn roots(&self) -> Option<&PgRoots> {
        self.roots.as_ref()
    }

    /// The connection string as given, without `sslmode` and `sslrootcert`.
    pub fn url_without_tls(&self) -> &str {
        &self.url_without_tls
    }

    /// The TLS connector (used only when `sslmode` asks for TLS).
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// A host off this machine reached without checking the server's certificate: what
    /// an operator should hear about at start.
    pub fn unprotected_remote(&self) -> Option<String> {
        if self.mode.verifies_the_server() {
            return None;
        }
        self.config.get_hosts().iter().find_map(|host| match host {
            Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
            _ => None,
        })
    }

    /// One connection, its I/O driven by a task of its own.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "postgres connection closed");
            }
        });
        Ok(client)
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What a connection failure says about TLS, in words that name the fix; `None` when it
/// is not about TLS.
pub(crate) fn tls_failure(error: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(rustls::Error::InvalidCertificate(reason)) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| current.downcast_ref::<rustls::Error>())
        {
            return Some(match reason {
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "PostgreSQL's certificate is not valid for the host in the database URL (sslmode=verify-full): connect by a name the certificate holds, or use sslmode=verify-ca to check only who signed it".to_owned()
                }
                // A CA of the same name but another key: its signature does not verify.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "PostgreSQL's certificate is not signed by a trusted root: name its CA in the database URL (sslrootcert=/path/to/ca.pem)".to_owned()
                }
                other => format!("PostgreSQL's certificate is refused: {other:?}"),
            });
        }
        source = current.source();
    }
    let text = error.to_string();
    text.contains("server does not support TLS").then(|| {
        "PostgreSQL does not offer TLS: enable ssl on the server, or drop sslmode from the database URL on a trusted network".to_owned()
    })
}

#[derive(Default)]
struct TlsSettings {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// The connection string without its TLS settings, and those settings.
fn take_tls_settings(url: &str) -> Result<(String, TlsSettings), PgUrlError> {
    let mut settings = TlsSettings::default();
    let mut take = |key: &str, value: String| -> Result<bool, PgUrlError> {
        match key {
            "sslmode" => settings.mode = Some(value),
            "sslrootcert" => settings.root_cert = Some(value),
            "sslcert" => return Err(PgUrlError::ClientCertificate("sslcert")),
            "sslkey" => return Err(PgUrlError::ClientCertificate("sslkey")),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let rest = if is_url {
        match url.split_once('?') {
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|e| PgUrlError::Invalid(e.to_string()))?
                        .into_owned();
                    if !take(key, value)? {
                        kept.push(pair);
                    }
                }
                match kept.is_empty() {
                    true => base.to_owned(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
            None => url.to_owned(),
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key.trim(), value.to_owned())? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    Ok((rest, settings))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: PgSslMode, roots: Option<&PgRoots>) -> Result<ClientConfig, PgUrlError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        // Never used (no TLS is attempted), but the connector needs a configuration.
        (PgSslMode::Disable, _) => Arc::new(AnyCertificate(provider())),
        // libpq: a root file given to prefer/require checks the chain as verify-ca does.
        (PgSslMode::Prefer | PgSslMode::Require, None) => Arc::new(AnyCertificate(provider())),
        (PgSslMode::VerifyFull, roots) => webpki(roots)?,
        (_, roots) => Arc::new(SignedOnly(webpki(roots)?)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(roots: Option<&PgRoots>) -> Result<Arc<WebPkiServerVerifier>, PgUrlError> {
    let mut store = RootCertStore::empty();
    match roots {
        Some(PgRoots::File(path)) => {
            let failed = |reason: String| PgUrlError::RootCert {
                path: path.display().to_string(),
                reason,
            };
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| failed(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| failed(e.to_string()))?;
            if certificates.is_empty() {
                return Err(failed("holds no PEM certificate".into()));
            }
            for certificate in certificates {
                store.add(certificate).map_err(|e| failed(e.to_string()))?;
            }
        }
        Some(PgRoots::System) | None => {
            // Certificates the system store holds but rustls cannot read are skipped.
            for certificate in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(certificate);
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| PgUrlError::RootCert {
            path: "system".into(),
            reason: e.to_string(),
        })
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct SignedOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SignedOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without roots: encrypted, whoever answers (libpq's meaning). The
/// handshake's signatures are still checked, against the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> PgEndpoint {
        url.parse().unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn without_sslmode_the_connection_is_plain() {
        let e = endpoint("postgres://postgres@127.0.0.1:5432/valet");
        assert_eq!(e.ssl_mode(), PgSslMode::Disable);
        assert_eq!(e.config().get_ssl_mode(), SslMode::Disable);
        assert_eq!(e.unprotected_remote(), None, "loopback");
    }

    #[test]
    fn the_tls_settings_leave_the_url_and_the_rest_stays() {
        let e = endpoint(
            "postgres://valet@db.internal:6432/valet?application_name=v&sslmode=verify-full&sslrootcert=system&connect_timeout=5",
        );
        assert_eq!(e.ssl_mode(), PgSslMode::VerifyFull);
        assert_eq!(e.config().get_ssl_mode(), SslMode::Require);
        assert_eq!(e.config().get_application_name(), Some("v"));
        assert_eq!(
            e.config().get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        assert_eq!(e.unprotected_remote(), None, "the server is verified");
    }

    #[test]
    fn key_value_strings_take_tls_settings_too() {
        let e = endpoint("host=db.internal user=valet dbname=valet sslmode=require");
        assert_eq!(e.ssl_mode(), PgSslMode::Require);
        assert_eq!(e.config().get_dbname(), Some("valet"));
        assert_eq!(e.unprotected_remote().as_deref(), Some("db.internal"));
    }

    #[test]
    fn unknown_modes_missing_roots_and_client_certificates_are_refused_in_words() {
        let err = |url: &str| url.parse::<PgEndpoint>().expect_err(url).to_string();
        assert!(err("postgres://h/db?sslmode=allow").contains("use disable, prefer"));
        assert!(
            err("postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fnonexistent%2Fca.pem")
                .starts_with("sslrootcert /nonexistent/ca.pem: ")
        );
        assert!(err("postgres://h/db?sslmode=require&sslcert=/c.pem").contains("not supported"));
    }

    #[test]
    fn a_remote_host_without_verification_is_reported() {
        for url in [
            "postgres://valet@db.internal/valet",
            "postgres://valet@10.0.0.5/valet?sslmode=require",
            "postgres://valet@db.internal/valet?sslmode=prefer",
        ] {
            assert!(endpoint(url).unprotected_remote().is_some(), "{url}");
        }
        assert_eq!(
            endpoint("postgres://valet@localhost/valet").unprotected_remote(),
            None
        );
        assert_eq!(
            endpoint("postgres://valet@[::1]/valet").unprotected_remote(),
            None
        );
    }
}
