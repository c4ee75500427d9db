//! Rose's queue on Redis Streams: an apalis backend, plus inspection and repair.
//!
//! # Keys
//!
//! `P` is `ROSE_REDIS_PREFIX`, `Q` a queue name (`voice`, `memory`, …).
//!
//! | key | type | holds | lifetime |
//! |---|---|---|---|
//! | `P:queues` | set | the names of queues ever pushed to | until removed by hand |
//! | `P:q:Q:stream` | stream + consumer group `workers` | jobs waiting or running | an entry lives from push until its handler finished: then `XACK` + `XDEL` remove it, so the stream holds only unfinished work and stays bounded |
//! | `P:q:Q:delayed` | sorted set, score = due time (unix ms) | delayed jobs and retries waiting for their time | from scheduling until promoted into the stream (at most [`PROMOTE_BATCH`] per call) |
//! | `P:q:Q:dead` | stream | jobs whose attempts are exhausted, with their last error | until revived (`rose queue retry`) or purged; capped at about [`DEAD_LETTER_CAP`] entries |
//! | `P:q:Q:stats` | hash | counters `completed`, `retried`, `dead`, `revived`, `reclaimed` | as long as the queue exists (a handful of integers) |
//! | `P:q:Q:push:T` | string | one push's token: a push resent after its connection dropped adds nothing when the first send arrived | 60 s ([`PUSH_TOKEN_TTL`]) |
//!
//! Pub/sub channel `P:q:Q:wake` (no storage) tells promoters that an entry
//! with an earlier due time was scheduled.
//!
//! Stream and dead entries carry the fields `id` (what the message names,
//! e.g. the job id), `data` (the JSON message), `at` (first push, unix ms)
//! and `attempt` (failed attempts so far); dead entries add `error` and
//! `died_at`. Delayed members are JSON `{"u": unique token, "f": [fields…]}`.
//!
//! # Flow
//!
//! Push is `XADD` (bulk: one pipeline). Each worker process is one consumer
//! of the group: its fetch loop blocks in `XREADGROUP … BLOCK` on a
//! connection of its own, so a push wakes an idle worker at once without
//! polling. Entries fetched stay in the group's pending list under that
//! consumer until the handler finished; a heartbeat renews the ones it
//! still owns (`XCLAIM … JUSTID` resets their idle time) so long jobs are
//! never stolen, and entries idle past the visibility timeout — a dead
//! consumer's — are taken over with `XAUTOCLAIM`. A handler error retries
//! the job through the delayed set with exponential, jittered backoff (or
//! when the handler says so), until its attempts run out; then it goes to
//! the dead letters. On graceful shutdown a worker hands its unstarted
//! entries back to the stream. No results are kept in Redis.

mod backend;
mod inspect;
mod scripts;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;

pub use backend::{EntryMeta, RedisStreamBackend, StreamConsumer};
pub use inspect::{ConsumerInfo, ListStatus, QueueEntry, QueueStats};

use super::QueueError;
use crate::domain::now_ms;

/// The consumer group every worker of a queue joins.
pub const GROUP: &str = "workers";
/// Most delayed entries promoted into the stream by one script call.
pub const PROMOTE_BATCH: usize = 1000;
/// Approximate cap on a dead-letter stream's length.
pub const DEAD_LETTER_CAP: usize = 100_000;

/// The keys of one queue.
#[derive(Debug, Clone)]
pub struct Keys {
    pub stream: String,
    pub delayed: String,
    pub dead: String,
    pub stats: String,
    pub wake: String,
}

impl Keys {
    fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:q:{queue}");
        Self {
            stream: format!("{base}:stream"),
            delayed: format!("{base}:delayed"),
            dead: format!("{base}:dead"),
            stats: format!("{base}:stats"),
            wake: format!("{base}:wake"),
        }
    }
}

/// How long a push's token outlives it: far longer than the one resend
/// that can follow it.
pub const PUSH_TOKEN_TTL: Duration = Duration::from_secs(60);

/// `XADD` unless this push's token says it was done already; records the
/// queue's name in `P:queues` (so it is listed again after a Redis that
/// lost its data comes back).
static PUSH_ONCE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[4]) then \
           redis.call('SADD', KEYS[3], ARGV[5]) \
           return redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'data', ARGV[2], 'at', ARGV[3], 'attempt', '0') \
         end \
         return false",
    )
});

/// A handle on the Redis queue: pushes, inspection, and worker backends.
#[derive(Clone)]
pub struct RedisQueue {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    /// Queues already recorded in `P:queues` by this process.
    registered: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How one worker consumes a stream (the options of every carrier).
pub use super::ConsumerOptions as StreamOptions;

/// The stream fields of a fresh message.
fn fields<'a>(id: &'a str, data: &'a str, at: &'a str) -> [(&'static str, &'a str); 4] {
    [("id", id), ("data", data), ("at", at), ("attempt", "0")]
}

impl RedisQueue {
    /// Connects (a managed, reconnecting connection for pushes and acks).
    ///
    /// # Errors
    /// When the URL is malformed or Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, QueueError> {
        let client = redis::Client::open(url)?;
        // Bulk pipelines and bounded scripts can take longer than the
        // client's 500 ms default under load; a slow answer is not a failure.
        let config =
            ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Self {
            client,
            conn,
            prefix: Arc::from(prefix),
            registered: Arc::default(),
        })
    }

    /// The keys of `queue`.
    #[must_use]
    pub fn keys(&self, queue: &str) -> Keys {
        Keys::new(&self.prefix, queue)
    }

    /// The stream key of `queue`.
    #[must_use]
    pub fn stream_key(&self, queue: &str) -> String {
        self.keys(queue).stream
    }

    fn queues_key(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// The key prefix every Rose key starts with.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The shared managed connection.
    #[must_use]
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The client, for connections of their own (blocking reads, pub/sub).
    #[must_use]
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Adds `queue` to `P:queues` once per process.
    fn registration(&self, queue: &str, pipe: &mut redis::Pipeline) {
        let fresh = self
            .registered
            .lock()
            .map(|mut set| set.insert(queue.to_owned()))
            .unwrap_or(true);
        if fresh {
            pipe.sadd(self.queues_key(), queue).ignore();
        }
    }

    /// Appends one message to `queue`, once.
    ///
    /// A push whose connection had dropped (Redis restarted, a failover, a
    /// reset) is sent again once on the reconnected connection. The push
    /// carries a token, `P:q:Q:push:TOKEN`, set in the same script as the
    /// `XADD` and kept [`PUSH_TOKEN_TTL`]: when the first send did reach
    /// Redis and only its answer was lost, the second finds the token and
    /// adds nothing, so a message is never queued twice (which could run a
    /// job twice at once and pay its providers twice).
    ///
    /// # Errors
    /// When Redis refuses or cannot be reached.
    pub async fn push<T: Serialize + Sync>(
        &self,
        queue: &str,
        id: &str,
        message: &T,
    ) -> Result<(), QueueError> {
        let data = serde_json::to_string(message)?;
        let at = now_ms().to_string();
        let token = format!("{}:q:{queue}:push:{}", self.prefix, ulid::Ulid::generate());
        let stream = self.stream_key(queue);
        let queues = self.queues_key();
        let ttl = PUSH_TOKEN_TTL.as_millis().to_string();
        let mut conn = self.conn.clone();
        let mut tries = 0;
        loop {
            tries += 1;
            let sent: Result<redis::Value, redis::RedisError> = PUSH_ONCE
                .key(&stream)
                .key(&token)
                .key(&queues)
                .arg(id)
                .arg(&data)
                .arg(&at)
                .arg(&ttl)
                .arg(queue)
                .invoke_async(&mut conn)
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if tries < 2 && e.is_connection_dropped() => {
                    tracing::debug!(queue, error = %e, "push met a dropped connection; sending it again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Appends many messages to `queue` in pipelines of 1,000.
    ///
    /// # Errors
    /// When Redis refuses or cannot be reached (some may have been pushed).
    pub async fn push_bulk<T: Serialize + Sync>(
        &self,
        queue: &str,
        items: &[(String, T)],
    ) -> Result<(), QueueError> {
        let stream = self.stream_key(queue);
        let at = now_ms().to_string();
        for chunk in items.chunks(1000) {
            let mut pipe = redis::pipe();
            self.registration(queue, &mut pipe);
            for (id, message) in chunk {
                let data = serde_json::to_string(message)?;
                pipe.xadd(&stream, "*", &fields(id, &data, &at)).ignore();
            }
            pipe.query_async::<()>(&mut self.conn.clone()).await?;
        }
        Ok(())
    }

    /// Schedules one message to enter `queue` after `delay`.
    ///
    /// # Errors
    /// When Redis refuses or cannot be reached.
    pub async fn push_delayed<T: Serialize + Sync>(
        &self,
        queue: &str,
        id: &str,
        message: &T,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let data = serde_json::to_string(message)?;
        let now = now_ms();
        let due = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
        let member = delayed_member(&fields(id, &data, &now.to_string()));
        let keys = self.keys(queue);
        let mut pipe = redis::pipe();
        self.registration(queue, &mut pipe);
        pipe.zadd(&keys.delayed, member, due).ignore();
        pipe.publish(&keys.wake, due).ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// `PING`.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Hands every entry pending under `consumer` back to the stream (re-added
    /// at its end for other workers). The consumer itself stays in the group
    /// (deleting it would drop anything still pending under it); departed
    /// consumers are forgotten later, once they hold nothing. Returns how many.
    ///
    /// # Errors
    /// When Redis cannot be read or written.
    pub async fn hand_back(&self, keys: &Keys, consumer: &str) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&keys.stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(consumer)
            .query_async(&mut conn)
            .await?;
        let ids: Vec<String> = pending.into_iter().map(|(id, ..)| id).collect();
        let mut handed = 0u64;
        for chunk in ids.chunks(500) {
            let n: i64 = scripts::HANDBACK
                .key(&keys.stream)
                .arg(GROUP)
                .arg(chunk)
                .invoke_async(&mut conn)
                .await?;
            handed += u64::try_from(n).unwrap_or(0);
        }
        if handed > 0 {
            tracing::info!(stream = %keys.stream, count = handed, "handed jobs back to the queue");
        }
        Ok(handed)
    }

    /// A backend for one worker of `queue`.
    #[must_use]
    pub fn backend<Args>(&self, queue: &str, options: StreamOptions) -> RedisStreamBackend<Args> {
        RedisStreamBackend::new(StreamConsumer::new(self.clone(), self.keys(queue), options))
    }
}

/// A delayed-set member: a unique token and the entry's fields.
fn delayed_member(fields: &[(&str, &str)]) -> String {
    let flat: Vec<&str> = fields.iter().flat_map(|(k, v)| [*k, *v]).collect();
    serde_json::json!({"u": ulid::Ulid::generate().to_string(), "f": flat}).to_string()
}
