//! TLS to PostgreSQL (issue: TLS on every hop), against a private cluster configured here
//! to accept TCP connections over TLS only (`hostssl`), with a certificate for
//! `localhost` under a CA of the test's own:
//! - `valet migrate`, `valet client create` and `valet serve` with `sslmode=verify-full`
//!   and the CA as `sslrootcert`; tokens issued, relayed over NATS with TLS and seen by
//!   the SDK; the admin API's lists (sea-orm's own pool) over the same TLS; a plain
//!   connection refused by the cluster;
//! - the refusals: `verify-full` to an address the certificate does not name, and a
//!   certificate from a CA not trusted, each one line that says what to change;
//!   `verify-ca` accepts the first (it checks only who signed).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use valet_resource::{Source, Validator, ValidatorConfig};
use valet_store::PgEndpoint;
use valet_tests::ca::{scratch_dir, TestCa};
use valet_tests::nats::TestNats;
use valet_tests::private_pg::PrivatePg;
use valet_tests::sdk::until_valid_locally;
use valet_tests::server::{client_credentials_token, created_client, run_valet, serve_listening};

/// A TLS-only cluster whose certificate names `localhost` only, and the CA file.
fn tls_only_cluster(ca: &TestCa, dir: &Path) -> (PrivatePg, String) {
    ca.issue_for(dir, "postgres", &["localhost"]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read PEM");
    let pg = PrivatePg::start_tls_only(&read("cert.pem"), &read("key.pem"));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write the CA");
    (pg, ca_file.to_str().expect("utf-8 path").to_owned())
}

/// `valet ARGS` on `db_url` to completion: success, and stderr.
async fn valet(db_url: &str, args: &[&str]) -> (bool, String) {
    let out = run_valet(db_url, &[], args, Duration::from_secs(60))
        .await
        .expect("valet finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one `error` line of a refused command.
fn one_error_line(stderr: &str) -> String {
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_tls_required_carries_issuance_the_relay_and_the_sdk_end_to_end() {
    let ca = TestCa::new();
    let (pg_dir, nats_dir) = (scratch_dir(), scratch_dir());
    let (pg, ca_file) = tls_only_cluster(&ca, &pg_dir);
    let port = pg.port();
    let db_url = format!(
        "postgres://postgres@localhost:{port}/valet_tls?sslmode=verify-full&sslrootcert={ca_file}"
    );

    // The cluster takes no plain connection.
    let (ok, stderr) = valet(
        &format!("postgres://postgres@127.0.0.1:{port}/valet_tls"),
        &["migrate"],
    )
    .await;
    assert!(!ok && stderr.contains("no encryption"), "{stderr}");

    let (ok, stderr) = valet(&db_url, &["migrate"]).await;
    assert!(ok, "{stderr}");
    let endpoint: PgEndpoint = db_url.parse().expect("endpoint");
    let ssl: bool = endpoint
        .connect()
        .await
        .expect("connect over TLS")
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(ssl, "the session is not encrypted");

    ca.issue_into(&nats_dir, "nats");
    let nats =
        TestNats::start_tls(&nats_dir.join("cert.pem"), &nats_dir.join("key.pem"), None).await;
    let (mut child, base) = serve_listening(
        &db_url,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &nats.tls_url(),
            "--nats-ca-file",
            &ca_file,
        ],
    )
    .await;
    let validator = Validator::connect(ValidatorConfig::new(nats.tls_url()).with_nats_tls(
        valet_resource::valet_wire::NatsTls {
            ca_file: Some(ca_file.clone().into()),
            client_cert: None,
        },
    ))
    .await
    .expect("validator");

    let (id, secret) = created_client(
        &db_url,
        &["--grant-type", "client_credentials", "--scope", "read"],
    )
    .await;
    let http = reqwest::Client::new();
    let access = client_credentials_token(&http, &base, &id, &secret, "read").await;
    let info = until_valid_locally(&validator, &access, Duration::from_secs(30)).await;
    assert_eq!(info.source, Source::Local);

    // The admin API's lists read through sea-orm's pool, over the same TLS.
    let (admin_id, admin_secret) = created_client(
        &db_url,
        &[
            "--grant-type",
            "client_credentials",
            "--scope",
            "valet:admin",
        ],
    )
    .await;
    let admin =
        client_credentials_token(&http, &base, &admin_id, &admin_secret, "valet:admin").await;
    let listed: Value = reqwest::Client::new()
        .get(format!("{base}/admin/v1/clients"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("list")
        .bytes()
        .await
        .map(|body| serde_json::from_slice(&body).expect("JSON"))
        .expect("body");
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&admin_id.as_str()),
        "{listed}"
    );

    child.kill().await.expect("kill valet");
    drop(pg);
    let _ = std::fs::remove_dir_all(&pg_dir);
    let _ = std::fs::remove_dir_all(&nats_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_certificate_for_another_host_or_from_an_untrusted_ca_is_refused_in_one_line() {
    let ca = TestCa::new();
    let dir = scratch_dir();
    let (pg, ca_file) = tls_only_cluster(&ca, &dir);
    let port = pg.port();
    // The certificate names localhost; 127.0.0.1 is the same server by another name.
    let by_address = format!("postgres://postgres@127.0.0.1:{port}/valet_tls");

    let mismatch = format!("{by_address}?sslmode=verify-full&sslrootcert={ca_file}");
    for args in [&["serve", "--listen", "127.0.0.1:0"][..], &["migrate"][..]] {
        let (ok, stderr) = valet(&mismatch, args).await;
        assert!(!ok, "{args:?}: {stderr}");
        let line = one_error_line(&stderr);
        assert!(
            line.contains("not valid for the host") && line.contains("sslmode=verify-ca"),
            "{args:?}: {line}"
        );
    }

    let other = TestCa::new();
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&other_file, other.root_pem()).expect("write");
    let untrusted = format!(
        "postgres://postgres@localhost:{port}/valet_tls?sslmode=verify-full&sslrootcert={}",
        other_file.display()
    );
    let (ok, stderr) = valet(&untrusted, &["migrate"]).await;
    assert!(!ok, "{stderr}");
    assert!(
        one_error_line(&stderr).contains("sslrootcert=/path/to/ca.pem"),
        "{stderr}"
    );

    // verify-ca checks who signed, not the name: the same address is accepted.
    let (ok, stderr) = valet(
        &format!("{by_address}?sslmode=verify-ca&sslrootcert={ca_file}"),
        &["migrate"],
    )
    .await;
    assert!(ok, "{stderr}");

    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
