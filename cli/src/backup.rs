//! `rose backup …`: database (and vector memory) backups by hand — the same
//! code the scheduler's nightly `backup` job runs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use rose_shared::backup::{self, Outcome, Source, Target};
use rose_shared::config::Config;
use rose_shared::memory::qdrant::{COLLECTION, QdrantMemory};
use rose_shared::store::Database;

/// The `rose backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back the configured database up into BACKUP_DIR, verify it, keep the
    /// newest BACKUP_KEEP; with QDRANT_URL, the Qdrant snapshot too (same
    /// stamp, same retention).
    Create,
    /// Backups in BACKUP_DIR (database files and Qdrant snapshots), newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Check one backup file (SQLite: integrity check; dump: pg_restore reads
    /// it; snapshot: a complete tar archive), and the snapshot taken with it.
    Verify { file: PathBuf },
    /// Restore a backup into the configured database (stop Rose first), and
    /// with QDRANT_URL the snapshot taken with it into Qdrant (a snapshot
    /// file alone restores only Qdrant). Refuses a damaged file, and a
    /// database holding sessions or jobs (a collection holding points)
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
            let qdrant = qdrant(&config).await?;
            let made = backup::create_with_memory(
                &source,
                qdrant.as_ref(),
                &config.backup_dir,
                config.backup_keep,
            )
            .await?;
            match made.database {
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
            if let Some(report) = made.memory {
                println!(
                    "qdrant snapshot created: {} ({} bytes, verified: {})",
                    report.path.display(),
                    report.bytes,
                    report.verification.detail
                );
                for old in &report.removed {
                    println!("removed by retention: {}", old.display());
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
                    let kind = f.kind.name();
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
            for v in backup::verify_with_pair(&file).await? {
                anyhow::ensure!(
                    v.ok,
                    "{} failed verification: {}",
                    v.path.display(),
                    v.detail
                );
                println!("{} is sound: {}", v.path.display(), v.detail);
            }
            Ok(())
        }
        BackupCommand::Restore { file, force } => {
            let target = Target::of(&config)?;
            let qdrant = qdrant(&config).await?;
            let restored =
                backup::restore_with_memory(&file, &target, qdrant.as_ref(), force).await?;
            if let Some(db) = &restored.database {
                println!(
                    "restored {}: {} sessions, {} jobs",
                    db.from.display(),
                    db.sessions,
                    db.jobs
                );
            }
            if let Some(snapshot) = &restored.memory {
                println!("restored Qdrant from {}", snapshot.display());
            }
            if let Some(note) = &restored.memory_note {
                println!("{note}");
            }
            Ok(())
        }
    }
}

/// The Qdrant store when `QDRANT_URL` is set (waiting for it as a starting
/// process does).
async fn qdrant(config: &Config) -> anyhow::Result<Option<QdrantMemory>> {
    let Some(url) = &config.qdrant_url else {
        return Ok(None);
    };
    let store = QdrantMemory::connect_patiently(
        url,
        config.qdrant_api_key.as_ref(),
        COLLECTION,
        config.qdrant_start_timeout,
    )
    .await?
    .with_rest(config.qdrant_rest());
    Ok(Some(store))
}
