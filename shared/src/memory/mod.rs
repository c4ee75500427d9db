//! Long-term memory: what a person shared, kept per owner and woven back in.
//!
//! An owner is the session's `user_id`, or `session:<id>` for a session
//! without one; memories never cross owners (every search is filtered by
//! owner). Two stores behind [`MemoryStore`]: Qdrant ([`qdrant`], when
//! `QDRANT_URL` is set) and the embedded store ([`embedded`]: vectors in the
//! SQL database, exact cosine top-k in Rust). Embeddings are computed
//! in-process ([`embed`]).
//!
//! Recall takes the `top_k` memories scoring at least `min_score`, after
//! re-ranking by `score × max(0.98^age_days, 0.5)` (age since the memory was
//! last learnt again or recalled), and marks them recalled.

pub mod embed;
pub mod embedded;
pub mod qdrant;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::domain::{Session, SessionId, now_ms};
pub use embed::{DIMENSIONS, EmbedError, Embedder};

/// Memories scoring this close to a new fact are the same fact.
pub const DUPLICATE_SCORE: f32 = 0.90;
/// Recall ignores memories scoring below this. Chosen from `rose memory eval`
/// (BENCHMARKS.md, "Memory recall"): on the shipped set, 0.21 is the highest
/// floor with recall@3 ≥ 0.90 (profile counted); false recall there is 10 %,
/// at its limit (0.35 recalled 0.68; 0.20 recalls 13 % of negatives).
pub const MIN_RECALL_SCORE: f32 = 0.21;

/// A memory failure.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("memory database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("qdrant error: {0}")]
    Qdrant(String),
    #[error("memory store misconfigured: {0}")]
    Config(String),
}

impl MemoryError {
    /// The embedding model cannot be had (see [`EmbedError::is_unavailable`]).
    #[must_use]
    pub fn is_model_unavailable(&self) -> bool {
        matches!(self, Self::Embed(e) if e.is_unavailable())
    }
}

/// Whose memories these are.
#[must_use]
pub fn owner_of(session: &Session) -> String {
    session
        .user_id
        .clone()
        .unwrap_or_else(|| format!("session:{}", session.id))
}

/// A memory to store.
#[derive(Debug, Clone)]
pub struct NewMemory {
    pub owner: String,
    /// The session it was learnt in (erased with it).
    pub session_id: SessionId,
    pub text: String,
    pub vector: Vec<f32>,
    pub source_job: Option<String>,
}

/// A stored memory with its similarity to a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub id: String,
    pub text: String,
    pub score: f32,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms: last learnt again or recalled.
    pub last_recalled_at: i64,
}

/// A stored memory as its owner sees it (no vector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: String,
    pub text: String,
    /// Unix ms.
    pub created_at: i64,
    /// The job it was learnt from.
    pub source_job: Option<String>,
}

/// Where memories live.
#[async_trait]
pub trait MemoryStore: Send + Sync {
    /// `"embedded"` or `"qdrant"`.
    fn kind(&self) -> &'static str;
    /// A real round trip.
    async fn ping(&self) -> Result<(), MemoryError>;
    async fn add(&self, memory: NewMemory) -> Result<String, MemoryError>;
    /// The `limit` memories of `owner` most similar to `vector`, best first.
    async fn search(
        &self,
        owner: &str,
        vector: &[f32],
        limit: usize,
    ) -> Result<Vec<Scored>, MemoryError>;
    /// Marks memories recalled (or learnt again) now.
    async fn touch(&self, owner: &str, ids: &[String]) -> Result<(), MemoryError>;
    /// Erases what a session taught; returns how many.
    async fn delete_session(&self, session: SessionId) -> Result<u64, MemoryError>;
    /// How many memories `owner` has.
    async fn count(&self, owner: &str) -> Result<u64, MemoryError>;
    /// Every owner that has memories.
    async fn owners(&self) -> Result<Vec<String>, MemoryError>;
    /// Every memory of `owner`, newest first. Bounded by the per-person cap
    /// (`MEMORY_CAP_PER_USER`) the scheduler keeps.
    async fn list(&self, owner: &str) -> Result<Vec<Listed>, MemoryError>;
    /// Erases one of `owner`'s memories; what it was, or `None` when
    /// `owner` has no memory `id` (another person's id erases nothing).
    async fn delete_one(&self, owner: &str, id: &str) -> Result<Option<Listed>, MemoryError>;
    /// Erases every memory of `owner`; returns how many.
    async fn delete_owner(&self, owner: &str) -> Result<u64, MemoryError>;
    /// Keeps `owner`'s `keep` most recently recalled memories and erases the
    /// rest; returns how many went.
    async fn cap(&self, owner: &str, keep: usize) -> Result<u64, MemoryError>;
    /// The Qdrant store, when memories live there (backups snapshot it);
    /// the embedded store lives in the database backup: `None`.
    fn as_qdrant(&self) -> Option<&qdrant::QdrantMemory> {
        None
    }
}

/// Re-ranks by recency: `score × max(0.98^age_days, 0.5)`, keeping the best
/// `top_k` that scored at least `min_score` before re-ranking.
#[must_use]
pub fn rerank(found: Vec<Scored>, now_ms: i64, min_score: f32, top_k: usize) -> Vec<Scored> {
    let mut kept: Vec<(f32, Scored)> = found
        .into_iter()
        .filter(|m| m.score >= min_score)
        .map(|m| {
            let age_days = (now_ms - m.last_recalled_at).max(0) as f64 / 86_400_000.0;
            let weight = 0.98f64.powf(age_days).max(0.5) as f32;
            (m.score * weight, m)
        })
        .collect();
    kept.sort_by(|a, b| b.0.total_cmp(&a.0));
    kept.into_iter().take(top_k).map(|(_, m)| m).collect()
}

/// Whether a fact was new or known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remembered {
    Added(String),
    /// A memory this close already existed; its timestamp was refreshed.
    Refreshed(String),
}

/// After a failed load, how long until the model is tried again (not on
/// every job).
pub const MODEL_RETRY: Duration = Duration::from_secs(60);

/// The last failed load: when to try again, and why it failed.
#[derive(Debug)]
struct LoadFailure {
    retry_at: Instant,
    reason: String,
}

/// The memory facade: a store plus the (lazily loaded) embedding model.
pub struct Memory {
    pub store: Arc<dyn MemoryStore>,
    model_dir: Option<PathBuf>,
    embedder: OnceCell<Arc<Embedder>>,
    failure: Mutex<Option<LoadFailure>>,
    /// The first failure is logged at error level, once; later ones quietly.
    reported: AtomicBool,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("store", &self.store.kind())
            .field("model_dir", &self.model_dir)
            .finish_non_exhaustive()
    }
}

impl Memory {
    /// Memory on `store`, embedding with the model in `model_dir` (or the
    /// hub's, downloaded on first use).
    #[must_use]
    pub fn new(store: Arc<dyn MemoryStore>, model_dir: Option<PathBuf>) -> Self {
        Self {
            store,
            model_dir,
            embedder: OnceCell::new(),
            failure: Mutex::new(None),
            reported: AtomicBool::new(false),
        }
    }

    /// Whether memory can work, without loading anything: `Err(reason)` when
    /// the model failed to load, or its directory lacks a file. A model not
    /// loaded yet whose files are there counts as working.
    ///
    /// # Errors
    /// The reason memory is unavailable, to show an operator.
    pub fn model_health(&self) -> Result<(), String> {
        if self.embedder.get().is_some() {
            return Ok(());
        }
        if let Ok(guard) = self.failure.lock()
            && let Some(failure) = &*guard
        {
            return Err(failure.reason.clone());
        }
        match &self.model_dir {
            Some(dir) => match embed::missing_file(dir) {
                Some(missing) => Err(EmbedError::NotFound {
                    dir: dir.clone(),
                    reason: format!("{missing} is missing"),
                }
                .to_string()),
                None => Ok(()),
            },
            // Downloaded on first use; nothing to say before it is tried.
            None => Ok(()),
        }
    }

    /// The model, loading it on first use. The first failure is logged once
    /// at error level, naming the fix; later attempts (one a
    /// [`MODEL_RETRY`] at most) quietly.
    ///
    /// # Errors
    /// [`MemoryError::Embed`] when it cannot be loaded; until the next
    /// attempt is due, [`EmbedError::Unavailable`] with the last reason.
    pub async fn embedder(&self) -> Result<Arc<Embedder>, MemoryError> {
        if let Some(e) = self.embedder.get() {
            return Ok(e.clone());
        }
        if let Ok(guard) = self.failure.lock()
            && let Some(failure) = &*guard
            && Instant::now() < failure.retry_at
        {
            return Err(EmbedError::Unavailable(failure.reason.clone()).into());
        }
        let loaded = self
            .embedder
            .get_or_try_init(|| async {
                let dir = match &self.model_dir {
                    Some(dir) => dir.clone(),
                    None => Embedder::download().await?,
                };
                tokio::task::spawn_blocking(move || Embedder::shared(&dir))
                    .await
                    .map_err(|e| EmbedError::Run(e.to_string()))?
            })
            .await;
        match loaded {
            Ok(e) => {
                if let Ok(mut guard) = self.failure.lock()
                    && guard.take().is_some()
                {
                    tracing::info!("embedding model loaded; memory is back");
                }
                Ok(e.clone())
            }
            Err(e) => {
                if self.reported.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %e, "embedding model still unavailable");
                } else {
                    tracing::error!("{e}");
                }
                if let Ok(mut guard) = self.failure.lock() {
                    *guard = Some(LoadFailure {
                        retry_at: Instant::now() + MODEL_RETRY,
                        reason: e.to_string(),
                    });
                }
                Err(e.into())
            }
        }
    }

    /// Embeds one text.
    ///
    /// # Errors
    /// When the model cannot be loaded or run.
    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>, MemoryError> {
        let embedder = self.embedder().await?;
        Ok(embedder.embed_batched(text.to_owned()).await?)
    }

    /// What `owner` shared that bears on `text`: at most `top_k`, re-ranked by
    /// recency, marked recalled. A person with no memories yet (a first
    /// conversation) costs one count, not a run of the model — but a missing
    /// model is an error even then: that turn's memory did not work.
    ///
    /// # Errors
    /// When the model is unavailable, or embedding or the store fails.
    pub async fn recall(
        &self,
        owner: &str,
        text: &str,
        top_k: usize,
    ) -> Result<Vec<Scored>, MemoryError> {
        self.embedder().await?;
        if self.store.count(owner).await? == 0 {
            return Ok(Vec::new());
        }
        let vector = self.embed_one(text).await?;
        let started = std::time::Instant::now();
        // Fetch more than needed so recency can reorder.
        let found = self
            .store
            .search(owner, &vector, top_k.saturating_mul(4).max(8))
            .await?;
        let recalled = rerank(found, now_ms(), MIN_RECALL_SCORE, top_k);
        if !recalled.is_empty() {
            let ids: Vec<String> = recalled.iter().map(|m| m.id.clone()).collect();
            self.store.touch(owner, &ids).await?;
        }
        let backend = self.store.kind();
        tracing::info!(
            event = "job_stage",
            stage = "memory",
            store = backend,
            recalled = recalled.len(),
            qdrant_duration_ms = started.elapsed().as_millis() as u64,
            "memory recall"
        );
        Ok(recalled)
    }

    /// Keeps `fact` for `owner`, unless a memory scoring ≥ [`DUPLICATE_SCORE`]
    /// already holds it (then that one is refreshed).
    ///
    /// # Errors
    /// When embedding or the store fails.
    pub async fn remember(
        &self,
        owner: &str,
        session_id: SessionId,
        fact: &str,
        source_job: Option<String>,
    ) -> Result<Remembered, MemoryError> {
        let vector = self.embed_one(fact).await?;
        let nearest = self.store.search(owner, &vector, 1).await?;
        if let Some(best) = nearest.into_iter().next()
            && best.score >= DUPLICATE_SCORE
        {
            self.store
                .touch(owner, std::slice::from_ref(&best.id))
                .await?;
            return Ok(Remembered::Refreshed(best.id));
        }
        let id = self
            .store
            .add(NewMemory {
                owner: owner.to_owned(),
                session_id,
                text: fact.to_owned(),
                vector,
                source_job,
            })
            .await?;
        Ok(Remembered::Added(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(id: &str, score: f32, age_days: i64, now: i64) -> Scored {
        Scored {
            id: id.to_owned(),
            text: id.to_owned(),
            score,
            created_at: now - age_days * 86_400_000,
            last_recalled_at: now - age_days * 86_400_000,
        }
    }

    #[test]
    fn rerank_weighs_recency_and_drops_weak_matches() {
        let now = 1_000_000_000_000;
        let found = vec![
            scored("old-strong", 0.80, 60, now),  // 0.80 × 0.5 = 0.40
            scored("fresh-medium", 0.60, 0, now), // 0.60
            scored("weak", 0.30, 0, now),         // below the floor
            scored("week-old", 0.70, 7, now),     // 0.70 × 0.868 = 0.608
        ];
        let kept = rerank(found, now, MIN_RECALL_SCORE, 3);
        let ids: Vec<&str> = kept.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["week-old", "fresh-medium", "old-strong"]);
        let one = rerank(vec![scored("a", 0.9, 1000, now)], now, MIN_RECALL_SCORE, 3);
        assert_eq!(one.len(), 1, "the weight never drops below 0.5");
    }
}
