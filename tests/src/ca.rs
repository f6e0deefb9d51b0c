//! A certificate authority of a test's own (rcgen), for TLS to Valet, NATS and
//! PostgreSQL in tests.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA of the test's own, which signs leaf certificates for 127.0.0.1.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Valet test CA");
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn root_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn root_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A leaf for 127.0.0.1 and localhost written to `dir` (key first, then the chain,
    /// each by a rename, as a renewal tool would); its DER.
    pub fn issue_into(&self, dir: &Path, name: &str) -> Vec<u8> {
        self.issue_for(dir, name, &["127.0.0.1", "localhost"])
    }

    /// As [`issue_into`](Self::issue_into), for the host names (or addresses) `hosts`.
    pub fn issue_for(&self, dir: &Path, name: &str, hosts: &[&str]) -> Vec<u8> {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(hosts).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        for (file, pem) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
            let tmp = dir.join(format!("{file}.new"));
            std::fs::write(&tmp, pem).expect("write PEM");
            std::fs::rename(&tmp, dir.join(file)).expect("rename PEM");
        }
        cert.der().to_vec()
    }
}

/// A new empty directory under the system's temporary directory.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valet-tls-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
