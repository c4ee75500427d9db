//! `rose`: every role and operator command of Rose in one binary.
//!
//! This file only parses arguments, loads configuration and starts tracing;
//! the roles live in their libraries and are joined in [`roles`].

mod backup;
mod loadtest;
mod memory_eval;
mod queue;
mod roles;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rose_shared::config::Config;
use rose_sim::{Latency, Pacing, Profile};

/// Rose: a voice companion for people carrying grief, and the job-queue
/// backend that serves her.
#[derive(Debug, Parser)]
#[command(name = "rose", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process on the embedded default: SQLite under
    /// ROSE_DATA_DIR, an in-process queue, and the provider simulator when
    /// GROQ_API_KEY is unset. Applies migrations on start.
    Serve {
        /// Listening port (default: PORT, else 8080).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Run the HTTP api alone (scaled deployment: DATABASE_URL, REDIS_URL).
    Api {
        /// Listening port (default: PORT, else 8080).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Run a voice worker (scaled deployment: DATABASE_URL, REDIS_URL).
    Worker {
        /// Jobs run at once (default: ROSE_WORKER_CONCURRENCY, else 32).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Run the maintenance scheduler (scaled deployment: DATABASE_URL,
    /// REDIS_URL). Replicas elect one leader through Redis; each job runs once.
    Scheduler,
    /// Apply database migrations and exit.
    Migrate,
    /// Drive N voice jobs through a running api, C in flight; prints
    /// throughput, latency percentiles, the stages and Rose's own overhead.
    Loadtest(loadtest::LoadtestArgs),
    /// Inspect and repair the queues (REDIS_URL, else the embedded database).
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Create, list, verify and restore database backups (BACKUP_DIR).
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Measure memory recall on the evaluation set (EMBEDDING_MODEL_DIR).
    Memory {
        #[command(subcommand)]
        command: memory_eval::MemoryCommand,
    },
    /// Run the provider simulator (Groq and ElevenLabs request shapes).
    Sim {
        /// Listening port.
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// Per-endpoint latency in milliseconds: STT,LLM,TTS (e.g. 300,500,400);
        /// the LLM one is the chat's time to first token unless --ttft-ms is given.
        #[arg(long)]
        latency_ms: Option<Latency>,
        /// Profile: a failure mode, or `realistic` (published Groq and
        /// ElevenLabs timings, see the README).
        #[arg(long, value_parser = ["rate-limited", "flaky", "outage", "slow", "realistic"])]
        profile: Option<String>,
        /// Chat time to first token in milliseconds (default: the LLM latency;
        /// 250 under --profile realistic).
        #[arg(long)]
        ttft_ms: Option<u64>,
        /// Chat tokens generated per second after the first (default: all at
        /// once; 250 under --profile realistic).
        #[arg(long, value_parser = parse_positive)]
        tokens_per_s: Option<f64>,
        /// Text-to-speech time to first byte in milliseconds (default: the TTS
        /// latency; 200 under --profile realistic).
        #[arg(long)]
        tts_ttfb_ms: Option<u64>,
        /// How many times faster than real time speech is generated (default:
        /// all at once; 4 under --profile realistic).
        #[arg(long, value_parser = parse_positive)]
        tts_speed: Option<f64>,
        /// With --profile rate-limited: transcriptions allowed per minute (default 20).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        stt_rpm: Option<u32>,
        /// With --profile rate-limited: chat completions allowed per minute (default 30).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        llm_rpm: Option<u32>,
        /// With --profile rate-limited: ElevenLabs requests answered at once (default 2).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        tts_concurrency: Option<u32>,
        /// With --profile flaky: the share of requests that fail, 0 to 1 (default 0.2).
        #[arg(long, value_parser = parse_rate)]
        flaky_rate: Option<f64>,
        /// With --profile outage: recover after this many seconds (default: never).
        #[arg(long, value_parser = parse_seconds)]
        outage_secs: Option<Duration>,
    },
}

/// A share from 0 to 1 (`--flaky-rate`).
fn parse_rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a number from 0 to 1, got {value:?}")),
    }
}

/// A positive, finite number (`--tokens-per-s`, `--tts-speed`).
fn parse_positive(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("expected a positive number, got {value:?}")),
    }
}

/// A positive number of seconds (`--outage-secs`).
fn parse_seconds(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| *secs > 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("expected a positive number of seconds, got {value:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rose: {e}");
            return ExitCode::from(2);
        }
    };
    // The eval prints its figures on stdout (one JSON object with --json),
    // where the log would go; its recalls would log one line each.
    if !matches!(cli.command, Command::Memory { .. }) {
        rose_shared::telemetry::init(config.log_format);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rose: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = roles::shutdown_on_signal();
        match cli.command {
            Command::Serve { port } => roles::serve(config, port, shutdown).await,
            Command::Api { port } => roles::api(config, port, shutdown).await,
            Command::Worker { concurrency } => roles::worker(config, concurrency, shutdown).await,
            Command::Scheduler => roles::scheduler(config, shutdown).await,
            Command::Migrate => roles::migrate(config).await,
            Command::Queue { command } => queue::run(config, command).await,
            Command::Loadtest(args) => loadtest::run(args).await,
            Command::Backup { command } => backup::run(config, command).await,
            Command::Memory { command } => memory_eval::run(config, command).await,
            Command::Sim {
                port,
                latency_ms,
                profile,
                ttft_ms,
                tokens_per_s,
                tts_ttfb_ms,
                tts_speed,
                stt_rpm,
                llm_rpm,
                tts_concurrency,
                flaky_rate,
                outage_secs,
            } => {
                let profile = profile.map(|p| p.parse::<Profile>()).transpose();
                match profile {
                    Ok(profile) => {
                        let options = roles::SimOptions {
                            latency: latency_ms.unwrap_or_default(),
                            pacing: Pacing {
                                ttft: ttft_ms.map(Duration::from_millis),
                                tokens_per_s,
                                tts_ttfb: tts_ttfb_ms.map(Duration::from_millis),
                                tts_speed,
                                stt_speed: None,
                            },
                            profile,
                            stt_rpm,
                            llm_rpm,
                            tts_concurrency,
                            flaky_rate,
                            outage: outage_secs,
                        };
                        roles::sim(port, options, shutdown).await
                    }
                    Err(e) => Err(anyhow::anyhow!("--profile: {e}")),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rose: {e:#}");
            ExitCode::FAILURE
        }
    }
}
