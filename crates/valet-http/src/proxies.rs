//! The client's address behind trusted proxies: `Forwarded` (RFC 7239) or
//! `X-Forwarded-For` are read only when the TCP peer is a proxy the operator named;
//! otherwise anyone could choose the address their failures are counted under.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpAddr]>);

impl TrustedProxies {
    /// Believe no forwarding header: the client is the TCP peer.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn new(proxies: Vec<IpAddr>) -> Self {
        TrustedProxies(proxies.into())
    }

    fn trusts(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// The client's address: the peer, or, when the peer is trusted, the nearest hop of
    /// the forwarding chain that is not a trusted proxy. A hop that names no address
    /// (`unknown`, an obfuscated name) stops the walk at the last address known.
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(&peer) {
            return Some(peer);
        }
        let hops = forwarded_for(headers).or_else(|| x_forwarded_for(headers));
        let Some(hops) = hops else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(client)
    }
}

/// The `for=` of each `Forwarded` element, in order (`None` where it names no address).
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        let value = value.to_str().ok()?;
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim())
            });
            hops.push(node.and_then(node_address));
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// The addresses of `X-Forwarded-For`, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let value = value.to_str().ok()?;
        hops.extend(value.split(',').map(|hop| node_address(hop.trim())));
    }
    (!hops.is_empty()).then_some(hops)
}

/// An RFC 7239 node (`192.0.2.1`, `"192.0.2.1:80"`, `"[2001:db8::1]:80"`), or a bare
/// address of `X-Forwarded-For`.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    node.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let forged = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let peer = Some(ip("203.0.113.1"));
        assert_eq!(TrustedProxies::none().client_address(peer, &forged), peer);
        // A peer that is not the named proxy is the client, whatever it claims.
        let proxies = TrustedProxies::new(vec![ip("10.0.0.1")]);
        assert_eq!(proxies.client_address(peer, &forged), peer);
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::new(vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        let peer = Some(ip("10.0.0.1"));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("x-forwarded-for", "198.51.100.7")], "198.51.100.7"),
            // The client can prepend anything: only what trusted proxies added counts.
            (
                &[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.2")],
                "198.51.100.7",
            ),
            (
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
                "198.51.100.7",
            ),
            (
                &[("forwarded", "for=198.51.100.7;proto=https")],
                "198.51.100.7",
            ),
            (
                &[("forwarded", r#"for="[2001:db8::17]:4711", for=10.0.0.2"#)],
                "2001:db8::17",
            ),
            (
                &[("forwarded", "for=\"198.51.100.7:8080\"")],
                "198.51.100.7",
            ),
            // Forwarded wins over X-Forwarded-For.
            (
                &[
                    ("forwarded", "for=198.51.100.7"),
                    ("x-forwarded-for", "1.2.3.4"),
                ],
                "198.51.100.7",
            ),
            // Nothing forwarded, or only proxies: the chain's first address, or the peer.
            (&[], "10.0.0.1"),
            (&[("x-forwarded-for", "10.0.0.2")], "10.0.0.2"),
            // An unknown hop stops the walk at the last address known.
            (
                &[("forwarded", "for=198.51.100.7, for=unknown")],
                "10.0.0.1",
            ),
            (&[("x-forwarded-for", "garbage")], "10.0.0.1"),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                proxies.client_address(peer, &headers(pairs)),
                Some(ip(expected)),
                "{pairs:?}"
            );
        }
    }
}
