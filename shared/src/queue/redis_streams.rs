//! An apalis backend on Redis Streams.
//!
//! Keys (with `P` = `ROSE_REDIS_PREFIX`, `Q` = queue name):
//!
//! | key | type | lifetime |
//! |---|---|---|
//! | `P:q:Q:stream` | stream, consumer group `workers` | entries live from push until acknowledged (`XACK` + `XDEL`), so the stream holds only unfinished work |
//!
//! Each entry has fields `id` (what the message names, e.g. the job id),
//! `data` (the JSON message) and `at` (push time, unix ms).
//!
//! Flow: push = `XADD`; each worker process is one consumer of the group and
//! runs a fetch loop on its own connection: `XREADGROUP … BLOCK`, so a push
//! wakes an idle worker at once without polling. Fetched entries sit in the
//! group's pending list under this consumer until the handler finishes; then
//! the [`AckLayer`] acknowledges and deletes them. A heartbeat re-claims this
//! consumer's in-flight entries (`XCLAIM … JUSTID`, which resets their idle
//! time) so long jobs are not stolen; entries idle past the visibility
//! timeout (a dead consumer's) are taken over with `XAUTOCLAIM`. No results
//! are kept in Redis: results live in the database.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::backend::{Backend, BackendConfig, finalize::Ephemeral};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncCommands, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use super::QueueError;

/// The consumer group every worker of a queue joins.
pub const GROUP: &str = "workers";

/// A handle on the Redis queue: pushes, and builds worker backends.
#[derive(Clone)]
pub struct RedisQueue {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How one worker consumes a stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// This consumer's name in the group; unique per worker process.
    pub consumer: String,
    /// Entries fetched ahead of the handlers (and at most per read).
    pub prefetch: usize,
    /// A consumer silent this long loses its entries to others.
    pub visibility_timeout: Duration,
    /// Longest single blocking read.
    pub block: Duration,
}

impl StreamOptions {
    /// Options for a consumer named `consumer` with defaults: prefetch 32,
    /// visibility timeout 60 s, reads blocking up to 5 s.
    #[must_use]
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            prefetch: 32,
            visibility_timeout: Duration::from_secs(60),
            block: Duration::from_secs(5),
        }
    }
}

/// The stream entry a task came from; the ack layer reads it.
#[derive(Debug, Clone)]
pub struct EntryId(pub String);

impl RedisQueue {
    /// Connects (a managed, reconnecting connection for pushes and acks).
    ///
    /// # Errors
    /// When the URL is malformed or Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, QueueError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client.clone()).await?;
        Ok(Self {
            client,
            conn,
            prefix: Arc::from(prefix),
        })
    }

    /// The stream key of `queue`.
    #[must_use]
    pub fn stream_key(&self, queue: &str) -> String {
        format!("{}:q:{queue}:stream", self.prefix)
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

    /// Appends one message to `queue`'s stream.
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
        let at = crate::domain::now_ms();
        let mut conn = self.conn.clone();
        let _: String = conn
            .xadd(
                self.stream_key(queue),
                "*",
                &[("id", id), ("data", data.as_str()), ("at", &at.to_string())],
            )
            .await?;
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

    /// A backend for one worker of `queue`.
    #[must_use]
    pub fn backend<Args>(&self, queue: &str, options: StreamOptions) -> RedisStreamBackend<Args> {
        RedisStreamBackend {
            shared: Arc::new(Shared {
                queue: self.clone(),
                stream: self.stream_key(queue),
                options,
                inflight: Mutex::default(),
            }),
            rx: None,
            stop: CancellationToken::new(),
            _args: PhantomData,
        }
    }
}

/// What the fetch loop, the heartbeat and the ack layer share.
struct Shared {
    queue: RedisQueue,
    stream: String,
    options: StreamOptions,
    /// Entries this consumer holds (buffered or running), for the heartbeat.
    inflight: Mutex<HashSet<String>>,
}

impl Shared {
    fn inflight_snapshot(&self) -> Vec<String> {
        self.inflight
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn track(&self, id: &str, held: bool) {
        if let Ok(mut set) = self.inflight.lock() {
            if held {
                set.insert(id.to_owned());
            } else {
                set.remove(id);
            }
        }
    }

    async fn ack(&self, id: &str) -> Result<(), QueueError> {
        let mut conn = self.queue.conn.clone();
        let _: (i64, i64) = redis::pipe()
            .atomic()
            .xack(&self.stream, GROUP, &[id])
            .xdel(&self.stream, &[id])
            .query_async(&mut conn)
            .await?;
        self.track(id, false);
        Ok(())
    }
}

/// The apalis backend: tasks come from the fetch loop through a channel.
pub struct RedisStreamBackend<Args> {
    shared: Arc<Shared>,
    rx: Option<mpsc::Receiver<Task<Args>>>,
    stop: CancellationToken,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> std::fmt::Debug for RedisStreamBackend<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamBackend")
            .field("stream", &self.shared.stream)
            .field("consumer", &self.shared.options.consumer)
            .finish_non_exhaustive()
    }
}

impl<Args: DeserializeOwned + Send + 'static> RedisStreamBackend<Args> {
    fn start(&mut self) -> &mut mpsc::Receiver<Task<Args>> {
        self.rx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.shared.options.prefetch.max(1));
            tokio::spawn(fetch_loop(self.shared.clone(), tx, self.stop.clone()));
            tokio::spawn(heartbeat_loop(self.shared.clone(), self.stop.clone()));
            rx
        })
    }
}

impl<Args> Drop for RedisStreamBackend<Args> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<Args: DeserializeOwned + Send + 'static> Backend for RedisStreamBackend<Args> {
    type Task = Task<Args>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Args>, QueueError>>> {
        self.start().poll_recv(cx).map(|task| task.map(Ok))
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), QueueError>> {
        // Entries fetched but never started stay pending under this consumer
        // and are reclaimed by a live one after the visibility timeout.
        self.stop.cancel();
        Poll::Ready(Ok(()))
    }
}

impl<Args> BackendConfig for RedisStreamBackend<Args> {
    type Args = Args;
    type Id = String;
    type Kind = Ephemeral;
    type Config = StreamOptions;
    type Layer = AckLayer;

    fn config(&self) -> &StreamOptions {
        &self.shared.options
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> AckLayer {
        AckLayer {
            shared: self.shared.clone(),
        }
    }
}

/// Acknowledges (and deletes) a task's stream entry once its handler finished.
#[derive(Clone)]
pub struct AckLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;
    fn layer(&self, inner: S) -> AckService<S> {
        AckService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`AckLayer`].
#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        let entry = task.ctx().data().get::<EntryId>().cloned();
        let shared = self.shared.clone();
        let fut = self.inner.call(task);
        Box::pin(async move {
            let result = fut.await;
            if let Some(EntryId(id)) = entry
                && let Err(e) = shared.ack(&id).await
            {
                // Unacknowledged, the entry is reclaimed and re-run later;
                // stage checkpoints make that re-run cheap.
                tracing::warn!(entry = %id, error = %e, "queue ack failed");
            }
            result
        })
    }
}

/// Fetches entries into `tx` until `stop`: reclaims idle entries, then blocks
/// on new ones. Errors are logged and retried with a capped backoff.
async fn fetch_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Task<Args>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = fetch_session(&shared, &tx, &stop) => r,
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(stream = %shared.stream, error = %e, "queue fetch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection's worth of fetching; returns `Ok` only when the channel closed.
async fn fetch_session<Args: DeserializeOwned + Send + 'static>(
    shared: &Shared,
    tx: &mpsc::Sender<Task<Args>>,
    stop: &CancellationToken,
) -> Result<(), QueueError> {
    let mut conn = shared
        .queue
        .client
        .get_multiplexed_async_connection()
        .await?;
    ensure_group(&mut conn, &shared.stream).await?;
    let options = &shared.options;
    let reclaim_every = options.visibility_timeout / 2;
    let mut next_reclaim = Instant::now();
    loop {
        // Wait for room so entries are not claimed while nobody can run them.
        let permit = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => return Ok(()) },
        };
        let room = tx.capacity() + 1;
        let entries = if Instant::now() >= next_reclaim {
            next_reclaim = Instant::now() + reclaim_every;
            reclaim(&mut conn, shared, room).await?
        } else {
            Vec::new()
        };
        let entries = if entries.is_empty() {
            let block = options
                .block
                .min(next_reclaim.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1));
            read_new(&mut conn, shared, room, block).await?
        } else {
            entries
        };
        let mut permit = Some(permit);
        for entry in entries {
            let Some(task) = decode::<Args>(shared, &entry).await? else {
                continue;
            };
            shared.track(&entry.id, true);
            match permit.take() {
                Some(p) => p.send(task),
                None => {
                    if tx.send(task).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn ensure_group(conn: &mut MultiplexedConnection, stream: &str) -> Result<(), QueueError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn read_new(
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    count: usize,
    block: Duration,
) -> Result<Vec<StreamId>, QueueError> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(&shared.options.consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(&shared.stream)
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Takes over entries idle longer than the visibility timeout.
async fn reclaim(
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    count: usize,
) -> Result<Vec<StreamId>, QueueError> {
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(&shared.stream)
        .arg(GROUP)
        .arg(&shared.options.consumer)
        .arg(shared.options.visibility_timeout.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    if !reply.claimed.is_empty() {
        tracing::info!(
            stream = %shared.stream,
            count = reply.claimed.len(),
            "reclaimed entries from a silent consumer"
        );
    }
    Ok(reply.claimed)
}

/// The task for an entry; a malformed entry is logged, acknowledged and dropped.
async fn decode<Args: DeserializeOwned>(
    shared: &Shared,
    entry: &StreamId,
) -> Result<Option<Task<Args>>, QueueError> {
    let data = match entry.map.get("data") {
        Some(Value::BulkString(bytes)) => {
            serde_json::from_slice::<Args>(bytes).map_err(|e| e.to_string())
        }
        Some(Value::SimpleString(s)) => serde_json::from_str::<Args>(s).map_err(|e| e.to_string()),
        _ => Err("no data field".to_owned()),
    };
    match data {
        Ok(args) => Ok(Some(
            TaskBuilder::new(args)
                .task_id(TaskId::from_string(entry.id.clone()))
                .data(EntryId(entry.id.clone()))
                .build(),
        )),
        Err(reason) => {
            tracing::error!(stream = %shared.stream, entry = %entry.id, %reason, "dropping malformed queue entry");
            shared.ack(&entry.id).await?;
            Ok(None)
        }
    }
}

/// Resets the idle time of this consumer's entries while it holds them.
async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = (shared.options.visibility_timeout / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ids = shared.inflight_snapshot();
        if ids.is_empty() {
            continue;
        }
        let mut conn = shared.queue.conn.clone();
        for chunk in ids.chunks(500) {
            let renewed: Result<Vec<String>, _> = redis::cmd("XCLAIM")
                .arg(&shared.stream)
                .arg(GROUP)
                .arg(&shared.options.consumer)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID")
                .query_async(&mut conn)
                .await;
            if let Err(e) = renewed {
                tracing::warn!(stream = %shared.stream, error = %e, "queue heartbeat failed");
            }
        }
    }
}
