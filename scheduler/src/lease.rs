//! Leadership among scheduler replicas: a Redis lease.
//!
//! `SET key token NX PX ttl` takes it; the holder renews it every third of
//! the lease with a compare-and-`PEXPIRE` (only while the key still holds its
//! token) and deletes it on shutdown with a compare-and-`DEL`. A standby
//! retries when the key's remaining time runs out, so it takes over within
//! one lease period of the leader's death. A leader counts itself leader only
//! until 80 % of the lease past its last confirmed renewal: one cut off from
//! Redis stops acting before anyone else can start.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use rose_shared::domain::now_ms;
use tokio_util::sync::CancellationToken;

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) else return 0 end";

/// Who leads, as far as this process knows.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Unix ms until which this process may act as leader (0: not leader);
    /// `i64::MAX` when there is no one to share with (embedded deployment).
    until: Arc<AtomicI64>,
}

impl Leadership {
    /// Always leader: one process, no lease.
    #[must_use]
    pub fn sole() -> Self {
        Self {
            until: Arc::new(AtomicI64::new(i64::MAX)),
        }
    }

    fn none() -> Self {
        Self {
            until: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Whether this process may run jobs now.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        now_ms() < self.until.load(Ordering::Acquire)
    }

    fn set_until(&self, until: i64) {
        self.until.store(until, Ordering::Release);
    }
}

/// The lease on `key`, held under a random token.
pub struct Lease {
    conn: ConnectionManager,
    key: String,
    token: String,
    ttl: Duration,
    leadership: Leadership,
}

impl Lease {
    /// A lease on `key` lasting `ttl` per renewal.
    #[must_use]
    pub fn new(conn: ConnectionManager, key: String, ttl: Duration) -> Self {
        let token = format!("{:032x}", rand::random::<u128>());
        Self {
            conn,
            key,
            token,
            ttl,
            leadership: Leadership::none(),
        }
    }

    /// What the job callbacks consult.
    #[must_use]
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Takes the lease if it is free, or renews it if held; returns whether
    /// this process holds it now.
    async fn step(&mut self, held: bool) -> redis::RedisResult<bool> {
        let started = now_ms();
        let ok = if held {
            let renewed: i64 = redis::Script::new(RENEW)
                .key(&self.key)
                .arg(&self.token)
                .arg(self.ttl_ms())
                .invoke_async(&mut self.conn)
                .await?;
            renewed == 1
        } else {
            let set: Option<String> = redis::cmd("SET")
                .arg(&self.key)
                .arg(&self.token)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl_ms())
                .query_async(&mut self.conn)
                .await?;
            set.is_some()
        };
        self.leadership.set_until(if ok {
            started + self.ttl_ms() * 4 / 5
        } else {
            0
        });
        Ok(ok)
    }

    /// How long the current holder's lease has left (ms), if anyone holds it.
    async fn remaining(&mut self) -> redis::RedisResult<Option<u64>> {
        let left: i64 = redis::cmd("PTTL")
            .arg(&self.key)
            .query_async(&mut self.conn)
            .await?;
        Ok(u64::try_from(left).ok())
    }

    /// Holds or waits for the lease until `shutdown`, then releases it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let renew_every = self.ttl / 3;
        let mut held = false;
        loop {
            let wait = match self.step(held).await {
                Ok(now_held) => {
                    if now_held != held {
                        if now_held {
                            tracing::info!(key = %self.key, "scheduler leadership taken");
                        } else {
                            tracing::warn!(key = %self.key, "scheduler leadership lost");
                        }
                    }
                    held = now_held;
                    if held {
                        renew_every
                    } else {
                        // Try again as soon as the holder's lease runs out.
                        match self.remaining().await {
                            Ok(Some(left)) => Duration::from_millis(left).min(renew_every),
                            _ => renew_every,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler lease: Redis unavailable");
                    held = false;
                    self.leadership.set_until(0);
                    renew_every
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            }
        }
        self.leadership.set_until(0);
        if held {
            let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
                .key(&self.key)
                .arg(&self.token)
                .invoke_async(&mut self.conn)
                .await;
            if let Err(e) = released {
                tracing::warn!(error = %e, "scheduler lease not released; it expires on its own");
            }
        }
    }
}
