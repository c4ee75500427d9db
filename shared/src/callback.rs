//! Signed callbacks: the finished job JSON POSTed to the client's
//! `callback_url`, per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`).
//!
//! Deliveries run as tasks on the `callbacks` queue, never inside the
//! pipeline. A delivery succeeds on a 2xx within 15 s; `410 Gone` stops at
//! once; anything else (another status, a redirect — none is followed — a
//! timeout, a refused connection) is retried after the configured waits
//! (about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, each ±10 %), then the delivery
//! is `exhausted`. The `webhook-id` is the same on every attempt, so a
//! receiver can drop duplicates.
//!
//! Safety: only http(s); unless `ROSE_CALLBACK_ALLOW_PRIVATE`, a host that
//! resolves to an address of any block in the IANA IPv4 and IPv6
//! Special-Purpose Address Registries (loopback, private, link-local and
//! cloud metadata, CGNAT, benchmarking, documentation, reserved, …), to
//! multicast, or to an IPv6 form that carries a refused IPv4 address (see
//! [`is_forbidden`]) is refused, at submit time and again at delivery, and
//! the delivery connects to the addresses it checked (no second lookup an
//! attacker could answer differently). The lookup itself is bounded by
//! [`LOOKUP_TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use reqwest::redirect::Policy;
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::domain::{Job, now_ms};
use crate::view::job_json;
use crate::webhook::{decode_secret, sign};

/// A receiver gets this long to answer.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// A callback host's DNS lookup gets this long, at submit and at delivery.
///
/// At submit, a lookup that takes longer is refused like a host that does
/// not resolve: 400 `invalid_callback_url`, its message saying the lookup
/// timed out. The client hears at once, with a reason it can act on (fix the
/// name, or try again), instead of holding its upload open on a slow
/// resolver; a new code would break clients that already handle that one.
/// At delivery it is a failed attempt, retried on the usual schedule. (The
/// system resolver's thread may run on past the bound; nothing waits for it.)
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`callback_url` must be an absolute http(s) URL with a host that resolves: {0}")]
    Invalid(String),
    #[error(
        "`callback_url` points at an address Rose does not call ({0}): loopback, private, link-local, metadata and other special-purpose addresses are refused"
    )]
    Forbidden(IpAddr),
}

/// IPv4 blocks no callback may reach: the IANA IPv4 Special-Purpose Address
/// Registry (every entry; sub-blocks are named under the block holding
/// them), multicast and the rest of the reserved space.
const REFUSED_V4: [(Ipv4Addr, u8); 18] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private use
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link local, where cloud metadata answers
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private use
    (Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments: DS-Lite, dummy, PCP and TURN anycast, NAT64 discovery
    (Ipv4Addr::new(192, 0, 2, 0), 24), // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 31, 196, 0), 24), // AS112-v4
    (Ipv4Addr::new(192, 52, 193, 0), 24), // AMT
    (Ipv4Addr::new(192, 88, 99, 0), 24), // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16), // private use
    (Ipv4Addr::new(192, 175, 48, 0), 24), // direct delegation AS112 service
    (Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24), // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),  // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),  // reserved, with the limited broadcast 255.255.255.255
];

/// IPv6 blocks no callback may reach: the IANA IPv6 Special-Purpose Address
/// Registry (the forms that carry an IPv4 address are judged by that
/// address instead, see [`embedded_v4`]), multicast and the deprecated
/// site-local block.
const REFUSED_V6: [(Ipv6Addr, u8); 12] = [
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use IPv4/IPv6 translation
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),     // discard-only
    (Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0), 64),     // dummy IPv6 prefix
    // IETF protocol assignments: Teredo (2001::/32, whose client address is
    // obfuscated), PCP, TURN and DNS-SD anycast, benchmarking, AMT, AS112-v6,
    // ORCHID and ORCHIDv2, drone remote ID.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48), // direct delegation AS112 service
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16),     // segment routing SIDs
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),      // unique local (incl. fd00:ec2::254)
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),     // link local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),     // site local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),      // multicast
];

fn in_v4(ip: Ipv4Addr, (network, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network) & mask
}

fn in_v6(ip: Ipv6Addr, (network, len): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(network) & mask
}

/// The IPv4 address an IPv6 address stands for, in the forms that carry one
/// a host or router may act on: IPv4-mapped `::ffff:0:0/96`, IPv4-compatible
/// `::/96` (deprecated; it holds `::` and `::1` too, which stand for
/// 0.0.0.0 and 0.0.0.1 and are refused with them), NAT64's well-known prefix
/// `64:ff9b::/96`, and 6to4 `2002::/16` (the address is bits 16..48).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let join = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    match v6.segments() {
        [0, 0, 0, 0, 0, 0xffff | 0, high, low] | [0x64, 0xff9b, 0, 0, 0, 0, high, low] => {
            Some(join(high, low))
        }
        [0x2002, high, low, ..] => Some(join(high, low)),
        _ => None,
    }
}

/// Addresses no callback may reach unless private ones are allowed: every
/// block of [`REFUSED_V4`] and [`REFUSED_V6`], and any IPv6 address that
/// carries a refused IPv4 one.
///
/// The registries mark a few of their blocks globally reachable (anycast
/// for PCP, TURN, DNS-SD, AMT relays and the AS112 DNS sinks; ORCHIDv2 and
/// drone identifiers). They are refused too: none is where a webhook
/// receiver lives, and an anycast address is answered by its nearest
/// instance, which can sit inside the operator's own network.
#[must_use]
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => REFUSED_V4.iter().any(|block| in_v4(v4, *block)),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_forbidden(IpAddr::V4(v4)),
            None => REFUSED_V6.iter().any(|block| in_v6(v6, *block)),
        },
    }
}

/// Parses and resolves `url` (the lookup bounded by [`LOOKUP_TIMEOUT`]);
/// refuses forbidden addresses unless `allow_private`.
///
/// # Errors
/// [`UrlError::Invalid`] for a malformed URL or a host that does not resolve
/// in time, [`UrlError::Forbidden`] for a refused address.
pub async fn resolve(url: &str, allow_private: bool) -> Result<(Url, Vec<SocketAddr>), UrlError> {
    let parsed = Url::parse(url).map_err(|e| UrlError::Invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlError::Invalid(format!("scheme {:?}", parsed.scheme())));
    }
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| UrlError::Invalid("no port".to_owned()))?;
    let addrs: Vec<SocketAddr> = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(domain)) if !domain.is_empty() => {
            let lookup = tokio::net::lookup_host((domain, port));
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(e)) => return Err(UrlError::Invalid(format!("{domain}: {e}"))),
                Err(_) => {
                    return Err(UrlError::Invalid(format!(
                        "{domain} did not resolve within {} s",
                        LOOKUP_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        _ => return Err(UrlError::Invalid("no host".to_owned())),
    };
    if addrs.is_empty() {
        return Err(UrlError::Invalid("the host has no address".to_owned()));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(UrlError::Forbidden(bad.ip()));
    }
    Ok((parsed, addrs))
}

/// How one delivery attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx.
    Delivered(u16),
    /// `410 Gone`: the receiver wants no more.
    Gone,
    /// Worth another try later: the status, if any answer came.
    Failed(Option<u16>, String),
    /// Never worth retrying (the URL is now forbidden, or no secret).
    Refused(String),
}

/// The stable id of a job's delivery (`webhook-id`).
#[must_use]
pub fn message_id(job: &Job) -> String {
    format!("msg_{}", job.id)
}

/// POSTs the finished `job` to its callback URL once.
pub async fn deliver(config: &Config, job: &Job) -> Attempt {
    let Some(url) = &job.callback_url else {
        return Attempt::Refused("no callback_url".to_owned());
    };
    let Some(key) = config
        .webhook_secret
        .as_ref()
        .and_then(|s| decode_secret(s.expose_secret()))
    else {
        return Attempt::Refused("ROSE_WEBHOOK_SECRET is not set".to_owned());
    };
    let (parsed, addrs) = match resolve(url, config.callback_allow_private).await {
        Ok(resolved) => resolved,
        Err(e @ UrlError::Forbidden(_)) => return Attempt::Refused(e.to_string()),
        Err(e) => return Attempt::Failed(None, e.to_string()),
    };
    let mut builder = reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(DELIVERY_TIMEOUT)
        .user_agent(concat!("Rose-Webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(url::Host::Domain(domain)) = parsed.host() {
        builder = builder.resolve_to_addrs(domain, &addrs);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => return Attempt::Failed(None, e.to_string()),
    };
    let body = job_json(job).to_string();
    let id = message_id(job);
    let timestamp = now_ms() / 1000;
    let signature = sign(&key, &id, timestamp, body.as_bytes());
    let sent = client
        .post(parsed)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Attempt::Delivered(status.as_u16())
            } else if status == reqwest::StatusCode::GONE {
                Attempt::Gone
            } else {
                Attempt::Failed(
                    Some(status.as_u16()),
                    format!("the receiver answered {status}"),
                )
            }
        }
        Err(e) => Attempt::Failed(None, e.to_string()),
    }
}

/// The wait before retry number `retry` (1-based), ±10 %; `None` when the
/// retries are used up.
#[must_use]
pub fn retry_delay(delays: &[Duration], retry: usize) -> Option<Duration> {
    let base = *delays.get(retry.checked_sub(1)?)?;
    let spread: f64 = rand::random::<f64>() * 0.2 + 0.9;
    Some(base.mul_f64(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_forbidden(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(!is_forbidden(ip.parse().expect("ip")), "{ip}");
        }
    }

    /// `(block, name)`: every block of the IANA IPv4 and IPv6
    /// Special-Purpose Address Registries (and multicast, and IPv6's
    /// deprecated site-local), none of which a callback may reach.
    const REGISTRY: &[(&str, &str)] = &[
        ("0.0.0.0/8", "this network"),
        ("10.0.0.0/8", "private use"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link local (cloud metadata)"),
        ("172.16.0.0/12", "private use"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.0.0/29", "DS-Lite"),
        ("192.0.0.8/32", "IPv4 dummy address"),
        ("192.0.0.9/32", "port control protocol anycast"),
        ("192.0.0.10/32", "traversal using relays around NAT anycast"),
        ("192.0.0.170/31", "NAT64/DNS64 discovery"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.31.196.0/24", "AS112-v4"),
        ("192.52.193.0/24", "AMT"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "private use"),
        ("192.175.48.0/24", "direct delegation AS112 service"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "limited broadcast"),
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
        ("100::/64", "discard-only"),
        ("100:0:0:1::/64", "dummy IPv6 prefix"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001::/32", "Teredo"),
        ("2001:1::1/128", "port control protocol anycast"),
        ("2001:1::2/128", "traversal using relays around NAT anycast"),
        (
            "2001:1::3/128",
            "DNS-SD service registration protocol anycast",
        ),
        ("2001:2::/48", "benchmarking"),
        ("2001:3::/32", "AMT"),
        ("2001:4:112::/48", "AS112-v6"),
        ("2001:10::/28", "deprecated ORCHID"),
        ("2001:20::/28", "ORCHIDv2"),
        ("2001:30::/28", "drone remote ID"),
        ("2001:db8::/32", "documentation"),
        ("2620:4f:8000::/48", "direct delegation AS112 service"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing SIDs"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link local"),
        ("fec0::/10", "deprecated site local"),
        ("ff00::/8", "multicast"),
    ];

    /// The first, a middle and the last address of `block`.
    fn samples(block: &str) -> [IpAddr; 3] {
        let (base, len) = block.split_once('/').expect("a block");
        let len: u32 = len.parse().expect("prefix length");
        match base.parse::<IpAddr>().expect("an address") {
            IpAddr::V4(v4) => {
                let host = u32::MAX.checked_shr(len).unwrap_or(0);
                let first = u32::from(v4) & !host;
                [first, first | (host / 2), first | host].map(|a| IpAddr::V4(a.into()))
            }
            IpAddr::V6(v6) => {
                let host = u128::MAX.checked_shr(len).unwrap_or(0);
                let first = u128::from(v6) & !host;
                [first, first | (host / 2), first | host].map(|a| IpAddr::V6(a.into()))
            }
        }
    }

    #[test]
    fn every_special_purpose_block_is_refused() {
        for (block, name) in REGISTRY {
            for ip in samples(block) {
                assert!(is_forbidden(ip), "{ip} in {block} ({name}) is refused");
            }
        }
    }

    /// The IPv6 forms that carry an IPv4 address take that address's verdict.
    fn embeddings(v4: Ipv4Addr) -> [Ipv6Addr; 4] {
        let [a, b, c, d] = v4.octets();
        let high = u16::from_be_bytes([a, b]);
        let low = u16::from_be_bytes([c, d]);
        [
            v4.to_ipv6_mapped(),
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, high, low), // IPv4-compatible (deprecated)
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, high, low), // NAT64 well-known prefix
            Ipv6Addr::new(0x2002, high, low, 0x1234, 0, 0, 0, 1), // 6to4
        ]
    }

    #[test]
    fn ipv6_forms_embedding_a_refused_ipv4_address_are_refused() {
        for (block, name) in REGISTRY.iter().filter(|(b, _)| !b.contains(':')) {
            for ip in samples(block) {
                let IpAddr::V4(v4) = ip else { unreachable!() };
                for v6 in embeddings(v4) {
                    assert!(is_forbidden(IpAddr::V6(v6)), "{v6} embeds {v4} ({name})");
                }
            }
        }
        for v4 in ["1.1.1.1", "93.184.216.34"] {
            let v4: Ipv4Addr = v4.parse().expect("ip");
            for v6 in embeddings(v4) {
                assert!(!is_forbidden(IpAddr::V6(v6)), "{v6} embeds a public {v4}");
            }
        }
    }

    #[test]
    fn the_reported_forms_are_refused() {
        for ip in [
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "198.18.0.1",
        ] {
            assert!(is_forbidden(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn global_addresses_next_to_the_blocks_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:200::1",
            "2003::1",
            "2620:4f:7fff:ffff::1",
        ] {
            assert!(!is_forbidden(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter() {
        let delays = [Duration::from_secs(5), Duration::from_secs(300)];
        let first = retry_delay(&delays, 1).expect("first retry");
        assert!(first >= Duration::from_millis(4_500) && first <= Duration::from_millis(5_500));
        assert!(retry_delay(&delays, 2).is_some());
        assert_eq!(retry_delay(&delays, 3), None);
        assert_eq!(retry_delay(&delays, 0), None);
    }
}
