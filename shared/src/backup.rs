//! Database backups: create, verify, list, restore.
//!
//! SQLite is copied with `VACUUM INTO` (a consistent copy while Rose runs);
//! PostgreSQL with `pg_dump --format=custom` when `pg_dump` is on the PATH
//! (otherwise the run says so and is skipped). Files go under `BACKUP_DIR` as
//! `rose-<UTC time with ms>.sqlite` / `.pgdump`, written under a `.partial`
//! name and renamed only when complete, so a failed run never leaves a file
//! that looks like a backup and never touches the earlier ones. Each new
//! backup is verified at once — SQLite: the copy opens read-only, passes
//! `PRAGMA integrity_check` and holds Rose's tables; a dump: `pg_restore
//! --list` reads its table of contents and a full `pg_restore` to nowhere
//! reads every data block (a truncated dump can keep an intact table of
//! contents). Then only the newest `BACKUP_KEEP` of that kind are kept.
//!
//! Restore verifies first and refuses a corrupt or truncated file before
//! touching the database; it refuses a target that holds sessions or jobs,
//! or one whose contents cannot be counted, unless forced.
//!
//! When the memories live in Qdrant, each backup also holds them:
//! `rose-<same stamp>.qdrant`, a snapshot of the collection downloaded from
//! Qdrant (and then deleted there, with any older snapshot of it, so erased
//! memories live on only in these files). The pair shares its stamp: one
//! retention (`BACKUP_KEEP` of each kind), listed together, verified
//! together (a snapshot must read as a complete tar archive), restored
//! together (`restore` of the database file uploads its snapshot too).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{ConnectOptions, Connection};

use crate::config::{Config, DatabaseUrl};
use crate::store::Database;

mod memory;
pub use memory::{
    Created, RestoredAll, create_with_memory, paired_snapshot, restore_with_memory,
    verify_with_pair,
};

/// File name prefix of Rose's backups.
const PREFIX: &str = "rose-";
const SQLITE_EXT: &str = "sqlite";
const PG_EXT: &str = "pgdump";
const QDRANT_EXT: &str = "qdrant";
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";
const PG_MAGIC: &[u8] = b"PGDMP";

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Database(String),
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error("{path} is not a usable backup: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error(
        "the target database already holds {rows} sessions and jobs; restore with --force to replace them"
    )]
    TargetNotEmpty { rows: i64 },
    #[error(
        "cannot tell whether the target database is empty ({0}); restore with --force to replace it anyway"
    )]
    TargetUnchecked(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("vector memory: {0}")]
    Memory(String),
}

fn db_err(e: impl std::fmt::Display) -> BackupError {
    BackupError::Database(e.to_string())
}

/// Which kind of backup a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sqlite,
    Pgdump,
    /// A Qdrant collection snapshot (a tar archive).
    Qdrant,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Self::Sqlite => SQLITE_EXT,
            Self::Pgdump => PG_EXT,
            Self::Qdrant => QDRANT_EXT,
        }
    }

    /// `sqlite`, `pgdump` or `qdrant`.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.ext()
    }
}

/// What to back up.
#[derive(Debug, Clone)]
pub enum Source {
    /// The live SQLite database.
    Sqlite(SqlitePool),
    /// A PostgreSQL database (`url`), or one schema of it.
    Postgres { url: String, schema: Option<String> },
}

impl Source {
    /// The database Rose runs on: its SQLite pool, or `DATABASE_URL`.
    ///
    /// # Errors
    /// When PostgreSQL is in use without a `DATABASE_URL` to hand `pg_dump`.
    pub fn of(config: &Config, db: &Database) -> Result<Self, BackupError> {
        match db {
            Database::Sqlite(pool) => Ok(Self::Sqlite(pool.clone())),
            Database::Postgres(_) => match &config.database_url {
                Some(DatabaseUrl::Postgres(url)) => Ok(Self::Postgres {
                    url: url.clone(),
                    schema: None,
                }),
                _ => Err(BackupError::Unsupported(
                    "PostgreSQL backups need DATABASE_URL".to_owned(),
                )),
            },
        }
    }
}

/// Where to restore to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A SQLite database file (Rose must not be running on it).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`url`), or one schema of it.
    Postgres { url: String, schema: Option<String> },
}

impl Target {
    /// The database configured for Rose (`DATABASE_URL`, else the embedded file).
    ///
    /// # Errors
    /// When the SQLite URL names no file.
    pub fn of(config: &Config) -> Result<Self, BackupError> {
        match config.embedded_database_url() {
            DatabaseUrl::Postgres(url) => Ok(Self::Postgres { url, schema: None }),
            DatabaseUrl::Sqlite(url) => {
                let options = SqliteConnectOptions::from_str(&url).map_err(db_err)?;
                Ok(Self::Sqlite(options.get_filename().to_path_buf()))
            }
        }
    }
}

/// The result of checking one backup file.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub path: PathBuf,
    pub kind: Kind,
    pub ok: bool,
    pub detail: String,
}

/// One backup made.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub path: PathBuf,
    pub kind: Kind,
    pub bytes: u64,
    pub verification: Verification,
    /// Older backups removed by retention.
    pub removed: Vec<PathBuf>,
    pub duration_ms: u64,
}

/// What `create` did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Created(Report),
    /// Nothing was written, and why (e.g. `pg_dump` is not installed).
    Skipped {
        reason: String,
    },
}

/// A backup file on disk.
#[derive(Debug, Clone, Serialize)]
pub struct BackupFile {
    pub path: PathBuf,
    pub kind: Kind,
    pub bytes: u64,
    /// When it was taken (from its name), RFC 3339.
    pub taken_at: String,
}

/// `rose-20261128T020000.123Z`: sortable, unique to the millisecond.
fn stamp() -> String {
    Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

fn parse_name(path: &Path) -> Option<(Kind, String)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix(PREFIX)?;
    let (time, ext) = rest.rsplit_once('.')?;
    let kind = match ext {
        SQLITE_EXT => Kind::Sqlite,
        PG_EXT => Kind::Pgdump,
        QDRANT_EXT => Kind::Qdrant,
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.3fZ").ok()?;
    Some((kind, time.to_owned()))
}

/// Rose's backups in `dir`, newest first. A missing directory holds none.
///
/// # Errors
/// When the directory cannot be read.
pub fn list(dir: &Path) -> Result<Vec<BackupFile>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BackupError::Dir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some((kind, time)) = parse_name(&path) else {
            continue;
        };
        let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
        let taken_at = chrono::NaiveDateTime::parse_from_str(&time, "%Y%m%dT%H%M%S%.3fZ")
            .map(|t| {
                t.and_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .unwrap_or(time);
        files.push(BackupFile {
            path,
            kind,
            bytes,
            taken_at,
        });
    }
    files.sort_by(|a, b| b.path.cmp(&a.path));
    Ok(files)
}

/// Whether `name` runs here.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

async fn tool(name: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), BackupError> {
    let output = tokio::process::Command::new(name)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| BackupError::Tool {
            tool: name,
            detail: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(BackupError::Tool {
            tool: name,
            detail: stderr.lines().take(5).collect::<Vec<_>>().join("; "),
        })
    }
}

/// SQL string literal.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// Backs `source` up into `dir`, verifies the new file and keeps the newest
/// `keep` of its kind.
///
/// # Errors
/// When the directory cannot be made or written, the copy fails, or the new
/// file fails verification (it is then removed; earlier backups stay).
pub async fn create(source: &Source, dir: &Path, keep: usize) -> Result<Outcome, BackupError> {
    std::fs::create_dir_all(dir).map_err(|source| BackupError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let stamp = free_stamp(dir).await;
    create_at(source, dir, keep, &stamp).await
}

/// A stamp no backup in `dir` has yet.
async fn free_stamp(dir: &Path) -> String {
    loop {
        let stamp = stamp();
        let taken = [SQLITE_EXT, PG_EXT, QDRANT_EXT]
            .iter()
            .any(|ext| dir.join(format!("{PREFIX}{stamp}.{ext}")).exists());
        if !taken {
            return stamp;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

async fn create_at(
    source: &Source,
    dir: &Path,
    keep: usize,
    stamp: &str,
) -> Result<Outcome, BackupError> {
    let started = Instant::now();
    let kind = match source {
        Source::Sqlite(_) => Kind::Sqlite,
        Source::Postgres { .. } => Kind::Pgdump,
    };
    if kind == Kind::Pgdump && !on_path("pg_dump") {
        return Ok(Outcome::Skipped {
            reason: "pg_dump not found on PATH; PostgreSQL backup skipped".to_owned(),
        });
    }
    let path = dir.join(format!("{PREFIX}{stamp}.{}", kind.ext()));
    let partial = path.with_extension(format!("{}.partial", kind.ext()));
    let written = match source {
        Source::Sqlite(pool) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "VACUUM INTO {}",
            quoted(&partial)
        )))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(db_err),
        Source::Postgres { url, schema } => {
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "--format=custom".as_ref(),
                "--no-owner".as_ref(),
                "--file".as_ref(),
                partial.as_os_str(),
            ];
            if let Some(schema) = schema {
                args.push("--schema".as_ref());
                args.push(schema.as_ref());
            }
            args.push(url.as_ref());
            tool("pg_dump", &args).await
        }
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path).map_err(|source| BackupError::Io {
        path: path.clone(),
        source,
    })?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(event = "backup_created", path = %path.display(), bytes, duration_ms, "backup_created");
    let verification = verify(&path).await?;
    tracing::info!(event = "backup_verified", path = %path.display(), ok = verification.ok, detail = %verification.detail, "backup_verified");
    if !verification.ok {
        let _ = std::fs::remove_file(&path);
        return Err(BackupError::Invalid {
            path,
            detail: verification.detail,
        });
    }
    let removed = prune(dir, kind, keep)?;
    Ok(Outcome::Created(Report {
        path,
        kind,
        bytes,
        verification,
        removed,
        duration_ms,
    }))
}

/// Removes all but the newest `keep` backups of `kind` in `dir`.
fn prune(dir: &Path, kind: Kind, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let mut removed = Vec::new();
    for old in list(dir)?.into_iter().filter(|f| f.kind == kind).skip(keep) {
        std::fs::remove_file(&old.path).map_err(|source| BackupError::Io {
            path: old.path.clone(),
            source,
        })?;
        removed.push(old.path);
    }
    Ok(removed)
}

fn sniff(path: &Path) -> Result<Option<Kind>, BackupError> {
    use std::io::Read as _;
    let mut head = [0u8; 512];
    let mut file = std::fs::File::open(path).map_err(|source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut n = 0;
    while n < head.len() {
        let got = file
            .read(&mut head[n..])
            .map_err(|source| BackupError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(if head[..n].starts_with(SQLITE_MAGIC) {
        Some(Kind::Sqlite)
    } else if head[..n].starts_with(PG_MAGIC) {
        Some(Kind::Pgdump)
    } else if n >= 263 && &head[257..262] == b"ustar" {
        Some(Kind::Qdrant)
    } else {
        None
    })
}

/// Checks one backup file (its kind told by its first bytes).
///
/// # Errors
/// When it cannot be read, is neither kind, or `pg_restore` is missing for a
/// dump. A file that reads but is damaged is `Ok` with `ok: false`.
pub async fn verify(path: &Path) -> Result<Verification, BackupError> {
    let kind = sniff(path)?.ok_or_else(|| BackupError::Invalid {
        path: path.to_path_buf(),
        detail: "neither a SQLite database, a pg_dump custom-format file nor a Qdrant snapshot"
            .to_owned(),
    })?;
    let checked = match kind {
        Kind::Sqlite => verify_sqlite(path).await,
        Kind::Pgdump => verify_pgdump(path).await,
        Kind::Qdrant => memory::verify_tar(path),
    };
    let (ok, detail) = match checked {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    Ok(Verification {
        path: path.to_path_buf(),
        kind,
        ok,
        detail,
    })
}

async fn verify_sqlite(path: &Path) -> Result<String, String> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(true)
        .connect()
        .await
        .map_err(|e| format!("cannot open: {e}"))?;
    let checks: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| format!("integrity check failed: {e}"))?;
    if checks != ["ok"] {
        return Err(format!("integrity check: {}", checks.join("; ")));
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('sessions', 'voice_jobs')",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| format!("cannot read the schema: {e}"))?;
    let _ = conn.close().await;
    if tables == 2 {
        Ok("integrity_check ok; Rose's tables present".to_owned())
    } else {
        Err("not a Rose database (sessions and voice_jobs missing)".to_owned())
    }
}

async fn verify_pgdump(path: &Path) -> Result<String, String> {
    if !on_path("pg_restore") {
        return Err("pg_restore not found on PATH; cannot verify a PostgreSQL dump".to_owned());
    }
    tool("pg_restore", &["--list".as_ref(), path.as_os_str()])
        .await
        .map_err(|e| e.to_string())?;
    // The table of contents comes first: read every data block too.
    tool(
        "pg_restore",
        &["--file".as_ref(), "/dev/null".as_ref(), path.as_os_str()],
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok("pg_restore reads the table of contents and every data block".to_owned())
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub from: PathBuf,
    pub kind: Kind,
    /// Sessions and jobs in the database afterwards.
    pub sessions: i64,
    pub jobs: i64,
}

/// Rows in `sessions` + `voice_jobs`. A table that does not exist yet (a
/// fresh database) holds none; any other failure to count — a file that is
/// not a database, a table that cannot be read — is an error, so a target
/// that cannot be checked is never taken for an empty one.
async fn occupancy_sqlite(path: &Path) -> Result<(i64, i64), BackupError> {
    if !path.exists() {
        return Ok((0, 0));
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(occupancy_err)?;
    let mut counts = [0i64; 2];
    for (count, table) in counts.iter_mut().zip(["sessions", "voice_jobs"]) {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type IN ('table', 'view') AND name = $1",
        )
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .map_err(occupancy_err)?;
        if exists > 0 {
            *count =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&mut conn)
                    .await
                    .map_err(occupancy_err)?;
        }
    }
    let _ = conn.close().await;
    Ok((counts[0], counts[1]))
}

/// [`occupancy_sqlite`] on PostgreSQL (`to_regclass` tells a missing table).
async fn occupancy_postgres(url: &str, schema: Option<&str>) -> Result<(i64, i64), BackupError> {
    let mut options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(db_err)?;
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    let mut conn = options.connect().await.map_err(occupancy_err)?;
    let mut counts = [0i64; 2];
    for (count, table) in counts.iter_mut().zip(["sessions", "voice_jobs"]) {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut conn)
            .await
            .map_err(occupancy_err)?;
        if exists {
            *count =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&mut conn)
                    .await
                    .map_err(occupancy_err)?;
        }
    }
    let _ = conn.close().await;
    Ok((counts[0], counts[1]))
}

fn occupancy_err(e: sqlx::Error) -> BackupError {
    BackupError::TargetUnchecked(e.to_string())
}

/// Refuses a target holding sessions or jobs, or one that cannot be checked,
/// unless `force` (then it is not looked at).
async fn check_empty(target: &Target, force: bool) -> Result<(), BackupError> {
    if force {
        return Ok(());
    }
    let (sessions, jobs) = match target {
        Target::Sqlite(db) => occupancy_sqlite(db).await?,
        Target::Postgres { url, schema } => occupancy_postgres(url, schema.as_deref()).await?,
    };
    if sessions + jobs > 0 {
        return Err(BackupError::TargetNotEmpty {
            rows: sessions + jobs,
        });
    }
    Ok(())
}

/// Restores `path` into `target`. The file is verified first; a damaged one
/// is refused before the target is touched, and so is a target holding
/// sessions or jobs unless `force`.
///
/// # Errors
/// [`BackupError::Invalid`] for a damaged file or one of the wrong kind,
/// [`BackupError::TargetNotEmpty`], [`BackupError::TargetUnchecked`] when the
/// target cannot be counted, or the restore's own failure.
pub async fn restore(path: &Path, target: &Target, force: bool) -> Result<Restored, BackupError> {
    let verification = verify(path).await?;
    if !verification.ok {
        return Err(BackupError::Invalid {
            path: path.to_path_buf(),
            detail: verification.detail,
        });
    }
    match (verification.kind, target) {
        (Kind::Sqlite, Target::Sqlite(db)) => {
            check_empty(target, force).await?;
            let staging = db.with_extension("restore-partial");
            std::fs::copy(path, &staging).map_err(|source| BackupError::Io {
                path: staging.clone(),
                source,
            })?;
            for suffix in ["-wal", "-shm"] {
                let mut side = db.as_os_str().to_owned();
                side.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(side));
            }
            std::fs::rename(&staging, db).map_err(|source| BackupError::Io {
                path: db.clone(),
                source,
            })?;
            let (sessions, jobs) = occupancy_sqlite(db).await?;
            Ok(Restored {
                from: path.to_path_buf(),
                kind: Kind::Sqlite,
                sessions,
                jobs,
            })
        }
        (Kind::Pgdump, Target::Postgres { url, schema }) => {
            check_empty(target, force).await?;
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "--clean".as_ref(),
                "--if-exists".as_ref(),
                "--no-owner".as_ref(),
                "--single-transaction".as_ref(),
                "--exit-on-error".as_ref(),
            ];
            if let Some(schema) = schema {
                args.push("--schema".as_ref());
                args.push(schema.as_ref());
            }
            args.push("--dbname".as_ref());
            args.push(url.as_ref());
            args.push(path.as_os_str());
            tool("pg_restore", &args).await?;
            let (sessions, jobs) = occupancy_postgres(url, schema.as_deref()).await?;
            Ok(Restored {
                from: path.to_path_buf(),
                kind: Kind::Pgdump,
                sessions,
                jobs,
            })
        }
        (Kind::Qdrant, _) => Err(BackupError::Unsupported(
            "a Qdrant snapshot is restored into Qdrant, not into the database".to_owned(),
        )),
        (kind, _) => Err(BackupError::Unsupported(format!(
            "a {kind:?} backup cannot be restored into this database"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_others_are_ignored() {
        let a = parse_name(Path::new("rose-20261128T020000.123Z.sqlite"));
        assert_eq!(a.map(|(k, _)| k), Some(Kind::Sqlite));
        assert!(parse_name(Path::new("rose-20261128T020000.123Z.pgdump")).is_some());
        assert!(parse_name(Path::new("rose-20261128T020000.123Z.sqlite.partial")).is_none());
        assert!(parse_name(Path::new("notes.sqlite")).is_none());
        assert!(parse_name(Path::new("rose-yesterday.sqlite")).is_none());
        let first = stamp();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(first < stamp(), "names taken later sort later");
        assert!(parse_name(Path::new(&format!("rose-{first}.sqlite"))).is_some());
    }
}
