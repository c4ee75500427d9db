//! The apalis backend: a fetch loop, a heartbeat, a delayed-set promoter and
//! a batching acknowledger per worker, and the layer that settles each task.
//!
//! An entry is *held* (renewed by the heartbeat) from its fetch until its
//! settlement was attempted, on every path: a settle that fails (Redis down
//! at that moment) or a handler that unwinds leaves the entry pending but no
//! longer renewed, so it ages past the visibility timeout and is reclaimed
//! by a worker (this one included) instead of staying claimed for good.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use futures::StreamExt;
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamReadReply};
use redis::{AsyncCommands, Value};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::scripts::{BURY, PROMOTE, RENEW, RETRY};
use super::{
    DEAD_LETTER_CAP, GROUP, Keys, PROMOTE_BATCH, RedisQueue, StreamOptions, delayed_member,
};
use crate::domain::now_ms;
use crate::queue::consumer::{Consumer, ConsumerBackend};
use crate::queue::settle::{Carrier, Held};
use crate::queue::{Abort, ConsumerOptions, QueueError, Settle};

/// A stream entry as a handler's task carries it (in the task's data).
#[derive(Debug, Clone)]
pub struct EntryMeta {
    /// The stream entry id.
    pub entry_id: String,
    /// What the message names (e.g. the job id).
    pub id: String,
    /// The JSON message as stored.
    pub data: String,
    /// First push, unix ms.
    pub at: String,
    /// Failed attempts before this one.
    pub attempt: u32,
}

type AckRequest = (String, oneshot::Sender<Result<(), QueueError>>);

/// One consumer of a stream: what its loops, its settling layer and its
/// backend share.
pub struct StreamConsumer {
    queue: RedisQueue,
    keys: Keys,
    options: StreamOptions,
    /// Entries this consumer holds (buffered or running), for the heartbeat.
    held: Held,
    /// The Redis client id of the connection blocked in `XREADGROUP`, so a
    /// closing worker can end that read (`CLIENT UNBLOCK`) instead of
    /// abandoning it mid-flight.
    reader_id: AtomicI64,
    acks: mpsc::UnboundedSender<AckRequest>,
    ack_rx: Mutex<Option<mpsc::UnboundedReceiver<AckRequest>>>,
}

impl Carrier for StreamConsumer {
    type Meta = EntryMeta;

    fn claim(meta: &EntryMeta) -> &str {
        &meta.entry_id
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn complete(&self, meta: &EntryMeta) -> BoxFuture<'_, Result<(), QueueError>> {
        let entry_id = meta.entry_id.clone();
        Box::pin(async move { self.complete(&entry_id).await })
    }

    fn fail<'a>(
        &'a self,
        meta: &'a EntryMeta,
        error: &'a BoxDynError,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(self.fail(meta, error))
    }
}

impl StreamConsumer {
    /// Acknowledges a finished entry through the batching acknowledger.
    async fn complete(&self, entry_id: &str) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        self.acks
            .send((entry_id.to_owned(), tx))
            .map_err(|_| QueueError::Stopped("acknowledger"))?;
        rx.await
            .map_err(|_| QueueError::Stopped("acknowledger"))??;
        Ok(())
    }

    /// Settles a failed attempt as the queue's [`RetryPolicy`] says: retry
    /// later, or bury when attempts ran out or the handler said stop.
    ///
    /// [`RetryPolicy`]: crate::queue::RetryPolicy
    async fn fail(&self, meta: &EntryMeta, error: &BoxDynError) -> Result<(), QueueError> {
        let attempts = meta.attempt + 1;
        let mut conn = self.queue.conn.clone();
        let (wait, counted) = match self.options.retry.settle(attempts, error) {
            Settle::Retry(wait) => (wait, attempts),
            Settle::Defer(wait) => (wait, meta.attempt),
            Settle::Bury(reason) => {
                let died_at = now_ms().to_string();
                let attempt = attempts.to_string();
                BURY.key(&self.keys.stream)
                    .key(&self.keys.dead)
                    .key(&self.keys.stats)
                    .arg(GROUP)
                    .arg(&meta.entry_id)
                    .arg(DEAD_LETTER_CAP)
                    .arg(&[
                        "id", &meta.id, "data", &meta.data, "at", &meta.at, "attempt", &attempt,
                        "error", &reason, "died_at", &died_at,
                    ])
                    .invoke_async::<i64>(&mut conn)
                    .await?;
                tracing::warn!(queue_entry = %meta.entry_id, id = %meta.id, attempts, error = %reason, "job moved to the dead letters");
                return Ok(());
            }
        };
        let due = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
        let attempt = counted.to_string();
        let member = delayed_member(&[
            ("id", &meta.id),
            ("data", &meta.data),
            ("at", &meta.at),
            ("attempt", &attempt),
        ]);
        RETRY
            .key(&self.keys.stream)
            .key(&self.keys.delayed)
            .key(&self.keys.stats)
            .arg(GROUP)
            .arg(&meta.entry_id)
            .arg(due)
            .arg(member)
            .arg(&self.keys.wake)
            .invoke_async::<i64>(&mut conn)
            .await?;
        tracing::info!(id = %meta.id, attempts = counted, wait_ms = wait.as_millis() as u64, "job retry scheduled");
        Ok(())
    }
}

/// The apalis backend of one Redis Streams consumer.
pub type RedisStreamBackend<Args> = ConsumerBackend<StreamConsumer, Args>;

impl StreamConsumer {
    pub(super) fn new(queue: RedisQueue, keys: Keys, options: StreamOptions) -> Self {
        let (acks, ack_rx) = mpsc::unbounded_channel();
        Self {
            queue,
            keys,
            options,
            held: Held::default(),
            reader_id: AtomicI64::new(0),
            acks,
            ack_rx: Mutex::new(Some(ack_rx)),
        }
    }
}

impl Consumer for StreamConsumer {
    fn options(&self) -> &ConsumerOptions {
        &self.options
    }

    fn spawn<Args: DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        tx: mpsc::Sender<Task<Args>>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(heartbeat_loop(self.clone(), stop.clone()));
        tokio::spawn(promote_loop(self.clone(), stop.clone()));
        if let Some(ack_rx) = self.ack_rx.lock().ok().and_then(|mut r| r.take()) {
            tokio::spawn(ack_loop(self.clone(), ack_rx, stop.clone()));
        }
        tokio::spawn(fetch_loop(self.clone(), tx, stop))
    }

    fn close(
        self: Arc<Self>,
        fetcher: Option<JoinHandle<()>>,
    ) -> BoxFuture<'static, Result<(), QueueError>> {
        Box::pin(async move {
            // End the blocked read so it completes (and cannot deliver to
            // this consumer after the hand-back below). Repeated, in case
            // the read only began after an unblock.
            if let Some(mut fetcher) = fetcher {
                loop {
                    let reader = self.reader_id.load(Ordering::SeqCst);
                    if reader > 0 {
                        let _: Result<i64, _> = redis::cmd("CLIENT")
                            .arg("UNBLOCK")
                            .arg(reader)
                            .query_async(&mut self.queue.conn.clone())
                            .await;
                    }
                    if tokio::time::timeout(Duration::from_millis(100), &mut fetcher)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
            }
            hand_back(&self).await
        })
    }
}

/// Acknowledges finished entries in batches: whatever finished while the
/// previous batch was in flight goes in the next `XACK` + `XDEL`. Ends once
/// `stop` is cancelled (the worker closed: every started task settled) and
/// nothing is left to acknowledge; its own sender lives in `shared`, so the
/// channel alone would never end it.
async fn ack_loop(
    shared: Arc<StreamConsumer>,
    mut rx: mpsc::UnboundedReceiver<AckRequest>,
    stop: CancellationToken,
) {
    let mut conn = shared.queue.conn.clone();
    let mut batch: Vec<AckRequest> = Vec::with_capacity(512);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, 512) => if n == 0 { return },
            () = stop.cancelled() => {
                while batch.len() < 512 && let Ok(request) = rx.try_recv() {
                    batch.push(request);
                }
                if batch.is_empty() {
                    rx.close();
                    return;
                }
            }
        }
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let result: Result<(), redis::RedisError> = redis::pipe()
            .atomic()
            .xack(&shared.keys.stream, super::GROUP, &ids)
            .ignore()
            .xdel(&shared.keys.stream, &ids)
            .ignore()
            .hincr(&shared.keys.stats, "completed", ids.len())
            .ignore()
            .query_async(&mut conn)
            .await;
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone().map_err(QueueError::from));
        }
    }
}

/// Fetches entries until `stop`; errors are logged and retried with a capped backoff.
async fn fetch_loop<Args: DeserializeOwned + Send + 'static>(
    shared: Arc<StreamConsumer>,
    tx: mpsc::Sender<Task<Args>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        // Not raced against `stop`: a read in flight always completes (a
        // closing worker unblocks it), so no entry is delivered unseen.
        match fetch_session(&shared, &tx, &stop).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(stream = %shared.keys.stream, error = %e, "queue fetch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection's worth of fetching; `Ok` only when the channel closed.
async fn fetch_session<Args: DeserializeOwned + Send + 'static>(
    shared: &StreamConsumer,
    tx: &mpsc::Sender<Task<Args>>,
    stop: &CancellationToken,
) -> Result<(), QueueError> {
    // This connection carries the blocking read: its response timeout must
    // outlast the longest block (the client's default is 500 ms).
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(shared.options.block + Duration::from_secs(10)));
    let mut conn = shared
        .queue
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let client_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    shared.reader_id.store(client_id, Ordering::SeqCst);
    ensure_group(&mut conn, &shared.keys.stream).await?;
    forget_departed_consumers(&mut conn, shared).await?;
    let options = &shared.options;
    let reclaim_every = options.visibility_timeout / 2;
    let mut next_reclaim = Instant::now();
    loop {
        // Wait for room, so entries are not claimed while nobody can run them.
        let permit = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => return Ok(()) },
        };
        let room = tx.capacity() + 1;
        let mut entries = Vec::new();
        if Instant::now() >= next_reclaim {
            next_reclaim = Instant::now() + reclaim_every;
            entries = reclaim(&mut conn, shared, room).await?;
        }
        if entries.is_empty() {
            let block = options
                .block
                .min(next_reclaim.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1));
            if stop.is_cancelled() {
                return Ok(());
            }
            entries = read_new(&mut conn, shared, room, block).await?;
        }
        if stop.is_cancelled() {
            // Fetched after the worker began closing: left pending, and
            // handed back with the rest.
            return Ok(());
        }
        let mut permit = Some(permit);
        for entry in entries {
            let Some(task) = decode::<Args>(shared, &entry).await? else {
                continue;
            };
            shared.held.hold(&entry.id);
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

/// Removes consumers that hold nothing and were silent for long (workers
/// that stopped), so inspection lists the living.
async fn forget_departed_consumers(
    conn: &mut MultiplexedConnection,
    shared: &StreamConsumer,
) -> Result<(), QueueError> {
    let silent = (shared.options.visibility_timeout * 10).max(Duration::from_secs(3600));
    let info: StreamInfoConsumersReply = conn.xinfo_consumers(&shared.keys.stream, GROUP).await?;
    for consumer in info.consumers {
        if consumer.pending == 0 && Duration::from_millis(consumer.idle as u64) > silent {
            let _: i64 = conn
                .xgroup_delconsumer(&shared.keys.stream, GROUP, &consumer.name)
                .await?;
        }
    }
    Ok(())
}

async fn read_new(
    conn: &mut MultiplexedConnection,
    shared: &StreamConsumer,
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
        .arg(&shared.keys.stream)
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// Takes over entries idle longer than the visibility timeout (a dead consumer's).
async fn reclaim(
    conn: &mut MultiplexedConnection,
    shared: &StreamConsumer,
    count: usize,
) -> Result<Vec<StreamId>, QueueError> {
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(&shared.keys.stream)
        .arg(GROUP)
        .arg(&shared.options.consumer)
        .arg(shared.options.visibility_timeout.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    if !reply.claimed.is_empty() {
        let _: i64 = conn
            .hincr(&shared.keys.stats, "reclaimed", reply.claimed.len())
            .await?;
        tracing::info!(
            stream = %shared.keys.stream,
            count = reply.claimed.len(),
            "reclaimed entries from a silent consumer"
        );
    }
    Ok(reply.claimed)
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The task for an entry; a malformed entry goes straight to the dead letters.
async fn decode<Args: DeserializeOwned>(
    shared: &StreamConsumer,
    entry: &StreamId,
) -> Result<Option<Task<Args>>, QueueError> {
    let meta = EntryMeta {
        entry_id: entry.id.clone(),
        id: field(&entry.map, "id").unwrap_or_default(),
        data: field(&entry.map, "data").unwrap_or_default(),
        at: field(&entry.map, "at").unwrap_or_default(),
        attempt: field(&entry.map, "attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
    };
    match serde_json::from_str::<Args>(&meta.data) {
        Ok(args) => Ok(Some(
            TaskBuilder::new(args)
                .task_id(TaskId::from_string(entry.id.clone()))
                .attempt(meta.attempt as usize)
                .data(Arc::new(meta))
                .build(),
        )),
        Err(e) => {
            tracing::error!(stream = %shared.keys.stream, entry = %entry.id, error = %e, "undecodable queue entry");
            let error: BoxDynError = Box::new(Abort(format!("undecodable message: {e}")));
            shared.fail(&meta, &error).await?;
            Ok(None)
        }
    }
}

/// Resets the idle time of the entries this consumer holds, while it holds them.
async fn heartbeat_loop(shared: Arc<StreamConsumer>, stop: CancellationToken) {
    let every = (shared.options.visibility_timeout / 3).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let ids = shared.held.snapshot();
        let mut conn = shared.queue.conn.clone();
        for chunk in ids.chunks(500) {
            let renewed = RENEW
                .key(&shared.keys.stream)
                .arg(GROUP)
                .arg(&shared.options.consumer)
                .arg(chunk)
                .invoke_async::<i64>(&mut conn)
                .await;
            if let Err(e) = renewed {
                tracing::warn!(stream = %shared.keys.stream, error = %e, "queue heartbeat failed");
            }
        }
    }
}

/// Moves due delayed entries into the stream, sleeping until the next due
/// time or until a wake-up says an earlier one was scheduled.
async fn promote_loop(shared: Arc<StreamConsumer>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match promote_session(&shared, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(stream = %shared.keys.stream, error = %e, "delayed promotion failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn promote_session(
    shared: &StreamConsumer,
    stop: &CancellationToken,
) -> Result<(), QueueError> {
    let mut pubsub = shared.queue.client.get_async_pubsub().await?;
    pubsub.subscribe(&shared.keys.wake).await?;
    let mut wakes = pubsub.on_message();
    let mut conn = shared.queue.conn.clone();
    loop {
        let next_due = loop {
            let (moved, next): (usize, String) = PROMOTE
                .key(&shared.keys.delayed)
                .key(&shared.keys.stream)
                .arg(now_ms())
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            if moved < PROMOTE_BATCH {
                break next.parse::<f64>().ok().filter(|due| *due >= 0.0);
            }
        };
        let sleep = match next_due {
            Some(due) => Duration::from_millis((due as i64 - now_ms()).max(0) as u64),
            None => shared.options.visibility_timeout,
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(sleep) => {}
            wake = wakes.next() => {
                if wake.is_none() {
                    return Err(QueueError::Stopped("wake-up subscription"));
                }
            }
        }
    }
}

/// Hands this consumer's remaining entries back to the stream.
async fn hand_back(shared: &StreamConsumer) -> Result<(), QueueError> {
    shared
        .queue
        .hand_back(&shared.keys, &shared.options.consumer)
        .await
        .map(|_| ())
}
