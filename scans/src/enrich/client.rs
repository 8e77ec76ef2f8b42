//! Who scanned: the client's address when requests come through proxies.
//!
//! `X-Forwarded-For` and `Forwarded` are written by whoever sends the request, so they are
//! believed only from a connection whose peer is one of `server.trusted_proxies`, and then
//! read from the right: each hop a trusted proxy added is skipped, and the first address that
//! is not a trusted proxy is the client (anything left of it may have been made up by the
//! client itself). Without trusted proxies, the client is the socket's peer.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

/// The proxies allowed to name the client (`server.trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNetwork>);

/// A CIDR (or a plain address) that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an address or a CIDR block like 10.0.0.0/8")]
pub struct ProxyCidrError(String);

impl TrustedProxies {
    pub fn parse(cidrs: &[String]) -> Result<TrustedProxies, ProxyCidrError> {
        cidrs
            .iter()
            .map(|text| {
                text.trim()
                    .parse::<IpNetwork>()
                    .map_err(|_| ProxyCidrError(text.clone()))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `address` is a trusted proxy (an IPv4 address mapped into IPv6 counts as the
    /// IPv4 address it carries).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|network| network.contains(address))
    }

    /// The client of a request whose connection came from `peer` and which carried
    /// `forwarded` (the text of its `Forwarded` or `X-Forwarded-For` header, taken only when
    /// `peer` is trusted).
    pub fn client(&self, peer: IpAddr, forwarded: Option<&Forwarded>) -> Client {
        let peer = canonical(peer);
        let Some(forwarded) = forwarded.filter(|_| self.contains(peer)) else {
            return Client::Address(peer);
        };
        let hops: Vec<&str> = match forwarded {
            Forwarded::XForwardedFor(text) => text.split(',').map(str::trim).collect(),
            Forwarded::Standard(text) => text
                .split(',')
                .filter_map(|element| {
                    element.split(';').find_map(|pair| {
                        let (name, value) = pair.trim().split_once('=')?;
                        name.eq_ignore_ascii_case("for").then_some(value.trim())
                    })
                })
                .collect(),
        };
        let mut client = Client::Address(peer);
        for hop in hops.iter().rev().filter(|hop| !hop.is_empty()) {
            match hop_address(hop) {
                Some(address) if self.contains(address) => client = Client::Address(address),
                Some(address) => return Client::Address(address),
                // `unknown` or an obfuscated name (`_hidden`): the proxy would not say.
                None => return Client::Unnamed((*hop).to_owned()),
            }
        }
        // Every hop was a trusted proxy: the left-most is as far as anyone can tell.
        client
    }
}

/// The forwarding header of a request, as the scan path hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// `Forwarded` (RFC 7239): `for=192.0.2.60;proto=https, for="[2001:db8::17]:4711"`.
    Standard(String),
    /// `X-Forwarded-For`: `203.0.113.7, 10.0.0.1`.
    XForwardedFor(String),
}

/// Who the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    Address(IpAddr),
    /// A trusted proxy named the client without an address (`unknown`, `_obfuscated`): it
    /// still tells visitors apart, but has no place.
    Unnamed(String),
}

impl Client {
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            Client::Address(address) => Some(*address),
            Client::Unnamed(_) => None,
        }
    }
}

/// One hop's address: `192.0.2.60`, `192.0.2.60:8080`, `"[2001:db8::17]:4711"`, `2001:db8::17`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches('"');
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = hop.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    let bracketed = hop.strip_prefix('[')?.split(']').next()?;
    bracketed.parse::<IpAddr>().ok().map(canonical)
}

/// An IPv4 address mapped into IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports)
/// as the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&cidrs.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>())
            .expect("valid CIDRs")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn xff(text: &str) -> Forwarded {
        Forwarded::XForwardedFor(text.to_owned())
    }

    #[test]
    fn without_a_trusted_peer_the_header_is_ignored() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let spoofed = xff("1.2.3.4");
        assert_eq!(
            trusted.client(ip("203.0.113.9"), Some(&spoofed)),
            Client::Address(ip("203.0.113.9"))
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), Some(&spoofed)),
            Client::Address(ip("10.0.0.1"))
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.168.1.1"]);
        // The client wrote `6.6.6.6` itself; the edge proxy appended the real address.
        let header = xff("6.6.6.6, 81.2.69.142, 10.1.2.3");
        assert_eq!(
            trusted.client(ip("192.168.1.1"), Some(&header)),
            Client::Address(ip("81.2.69.142"))
        );
        // Only trusted hops: the left-most.
        assert_eq!(
            trusted.client(ip("10.0.0.2"), Some(&xff("10.9.9.9, 10.0.0.5"))),
            Client::Address(ip("10.9.9.9"))
        );
    }

    #[test]
    fn forwarded_is_read_with_quotes_ports_and_ipv6() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let header = Forwarded::Standard(
            r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.3"#.into(),
        );
        assert_eq!(
            trusted.client(ip("10.0.0.1"), Some(&header)),
            Client::Address(ip("2001:db8:cafe::17"))
        );
        let header = Forwarded::Standard("for=unknown;by=10.0.0.1".into());
        assert_eq!(
            trusted.client(ip("10.0.0.1"), Some(&header)),
            Client::Unnamed("unknown".into())
        );
        assert_eq!(
            trusted.client(ip("10.0.0.1"), Some(&xff("81.2.69.142:5000"))),
            Client::Address(ip("81.2.69.142"))
        );
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let trusted = proxies(&["127.0.0.1/32"]);
        assert!(trusted.contains(ip("::ffff:127.0.0.1")));
        assert_eq!(
            trusted.client(ip("::ffff:127.0.0.1"), Some(&xff("::ffff:89.160.20.112"))),
            Client::Address(ip("89.160.20.112"))
        );
    }

    #[test]
    fn bad_cidrs_are_named() {
        let error = TrustedProxies::parse(&["10.0.0.0/99".into()]).expect_err("refused");
        assert!(error.to_string().contains("10.0.0.0/99"));
    }
}
