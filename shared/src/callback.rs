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
//! resolves to a loopback, private, link-local (cloud metadata), CGNAT,
//! unique-local, multicast or unspecified address is refused, at submit time
//! and again at delivery, and the delivery connects to the addresses it
//! checked (no second lookup an attacker could answer differently).

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

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`callback_url` must be an absolute http(s) URL with a host that resolves: {0}")]
    Invalid(String),
    #[error(
        "`callback_url` points at an address Rose does not call ({0}): loopback, private, link-local and metadata addresses are refused"
    )]
    Forbidden(IpAddr),
}

/// Addresses no callback may reach unless private ones are allowed.
#[must_use]
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254)
                || (first & 0xffc0) == 0xfe80 // link local
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe) // NAT64 of 169.254.169.254
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // 169.254.0.0/16: cloud metadata
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
}

/// Parses and resolves `url`; refuses forbidden addresses unless `allow_private`.
///
/// # Errors
/// [`UrlError::Invalid`] for a malformed or unresolvable URL,
/// [`UrlError::Forbidden`] for a refused address.
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
            tokio::net::lookup_host((domain, port))
                .await
                .map_err(|e| UrlError::Invalid(format!("{domain}: {e}")))?
                .collect()
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
