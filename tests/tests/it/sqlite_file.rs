//! The embedded deployment's SQLite file: a write that meets another one waits
//! for it instead of failing, and the write-ahead log is copied into the file
//! by the background task, not by a commit.

use std::time::Duration;

use sqlx::SqlitePool;

async fn open(dir: &tempfile::TempDir) -> SqlitePool {
    let pool = rose_tests::sqlite_pool(&dir.path().join("rose.db")).await;
    sqlx::query("CREATE TABLE t (v BLOB)")
        .execute(&pool)
        .await
        .expect("create");
    pool
}

#[tokio::test]
async fn a_write_meeting_a_write_in_progress_waits_for_it() {
    let dir = tempfile::tempdir().expect("dir");
    let pool = open(&dir).await;
    let mut holder = pool.acquire().await.expect("acquire");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .expect("begin");
    sqlx::query("INSERT INTO t VALUES (x'01')")
        .execute(&mut *holder)
        .await
        .expect("insert");

    let other = {
        let pool = pool.clone();
        tokio::spawn(async move {
            sqlx::query("INSERT INTO t VALUES (x'02')")
                .execute(&pool)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Without a busy handler it would have failed at once with "database is locked".
    assert!(
        !other.is_finished(),
        "the second write should wait for the first"
    );
    sqlx::query("COMMIT")
        .execute(&mut *holder)
        .await
        .expect("commit");
    other
        .await
        .expect("task")
        .expect("the second write goes through once the first commits");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn the_log_reaches_the_file_without_a_commit_doing_it() {
    let dir = tempfile::tempdir().expect("dir");
    let pool = open(&dir).await;
    let file = dir.path().join("rose.db");
    let before = std::fs::metadata(&file).expect("file").len();
    // 1 MiB is 256 pages: far below the automatic checkpoint's threshold, so
    // no commit copies it; it sits in the log until the background task runs.
    sqlx::query("INSERT INTO t VALUES (zeroblob(1048576))")
        .execute(&pool)
        .await
        .expect("insert");
    let mut size = before;
    for _ in 0..100 {
        size = std::fs::metadata(&file).expect("file").len();
        if size >= 1_048_576 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        size >= 1_048_576,
        "the database file is still {size} bytes (was {before}): nothing checkpointed the log"
    );
}
