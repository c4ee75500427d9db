//! The Qdrant half of a backup: the collection's snapshot beside the
//! database file, under the same stamp and retention, verified as a tar
//! archive and restored with it (see the parent module).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{
    BackupError, Kind, Outcome, PREFIX, QDRANT_EXT, Report, Restored, Source, Target, Verification,
    create_at, free_stamp, parse_name, prune, restore, sniff, verify,
};
use crate::memory::qdrant::QdrantMemory;

/// What [`create_with_memory`] made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub database: Outcome,
    /// The Qdrant snapshot beside it (when the memories live in Qdrant).
    pub memory: Option<Report>,
}

/// [`create`], and when `memory` is Qdrant, its snapshot beside the
/// database file under the same stamp, verified and kept to the same
/// `keep` (a database backup skipped for want of `pg_dump` still gets its
/// snapshot).
///
/// # Errors
/// As [`create`]; [`BackupError::Memory`] when the snapshot fails (the
/// database backup made stays, and the message names it).
pub async fn create_with_memory(
    source: &Source,
    memory: Option<&QdrantMemory>,
    dir: &Path,
    keep: usize,
) -> Result<Created, BackupError> {
    std::fs::create_dir_all(dir).map_err(|source| BackupError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let stamp = free_stamp(dir).await;
    let database = create_at(source, dir, keep, &stamp).await?;
    let Some(qdrant) = memory else {
        return Ok(Created {
            database,
            memory: None,
        });
    };
    let made = match &database {
        Outcome::Created(report) => format!("database backup {} made; ", report.path.display()),
        Outcome::Skipped { .. } => String::new(),
    };
    let report = snapshot_at(qdrant, dir, keep, &stamp)
        .await
        .map_err(|e| BackupError::Memory(format!("{made}Qdrant snapshot failed: {e}")))?;
    Ok(Created {
        database,
        memory: Some(report),
    })
}

async fn snapshot_at(
    qdrant: &QdrantMemory,
    dir: &Path,
    keep: usize,
    stamp: &str,
) -> Result<Report, BackupError> {
    let started = Instant::now();
    let path = dir.join(format!("{PREFIX}{stamp}.{QDRANT_EXT}"));
    let bytes = qdrant
        .snapshot_to(&path)
        .await
        .map_err(|e| BackupError::Memory(e.to_string()))?;
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
    let removed = prune(dir, Kind::Qdrant, keep)?;
    Ok(Report {
        path,
        kind: Kind::Qdrant,
        bytes,
        verification,
        removed,
        duration_ms,
    })
}

/// The Qdrant snapshot taken with the database backup `path` (same stamp),
/// if there is one.
#[must_use]
pub fn paired_snapshot(path: &Path) -> Option<PathBuf> {
    let (kind, _) = parse_name(path)?;
    if kind == Kind::Qdrant {
        return None;
    }
    let pair = path.with_extension(QDRANT_EXT);
    pair.is_file().then_some(pair)
}

/// Verifies `path` and, for a database backup, the snapshot taken with it.
///
/// # Errors
/// As [`verify`].
pub async fn verify_with_pair(path: &Path) -> Result<Vec<Verification>, BackupError> {
    let mut checked = vec![verify(path).await?];
    if let Some(pair) = paired_snapshot(path) {
        checked.push(verify(&pair).await?);
    }
    Ok(checked)
}

/// A Qdrant snapshot is a tar archive: every header must carry a valid
/// checksum and every member all its bytes, to the end-of-archive marker.
pub(super) fn verify_tar(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut members = 0u64;
    let mut header = [0u8; 512];
    loop {
        file.read_exact(&mut header)
            .map_err(|_| format!("truncated after {members} members (no end-of-archive marker)"))?;
        if header.iter().all(|&b| b == 0) {
            return if members == 0 {
                Err("an empty archive".to_owned())
            } else {
                Ok(format!("a complete tar archive of {members} members"))
            };
        }
        let stored = octal(&header[148..156]).ok_or("a header with an unreadable checksum")?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != stored {
            return Err(format!("member {} has a damaged header", members + 1));
        }
        let size = tar_size(&header[124..136]).ok_or("a header with an unreadable size")?;
        let padded = size.div_ceil(512) * 512;
        let copied = std::io::copy(&mut (&mut file).take(padded), &mut std::io::sink())
            .map_err(|e| format!("cannot read: {e}"))?;
        if copied != padded {
            return Err(format!("member {} is truncated", members + 1));
        }
        members += 1;
    }
}

/// A NUL- or space-terminated octal tar field.
fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// A tar size: octal, or GNU base-256 when the high bit is set.
fn tar_size(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => field[1..]
            .iter()
            .try_fold(u64::from(first & 0x7f), |n, &b| {
                n.checked_mul(256).map(|n| n + u64::from(b))
            }),
        _ => octal(field),
    }
}

/// What [`restore_with_memory`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredAll {
    /// The database restored (none when `path` was a snapshot alone).
    pub database: Option<Restored>,
    /// The snapshot uploaded into Qdrant, if any.
    pub memory: Option<PathBuf>,
    /// Why vector memory was left as it is, when it was.
    pub memory_note: Option<String>,
}

/// Restores a database backup and the Qdrant snapshot taken with it (same
/// stamp), or a snapshot file alone. Both files are verified, and both
/// targets checked (a collection holding points counts as not empty), before
/// either is touched.
///
/// # Errors
/// As [`restore`]; [`BackupError::TargetNotEmpty`] for a collection with
/// points unless `force`; [`BackupError::Memory`] when Qdrant fails.
pub async fn restore_with_memory(
    path: &Path,
    target: &Target,
    memory: Option<&QdrantMemory>,
    force: bool,
) -> Result<RestoredAll, BackupError> {
    let is_snapshot = sniff(path)? == Some(Kind::Qdrant);
    let snapshot = if is_snapshot {
        Some(path.to_path_buf())
    } else {
        paired_snapshot(path)
    };
    let (qdrant, memory_note) = match (&snapshot, memory) {
        (Some(_), Some(q)) => (Some(q), None),
        (Some(file), None) if is_snapshot => {
            return Err(BackupError::Unsupported(format!(
                "{} is a Qdrant snapshot and QDRANT_URL is not set",
                file.display()
            )));
        }
        (Some(file), None) => (
            None,
            Some(format!(
                "QDRANT_URL is not set: the memory snapshot {} was not restored",
                file.display()
            )),
        ),
        (None, Some(_)) => (
            None,
            Some("no memory snapshot beside this backup: Qdrant left as it is".to_owned()),
        ),
        (None, None) => (None, None),
    };
    if let (Some(file), Some(q)) = (&snapshot, qdrant) {
        let checked = verify(file).await?;
        if !checked.ok {
            return Err(BackupError::Invalid {
                path: file.clone(),
                detail: checked.detail,
            });
        }
        if !force {
            let points = q
                .points()
                .await
                .map_err(|e| BackupError::Memory(e.to_string()))?;
            if points > 0 {
                return Err(BackupError::TargetNotEmpty {
                    rows: i64::try_from(points).unwrap_or(i64::MAX),
                });
            }
        }
    }
    // The database goes first (it verifies and checks its target itself): a
    // refused database leaves Qdrant untouched.
    let database = if is_snapshot {
        None
    } else {
        Some(restore(path, target, force).await?)
    };
    let memory = match (snapshot, qdrant) {
        (Some(file), Some(q)) => {
            q.recover_from(&file)
                .await
                .map_err(|e| BackupError::Memory(e.to_string()))?;
            Some(file)
        }
        _ => None,
    };
    Ok(RestoredAll {
        database,
        memory,
        memory_note,
    })
}
