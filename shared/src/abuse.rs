//! Per-client request limits: a generic cell rate algorithm (GCRA) per key.
//!
//! A limit of `n` per window lets a client spend `n` requests at once and
//! then one every `window / n`: the stored value is the key's theoretical
//! arrival time. On the scaled deployment the cell lives in Redis, updated by
//! one script that reads Redis' own clock, so every api replica shares it; on
//! the embedded one it lives in memory. When Redis cannot be reached the
//! request is let through (and logged): the limiter protects Rose, it must
//! not take her down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::ConnectionManager;

/// The GCRA step in Redis: `KEYS[1]` the cell, `ARGV` interval and window
/// in ms. Returns 0 when allowed, else the ms to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if allow_at > now then return allow_at - now end
redis.call('SET', KEYS[1], new_tat, 'PX', window)
return 0
";

/// Keys the in-memory limiter keeps before it sweeps out idle ones.
const SWEEP_AT: usize = 10_000;

#[derive(Clone)]
enum Inner {
    Redis {
        conn: ConnectionManager,
        prefix: String,
        script: Arc<Script>,
    },
    Local(Arc<Mutex<Local>>),
}

struct Local {
    started: Instant,
    /// Theoretical arrival time per key, in ms since `started`.
    cells: HashMap<String, u64>,
}

/// Rate limits per key (client address and request class).
#[derive(Clone)]
pub struct RequestLimiter(Inner);

impl std::fmt::Debug for RequestLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Inner::Redis { .. } => "redis",
            Inner::Local(_) => "local",
        };
        f.debug_tuple("RequestLimiter").field(&kind).finish()
    }
}

impl RequestLimiter {
    /// Shared by every process on this Redis and key prefix.
    #[must_use]
    pub fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        Self(Inner::Redis {
            conn,
            prefix: prefix.to_owned(),
            script: Arc::new(Script::new(GCRA)),
        })
    }

    /// In this process only.
    #[must_use]
    pub fn local() -> Self {
        Self(Inner::Local(Arc::new(Mutex::new(Local {
            started: Instant::now(),
            cells: HashMap::new(),
        }))))
    }

    /// Takes one request from `key`'s budget of `limit` per `window`.
    ///
    /// # Errors
    /// The wait before the next request would be allowed.
    pub async fn check(&self, key: &str, limit: u32, window: Duration) -> Result<(), Duration> {
        if limit == 0 {
            return Ok(());
        }
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let interval = (window_ms / u64::from(limit)).max(1);
        let wait_ms = match &self.0 {
            Inner::Redis {
                conn,
                prefix,
                script,
            } => {
                let mut conn = conn.clone();
                let result: Result<u64, _> = script
                    .key(format!("{prefix}:ratelimit:{key}"))
                    .arg(interval)
                    .arg(window_ms)
                    .invoke_async(&mut conn)
                    .await;
                match result {
                    Ok(ms) => ms,
                    Err(e) => {
                        tracing::warn!(error = %e, "request limiter unavailable; letting the request through");
                        0
                    }
                }
            }
            Inner::Local(local) => {
                let Ok(mut local) = local.lock() else {
                    return Ok(());
                };
                let now = u64::try_from(local.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if local.cells.len() >= SWEEP_AT {
                    local.cells.retain(|_, tat| *tat > now);
                }
                let tat = local.cells.get(key).copied().unwrap_or(now).max(now);
                let new_tat = tat + interval;
                let allow_at = new_tat.saturating_sub(window_ms);
                if allow_at > now {
                    allow_at - now
                } else {
                    local.cells.insert(key.to_owned(), new_tat);
                    0
                }
            }
        };
        if wait_ms == 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_the_limit_then_one_per_interval() {
        let limiter = RequestLimiter::local();
        let window = Duration::from_secs(60);
        for _ in 0..10 {
            assert!(limiter.check("ip:voice", 10, window).await.is_ok());
        }
        let wait = limiter
            .check("ip:voice", 10, window)
            .await
            .expect_err("the eleventh waits");
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(6));
        // Other keys have their own budget; 0 means no limit.
        assert!(limiter.check("other:voice", 10, window).await.is_ok());
        assert!(limiter.check("ip:voice", 0, window).await.is_ok());
    }

    #[tokio::test]
    async fn the_budget_refills() {
        let limiter = RequestLimiter::local();
        let window = Duration::from_millis(100);
        assert!(limiter.check("k", 2, window).await.is_ok());
        assert!(limiter.check("k", 2, window).await.is_ok());
        assert!(limiter.check("k", 2, window).await.is_err());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(limiter.check("k", 2, window).await.is_ok());
    }
}
