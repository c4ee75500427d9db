//! The limiter's Redis side (keys in the parent module's table): one Lua
//! script decides a whole acquisition atomically — the provider's pause,
//! the line for a slot, the requests-per-minute window, the slot itself.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

use super::{Limits, MAX_NAP, Permit, Ticket};
use crate::resilience::Provider;

/// How long a waiter stays in line without asking again (it asks at least
/// every [`MAX_NAP`]).
const ALIVE_MS: u64 = 2_000;

pub(super) struct RedisLimiter {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    pub(super) freed: Notify,
    listening: OnceLock<()>,
}

/// KEYS: window, slots, pause, line, alive. ARGV: rpm, concurrency, lease
/// ms, token, window ms, rank, alive ms. Returns 0 (granted), -1 (wait for
/// a slot) or the ms to wait.
static ACQUIRE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, cap, lease, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local token, rank, alive = ARGV[4], tonumber(ARGV[6]), tonumber(ARGV[7])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return paused end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  for _, g in ipairs(gone) do
    redis.call('ZREM', KEYS[4], g)
    redis.call('ZREM', KEYS[5], g)
  end
  if not redis.call('ZSCORE', KEYS[4], token) then
    redis.call('ZADD', KEYS[4], rank, token)
  end
  redis.call('ZADD', KEYS[5], now + alive, token)
  redis.call('PEXPIRE', KEYS[4], 60000)
  redis.call('PEXPIRE', KEYS[5], 60000)
  local free = cap - redis.call('ZCARD', KEYS[2])
  if free <= 0 or redis.call('ZRANK', KEYS[4], token) >= free then return -1 end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window - now)
  end
  redis.call('ZADD', KEYS[1], now, token)
  redis.call('PEXPIRE', KEYS[1], window)
end
if cap > 0 then
  redis.call('ZREM', KEYS[4], token)
  redis.call('ZREM', KEYS[5], token)
  redis.call('ZADD', KEYS[2], now + lease, token)
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
return 0
",
    )
});

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
    pub(super) fn new(client: redis::Client, conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            freed: Notify::new(),
            listening: OnceLock::new(),
        }
    }

    fn key(&self, provider: Provider, what: &str) -> String {
        format!("{}:rl:{}:{what}", self.prefix, provider.as_str())
    }

    pub(super) async fn try_acquire(
        self: &Arc<Self>,
        limits: Limits,
        lease: Duration,
        window: Duration,
        ticket: &mut Ticket,
    ) -> Result<Permit, Option<Duration>> {
        let provider = ticket.provider;
        if limits.rpm == 0 && limits.concurrency == 0 {
            // Still honour a provider-requested pause.
            let paused: i64 = redis::cmd("PTTL")
                .arg(self.key(provider, "pause"))
                .query_async(&mut self.conn.clone())
                .await
                .unwrap_or(-2);
            return if paused > 0 {
                Err(Some(Duration::from_millis(paused as u64)))
            } else {
                Ok(Permit { release: None })
            };
        }
        let answer: Result<i64, _> = ACQUIRE
            .key(self.key(provider, "window"))
            .key(self.key(provider, "slots"))
            .key(self.key(provider, "pause"))
            .key(self.key(provider, "line"))
            .key(self.key(provider, "alive"))
            .arg(limits.rpm)
            .arg(limits.concurrency)
            .arg(lease.as_millis() as u64)
            .arg(&ticket.token)
            .arg(window.as_millis() as u64)
            .arg(ticket.rank)
            .arg(ALIVE_MS)
            .invoke_async(&mut self.conn.clone())
            .await;
        if limits.concurrency > 0 {
            ticket.queued = true;
        }
        match answer {
            Ok(0) => {}
            Ok(-1) => return Err(None),
            Ok(ms) => return Err(Some(Duration::from_millis(ms.unsigned_abs()))),
            Err(e) => {
                tracing::warn!(provider = provider.as_str(), error = %e, "rate limiter unavailable; waiting");
                return Err(Some(MAX_NAP));
            }
        }
        ticket.queued = false;
        if limits.concurrency == 0 {
            return Ok(Permit { release: None });
        }
        let (redis, token) = (self.clone(), ticket.token.clone());
        Ok(Permit {
            release: Some(Box::new(move || {
                tokio::spawn(async move { redis.release(provider, &token).await });
            })),
        })
    }

    pub(super) async fn pause(&self, provider: Provider, wait: Duration) {
        let set: Result<i64, _> = LENGTHEN
            .key(self.key(provider, "pause"))
            .arg(wait.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(e) = set {
            // Each worker still waits for its own call's hint.
            tracing::warn!(provider = provider.as_str(), error = %e, "could not share a provider's pause");
        }
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

    /// A waiter gave up: out of the line, and those behind it move up.
    pub(super) async fn leave_line(&self, provider: Provider, token: &str) {
        let result: Result<((), (), ()), _> = redis::pipe()
            .zrem(self.key(provider, "line"), token)
            .zrem(self.key(provider, "alive"), token)
            .publish(self.key(provider, "free"), 1)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = result {
            // It falls out of the line once it stops asking.
            tracing::debug!(provider = provider.as_str(), error = %e, "leaving the line failed");
        }
    }

    /// Starts (once) the subscription that wakes local waiters when a slot frees.
    pub(super) fn listen(self: &Arc<Self>) {
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
