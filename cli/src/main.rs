//! `rose`: every role and operator command of Rose in one binary.
//!
//! This file only parses arguments, loads configuration and starts tracing;
//! the roles live in their libraries and are joined in [`roles`].

mod queue;
mod roles;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rose_shared::config::Config;
use rose_sim::{Latency, Profile};

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
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect and repair the Redis queues (REDIS_URL).
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Run the provider simulator (Groq and ElevenLabs request shapes).
    Sim {
        /// Listening port.
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// Per-endpoint latency in milliseconds: STT,LLM,TTS (e.g. 300,500,400).
        #[arg(long)]
        latency_ms: Option<Latency>,
        /// Failure profile.
        #[arg(long, value_parser = ["rate-limited", "flaky", "outage", "slow"])]
        profile: Option<String>,
    },
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
    rose_shared::telemetry::init(config.log_format);
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
            Command::Migrate => roles::migrate(config).await,
            Command::Queue { command } => queue::run(config, command).await,
            Command::Sim {
                port,
                latency_ms,
                profile,
            } => {
                let profile = profile.map(|p| p.parse::<Profile>()).transpose();
                match profile {
                    Ok(profile) => {
                        roles::sim(port, latency_ms.unwrap_or_default(), profile, shutdown).await
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
