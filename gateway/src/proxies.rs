//! The client's address behind trusted reverse proxies and load balancers
//! (`--trusted-proxies`): what the per-address signup limit counts.
//!
//! A connection from an address outside `--trusted-proxies` (by default
//! every address) is its own client: its `Forwarded` and `X-Forwarded-For`
//! headers are ignored, so a client cannot pick the address it is limited
//! by. A connection from a trusted proxy names its client in those headers:
//! each proxy appends the address it received the request from, so the
//! list reads client first, nearest proxy last. The client is the rightmost
//! address that is not itself a trusted proxy (the addresses to its left
//! were written by whoever sent the request to it, which may lie). The
//! standard `Forwarded` header (RFC 7239 section 4, its `for=` parameters)
//! wins over the de facto `X-Forwarded-For` when a request carries both;
//! parsing is the `forwarded-header-value` crate's. A list that cannot be
//! read, or whose rightmost untrusted entry is no address (`unknown`, an
//! obfuscated `_name`), leaves the nearest known address: the last trusted
//! proxy's.

use std::net::IpAddr;

use forwarded_header_value::ForwardedHeaderValue;
use hyper::HeaderMap;
use hyper::header::FORWARDED;
use ipnet::IpNet;

/// The networks whose connections may name their client.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts connections from `networks` (none: trust nobody).
    pub(crate) fn new(networks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { networks }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.networks
            .iter()
            .any(|network| network.contains(&address))
    }

    /// The client of a request that arrived from `peer` with `headers`
    /// (see the module's doc); `peer` itself unless `peer` is trusted.
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let Some(chain) = forwarded_chain(headers) else {
            return peer;
        };
        let mut nearest = peer;
        for hop in chain.iter().rev() {
            match hop.forwarded_for_ip() {
                Some(address) if self.trusts(address) => nearest = address,
                Some(address) => return address,
                None => return nearest,
            }
        }
        nearest
    }
}

/// The `Forwarded` list if the request has one, else `X-Forwarded-For`'s;
/// several header lines of one name form one list (RFC 9110 section 5.3).
fn forwarded_chain(headers: &HeaderMap) -> Option<ForwardedHeaderValue> {
    let joined = |name: &str| -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().ok())
            .collect::<Option<_>>()?;
        (!values.is_empty()).then(|| values.join(","))
    };
    if let Some(forwarded) = joined(FORWARDED.as_str()) {
        return ForwardedHeaderValue::from_forwarded(&forwarded).ok();
    }
    let forwarded_for = joined("x-forwarded-for")?;
    ForwardedHeaderValue::from_x_forwarded_for(&forwarded_for).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ])
    }

    #[test]
    fn an_untrusted_peer_is_its_own_client_whatever_it_sends() {
        let spoofed = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        let peer = ip("192.0.2.7");
        assert_eq!(proxies().client(peer, &spoofed), peer);
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &spoofed),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let peer = ip("10.0.0.2");
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(proxies().client(peer, &chain), ip("203.0.113.9"));
        let split = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(proxies().client(peer, &split), ip("203.0.113.9"));
        let all_trusted = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.5")]);
        assert_eq!(proxies().client(peer, &all_trusted), ip("10.1.1.1"));
        assert_eq!(proxies().client(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn forwarded_wins_and_reads_ports_and_ipv6() {
        let peer = ip("fd00::1");
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.5:80",
            ),
        ]);
        assert_eq!(proxies().client(peer, &both), ip("2001:db8:cafe::17"));
        let mapped = ip("::ffff:10.0.0.2");
        let chain = headers(&[("forwarded", "for=192.0.2.60")]);
        assert_eq!(proxies().client(mapped, &chain), ip("192.0.2.60"));
    }

    #[test]
    fn what_names_no_address_leaves_the_nearest_known_one() {
        let peer = ip("10.0.0.2");
        let hidden = headers(&[("forwarded", "for=192.0.2.60, for=_hidden, for=10.0.0.9")]);
        assert_eq!(proxies().client(peer, &hidden), ip("10.0.0.9"));
        let garbage = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(proxies().client(peer, &garbage), peer);
    }
}
