//! `rose backup …`: database (and vector memory) backups by hand — the same
//! code the scheduler's nightly `backup` job runs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use rose_shared::backup::{self, Outcome, Source, Target};
use rose_shared::config::Config;
use rose_shared::memory::MemoryStore;
use rose_shared::memory::qdrant::{COLLECTION, QdrantMemory};
use rose_shared::store::Database;

/// The `rose backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back the configured database up into BACKUP_DIR, verify it, keep the
    /// newest BACKUP_KEEP; snapshot Qdrant too when QDRANT_URL is set.
    Create,
    /// Backups in BACKUP_DIR, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check one backup file (SQLite: integrity check; dump: pg_restore reads it).
    Verify { file: PathBuf },
    /// Restore a backup into the configured database (stop Rose first).
    /// Refuses a damaged file, and a database holding sessions or jobs
    /// unless --force.
    Restore {
        file: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

/// Runs one `rose backup` command.
///
/// # Errors
/// When the command fails; the message says why.
pub async fn run(config: Config, command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create => {
            let url = config.embedded_database_url();
            let db = Database::connect(&url)
                .await
                .context("cannot open the database")?;
            let source = Source::of(&config, &db)?;
            match backup::create(&source, &config.backup_dir, config.backup_keep).await? {
                Outcome::Created(report) => {
                    println!(
                        "backup created: {} ({} bytes, verified: {})",
                        report.path.display(),
                        report.bytes,
                        report.verification.detail
                    );
                    for old in &report.removed {
                        println!("removed by retention: {}", old.display());
                    }
                }
                Outcome::Skipped { reason } => println!("backup skipped: {reason}"),
            }
            if let Some(url) = &config.qdrant_url {
                let store =
                    QdrantMemory::connect(url, config.qdrant_api_key.as_ref(), COLLECTION).await?;
                match store.snapshot().await? {
                    Some(name) => println!("qdrant snapshot created: {name}"),
                    None => println!("qdrant made no snapshot"),
                }
            }
            Ok(())
        }
        BackupCommand::List { json } => {
            let files = backup::list(&config.backup_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&files)?);
            } else if files.is_empty() {
                println!("no backups in {}", config.backup_dir.display());
            } else {
                println!("{:<26} {:<7} {:>12}  path", "taken at", "kind", "bytes");
                for f in files {
                    let kind = match f.kind {
                        backup::Kind::Sqlite => "sqlite",
                        backup::Kind::Pgdump => "pgdump",
                    };
                    println!(
                        "{:<26} {:<7} {:>12}  {}",
                        f.taken_at,
                        kind,
                        f.bytes,
                        f.path.display()
                    );
                }
            }
            Ok(())
        }
        BackupCommand::Verify { file } => {
            let v = backup::verify(&file).await?;
            anyhow::ensure!(v.ok, "{} failed verification: {}", file.display(), v.detail);
            println!("{} is sound: {}", file.display(), v.detail);
            Ok(())
        }
        BackupCommand::Restore { file, force } => {
            let target = Target::of(&config)?;
            let restored = backup::restore(&file, &target, force).await?;
            println!(
                "restored {}: {} sessions, {} jobs",
                restored.from.display(),
                restored.sessions,
                restored.jobs
            );
            Ok(())
        }
    }
}
