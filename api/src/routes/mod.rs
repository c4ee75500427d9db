//! Route modules; each owns its `router()`.

pub mod admin;
pub mod audio;
pub mod health;
pub mod jobs;
pub mod me;
pub mod metrics;
pub mod openapi;
pub mod resources;
pub mod session;
pub mod voice;
pub mod web;

use std::collections::HashMap;
use std::time::Duration;

use crate::error::ApiError;

/// Longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The `?wait=SECONDS` parameter: absent → no wait; 0–60 (fractions allowed).
///
/// # Errors
/// [`ApiError::InvalidWait`] for anything else.
pub fn parse_wait(query: &HashMap<String, String>) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = query.get("wait") else {
        return Ok(None);
    };
    let secs: f64 = raw.trim().parse().map_err(|_| ApiError::InvalidWait)?;
    if !(0.0..=MAX_WAIT.as_secs_f64()).contains(&secs) {
        return Err(ApiError::InvalidWait);
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: &str) -> HashMap<String, String> {
        HashMap::from([("wait".to_owned(), v.to_owned())])
    }

    #[test]
    fn wait_is_bounded() {
        assert_eq!(parse_wait(&HashMap::new()).ok(), Some(None));
        assert_eq!(
            parse_wait(&q("2.5")).ok(),
            Some(Some(Duration::from_millis(2500)))
        );
        assert!(parse_wait(&q("61")).is_err());
        assert!(parse_wait(&q("-1")).is_err());
        assert!(parse_wait(&q("soon")).is_err());
        assert!(parse_wait(&q("NaN")).is_err());
    }
}
