//! Where a webhook may be delivered: by default only to public addresses, judged on the
//! address a name resolves to, not the name. The check runs at submission (a refused URL
//! is a 400) and again at every delivery, through a resolver that hands the HTTP client
//! only the addresses that passed, so a name that changes its answer in between
//! (DNS rebinding) still reaches no private address.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// How long a submission waits for its webhook's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("webhook_url's host {0} does not resolve")]
    Unresolvable(String),
    #[error(
        "webhook_url leads to {0}, a private, loopback or link-local address; webhooks go to public addresses only"
    )]
    Private(IpAddr),
}

/// Whether a webhook may be delivered to `ip`: not loopback, private (RFC 1918, IPv6
/// unique local), link-local, shared (CGNAT), unspecified, broadcast, multicast or
/// documentation space, nor an IPv4 address of those written as IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b); // 100.64.0.0/10
    let this_network = a == 0; // 0.0.0.0/8
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || shared
        || this_network)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00; // fc00::/7
    let link_local = first & 0xffc0 == 0xfe80; // fe80::/10
    let documentation = first == 0x2001 && ip.segments()[1] == 0x0db8; // 2001:db8::/32
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || unique_local
        || link_local
        || documentation)
}

/// The first address that may not be used, if any.
fn first_refused(addresses: impl IntoIterator<Item = IpAddr>) -> Option<IpAddr> {
    addresses.into_iter().find(|ip| !is_public(*ip))
}

/// Checks a submitted URL: its host, or every address its name resolves to, must be
/// public unless `allow_private`.
pub async fn check(url: &Url, allow_private: bool) -> Result<(), Refused> {
    if allow_private {
        return Ok(());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(name)) => {
            let unresolvable = || Refused::Unresolvable(name.to_string());
            let found =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                    .map_err(|_| unresolvable())?
                    .map_err(|_| unresolvable())?;
            let found: Vec<IpAddr> = found.map(|a| a.ip()).collect();
            if found.is_empty() {
                return Err(unresolvable());
            }
            found
        }
        None => return Err(Refused::Unresolvable(String::new())),
    };
    match first_refused(addresses) {
        Some(ip) => Err(Refused::Private(ip)),
        None => Ok(()),
    }
}

/// The delivery-time check of a URL whose host is an address: the HTTP client connects
/// to such a host without asking the resolver.
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    match allow_private || is_public(ip) {
        true => Ok(()),
        false => Err(Refused::Private(ip)),
    }
}

/// The HTTP client's resolver: the system's, with every address that is not public
/// dropped (unless private networks are allowed). A name left with none fails to resolve.
#[derive(Debug, Clone, Copy)]
pub struct PublicResolver {
    pub allow_private: bool,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let lookup = async move {
            // The port is the URL's: the client sets it on each address.
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let kept: Vec<SocketAddr> = found
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if kept.is_empty() {
                let refused = format!("{} resolves to no public address", name.as_str());
                return Err(refused.into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        };
        Box::pin(lookup) as Pin<Box<dyn Future<Output = _> + Send>>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "100.128.0.1", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[actix_web::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(matches!(
            check(&url("http://localhost:9/hook"), false).await,
            Err(Refused::Private(_))
        ));
        assert!(check(&url("http://[::1]/"), false).await.is_err());
        assert!(check(&url("http://localhost/"), true).await.is_ok());
        assert!(check_literal(&url("http://10.0.0.1/"), false).is_err());
        assert!(check_literal(&url("http://10.0.0.1/"), true).is_ok());
        assert!(check_literal(&url("http://example.com/"), false).is_ok());
    }
}
