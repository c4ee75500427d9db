//! Backups: create → verify → restore round trips on SQLite and PostgreSQL,
//! retention, damaged files refused before anything is touched, a target
//! with data refused without force, an unusable directory.

use std::path::Path;
use std::time::Duration;

use rose_scheduler::{Task, run_task};
use rose_shared::backup::{self, BackupError, Kind, Outcome, Source, Target};
use rose_shared::store::Database;
use rose_tests::{
    AppOptions, Deployment, SPOKEN_WAV, TestApp, database_url, spawn_app, spawn_app_with,
};
use serde_json::Value;

async fn one_job(app: &TestApp) {
    let session = app.start_session().await;
    let response = app.upload(&session, SPOKEN_WAV, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let job = app
        .wait_for_job(
            body["job_id"].as_str().expect("id"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

fn created(outcome: Outcome) -> backup::Report {
    match outcome {
        Outcome::Created(report) => report,
        Outcome::Skipped { reason } => panic!("backup skipped: {reason}"),
    }
}

/// Cuts `path` to half its size in a copy; returns the copy.
fn truncated_copy(path: &Path, dir: &Path) -> std::path::PathBuf {
    let bytes = std::fs::read(path).expect("read backup");
    let copy = dir.join(format!(
        "damaged.{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or("bin")
    ));
    std::fs::write(&copy, &bytes[..bytes.len() / 2]).expect("write damaged copy");
    copy
}

fn sqlite_pool(db: &Database) -> sqlx::SqlitePool {
    match db {
        Database::Sqlite(pool) => pool.clone(),
        Database::Postgres(_) => panic!("an embedded app"),
    }
}

#[tokio::test]
async fn sqlite_backup_verifies_and_restores() {
    let app = spawn_app(Deployment::Embedded).await;
    one_job(&app).await;
    let dir = tempfile::tempdir().expect("dir");
    let source = Source::Sqlite(sqlite_pool(&app.rose.db));
    let report = created(
        backup::create(&source, &dir.path().join("backups"), 7)
            .await
            .expect("create"),
    );
    assert_eq!(report.kind, Kind::Sqlite);
    assert!(report.verification.ok, "{report:?}");
    assert!(report.bytes > 0);
    let name = report
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    assert!(
        name.starts_with("rose-") && name.ends_with("Z.sqlite"),
        "{name}"
    );

    // Into an empty database: everything is there.
    let target = Target::Sqlite(dir.path().join("restored.db"));
    let restored = backup::restore(&report.path, &target, false)
        .await
        .expect("restore");
    assert_eq!((restored.sessions, restored.jobs), (1, 1));

    // A database with data is refused without --force, replaced with it.
    let refused = backup::restore(&report.path, &target, false).await;
    assert!(
        matches!(refused, Err(BackupError::TargetNotEmpty { rows: 2 })),
        "{refused:?}"
    );
    let forced = backup::restore(&report.path, &target, true)
        .await
        .expect("forced");
    assert_eq!((forced.sessions, forced.jobs), (1, 1));

    // A truncated file fails verification and restore refuses it untouched.
    let damaged = truncated_copy(&report.path, dir.path());
    let check = backup::verify(&damaged).await.expect("verify runs");
    assert!(!check.ok, "{check:?}");
    let target_bytes = std::fs::read(dir.path().join("restored.db")).expect("target");
    let refused = backup::restore(&damaged, &target, true).await;
    assert!(
        matches!(refused, Err(BackupError::Invalid { .. })),
        "{refused:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("restored.db")).expect("target"),
        target_bytes
    );

    // Not a backup at all.
    let junk = dir.path().join("junk.sqlite");
    std::fs::write(&junk, b"hello").expect("junk");
    assert!(matches!(
        backup::verify(&junk).await,
        Err(BackupError::Invalid { .. })
    ));
    app.stop().await;
}

#[tokio::test]
async fn retention_keeps_exactly_backup_keep() {
    let app = spawn_app(Deployment::Embedded).await;
    let dir = tempfile::tempdir().expect("dir");
    let source = Source::Sqlite(sqlite_pool(&app.rose.db));
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(
            created(
                backup::create(&source, dir.path(), 3)
                    .await
                    .expect("create"),
            )
            .path,
        );
    }
    let left: Vec<_> = backup::list(dir.path())
        .expect("list")
        .into_iter()
        .map(|f| f.path)
        .collect();
    let newest: Vec<_> = made.iter().rev().take(3).cloned().collect();
    assert_eq!(left, newest, "the newest three, newest first");
    // Files that are not Rose's backups are never touched.
    std::fs::write(dir.path().join("notes.txt"), b"keep me").expect("write");
    created(
        backup::create(&source, dir.path(), 3)
            .await
            .expect("create"),
    );
    assert!(dir.path().join("notes.txt").exists());
    assert_eq!(backup::list(dir.path()).expect("list").len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn an_unusable_backup_dir_fails_clearly_and_keeps_earlier_backups() {
    let app = spawn_app(Deployment::Embedded).await;
    let dir = tempfile::tempdir().expect("dir");
    let source = Source::Sqlite(sqlite_pool(&app.rose.db));
    let earlier = created(
        backup::create(&source, dir.path(), 7)
            .await
            .expect("create"),
    )
    .path;
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").expect("write");
    let failed = backup::create(&source, &blocker.join("backups"), 7).await;
    let error = failed
        .expect_err("a directory under a file cannot be made")
        .to_string();
    assert!(error.contains("backup directory"), "{error}");
    assert!(earlier.exists());
    assert_eq!(backup::list(dir.path()).expect("list").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_scheduled_backup_records_its_result() {
    let dir = tempfile::tempdir().expect("dir");
    let backups = dir.path().join("nightly");
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            env: [("BACKUP_DIR".to_owned(), backups.display().to_string())].into(),
            ..AppOptions::default()
        },
    )
    .await;
    let report = run_task(&app.rose, Task::Backup, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.outcome, "ok", "{report:?}");
    assert_eq!(report.counts["verified"], true, "{report:?}");
    assert_eq!(
        backup::list(&backups).expect("list").len(),
        1,
        "a missing directory is created"
    );

    // A directory that cannot be made: the run fails, with the reason recorded.
    std::fs::write(dir.path().join("blocker"), b"x").expect("write");
    let blocked = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            env: [(
                "BACKUP_DIR".to_owned(),
                dir.path().join("blocker/backups").display().to_string(),
            )]
            .into(),
            ..AppOptions::default()
        },
    )
    .await;
    let report = run_task(&blocked.rose, Task::Backup, None, "test")
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(report.outcome, "failed", "{report:?}");
    assert!(
        report
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("backup directory")),
        "{report:?}"
    );
    let recorded = blocked
        .scalar("SELECT COUNT(*) FROM schedule_runs WHERE name = 'backup' AND outcome = 'failed' AND detail IS NOT NULL")
        .await;
    assert_eq!(recorded, 1);
    blocked.stop().await;
    app.stop().await;
}

fn pg_tools() -> bool {
    let found = ["pg_dump", "pg_restore"].iter().all(|tool| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    });
    if !found {
        eprintln!("skipped: pg_dump / pg_restore not on PATH");
    }
    found
}

#[tokio::test]
async fn postgres_backup_verifies_and_restores() {
    if !pg_tools() {
        return;
    }
    let app = spawn_app(Deployment::Scaled).await;
    one_job(&app).await;
    let schema = app.schema().expect("schema").to_owned();
    let dir = tempfile::tempdir().expect("dir");
    let source = Source::Postgres {
        url: database_url(),
        schema: Some(schema.clone()),
    };
    let report = created(
        backup::create(&source, dir.path(), 7)
            .await
            .expect("create"),
    );
    assert_eq!(report.kind, Kind::Pgdump);
    assert!(report.verification.ok, "{report:?}");

    // Data written after the backup is what a restore takes away.
    app.start_session().await;
    assert_eq!(app.count_rows("sessions").await, 2);
    let target = Target::Postgres {
        url: database_url(),
        schema: Some(schema.clone()),
    };
    let refused = backup::restore(&report.path, &target, false).await;
    assert!(
        matches!(refused, Err(BackupError::TargetNotEmpty { .. })),
        "{refused:?}"
    );
    assert_eq!(
        app.count_rows("sessions").await,
        2,
        "a refused restore changes nothing"
    );

    // A truncated dump fails verification and is refused before the database is touched.
    let damaged = truncated_copy(&report.path, dir.path());
    let check = backup::verify(&damaged).await.expect("verify runs");
    assert!(!check.ok, "{check:?}");
    let refused = backup::restore(&damaged, &target, true).await;
    assert!(
        matches!(refused, Err(BackupError::Invalid { .. })),
        "{refused:?}"
    );
    assert_eq!(app.count_rows("sessions").await, 2);

    let restored = backup::restore(&report.path, &target, true)
        .await
        .expect("restore");
    assert_eq!((restored.sessions, restored.jobs), (1, 1));
    assert_eq!(app.count_rows("sessions").await, 1);
    assert_eq!(app.count_rows("voice_jobs").await, 1);
    app.stop().await;
}

/// A target whose "is it empty?" check cannot run is refused without
/// `--force`, with the reason; a fresh file (no tables yet) is empty.
#[tokio::test]
async fn sqlite_restore_refuses_a_target_it_cannot_check() {
    let app = spawn_app(Deployment::Embedded).await;
    let dir = tempfile::tempdir().expect("dir");
    let source = Source::Sqlite(sqlite_pool(&app.rose.db));
    let report = created(
        backup::create(&source, &dir.path().join("backups"), 7)
            .await
            .expect("create"),
    );

    // `sessions` is there but cannot be read (a view over a missing table).
    let broken = dir.path().join("broken.db");
    let pool = rose_tests::sqlite_pool(&broken).await;
    sqlx::query("CREATE TABLE gone (x INTEGER)")
        .execute(&pool)
        .await
        .expect("table");
    sqlx::query("CREATE VIEW sessions AS SELECT x FROM gone")
        .execute(&pool)
        .await
        .expect("view");
    sqlx::query("DROP TABLE gone")
        .execute(&pool)
        .await
        .expect("drop");
    pool.close().await;
    // What the file holds, by its schema: its bytes may still move when a
    // write-ahead log is checkpointed, which is not a restore writing.
    let schema = || async {
        let pool = rose_tests::sqlite_pool(&broken).await;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT type, name FROM sqlite_master ORDER BY type, name")
                .fetch_all(&pool)
                .await
                .expect("schema");
        pool.close().await;
        rows
    };
    let before = schema().await;
    assert_eq!(before, vec![("view".to_owned(), "sessions".to_owned())]);
    let refused = backup::restore(&report.path, &Target::Sqlite(broken.clone()), false).await;
    let error = refused
        .expect_err("an unreadable target is not empty")
        .to_string();
    assert!(error.contains("gone"), "the reason is given: {error}");
    assert_eq!(schema().await, before, "untouched");

    // A file that is not a database at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 8192]).expect("junk");
    let refused = backup::restore(&report.path, &Target::Sqlite(junk.clone()), false).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(std::fs::read(&junk).expect("read"), vec![0x5a; 8192]);

    // --force replaces either.
    let forced = backup::restore(&report.path, &Target::Sqlite(broken), true)
        .await
        .expect("forced");
    assert_eq!(forced.kind, Kind::Sqlite);

    // An empty SQLite file (no tables yet) counts as empty.
    let fresh = dir.path().join("fresh.db");
    rose_tests::sqlite_pool(&fresh).await.close().await;
    backup::restore(&report.path, &Target::Sqlite(fresh), false)
        .await
        .expect("a database without Rose's tables is empty");
    app.stop().await;
}

#[tokio::test]
async fn postgres_restore_refuses_a_target_it_cannot_check() {
    if !pg_tools() {
        return;
    }
    let app = spawn_app(Deployment::Scaled).await;
    let schema = app.schema().expect("schema").to_owned();
    let dir = tempfile::tempdir().expect("dir");
    let source = Source::Postgres {
        url: database_url(),
        schema: Some(schema.clone()),
    };
    let report = created(
        backup::create(&source, dir.path(), 7)
            .await
            .expect("create"),
    );
    // Another schema whose `sessions` raises when read.
    let other = rose_tests::unique("t");
    for statement in [
        format!("CREATE SCHEMA {other}"),
        format!(
            "CREATE FUNCTION {other}.boom() RETURNS boolean LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'sessions cannot be read'; END $$"
        ),
        format!("CREATE VIEW {other}.sessions AS SELECT 1 AS x WHERE {other}.boom()"),
    ] {
        app.execute(&statement).await;
    }
    let target = Target::Postgres {
        url: database_url(),
        schema: Some(other.clone()),
    };
    let refused = backup::restore(&report.path, &target, false).await;
    let error = refused
        .expect_err("an unreadable target is not empty")
        .to_string();
    assert!(error.contains("sessions cannot be read"), "{error}");
    app.execute(&format!("DROP SCHEMA {other} CASCADE")).await;
    app.stop().await;
}
