//! Rate limiting shared by every worker: per provider, a requests-per-minute
//! budget (a sliding window, 60 s unless tuned: no window-long span ever
//! holds more than the budget) and a concurrency cap (leased slots, so a crashed worker's slot
//! frees itself). A provider's own "wait" (429 + `retry-after`) pauses every
//! worker for that long.
//!
//! Redis keys (`P` = `ROSE_REDIS_PREFIX`, `N` = provider):
//!
//! | key | type | lifetime |
//! |---|---|---|
//! | `P:rl:N:window` | sorted set of request tokens by time | entries older than 60 s are dropped on each acquire; the key expires 60 s after the last request |
//! | `P:rl:N:slots` | sorted set of slot tokens by lease expiry | a slot lives until released or its lease (call timeout + 10 s) ends |
//! | `P:rl:N:pause` | string with a TTL | until the provider's requested wait is over |
//!
//! Pub/sub channel `P:rl:N:free` announces a released slot to waiters. A
//! waiter sleeps until its turn (the window's oldest entry ages out, a slot
//! is announced free, or at most 250 ms): it waits, never fails, never spins.
//! On the embedded deployment the same rules run in-process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Provider;

/// Budget for one provider; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: u32,
    pub concurrency: u32,
}

/// Longest a waiter sleeps before asking again.
const MAX_NAP: Duration = Duration::from_millis(250);

/// The limiter, in Redis (scaled) or in-process (embedded).
#[derive(Clone)]
pub struct Limiter {
    limits: Arc<HashMap<Provider, Limits>>,
    lease: Duration,
    /// The span a requests-per-minute budget applies to (a minute, unless tuned).
    window: Duration,
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local(Arc<Mutex<HashMap<Provider, LocalState>>>, Arc<Notify>),
    Redis(Arc<RedisLimiter>),
}

#[derive(Default)]
struct LocalState {
    window: VecDeque<Instant>,
    in_use: u32,
    paused_until: Option<Instant>,
}

struct RedisLimiter {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    freed: Notify,
    listening: OnceLock<()>,
}

/// A held concurrency slot; dropping it releases the slot.
pub struct Permit {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

static ACQUIRE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, cap, lease, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return paused end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= cap then return -1 end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window - now)
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
end
if cap > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
return 0
",
    )
});

impl Limiter {
    /// An in-process limiter.
    #[must_use]
    pub fn local(limits: HashMap<Provider, Limits>, lease: Duration, window: Duration) -> Self {
        Self {
            limits: Arc::new(limits),
            lease,
            window,
            inner: Inner::Local(Arc::default(), Arc::new(Notify::new())),
        }
    }

    /// A limiter shared through Redis.
    #[must_use]
    pub fn redis(
        limits: HashMap<Provider, Limits>,
        lease: Duration,
        window: Duration,
        client: redis::Client,
        conn: ConnectionManager,
        prefix: &str,
    ) -> Self {
        Self {
            limits: Arc::new(limits),
            lease,
            window,
            inner: Inner::Redis(Arc::new(RedisLimiter {
                client,
                conn,
                prefix: prefix.to_owned(),
                freed: Notify::new(),
                listening: OnceLock::new(),
            })),
        }
    }

    /// The budget of `provider`.
    #[must_use]
    pub fn limits(&self, provider: Provider) -> Limits {
        self.limits.get(&provider).copied().unwrap_or_default()
    }

    /// Waits for budget and a slot for one call to `provider`.
    pub async fn acquire(&self, provider: Provider) -> Permit {
        let limits = self.limits(provider);
        let started = Instant::now();
        let mut logged = false;
        loop {
            let wait = match self.try_acquire(provider, limits).await {
                Ok(permit) => {
                    if logged {
                        crate::metrics::rate_limit_wait(provider.as_str(), started.elapsed());
                        tracing::info!(
                            event = "rate_limited",
                            provider = provider.as_str(),
                            wait_ms = started.elapsed().as_millis() as u64,
                            "rate_limited"
                        );
                    }
                    return permit;
                }
                Err(wait) => wait,
            };
            logged = true;
            let nap = wait.unwrap_or(MAX_NAP).min(MAX_NAP);
            match &self.inner {
                Inner::Local(_, freed) => {
                    let _ = tokio::time::timeout(nap, freed.notified()).await;
                }
                Inner::Redis(redis) => {
                    redis.listen();
                    let _ = tokio::time::timeout(nap, redis.freed.notified()).await;
                }
            }
        }
    }

    /// One attempt: a permit, or how long to wait (`None`: until a slot frees).
    async fn try_acquire(
        &self,
        provider: Provider,
        limits: Limits,
    ) -> Result<Permit, Option<Duration>> {
        match &self.inner {
            Inner::Local(state, freed) => {
                let now = Instant::now();
                let mut all = state.lock().map_err(|_| Some(MAX_NAP))?;
                let s = all.entry(provider).or_default();
                if let Some(until) = s.paused_until
                    && until > now
                {
                    return Err(Some(until - now));
                }
                if limits.concurrency > 0 && s.in_use >= limits.concurrency {
                    return Err(None);
                }
                if limits.rpm > 0 {
                    while s
                        .window
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= self.window)
                    {
                        s.window.pop_front();
                    }
                    if s.window.len() >= limits.rpm as usize {
                        let oldest = s.window.front().copied().unwrap_or(now);
                        return Err(Some(
                            (oldest + Duration::from_secs(60)).saturating_duration_since(now),
                        ));
                    }
                    s.window.push_back(now);
                }
                if limits.concurrency == 0 {
                    return Ok(Permit { release: None });
                }
                s.in_use += 1;
                let (state, freed) = (state.clone(), freed.clone());
                Ok(Permit {
                    release: Some(Box::new(move || {
                        if let Ok(mut all) = state.lock()
                            && let Some(s) = all.get_mut(&provider)
                        {
                            s.in_use = s.in_use.saturating_sub(1);
                        }
                        freed.notify_waiters();
                    })),
                })
            }
            Inner::Redis(redis) => {
                if limits.rpm == 0 && limits.concurrency == 0 {
                    // Still honour a provider-requested pause.
                    let paused: i64 = redis::cmd("PTTL")
                        .arg(redis.key(provider, "pause"))
                        .query_async(&mut redis.conn.clone())
                        .await
                        .unwrap_or(-2);
                    return if paused > 0 {
                        Err(Some(Duration::from_millis(paused as u64)))
                    } else {
                        Ok(Permit { release: None })
                    };
                }
                let token = ulid::Ulid::generate().to_string();
                let answer: Result<i64, _> = ACQUIRE
                    .key(redis.key(provider, "window"))
                    .key(redis.key(provider, "slots"))
                    .key(redis.key(provider, "pause"))
                    .arg(limits.rpm)
                    .arg(limits.concurrency)
                    .arg(self.lease.as_millis() as u64)
                    .arg(&token)
                    .arg(self.window.as_millis() as u64)
                    .invoke_async(&mut redis.conn.clone())
                    .await;
                match answer {
                    Ok(0) => {}
                    Ok(-1) => return Err(None),
                    Ok(ms) => return Err(Some(Duration::from_millis(ms.unsigned_abs()))),
                    Err(e) => {
                        tracing::warn!(provider = provider.as_str(), error = %e, "rate limiter unavailable; waiting");
                        return Err(Some(MAX_NAP));
                    }
                }
                if limits.concurrency == 0 {
                    return Ok(Permit { release: None });
                }
                let redis = redis.clone();
                Ok(Permit {
                    release: Some(Box::new(move || {
                        tokio::spawn(async move { redis.release(provider, &token).await });
                    })),
                })
            }
        }
    }

    /// Makes every worker wait `wait` before calling `provider` again (the
    /// provider said so).
    pub async fn pause(&self, provider: Provider, wait: Duration) {
        let wait = wait.min(Duration::from_secs(300));
        if wait.is_zero() {
            return;
        }
        match &self.inner {
            Inner::Local(state, _) => {
                if let Ok(mut all) = state.lock() {
                    let s = all.entry(provider).or_default();
                    let until = Instant::now() + wait;
                    s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
                }
            }
            Inner::Redis(redis) => {
                let set: Result<i64, _> = LENGTHEN
                    .key(redis.key(provider, "pause"))
                    .arg(wait.as_millis() as u64)
                    .invoke_async(&mut redis.conn.clone())
                    .await;
                if let Err(e) = set {
                    // Each worker still waits for its own call's hint.
                    tracing::warn!(provider = provider.as_str(), error = %e, "could not share a provider's pause");
                }
            }
        }
    }
}

/// Sets the pause key to expire in `ARGV[1]` ms unless it already expires
/// later: a pause is only ever lengthened, never shortened, by whichever
/// worker heard the provider last. KEYS: the pause key. Returns 1 when it
/// set the key.
static LENGTHEN: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
",
    )
});

impl RedisLimiter {
    fn key(&self, provider: Provider, what: &str) -> String {
        format!("{}:rl:{}:{what}", self.prefix, provider.as_str())
    }

    async fn release(&self, provider: Provider, token: &str) {
        let result: Result<((), ()), _> = redis::pipe()
            .zrem(self.key(provider, "slots"), token)
            .publish(self.key(provider, "free"), 1)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = result {
            // The slot's lease frees it anyway.
            tracing::warn!(provider = provider.as_str(), error = %e, "slot release failed");
        }
    }

    /// Starts (once) the subscription that wakes local waiters when a slot frees.
    fn listen(self: &Arc<Self>) {
        self.listening.get_or_init(|| {
            let me = Arc::downgrade(self);
            let pattern = format!("{}:rl:*:free", self.prefix);
            let client = self.client.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(mut pubsub) = client.get_async_pubsub().await
                        && pubsub.psubscribe(&pattern).await.is_ok()
                    {
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            match me.upgrade() {
                                Some(limiter) => limiter.freed.notify_waiters(),
                                None => return,
                            }
                        }
                    }
                    if me.upgrade().is_none() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rpm: u32, concurrency: u32) -> Limiter {
        Limiter::local(
            HashMap::from([(Provider::Llm, Limits { rpm, concurrency })]),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_holds_no_more_than_the_budget() {
        let l = limiter(3, 0);
        let started = Instant::now();
        for _ in 0..3 {
            let _ = l.acquire(Provider::Llm).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "within budget: no wait");
        let _ = l.acquire(Provider::Llm).await;
        assert!(
            started.elapsed() >= Duration::from_secs(60),
            "the fourth waits for the window"
        );
        // Other providers are not limited.
        let before = Instant::now();
        let _ = l.acquire(Provider::Stt).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_capped_and_freed_on_drop() {
        let l = limiter(0, 2);
        let a = l.acquire(Provider::Llm).await;
        let _b = l.acquire(Provider::Llm).await;
        let waiter = tokio::spawn({
            let l = l.clone();
            async move {
                let _c = l.acquire(Provider::Llm).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "a third caller waits for a slot");
        let freed_at = Instant::now();
        drop(a);
        let got = waiter.await.expect("join");
        assert!(got >= freed_at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller() {
        let l = limiter(0, 0);
        l.pause(Provider::Llm, Duration::from_secs(7)).await;
        let started = Instant::now();
        let _ = l.acquire(Provider::Llm).await;
        assert!(started.elapsed() >= Duration::from_secs(7));
    }
}
