//! The dependencies every role runs on, built once per process.
//!
//! Deployment follows configuration: with `REDIS_URL` the queue is Redis
//! Streams and job events travel over Redis pub/sub; without it the database
//! must be SQLite, and the queue and events stay inside the process.

use std::sync::Arc;

use crate::abuse::RequestLimiter;
use crate::config::{Config, DatabaseUrl};
use crate::events::JobEvents;
use crate::memory::embedded::EmbeddedMemory;
use crate::memory::qdrant::{self, QdrantMemory};
use crate::memory::{Memory, MemoryError, MemoryStore};
use crate::providers::{Endpoints, ProviderError, Providers};
use crate::queue::{Queue, QueueError, RedisQueue, SqliteQueue};
use crate::resilience::{BreakerConfig, Breakers, CallPolicy, Limiter, Resilience};
use crate::store::{Database, Store, StoreError};

/// Why Rose could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("REDIS_URL is required with a PostgreSQL DATABASE_URL (the queue lives in Redis)")]
    NeedsRedis,
}

/// Everything a role needs, shared by reference.
#[derive(Clone)]
pub struct Rose {
    pub config: Arc<Config>,
    pub db: Database,
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub events: JobEvents,
    /// Speech relayed while it is synthesised (see [`crate::relay`]).
    pub relay: crate::relay::Relay,
    pub providers: Providers,
    pub resilience: Resilience,
    pub memory: Arc<Memory>,
    /// Per-client request limits (shared through Redis when the queue is).
    pub requests: RequestLimiter,
    /// When the queue depths were last read for `/metrics`.
    pub depth_reads: Arc<crate::metrics::DepthReads>,
    /// The secrets that name people (person keys, user tokens, the API key).
    pub identity: crate::identity::Identity,
}

impl std::fmt::Debug for Rose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rose")
            .field("store", &self.store.backend())
            .field("queue", &self.queue.kind())
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// How to open Rose.
#[derive(Debug, Clone)]
pub struct Options {
    pub endpoints: Endpoints,
    /// The endpoints are the simulator.
    pub simulated: bool,
    /// Apply migrations before use.
    pub migrate: bool,
}

impl Rose {
    /// Connects the database, the queue and the providers.
    ///
    /// # Errors
    /// [`StartError`] naming what could not be reached or set up.
    pub async fn open(
        config: Config,
        database_url: &DatabaseUrl,
        options: Options,
    ) -> Result<Self, StartError> {
        let db = Database::connect(database_url).await?;
        Self::with_database(config, db, options).await
    }

    /// Like [`Rose::open`] on an already open pool (tests pin schemas this way).
    ///
    /// # Errors
    /// [`StartError`] naming what could not be reached or set up.
    pub async fn with_database(
        config: Config,
        db: Database,
        options: Options,
    ) -> Result<Self, StartError> {
        // Metrics are recorded from the first request on.
        crate::metrics::handle();
        if options.migrate {
            db.migrate().await?;
        }
        let (queue, events) = match (&config.redis_url, &db) {
            (Some(url), _) => {
                let redis = RedisQueue::connect(url, &config.redis_prefix).await?;
                let events =
                    JobEvents::redis(redis.client().clone(), redis.connection(), redis.prefix());
                (Queue::Redis(redis), events)
            }
            (None, Database::Sqlite(pool)) => {
                SqliteQueue::setup(pool).await?;
                (
                    Queue::Sqlite(SqliteQueue::new(pool.clone())),
                    JobEvents::local(),
                )
            }
            (None, Database::Postgres(_)) => return Err(StartError::NeedsRedis),
        };
        let providers = Providers::new(&config, &options.endpoints, options.simulated)?;
        let resilience = resilience(&config, &queue, options.simulated);
        let requests = match &queue {
            Queue::Redis(redis) => RequestLimiter::redis(redis.connection(), redis.prefix()),
            Queue::Sqlite(_) => RequestLimiter::local(),
        };
        let relay = match &queue {
            Queue::Redis(redis) => crate::relay::Relay::redis(
                redis.client().clone(),
                redis.connection(),
                redis.prefix(),
            ),
            Queue::Sqlite(_) => crate::relay::Relay::local(),
        };
        let memory_store: Arc<dyn MemoryStore> = match &config.qdrant_url {
            // A Qdrant still starting is waited for (ROSE_QDRANT_START_TIMEOUT_SECS).
            Some(url) => Arc::new(
                QdrantMemory::connect_patiently(
                    url,
                    config.qdrant_api_key.as_ref(),
                    qdrant::COLLECTION,
                    config.qdrant_start_timeout,
                )
                .await?
                .with_rest(config.qdrant_rest()),
            ),
            None => Arc::new(EmbeddedMemory::new(db.clone())),
        };
        let memory = Arc::new(Memory::new(
            memory_store,
            config.embedding_model_dir.clone(),
        ));
        Ok(Self {
            requests,
            resilience,
            memory,
            store: db.store(),
            identity: crate::identity::Identity::from_config(&config),
            config: Arc::new(config),
            db,
            queue,
            events,
            relay,
            providers,
            depth_reads: Arc::default(),
        })
    }
}

/// Limiter and breakers live where the queue lives: shared through Redis on
/// the scaled deployment, in-process on the embedded one.
fn resilience(config: &Config, queue: &Queue, simulated: bool) -> Resilience {
    let limits = config.provider_limits(simulated);
    let lease = config.provider_timeout + std::time::Duration::from_secs(10);
    let breaker = BreakerConfig {
        failures: config.breaker_failures,
        window: config.breaker_window,
        cooldown: config.breaker_cooldown,
        trial_lease: lease,
    };
    let (limiter, breakers) = match queue {
        Queue::Redis(redis) => (
            Limiter::redis(
                limits,
                lease,
                config.rate_window,
                redis.client().clone(),
                redis.connection(),
                redis.prefix(),
            ),
            Breakers::redis(breaker, redis.connection(), redis.prefix()),
        ),
        Queue::Sqlite(_) => (
            Limiter::local(limits, lease, config.rate_window),
            Breakers::local(breaker),
        ),
    };
    Resilience {
        limiter,
        breakers,
        policy: CallPolicy {
            tries: config.provider_tries,
            base: config.provider_retry_base,
            ..CallPolicy::default()
        },
    }
}

impl Rose {
    /// Queues the delivery of a finished (or cancelled) job to its
    /// `callback_url`, once. The job's own result does not depend on it: a
    /// failure is logged.
    pub async fn queue_callback(&self, job: &crate::domain::Job) {
        if job.callback_url.is_none() {
            return;
        }
        let id = job.id;
        match self.store.start_callback(id).await {
            Ok(true) => {
                let task = crate::domain::CallbackTask { job_id: id };
                if let Err(e) = self
                    .queue
                    .push(crate::queue::CALLBACK_QUEUE, &id.to_string(), &task)
                    .await
                {
                    tracing::warn!(job_id = %id, error = %e, "could not queue the callback delivery");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "could not mark the callback pending");
            }
        }
    }
}
