//! HTTP calls to `valet serve`.

use std::time::Duration;

use crate::processes::Client;
use crate::Error;

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    body: String,
) -> Result<(u16, Vec<u8>), Error> {
    let resp = http
        .post(url)
        .header(reqwest::header::AUTHORIZATION, auth)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.bytes().await?.to_vec()))
}

pub(crate) async fn issue(
    http: &reqwest::Client,
    base: &str,
    client: &Client,
) -> Result<String, Error> {
    let (status, body) = post(
        http,
        &format!("{base}/token"),
        &client.basic,
        "grant_type=client_credentials".into(),
    )
    .await?;
    if status != 200 {
        return Err(format!(
            "/token answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(json["access_token"]
        .as_str()
        .ok_or("no access_token")?
        .to_owned())
}

pub(crate) fn form(token: &str, hint: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", hint)
        .finish()
}
