//! How Rose opens its SQLite file (the embedded deployment).
//!
//! The api, the worker, the queue and the scheduler of `rose serve` write one
//! file through one pool, so two writes often meet. Three choices keep a write
//! that meets another one from waiting longer than the other one takes:
//!
//! - **WAL mode** with `synchronous = NORMAL`: readers never wait for the
//!   writer, and a commit appends to the log without a flush.
//! - **A busy handler that polls every millisecond** (after a few shorter
//!   polls) for up to [`BUSY_LIMIT`]. SQLite's own busy timeout sleeps 1, 2, 5,
//!   10 … 100 ms between tries, so a write that met a 1 ms write could sleep
//!   tens of milliseconds after the lock was free: that was most of the
//!   embedded queue wait's tail.
//! - **Checkpoints in the background** ([`CHECKPOINT_EVERY`]). SQLite's
//!   automatic checkpoint runs inside the commit that crosses its threshold:
//!   every few uploads one request copied megabytes of log into the file and
//!   flushed it before answering. A task on its own connection now does it;
//!   the automatic one stays as a bound ([`AUTOCHECKPOINT_PAGES`]) for
//!   processes that write without the task running long enough (one-shot
//!   commands) and for a task that fell behind.

use std::ffi::{c_int, c_void};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::StoreResult;

/// How long a write waits for another one before failing with "database is locked".
pub const BUSY_LIMIT: Duration = Duration::from_secs(10);

/// How often the background task checkpoints the log into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// SQLite's automatic checkpoint threshold, in pages of 4 KiB (its default is
/// 1,000). Only reached when the background task cannot keep up.
pub const AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// The log file is truncated back to this size after a checkpoint reset it.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

/// Connections in the pool shared by every role of the process.
const POOL_SIZE: u32 = 8;

/// Opens the pool for `url` (created if missing) and starts its checkpoint
/// task, which ends when the pool is closed.
pub(super) async fn open(url: &str) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .pragma("wal_autocheckpoint", AUTOCHECKPOINT_PAGES.to_string())
        .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string());
    let pool = SqlitePoolOptions::new()
        .max_connections(POOL_SIZE)
        .after_connect(|conn, _| Box::pin(async move { poll_when_busy(conn).await }))
        .connect_with(options.clone())
        .await?;
    let mut checkpointer = options.connect().await?;
    poll_when_busy(&mut checkpointer).await?;
    tokio::spawn(checkpoint_until_closed(checkpointer, pool.clone()));
    Ok(pool)
}

/// Installs [`busy`] as the connection's busy handler.
async fn poll_when_busy(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this connection's open handle, locked for our use; the
    // handler is a plain function that keeps no pointer (its argument is null).
    let rc = unsafe { libsqlite3_sys::sqlite3_busy_handler(db, Some(busy), std::ptr::null_mut()) };
    if rc == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "sqlite3_busy_handler returned {rc}"
        )))
    }
}

/// How long to sleep before try `count + 1` of a write that found the file
/// locked, or `None` to give up: 50, 100, 200, 400, 800 µs, then 1 ms until
/// [`BUSY_LIMIT`] has passed in all.
fn busy_sleep(count: u32) -> Option<Duration> {
    const RAMP: u32 = 5;
    if count < RAMP {
        return Some(Duration::from_micros(50 << count));
    }
    let ramp_total = Duration::from_micros(50 * ((1 << RAMP) - 1));
    let waited = ramp_total + Duration::from_millis(u64::from(count - RAMP));
    (waited < BUSY_LIMIT).then_some(Duration::from_millis(1))
}

/// SQLite's busy callback: nonzero means "try again". It runs on the
/// connection's own thread (sqlx gives each connection one), so sleeping
/// blocks no task.
extern "C" fn busy(_: *mut c_void, count: c_int) -> c_int {
    match busy_sleep(u32::try_from(count).unwrap_or(u32::MAX)) {
        Some(pause) => {
            std::thread::sleep(pause);
            1
        }
        None => 0,
    }
}

/// Checkpoints the log every [`CHECKPOINT_EVERY`] until `pool` is closed.
/// `PASSIVE` never waits for readers or writers: what it cannot copy now it
/// copies next time.
async fn checkpoint_until_closed(mut conn: SqliteConnection, pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !pool.is_closed() {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "SQLite checkpoint failed; the next one retries");
        }
    }
    let _ = conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_polls_short_then_every_millisecond_until_the_limit() {
        assert_eq!(busy_sleep(0), Some(Duration::from_micros(50)));
        assert_eq!(busy_sleep(4), Some(Duration::from_micros(800)));
        assert_eq!(busy_sleep(5), Some(Duration::from_millis(1)));
        let total: Duration = (0..).map_while(busy_sleep).sum();
        assert!(total >= BUSY_LIMIT - Duration::from_millis(1), "{total:?}");
        assert!(total <= BUSY_LIMIT + Duration::from_millis(1), "{total:?}");
    }
}
