//! Composition of the roles: what `rose serve`, `rose api`, `rose worker`,
//! `rose scheduler`, `rose migrate` and `rose sim` start, and how they stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use rose_shared::Rose;
use rose_shared::config::{Config, DatabaseUrl};
use rose_shared::providers::Endpoints;
use rose_shared::queue::SqliteQueue;
use rose_shared::rose::Options;
use rose_shared::store::Database;
use rose_sim::{Latency, Pacing, Profile, Sim, SimConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    token
}

/// The providers to use: real ones with a Groq key; otherwise the simulator
/// at `ROSE_SIMULATOR_URL`, or one started in this process (`start_sim`).
async fn endpoints(
    config: &Config,
    start_sim: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Endpoints, bool)> {
    if let Some(endpoints) = Endpoints::from_config(config) {
        return Ok((endpoints, false));
    }
    let base = match &config.simulator_url {
        Some(url) => url.clone(),
        None if start_sim => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = listener.local_addr()?;
            let sim = Sim::new(SimConfig::default());
            let token = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = rose_sim::serve(listener, sim, token).await {
                    tracing::error!(error = %e, "provider simulator stopped");
                }
            });
            format!("http://{addr}")
        }
        // This role never calls a provider; health still reports "simulated".
        None => "http://127.0.0.1:9".to_owned(),
    };
    tracing::warn!(
        simulator = %base,
        "SIMULATED PROVIDERS: GROQ_API_KEY is not set, so speech, replies and voice come from \
         Rose's built-in simulator, not from Groq or ElevenLabs. Set GROQ_API_KEY (and \
         ELEVENLABS_API_KEY) for real conversations."
    );
    Ok((Endpoints::simulator(&base), true))
}

async fn bind(config: &Config, port: Option<u16>) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port.unwrap_or(config.port)));
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Makes the SQLite file's directory when the database is a local file.
fn prepare_data_dir(url: &DatabaseUrl, config: &Config) -> anyhow::Result<()> {
    if matches!(url, DatabaseUrl::Sqlite(_)) && config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create ROSE_DATA_DIR {}", config.data_dir.display())
        })?;
    }
    Ok(())
}

/// `rose serve`: api + worker in one process.
pub async fn serve(
    mut config: Config,
    port: Option<u16>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let database_url = config.embedded_database_url();
    prepare_data_dir(&database_url, &config)?;
    if config.person_key_secret.is_none() {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create ROSE_DATA_DIR {}", config.data_dir.display())
        })?;
        let secret =
            rose_shared::identity::load_or_create_secret(&config.data_dir).with_context(|| {
                format!(
                    "cannot keep the person-key secret in {} (or set ROSE_PERSON_KEY_SECRET)",
                    config.data_dir.display()
                )
            })?;
        config.person_key_secret = Some(secret);
    }
    let (endpoints, simulated) = endpoints(&config, true, &shutdown).await?;
    let options = Options {
        endpoints,
        simulated,
        migrate: true,
    };
    // Listen only once the database is migrated and every connection holds.
    let rose = Rose::open(config, &database_url, options).await?;
    let listener = bind(&rose.config, port).await?;
    log_start("serve", &rose);
    let worker_options = rose_worker::WorkerOptions::from_rose(&rose);
    let mut worker = tokio::spawn(rose_worker::run(
        rose.clone(),
        worker_options,
        shutdown.clone(),
    ));
    let scheduler = tokio::spawn(rose_scheduler::run(
        rose.clone(),
        rose_worker::unique_name(),
        shutdown.clone(),
    ));
    let mut api = tokio::spawn(rose_api::run(rose, listener, shutdown.clone()));
    // A role that stops on its own takes the process down with it, so a
    // supervisor restarts Rose instead of leaving half of it running.
    let (api_result, worker_result) = tokio::select! {
        w = &mut worker => {
            shutdown.cancel();
            (api.await, w)
        }
        a = &mut api => {
            shutdown.cancel();
            (a, worker.await)
        }
    };
    let api_result = api_result.context("api task panicked")?;
    let worker_result = worker_result.context("worker task panicked")?;
    let scheduler_result = scheduler.await.context("scheduler task panicked")?;
    api_result.and(worker_result).and(scheduler_result)
}

/// `rose scheduler`.
pub async fn scheduler(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.require_scaled()?;
    let (endpoints, simulated) = endpoints(&config, false, &shutdown).await?;
    let (database_url, options) = scaled_options(&config, endpoints, simulated)?;
    let rose = Rose::open(config, &database_url, options).await?;
    log_start("scheduler", &rose);
    metrics_listener(&rose, &shutdown).await?;
    rose_scheduler::run(rose, rose_worker::unique_name(), shutdown).await
}

/// `rose api`.
pub async fn api(
    config: Config,
    port: Option<u16>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.require_scaled()?;
    config.require_person_key_secret()?;
    let (endpoints, simulated) = endpoints(&config, false, &shutdown).await?;
    let (database_url, options) = scaled_options(&config, endpoints, simulated)?;
    let rose = Rose::open(config, &database_url, options).await?;
    let listener = bind(&rose.config, port).await?;
    log_start("api", &rose);
    rose_api::run(rose, listener, shutdown).await
}

/// `rose worker`.
pub async fn worker(
    config: Config,
    concurrency: Option<usize>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.require_scaled()?;
    let (endpoints, simulated) = endpoints(&config, true, &shutdown).await?;
    let (database_url, options) = scaled_options(&config, endpoints, simulated)?;
    let rose = Rose::open(config, &database_url, options).await?;
    log_start("worker", &rose);
    metrics_listener(&rose, &shutdown).await?;
    let mut worker_options = rose_worker::WorkerOptions::from_rose(&rose);
    if let Some(n) = concurrency {
        anyhow::ensure!(n > 0, "--concurrency must be at least 1");
        worker_options.concurrency = n;
    }
    rose_worker::run(rose, worker_options, shutdown).await
}

/// One line saying what this process is and what it is connected to.
fn log_start(role: &'static str, rose: &Rose) {
    let providers = if rose.providers.simulated {
        "simulated"
    } else {
        "groq"
    };
    tracing::info!(
        event = "start",
        role,
        version = env!("CARGO_PKG_VERSION"),
        database = rose.store.backend(),
        queue = rose.queue.kind(),
        memory = rose.memory.store.kind(),
        providers,
        tts = ?rose.config.tts_provider,
        "rose started"
    );
}

/// `GET /metrics` on `ROSE_METRICS_PORT`, when set, beside a role without
/// an api of its own.
async fn metrics_listener(rose: &Rose, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let Some(port) = rose.config.metrics_port else {
        return Ok(());
    };
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (ROSE_METRICS_PORT)"))?;
    let (rose, token) = (rose.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = rose_api::serve_metrics(rose, listener, token).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

fn scaled_options(
    config: &Config,
    endpoints: Endpoints,
    simulated: bool,
) -> anyhow::Result<(DatabaseUrl, Options)> {
    let database_url = config
        .database_url
        .clone()
        .context("DATABASE_URL is required for this role")?;
    let options = Options {
        endpoints,
        simulated,
        migrate: false,
    };
    Ok((database_url, options))
}

/// `rose migrate`.
pub async fn migrate(config: Config) -> anyhow::Result<()> {
    let url = config.embedded_database_url();
    prepare_data_dir(&url, &config)?;
    let db = Database::connect(&url).await?;
    db.migrate().await?;
    if let (Database::Sqlite(pool), None) = (&db, &config.redis_url) {
        SqliteQueue::setup(pool).await?;
    }
    println!(
        "migrations applied ({})",
        match db {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    );
    Ok(())
}

/// The `rose sim` flags beyond the port; `None` keeps the simulator's default.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Per-endpoint latency.
    pub latency: Latency,
    /// `--ttft-ms`, `--tokens-per-s`, `--tts-ttfb-ms`, `--tts-speed` (any profile).
    pub pacing: Pacing,
    /// The profile.
    pub profile: Option<Profile>,
    /// `--stt-rpm` (rate-limited only).
    pub stt_rpm: Option<u32>,
    /// `--llm-rpm` (rate-limited only).
    pub llm_rpm: Option<u32>,
    /// `--tts-concurrency` (rate-limited only).
    pub tts_concurrency: Option<u32>,
    /// `--flaky-rate` (flaky only).
    pub flaky_rate: Option<f64>,
    /// `--outage-secs` (outage only).
    pub outage: Option<Duration>,
}

/// The simulator's configuration from the flags; a profile's flag without
/// that profile is refused rather than ignored.
fn sim_config(options: SimOptions) -> anyhow::Result<SimConfig> {
    let SimOptions {
        latency,
        pacing,
        profile,
        stt_rpm,
        llm_rpm,
        tts_concurrency,
        flaky_rate,
        outage,
    } = options;
    let needs = |given: bool, wanted: Profile, flags: &str| {
        if given && profile != Some(wanted) {
            anyhow::bail!("{flags} only apply with --profile {wanted}");
        }
        Ok(())
    };
    needs(
        stt_rpm.is_some() || llm_rpm.is_some() || tts_concurrency.is_some(),
        Profile::RateLimited,
        "--stt-rpm, --llm-rpm and --tts-concurrency",
    )?;
    needs(flaky_rate.is_some(), Profile::Flaky, "--flaky-rate")?;
    needs(outage.is_some(), Profile::Outage, "--outage-secs")?;
    let mut config = SimConfig {
        latency,
        pacing,
        profile,
        outage,
        ..SimConfig::default()
    };
    if let Some(rpm) = stt_rpm {
        config.limits.stt_rpm = rpm;
    }
    if let Some(rpm) = llm_rpm {
        config.limits.llm_rpm = rpm;
    }
    if let Some(slots) = tts_concurrency {
        config.limits.tts_concurrency = slots;
    }
    if let Some(rate) = flaky_rate {
        config.flaky_rate = rate;
    }
    Ok(config)
}

/// `rose sim`.
pub async fn sim(
    port: u16,
    options: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = sim_config(options)?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(%addr, "provider simulator listening (Groq at /openai/v1, ElevenLabs at /v1)");
    rose_sim::serve(listener, Sim::new(config), shutdown).await
}
