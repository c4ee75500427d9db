//! The embedded memory store: vectors in the SQL database (table `memories`,
//! little-endian `f32` blobs), exact cosine top-k computed in Rust.
//!
//! Each owner's vectors are cached in the process after the first search and
//! reused while the owner's row count and newest id are unchanged (one cheap
//! indexed query per search), so a search over thousands of memories costs a
//! scan of memory, not of the database. Another process's recall times reach
//! this cache on its next change; they only nudge the recency weighting.
//!
//! The cache is bounded ([`CacheLimits`]): least recently used owners go
//! first once it holds more than 1,000 owners or 50,000 vectors (about 80 MB
//! of vectors and texts), and an owner unused for 10 minutes goes at the next
//! search. Erasing a session, an owner or capped memories evicts the owners
//! concerned at once, so an erased person's texts do not stay in this
//! process; another process drops its copy at its next search of that owner
//! (the version changed) or when the copy ages out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Listed, MemoryError, MemoryStore, NewMemory, Scored, embed::cosine};
use crate::domain::{SessionId, now_ms};
use crate::store::Database;

/// Runs the same statement on either pool.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    text: String,
    created_at: i64,
    last_recalled_at: i64,
    vector: Vec<f32>,
}

#[derive(Debug)]
struct OwnerCache {
    /// `(row count, newest id)` when loaded.
    version: (i64, Option<String>),
    rows: Vec<Row>,
}

/// How much of the database the per-owner cache may hold.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Owners cached at most.
    pub owners: usize,
    /// Vectors cached at most, over all owners; an owner with more is not
    /// cached (searched straight from the database).
    pub vectors: usize,
    /// An owner unused this long is dropped.
    pub idle: Duration,
}

impl Default for CacheLimits {
    /// 1,000 owners, 50,000 vectors (384 × 4 bytes each, ~80 MB with
    /// texts), 10 minutes idle.
    fn default() -> Self {
        Self {
            owners: 1_000,
            vectors: 50_000,
            idle: Duration::from_secs(600),
        }
    }
}

#[derive(Debug)]
struct Cached {
    entry: Arc<OwnerCache>,
    used: Instant,
}

/// The bounded LRU of owners' vectors.
#[derive(Debug, Default)]
struct Lru {
    owners: HashMap<String, Cached>,
    vectors: usize,
}

impl Lru {
    fn get(&mut self, owner: &str, now: Instant) -> Option<Arc<OwnerCache>> {
        let hit = self.owners.get_mut(owner)?;
        hit.used = now;
        Some(hit.entry.clone())
    }

    fn remove(&mut self, owner: &str) {
        if let Some(gone) = self.owners.remove(owner) {
            self.vectors -= gone.entry.rows.len();
        }
    }

    fn insert(&mut self, owner: &str, entry: Arc<OwnerCache>, now: Instant, limits: CacheLimits) {
        self.remove(owner);
        let size = entry.rows.len();
        if size > limits.vectors {
            return;
        }
        self.owners
            .retain(|_, c| now.saturating_duration_since(c.used) < limits.idle);
        self.vectors = self.owners.values().map(|c| c.entry.rows.len()).sum();
        while self.owners.len() + 1 > limits.owners || self.vectors + size > limits.vectors {
            let Some(oldest) = self
                .owners
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(o, _)| o.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.vectors += size;
        self.owners
            .insert(owner.to_owned(), Cached { entry, used: now });
    }
}

/// Memories in Rose's own database.
#[derive(Debug, Clone)]
pub struct EmbeddedMemory {
    db: Database,
    cache: Arc<Mutex<Lru>>,
    limits: CacheLimits,
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

type RawRow = (String, String, i64, i64, Vec<u8>);

impl EmbeddedMemory {
    /// A store on `db` (migrated), with the default [`CacheLimits`].
    #[must_use]
    pub fn new(db: Database) -> Self {
        Self::with_cache_limits(db, CacheLimits::default())
    }

    /// A store on `db` whose cache keeps to `limits`.
    #[must_use]
    pub fn with_cache_limits(db: Database, limits: CacheLimits) -> Self {
        Self {
            db,
            cache: Arc::default(),
            limits,
        }
    }

    /// The owners cached now, and how many vectors they hold (inspection).
    #[must_use]
    pub fn cached(&self) -> (Vec<String>, usize) {
        self.cache.lock().map_or((Vec::new(), 0), |c| {
            let mut owners: Vec<String> = c.owners.keys().cloned().collect();
            owners.sort();
            (owners, c.vectors)
        })
    }

    fn evict(&self, owners: &[String]) {
        if let Ok(mut cache) = self.cache.lock() {
            for owner in owners {
                cache.remove(owner);
            }
        }
    }

    async fn version(&self, owner: &str) -> Result<(i64, Option<String>), MemoryError> {
        let sql = "SELECT COUNT(*), MAX(id) FROM memories WHERE owner = $1";
        Ok(on_pool!(&self.db, |pool| sqlx::query_as(sql)
            .bind(owner)
            .fetch_one(pool)
            .await)?)
    }

    async fn rows(&self, owner: &str) -> Result<Arc<OwnerCache>, MemoryError> {
        let version = self.version(owner).await?;
        if let Ok(mut cache) = self.cache.lock()
            && let Some(hit) = cache.get(owner, Instant::now())
            && hit.version == version
        {
            return Ok(hit);
        }
        let sql =
            "SELECT id, text, created_at, last_recalled_at, vector FROM memories WHERE owner = $1";
        let raw: Vec<RawRow> = on_pool!(&self.db, |pool| sqlx::query_as(sql)
            .bind(owner)
            .fetch_all(pool)
            .await)?;
        let rows = raw
            .into_iter()
            .map(|(id, text, created_at, last_recalled_at, vector)| Row {
                id,
                text,
                created_at,
                last_recalled_at,
                vector: from_bytes(&vector),
            })
            .collect();
        let loaded = Arc::new(OwnerCache { version, rows });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(owner, loaded.clone(), Instant::now(), self.limits);
        }
        Ok(loaded)
    }

    /// Exact top-k over one owner's vectors.
    fn top_k(rows: &[Row], vector: &[f32], limit: usize) -> Vec<Scored> {
        let mut scored: Vec<(f32, &Row)> = rows
            .iter()
            .map(|r| (cosine(&r.vector, vector), r))
            .collect();
        let k = limit.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored
            .into_iter()
            .map(|(score, r)| Scored {
                id: r.id.clone(),
                text: r.text.clone(),
                score,
                created_at: r.created_at,
                last_recalled_at: r.last_recalled_at,
            })
            .collect()
    }
}

#[async_trait]
impl MemoryStore for EmbeddedMemory {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), MemoryError> {
        let sql = "SELECT COUNT(*) FROM memories WHERE 1 = 0";
        let _: (i64,) = on_pool!(&self.db, |pool| sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(())
    }

    async fn add(&self, m: NewMemory) -> Result<String, MemoryError> {
        let id = ulid::Ulid::generate().to_string();
        let now = now_ms();
        let sql = "INSERT INTO memories (id, owner, session_id, text, vector, created_at, last_recalled_at, source_job) \
                   VALUES ($1, $2, $3, $4, $5, $6, $6, $7)";
        on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(&id)
            .bind(&m.owner)
            .bind(m.session_id.to_string())
            .bind(&m.text)
            .bind(to_bytes(&m.vector))
            .bind(now)
            .bind(&m.source_job)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(id)
    }

    async fn search(
        &self,
        owner: &str,
        vector: &[f32],
        limit: usize,
    ) -> Result<Vec<Scored>, MemoryError> {
        let cache = self.rows(owner).await?;
        Ok(Self::top_k(&cache.rows, vector, limit))
    }

    async fn touch(&self, owner: &str, ids: &[String]) -> Result<(), MemoryError> {
        let now = now_ms();
        for id in ids {
            let sql = "UPDATE memories SET last_recalled_at = $3 WHERE owner = $1 AND id = $2";
            on_pool!(&self.db, |pool| sqlx::query(sql)
                .bind(owner)
                .bind(id)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()))?;
        }
        // The cached copy follows (its version does not change on touch).
        if let Ok(mut cache) = self.cache.lock()
            && let Some(entry) = cache.get(owner, Instant::now())
        {
            let mut rows = entry.rows.clone();
            for row in &mut rows {
                if ids.contains(&row.id) {
                    row.last_recalled_at = now;
                }
            }
            let version = entry.version.clone();
            cache.insert(
                owner,
                Arc::new(OwnerCache { version, rows }),
                Instant::now(),
                self.limits,
            );
        }
        Ok(())
    }

    async fn delete_session(&self, session: SessionId) -> Result<u64, MemoryError> {
        let owners_sql = "SELECT DISTINCT owner FROM memories WHERE session_id = $1";
        let owners: Vec<String> = on_pool!(&self.db, |pool| sqlx::query_scalar(owners_sql)
            .bind(session.to_string())
            .fetch_all(pool)
            .await)?;
        let sql = "DELETE FROM memories WHERE session_id = $1";
        let done = on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(session.to_string())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        // A session without a user owns `session:<id>` even with no rows left.
        let mut gone = owners;
        gone.push(format!("session:{session}"));
        self.evict(&gone);
        Ok(done)
    }

    async fn count(&self, owner: &str) -> Result<u64, MemoryError> {
        Ok(u64::try_from(self.version(owner).await?.0).unwrap_or(0))
    }

    async fn owners(&self) -> Result<Vec<String>, MemoryError> {
        let sql = "SELECT DISTINCT owner FROM memories ORDER BY owner";
        Ok(on_pool!(&self.db, |pool| sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await)?)
    }

    async fn list(&self, owner: &str) -> Result<Vec<Listed>, MemoryError> {
        let sql = "SELECT id, text, created_at, source_job FROM memories WHERE owner = $1 \
                   ORDER BY created_at DESC, id DESC";
        let rows: Vec<(String, String, i64, Option<String>)> =
            on_pool!(&self.db, |pool| sqlx::query_as(sql)
                .bind(owner)
                .fetch_all(pool)
                .await)?;
        Ok(rows
            .into_iter()
            .map(|(id, text, created_at, source_job)| Listed {
                id,
                text,
                created_at,
                source_job,
            })
            .collect())
    }

    async fn delete_one(&self, owner: &str, id: &str) -> Result<Option<Listed>, MemoryError> {
        let sql = "DELETE FROM memories WHERE owner = $1 AND id = $2 \
                   RETURNING id, text, created_at, source_job";
        let row: Option<(String, String, i64, Option<String>)> =
            on_pool!(&self.db, |pool| sqlx::query_as(sql)
                .bind(owner)
                .bind(id)
                .fetch_optional(pool)
                .await)?;
        self.evict(&[owner.to_owned()]);
        Ok(row.map(|(id, text, created_at, source_job)| Listed {
            id,
            text,
            created_at,
            source_job,
        }))
    }

    async fn delete_owner(&self, owner: &str) -> Result<u64, MemoryError> {
        let sql = "DELETE FROM memories WHERE owner = $1";
        let done = on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        self.evict(&[owner.to_owned()]);
        Ok(done)
    }

    async fn cap(&self, owner: &str, keep: usize) -> Result<u64, MemoryError> {
        let sql = "DELETE FROM memories WHERE owner = $1 AND id NOT IN \
                   (SELECT id FROM memories WHERE owner = $1 \
                    ORDER BY last_recalled_at DESC, id DESC LIMIT $2)";
        let done = on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(owner)
            .bind(i64::try_from(keep).unwrap_or(i64::MAX))
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        if done > 0 {
            self.evict(&[owner.to_owned()]);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_bytes() {
        let v = vec![0.25f32, -1.5, 3.0e-7, 0.0];
        assert_eq!(from_bytes(&to_bytes(&v)), v);
    }

    #[test]
    fn top_k_is_exact_and_ordered() {
        let rows: Vec<Row> = (0..50)
            .map(|i| {
                let angle = i as f32 / 50.0;
                Row {
                    id: i.to_string(),
                    text: String::new(),
                    created_at: 0,
                    last_recalled_at: 0,
                    vector: vec![angle.cos(), angle.sin()],
                }
            })
            .collect();
        let found = EmbeddedMemory::top_k(&rows, &[1.0, 0.0], 3);
        let ids: Vec<&str> = found.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2"]);
        assert!(found[0].score >= found[1].score && found[1].score >= found[2].score);
        assert!(EmbeddedMemory::top_k(&rows, &[1.0, 0.0], 0).is_empty());
        assert_eq!(EmbeddedMemory::top_k(&rows[..2], &[1.0, 0.0], 10).len(), 2);
    }
}
