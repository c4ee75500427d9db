//! Circuit breakers, one per provider, shared by every worker.
//!
//! CLOSED: calls flow; N consecutive failures (default 5) within a window
//! (default 60 s) open it. OPEN: calls are refused until a cool-down
//! (default 30 s) ends. HALF_OPEN: one trial call is let through (a lease,
//! so a trial lost with its worker is granted again); its success closes the
//! breaker, its failure opens it again. Transitions are logged as
//! `circuit_breaker` events. Only failures that say the provider is unwell
//! count (timeouts, connect errors, 5xx); rate limits and bad requests do not.
//!
//! Redis key: `P:cb:N` (hash: `state`, `failures`, `first_failure`,
//! `opened_at`, `trial_until`), kept while the deployment lives (a few
//! fields per provider). On the embedded deployment the same machine runs
//! in-process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio::time::Instant;

use super::Provider;

/// Breaker tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// The span those failures must fall within.
    pub window: Duration,
    /// How long it stays open before a trial call.
    pub cooldown: Duration,
    /// How long a trial call may take before another is allowed.
    pub trial_lease: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            trial_lease: Duration::from_secs(40),
        }
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The logged and reported name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "OPEN" => Self::Open,
            "HALF_OPEN" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// What a breaker reports to health and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub state: State,
    /// Consecutive failures counted.
    pub failures: u32,
    /// Until the next trial call, when open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// The breakers, in Redis (scaled) or in-process (embedded).
#[derive(Clone)]
pub struct Breakers {
    config: BreakerConfig,
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local(Arc<Mutex<HashMap<Provider, Local>>>),
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
}

#[derive(Debug, Clone, Default)]
struct Local {
    state: Option<State>,
    failures: u32,
    first_failure: Option<Instant>,
    opened_at: Option<Instant>,
    trial_until: Option<Instant>,
}

/// Refused: the breaker is open; try again after `retry_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub retry_in: Duration,
}

static ALLOW: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HGET', KEYS[1], 'state') or 'CLOSED'
if state == 'CLOSED' then return {1, 0} end
if state == 'OPEN' then
  local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0')
  if now < opened + cooldown then return {0, opened + cooldown - now} end
  redis.call('HSET', KEYS[1], 'state', 'HALF_OPEN', 'trial_until', now + lease)
  return {2, 0}
end
local trial = tonumber(redis.call('HGET', KEYS[1], 'trial_until') or '0')
if now >= trial then
  redis.call('HSET', KEYS[1], 'trial_until', now + lease)
  return {2, 0}
end
return {0, math.min(trial - now, 1000)}
",
    )
});

static RECORD: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('HGET', KEYS[1], 'state') or 'CLOSED'
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  return {prev, 'CLOSED'}
end
local threshold, window = tonumber(ARGV[2]), tonumber(ARGV[3])
if prev == 'HALF_OPEN' then
  redis.call('HSET', KEYS[1], 'state', 'OPEN', 'opened_at', now)
  return {prev, 'OPEN'}
end
if prev == 'OPEN' then return {prev, 'OPEN'} end
local first = tonumber(redis.call('HGET', KEYS[1], 'first_failure') or '0')
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if first == 0 or now - first > window then
  first, failures = now, 1
else
  failures = failures + 1
end
redis.call('HSET', KEYS[1], 'first_failure', first, 'failures', failures)
if failures >= threshold then
  redis.call('HSET', KEYS[1], 'state', 'OPEN', 'opened_at', now)
  return {prev, 'OPEN'}
end
return {prev, 'CLOSED'}
",
    )
});

fn log_transition(provider: Provider, from: State, to: State) {
    if from != to {
        tracing::warn!(
            event = "circuit_breaker",
            provider = provider.as_str(),
            state = to.as_str(),
            from = from.as_str(),
            "circuit_breaker"
        );
    }
}

impl Breakers {
    /// In-process breakers.
    #[must_use]
    pub fn local(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Inner::Local(Arc::default()),
        }
    }

    /// Breakers shared through Redis.
    #[must_use]
    pub fn redis(config: BreakerConfig, conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            config,
            inner: Inner::Redis {
                conn,
                prefix: prefix.to_owned(),
            },
        }
    }

    fn key(prefix: &str, provider: Provider) -> String {
        format!("{prefix}:cb:{}", provider.as_str())
    }

    /// May a call to `provider` go ahead? Refused while open (and while
    /// another worker holds the half-open trial).
    ///
    /// # Errors
    /// [`Open`] with the time until the next trial.
    pub async fn allow(&self, provider: Provider) -> Result<(), Open> {
        let c = self.config;
        match &self.inner {
            Inner::Local(all) => {
                let Ok(mut all) = all.lock() else {
                    return Ok(());
                };
                let b = all.entry(provider).or_default();
                let now = Instant::now();
                match b.state.unwrap_or(State::Closed) {
                    State::Closed => Ok(()),
                    State::Open => {
                        let reopen = b.opened_at.unwrap_or(now) + c.cooldown;
                        if now < reopen {
                            return Err(Open {
                                retry_in: reopen - now,
                            });
                        }
                        b.state = Some(State::HalfOpen);
                        b.trial_until = Some(now + c.trial_lease);
                        log_transition(provider, State::Open, State::HalfOpen);
                        Ok(())
                    }
                    State::HalfOpen => match b.trial_until {
                        Some(until) if now < until => Err(Open {
                            retry_in: (until - now).min(Duration::from_secs(1)),
                        }),
                        _ => {
                            b.trial_until = Some(now + c.trial_lease);
                            Ok(())
                        }
                    },
                }
            }
            Inner::Redis { conn, prefix } => {
                let answer: Result<(i64, i64), _> = ALLOW
                    .key(Self::key(prefix, provider))
                    .arg(c.cooldown.as_millis() as u64)
                    .arg(c.trial_lease.as_millis() as u64)
                    .invoke_async(&mut conn.clone())
                    .await;
                match answer {
                    Ok((0, wait)) => Err(Open {
                        retry_in: Duration::from_millis(wait.unsigned_abs()),
                    }),
                    Ok((2, _)) => {
                        log_transition(provider, State::Open, State::HalfOpen);
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    // Without Redis the breaker cannot judge; let the call decide.
                    Err(_) => Ok(()),
                }
            }
        }
    }

    /// Records a call's outcome: `healthy` closes, a failure counts toward opening.
    pub async fn record(&self, provider: Provider, healthy: bool) {
        let c = self.config;
        let (from, to) = match &self.inner {
            Inner::Local(all) => {
                let Ok(mut all) = all.lock() else { return };
                let b = all.entry(provider).or_default();
                let now = Instant::now();
                let from = b.state.unwrap_or(State::Closed);
                let to = if healthy {
                    *b = Local::default();
                    State::Closed
                } else {
                    match from {
                        State::HalfOpen | State::Open => {
                            if from == State::HalfOpen {
                                b.opened_at = Some(now);
                            }
                            b.state = Some(State::Open);
                            State::Open
                        }
                        State::Closed => {
                            match b.first_failure {
                                Some(first) if now.duration_since(first) <= c.window => {
                                    b.failures += 1
                                }
                                _ => {
                                    b.first_failure = Some(now);
                                    b.failures = 1;
                                }
                            }
                            if b.failures >= c.failures {
                                b.state = Some(State::Open);
                                b.opened_at = Some(now);
                                State::Open
                            } else {
                                State::Closed
                            }
                        }
                    }
                };
                (from, to)
            }
            Inner::Redis { conn, prefix } => {
                let answer: Result<(String, String), _> = RECORD
                    .key(Self::key(prefix, provider))
                    .arg(if healthy { "1" } else { "0" })
                    .arg(c.failures)
                    .arg(c.window.as_millis() as u64)
                    .invoke_async(&mut conn.clone())
                    .await;
                match answer {
                    Ok((from, to)) => (State::parse(&from), State::parse(&to)),
                    Err(_) => return,
                }
            }
        };
        log_transition(provider, from, to);
    }

    /// Whether `provider`'s breaker stands open now (without taking a trial):
    /// the wait until the next trial.
    pub async fn open_for(&self, provider: Provider) -> Option<Duration> {
        let snap = self.snapshot().await.remove(&provider)?;
        match snap.state {
            State::Closed => None,
            State::Open => Some(Duration::from_millis(snap.retry_in_ms.unwrap_or(0))),
            State::HalfOpen => Some(Duration::from_secs(1)),
        }
    }

    /// Every provider's breaker, for health and metrics.
    pub async fn snapshot(&self) -> HashMap<Provider, Snapshot> {
        let mut out = HashMap::new();
        for provider in Provider::ALL {
            let snap = match &self.inner {
                Inner::Local(all) => {
                    let b = all
                        .lock()
                        .ok()
                        .and_then(|all| all.get(&provider).cloned())
                        .unwrap_or_default();
                    let state = b.state.unwrap_or(State::Closed);
                    let retry_in = (state == State::Open)
                        .then(|| {
                            (b.opened_at? + self.config.cooldown)
                                .checked_duration_since(Instant::now())
                        })
                        .flatten();
                    Snapshot {
                        state,
                        failures: b.failures,
                        retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
                    }
                }
                Inner::Redis { conn, prefix } => {
                    let fields: HashMap<String, String> = redis::cmd("HGETALL")
                        .arg(Self::key(prefix, provider))
                        .query_async(&mut conn.clone())
                        .await
                        .unwrap_or_default();
                    let state = State::parse(fields.get("state").map_or("CLOSED", String::as_str));
                    let opened: Option<i64> = fields.get("opened_at").and_then(|v| v.parse().ok());
                    let retry_in = (state == State::Open)
                        .then(|| {
                            let until = opened? + self.config.cooldown.as_millis() as i64;
                            u64::try_from(until - crate::domain::now_ms()).ok()
                        })
                        .flatten();
                    Snapshot {
                        state,
                        failures: fields
                            .get("failures")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                        retry_in_ms: retry_in,
                    }
                }
            };
            out.insert(provider, snap);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            trial_lease: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_half_opens_after_cooldown() {
        let b = Breakers::local(config());
        let p = Provider::Llm;
        for _ in 0..2 {
            b.record(p, false).await;
            assert!(b.allow(p).await.is_ok(), "still closed below the threshold");
        }
        b.record(p, false).await;
        let open = b.allow(p).await.expect_err("open after 3 failures");
        assert_eq!(open.retry_in, Duration::from_secs(30));
        assert_eq!(b.snapshot().await[&p].state, State::Open);

        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.allow(p).await.is_ok(), "one trial after the cool-down");
        assert!(b.allow(p).await.is_err(), "only one trial at a time");
        b.record(p, false).await;
        assert!(b.allow(p).await.is_err(), "a failed trial opens it again");

        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.allow(p).await.is_ok());
        b.record(p, true).await;
        assert_eq!(b.snapshot().await[&p].state, State::Closed);
        assert!(b.allow(p).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_beyond_the_window_do_not_open_it() {
        let b = Breakers::local(config());
        let p = Provider::Stt;
        for _ in 0..5 {
            b.record(p, false).await;
            tokio::time::advance(Duration::from_secs(6)).await;
            b.record(p, false).await;
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        assert!(b.allow(p).await.is_ok());
        // A success resets the count.
        b.record(p, false).await;
        b.record(p, false).await;
        b.record(p, true).await;
        b.record(p, false).await;
        assert!(b.allow(p).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_trial_is_granted_again_after_its_lease() {
        let b = Breakers::local(config());
        let p = Provider::Tts;
        for _ in 0..3 {
            b.record(p, false).await;
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.allow(p).await.is_ok());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(b.allow(p).await.is_ok(), "the first trial's lease ran out");
    }
}
