//! Provider failures, classified so callers know whether to try again.
//!
//! Transient: connect errors, timeouts, 408, 409, 429 and 5xx. Permanent:
//! other 4xx, and audio the provider cannot decode. A provider's wait hint
//! (`retry-after` in seconds or as an HTTP date; Groq's
//! `x-ratelimit-reset-requests` / `-tokens` such as `7.66s` or `2m59.56s`) is
//! kept as the minimum wait before the next attempt, clamped to
//! [`MAX_WAIT_HINT`]: a header is the provider's word, not a trusted number,
//! and an absurd one (`1e30`, `99999999999999999999h`) must neither panic nor
//! park a worker for years.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;

/// The code of an answer Rose could not use ([`ProviderError::bad_answer`]).
pub const BAD_ANSWER: &str = "bad_answer";

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Try again later.
    Transient,
    /// The provider is limiting Rose; wait at least `retry_after`.
    RateLimited,
    /// Trying again will not help.
    Permanent,
    /// The audio cannot be decoded by the provider.
    InvalidAudio,
}

/// A provider call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// `groq`, `elevenlabs`, `espeak`, …
    pub provider: &'static str,
    pub kind: ErrorKind,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    pub message: String,
    /// The provider's own error code, e.g. ElevenLabs'
    /// `too_many_concurrent_requests` or Groq's `rate_limit_exceeded`; or
    /// [`BAD_ANSWER`] when its answer could not be read.
    pub code: Option<String>,
    /// The provider's own wait hint.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} answered {status}: {}", self.provider, self.message),
            None => write!(f, "{}: {}", self.provider, self.message),
        }
    }
}

impl std::error::Error for ProviderError {}

impl ProviderError {
    /// A failure trying again will not fix.
    #[must_use]
    pub fn permanent(
        provider: &'static str,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            kind: ErrorKind::Permanent,
            status,
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    /// A failure that may pass.
    #[must_use]
    pub fn transient(
        provider: &'static str,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            kind: ErrorKind::Transient,
            status,
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    /// A success answer Rose cannot use: not the promised JSON or audio,
    /// or larger than Rose reads. Transient (a proxy's error page, a
    /// glitch), marked [`BAD_ANSWER`] so a job that fails on it says so.
    #[must_use]
    pub fn bad_answer(provider: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(BAD_ANSWER.to_owned()),
            ..Self::transient(provider, None, message)
        }
    }

    /// Whether the answer itself was unusable ([`Self::bad_answer`]).
    #[must_use]
    pub fn is_bad_answer(&self) -> bool {
        self.code.as_deref() == Some(BAD_ANSWER)
    }

    /// Whether trying again can help.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::RateLimited)
    }

    /// Classifies a non-success HTTP answer.
    #[must_use]
    pub fn from_status(
        provider: &'static str,
        status: u16,
        headers: &HeaderMap,
        body: &str,
    ) -> Self {
        let message = summarize_body(body);
        let code = body_code(body);
        let kind = match status {
            429 => ErrorKind::RateLimited,
            408 | 409 | 425 => ErrorKind::Transient,
            500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        };
        Self {
            provider,
            kind,
            status: Some(status),
            message,
            code,
            retry_after: wait_hint(headers),
        }
    }

    /// Classifies a transport failure (connect, timeout, body read).
    #[must_use]
    pub fn from_reqwest(provider: &'static str, e: &reqwest::Error) -> Self {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        Self::transient(provider, None, format!("{what}: {e}"))
    }
}

/// The provider's error message, without echoing large or odd bodies.
fn summarize_body(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.pointer("/detail/message"))
            .or_else(|| v.pointer("/detail/status"))
            .and_then(|m| m.as_str().map(str::to_owned))
            .or_else(|| v.get("detail").map(ToString::to_string))
    });
    let text = message.unwrap_or_else(|| body.trim().to_owned());
    let mut out: String = text.chars().take(300).collect();
    if out.is_empty() {
        out.push_str("no message");
    }
    out
}

/// The provider's machine-readable code: ElevenLabs' `detail.status`, Groq's `error.code`.
fn body_code(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.pointer("/detail/status")
        .or_else(|| v.pointer("/error/code"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
}

/// The longest wait hint Rose takes from a provider: a day (a daily budget's
/// reset, the longest a real provider asks for). Longer asks are read as
/// this; the shared pause is capped lower by the rate limiter, and a job's
/// backoff by its own cap.
pub const MAX_WAIT_HINT: Duration = Duration::from_secs(86_400);

/// A wait of `secs` seconds, clamped to [`MAX_WAIT_HINT`]; `None` when it is
/// not a number of seconds at all (negative, NaN).
fn clamped_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_WAIT_HINT)
            .min(MAX_WAIT_HINT),
    )
}

/// The longest wait the provider asked for, from `retry-after` and Groq's reset headers.
#[must_use]
pub fn wait_hint(headers: &HeaderMap) -> Option<Duration> {
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let resets = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()
                .and_then(parse_go_duration)
        });
    retry_after.into_iter().chain(resets).max()
}

/// `retry-after`: delay seconds (possibly fractional) or an HTTP date.
#[must_use]
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return clamped_secs(secs);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(MAX_WAIT_HINT))
}

/// Go-style durations as Groq sends them: `7.66s`, `2m59.56s`, `1h2m3s`, `120ms`.
#[must_use]
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    clamped_secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn parses_groq_reset_durations() {
        assert_eq!(
            parse_go_duration("7.66s"),
            Some(Duration::from_millis(7660))
        );
        assert_eq!(
            parse_go_duration("2m59.56s"),
            Some(Duration::from_millis(179_560))
        );
        assert_eq!(parse_go_duration("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(parse_go_duration("1h0m1s"), Some(Duration::from_secs(3601)));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let wait = parse_retry_after(&later).expect("a date");
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        assert_eq!(parse_retry_after("-1"), None);
        // Malformed values are ignored, not guessed at.
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(parse_retry_after("NaN"), None);
        assert_eq!(parse_retry_after("Wed, 99 Foo 2015"), None);
    }

    #[test]
    fn absurd_waits_are_clamped_not_panicked_on() {
        assert_eq!(parse_retry_after("1e30"), Some(MAX_WAIT_HINT));
        assert_eq!(parse_retry_after("inf"), Some(MAX_WAIT_HINT));
        assert_eq!(parse_retry_after("100000"), Some(MAX_WAIT_HINT));
        assert_eq!(
            parse_go_duration("99999999999999999999h"),
            Some(MAX_WAIT_HINT)
        );
        assert_eq!(
            parse_go_duration(&format!("{}s", "9".repeat(400))),
            Some(MAX_WAIT_HINT)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_WAIT_HINT)
        );
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("1e30"));
        headers.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("99999999999999999999h"),
        );
        let e = ProviderError::from_status("groq", 429, &headers, "");
        assert_eq!(e.retry_after, Some(MAX_WAIT_HINT));
    }

    #[test]
    fn classifies_statuses() {
        let headers = HeaderMap::new();
        let kind = |s| ProviderError::from_status("groq", s, &headers, "").kind;
        assert_eq!(kind(429), ErrorKind::RateLimited);
        assert_eq!(kind(503), ErrorKind::Transient);
        assert_eq!(kind(408), ErrorKind::Transient);
        assert_eq!(kind(400), ErrorKind::Permanent);
        assert_eq!(kind(401), ErrorKind::Permanent);
    }

    #[test]
    fn wait_hint_takes_the_longest() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        headers.insert(
            "x-ratelimit-reset-tokens",
            HeaderValue::from_static("7.66s"),
        );
        assert_eq!(wait_hint(&headers), Some(Duration::from_millis(7660)));
    }

    #[test]
    fn summarizes_provider_bodies() {
        let groq = r#"{"error":{"message":"Invalid API Key","type":"invalid_request_error"}}"#;
        assert_eq!(summarize_body(groq), "Invalid API Key");
        let eleven = r#"{"detail":{"status":"too_many_concurrent_requests","message":"Busy"}}"#;
        assert_eq!(summarize_body(eleven), "Busy");
        assert_eq!(
            body_code(eleven).as_deref(),
            Some("too_many_concurrent_requests")
        );
        assert_eq!(
            body_code(r#"{"error":{"code":"rate_limit_exceeded"}}"#).as_deref(),
            Some("rate_limit_exceeded")
        );
        assert_eq!(body_code("<html>"), None);
    }
}
