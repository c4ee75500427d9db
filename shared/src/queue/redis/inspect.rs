//! Inspection and repair of the Redis queues: counts, listings, reviving
//! dead jobs, purging. Every call reads a bounded number of entries.

use std::collections::HashMap;
use std::str::FromStr;

use redis::AsyncCommands;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamRangeReply};
use serde::Serialize;

use super::scripts::REVIVE;
use super::{GROUP, Keys, RedisQueue};
use crate::domain::now_ms;
use crate::queue::QueueError;

/// One consumer (worker process) of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    /// Entries it holds.
    pub pending: u64,
    /// Since it last read or renewed, in ms.
    pub idle_ms: u64,
}

/// A queue's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub queue: String,
    /// Waiting for a worker.
    pub pending: u64,
    /// Scheduled for later (delays and retries).
    pub delayed: u64,
    /// Fetched by a worker and not yet finished.
    pub running: u64,
    /// In the dead letters.
    pub dead: u64,
    /// Age of the oldest waiting job, in ms.
    pub oldest_pending_age_ms: Option<u64>,
    pub consumers: Vec<ConsumerInfo>,
    /// Lifetime counters.
    pub completed: u64,
    pub retried: u64,
    pub buried: u64,
    pub revived: u64,
    pub reclaimed: u64,
}

/// Which entries to list or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStatus {
    Pending,
    Delayed,
    Running,
    Dead,
}

impl ListStatus {
    /// The name used on the command line and in JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delayed => "delayed",
            Self::Running => "running",
            Self::Dead => "dead",
        }
    }
}

impl FromStr for ListStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "delayed" | "scheduled" => Ok(Self::Delayed),
            "running" => Ok(Self::Running),
            "dead" | "failed" => Ok(Self::Dead),
            other => Err(format!(
                "unknown status {other:?}: expected pending, delayed, running or dead"
            )),
        }
    }
}

/// One listed job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueEntry {
    pub queue: String,
    pub status: &'static str,
    /// The stream entry id (dead and waiting/running entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// What the message names (e.g. the job id).
    pub id: String,
    pub attempt: u32,
    /// First push, unix ms.
    pub enqueued_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub died_at: Option<i64>,
}

fn text(map: &HashMap<String, redis::Value>, name: &str) -> Option<String> {
    redis::from_redis_value::<String>(map.get(name)?.clone()).ok()
}

/// The unix ms a stream id was made at (`<ms>-<seq>`).
fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

impl QueueEntry {
    fn from_fields(
        queue: &str,
        status: ListStatus,
        entry_id: Option<String>,
        map: &HashMap<String, redis::Value>,
    ) -> Self {
        Self {
            queue: queue.to_owned(),
            status: status.as_str(),
            entry_id,
            id: text(map, "id").unwrap_or_default(),
            attempt: text(map, "attempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            enqueued_at: text(map, "at").and_then(|a| a.parse().ok()),
            due_at: None,
            consumer: None,
            idle_ms: None,
            error: text(map, "error"),
            died_at: text(map, "died_at").and_then(|a| a.parse().ok()),
        }
    }
}

impl RedisQueue {
    /// Every queue ever pushed to, sorted.
    ///
    /// # Errors
    /// When Redis cannot be read.
    pub async fn queue_names(&self) -> Result<Vec<String>, QueueError> {
        let mut names: Vec<String> = self.connection().smembers(self.queues_key()).await?;
        names.sort();
        Ok(names)
    }

    /// The group's last delivered id and pending count, when the group exists.
    async fn group_state(&self, keys: &Keys) -> Result<Option<(String, u64)>, QueueError> {
        let mut conn = self.connection();
        let exists: bool = conn.exists(&keys.stream).await?;
        if !exists {
            return Ok(None);
        }
        let groups: StreamInfoGroupsReply = conn.xinfo_groups(&keys.stream).await?;
        Ok(groups
            .groups
            .into_iter()
            .find(|g| g.name == GROUP)
            .map(|g| (g.last_delivered_id, g.pending as u64)))
    }

    /// A queue's counts, consumers and age of its oldest waiting job.
    ///
    /// # Errors
    /// When Redis cannot be read.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.connection();
        let group = self.group_state(&keys).await?;
        let (len, delayed, dead, counters): (u64, u64, u64, HashMap<String, u64>) = redis::pipe()
            .xlen(&keys.stream)
            .zcard(&keys.delayed)
            .xlen(&keys.dead)
            .hgetall(&keys.stats)
            .query_async(&mut conn)
            .await?;
        let (start, running) = match &group {
            Some((last, pending)) => (format!("({last}"), *pending),
            None => ("-".to_owned(), 0),
        };
        let first: StreamRangeReply = conn.xrange_count(&keys.stream, start, "+", 1).await?;
        let oldest = first
            .ids
            .first()
            .and_then(|e| id_ms(&e.id))
            .map(|ms| u64::try_from(now_ms() - ms).unwrap_or(0));
        let consumers = if group.is_some() {
            let info: StreamInfoConsumersReply = conn.xinfo_consumers(&keys.stream, GROUP).await?;
            info.consumers
                .into_iter()
                .map(|c| ConsumerInfo {
                    name: c.name,
                    pending: c.pending as u64,
                    idle_ms: c.idle as u64,
                })
                .collect()
        } else {
            Vec::new()
        };
        let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
        Ok(QueueStats {
            queue: queue.to_owned(),
            pending: len.saturating_sub(running),
            delayed,
            running,
            dead,
            oldest_pending_age_ms: oldest,
            consumers,
            completed: counter("completed"),
            retried: counter("retried"),
            buried: counter("dead"),
            revived: counter("revived"),
            reclaimed: counter("reclaimed"),
        })
    }

    /// Up to `limit` jobs of `queue` in `status` (dead ones newest first).
    ///
    /// # Errors
    /// When Redis cannot be read.
    pub async fn list(
        &self,
        queue: &str,
        status: ListStatus,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.connection();
        let limit = limit.clamp(1, 10_000);
        let entries = match status {
            ListStatus::Pending => {
                let start = match self.group_state(&keys).await? {
                    Some((last, _)) => format!("({last}"),
                    None => "-".to_owned(),
                };
                let range: StreamRangeReply =
                    conn.xrange_count(&keys.stream, start, "+", limit).await?;
                range
                    .ids
                    .into_iter()
                    .map(|e| QueueEntry::from_fields(queue, status, Some(e.id.clone()), &e.map))
                    .collect()
            }
            ListStatus::Running => {
                if self.group_state(&keys).await?.is_none() {
                    return Ok(Vec::new());
                }
                let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                    .arg(&keys.stream)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?;
                let mut out = Vec::with_capacity(pending.len());
                for (entry_id, consumer, idle, _) in pending {
                    let range: StreamRangeReply =
                        conn.xrange(&keys.stream, &entry_id, &entry_id).await?;
                    let Some(e) = range.ids.first() else { continue };
                    let mut entry = QueueEntry::from_fields(queue, status, Some(entry_id), &e.map);
                    entry.consumer = Some(consumer);
                    entry.idle_ms = Some(idle);
                    out.push(entry);
                }
                out
            }
            ListStatus::Delayed => {
                let members: Vec<(String, f64)> = conn
                    .zrange_withscores(
                        &keys.delayed,
                        0,
                        isize::try_from(limit).unwrap_or(10_000) - 1,
                    )
                    .await?;
                members
                    .into_iter()
                    .filter_map(|(member, due)| {
                        let parsed: serde_json::Value = serde_json::from_str(&member).ok()?;
                        let flat: Vec<String> =
                            serde_json::from_value(parsed.get("f")?.clone()).ok()?;
                        let map: HashMap<String, redis::Value> = flat
                            .chunks(2)
                            .filter_map(|kv| match kv {
                                [k, v] => Some((
                                    k.clone(),
                                    redis::Value::BulkString(v.clone().into_bytes()),
                                )),
                                _ => None,
                            })
                            .collect();
                        let mut entry = QueueEntry::from_fields(queue, status, None, &map);
                        entry.due_at = Some(due as i64);
                        Some(entry)
                    })
                    .collect()
            }
            ListStatus::Dead => {
                let range: StreamRangeReply =
                    conn.xrevrange_count(&keys.dead, "+", "-", limit).await?;
                range
                    .ids
                    .into_iter()
                    .map(|e| QueueEntry::from_fields(queue, status, Some(e.id.clone()), &e.map))
                    .collect()
            }
        };
        Ok(entries)
    }

    /// Re-enqueues the dead job named `id` (its message id, e.g. a job id,
    /// or its dead-letter entry id) from whichever queue holds it, attempts
    /// reset. Returns the queue it was revived into.
    ///
    /// # Errors
    /// When Redis cannot be read or written.
    pub async fn revive(&self, id: &str) -> Result<Option<String>, QueueError> {
        let mut conn = self.connection();
        for queue in self.queue_names().await? {
            let keys = self.keys(&queue);
            let mut start = "-".to_owned();
            loop {
                let range: StreamRangeReply =
                    conn.xrange_count(&keys.dead, &start, "+", 1000).await?;
                let Some(last) = range.ids.last().map(|e| e.id.clone()) else {
                    break;
                };
                let found = range
                    .ids
                    .iter()
                    .find(|e| e.id == id || text(&e.map, "id").as_deref() == Some(id));
                if let Some(entry) = found {
                    let revived: i64 = REVIVE
                        .key(&keys.dead)
                        .key(&keys.stream)
                        .key(&keys.stats)
                        .arg(&entry.id)
                        .invoke_async(&mut conn)
                        .await?;
                    return Ok((revived == 1).then_some(queue));
                }
                start = format!("({last}");
            }
        }
        Ok(None)
    }

    /// Re-enqueues every dead job of `queue`; returns how many.
    ///
    /// # Errors
    /// When Redis cannot be read or written.
    pub async fn revive_all(&self, queue: &str) -> Result<u64, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.connection();
        let mut revived = 0u64;
        loop {
            let range: StreamRangeReply = conn.xrange_count(&keys.dead, "-", "+", 500).await?;
            if range.ids.is_empty() {
                return Ok(revived);
            }
            for entry in range.ids {
                let n: i64 = REVIVE
                    .key(&keys.dead)
                    .key(&keys.stream)
                    .key(&keys.stats)
                    .arg(&entry.id)
                    .invoke_async(&mut conn)
                    .await?;
                revived += u64::try_from(n).unwrap_or(0);
            }
        }
    }

    /// Drops every `dead` or `delayed` job of `queue`; returns how many.
    /// Waiting and running jobs are not purged: their rows expect them.
    ///
    /// # Errors
    /// [`QueueError::Refused`] for other statuses; when Redis fails.
    pub async fn purge(&self, queue: &str, status: ListStatus) -> Result<u64, QueueError> {
        let keys = self.keys(queue);
        let mut conn = self.connection();
        let (count, key) = match status {
            ListStatus::Dead => (conn.xlen(&keys.dead).await?, keys.dead),
            ListStatus::Delayed => (conn.zcard(&keys.delayed).await?, keys.delayed),
            other => {
                return Err(QueueError::Refused(format!(
                    "{} jobs cannot be purged; only dead or delayed",
                    other.as_str()
                )));
            }
        };
        let _: i64 = conn.del(key).await?;
        Ok(count)
    }
}
