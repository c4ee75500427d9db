//! The storage contract, run against both implementations (real PostgreSQL
//! in its own schema, a fresh SQLite file).

use std::str::FromStr;
use std::sync::Arc;

use rose_shared::domain::{JobError, JobStatus, Role, Stage};
use rose_shared::store::{AudioLookup, Created, Database, JobInput, NewAudio, NewJob, Store};
use sqlx::postgres::PgConnectOptions;

struct Fixture {
    store: Arc<dyn Store>,
    db: Database,
    schema: Option<String>,
    _dir: tempfile::TempDir,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let db = rose_tests::sqlite_database(&dir.path().join("t.db")).await;
    db.migrate().await.expect("migrate");
    Fixture {
        store: db.store(),
        db,
        schema: None,
        _dir: dir,
    }
}

async fn postgres() -> Fixture {
    let schema = rose_tests::unique("s");
    let base = PgConnectOptions::from_str(&rose_tests::database_url()).expect("url");
    if let Database::Postgres(pool) = Database::connect_postgres(base.clone())
        .await
        .expect("postgres")
    {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .expect("schema");
    }
    let db = Database::connect_postgres(base.options([("search_path", schema.as_str())]))
        .await
        .expect("postgres schema");
    db.migrate().await.expect("migrate");
    // Migrating twice is a no-op.
    db.migrate().await.expect("migrate again");
    Fixture {
        store: db.store(),
        db,
        schema: Some(schema),
        _dir: tempfile::tempdir().expect("dir"),
    }
}

impl Fixture {
    async fn drop_schema(self) {
        if let (Some(schema), Database::Postgres(pool)) = (&self.schema, &self.db) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(pool)
                .await;
        }
    }
}

fn new_job(session: rose_shared::domain::SessionId, key: Option<&str>) -> NewJob {
    NewJob {
        session_id: session,
        input: JobInput::Audio {
            bytes: b"RIFF....WAVEdata".to_vec(),
            mime: "audio/wav".to_owned(),
        },
        idempotency_key: key.map(str::to_owned),
        request_id: Some("req-1".to_owned()),
        callback_url: None,
        max_in_flight: None,
    }
}

async fn contract(f: Fixture) {
    let store = f.store.clone();
    store.ping().await.expect("ping");
    let session = store.create_session(Some("user-7")).await.expect("session");
    let fetched = store
        .get_session(session.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(fetched.user_id.as_deref(), Some("user-7"));

    // Idempotency: the same key in the same session is the same job.
    let (job, created) = store
        .create_job(new_job(session.id, Some("k1")))
        .await
        .expect("job");
    assert_eq!(created, Created::New);
    assert_eq!(job.status, JobStatus::Queued);
    let (again, created) = store
        .create_job(new_job(session.id, Some("k1")))
        .await
        .expect("again");
    assert_eq!((again.id, created), (job.id, Created::Existing));
    let (other, created) = store
        .create_job(new_job(session.id, None))
        .await
        .expect("other");
    assert_ne!(other.id, job.id);
    assert_eq!(created, Created::New);

    // The upload is stored with the job.
    let upload = job.input_audio_id.expect("an upload id");
    match store.get_audio(upload).await.expect("audio") {
        AudioLookup::Found(audio) => assert_eq!(audio.mime, "audio/wav"),
        other => panic!("upload not found: {other:?}"),
    }

    // The in-flight cap: `job` and `other` are queued, so a third is refused
    // at a cap of 2, while a replay of a used key still answers.
    let mut capped = new_job(session.id, None);
    capped.max_in_flight = Some(2);
    assert!(matches!(
        store.create_job(capped).await,
        Err(rose_shared::store::StoreError::SessionBusy(2))
    ));
    let mut replay = new_job(session.id, Some("k1"));
    replay.max_in_flight = Some(2);
    let (replayed, created) = store.create_job(replay).await.expect("replay");
    assert_eq!((replayed.id, created), (job.id, Created::Existing));

    // A typed job stores no audio and starts with its transcript.
    let mut typed = new_job(session.id, None);
    typed.input = JobInput::Text("I miss her laugh".to_owned());
    let (typed, _) = store.create_job(typed).await.expect("typed job");
    assert_eq!(typed.input_audio_id, None);
    let typed = store.get_job(typed.id).await.expect("get").expect("exists");
    assert_eq!(typed.input_audio_id, None);
    let sql = format!(
        "SELECT COUNT(*) FROM voice_jobs WHERE id = '{}' AND input_audio_id IS NULL",
        typed.id
    );
    let null_marked: i64 = match &f.db {
        Database::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
            .expect("query"),
        Database::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .expect("query"),
    };
    assert_eq!(null_marked, 1, "a typed job has no upload: NULL, not ''");
    assert_eq!(typed.transcript.as_deref(), Some("I miss her laugh"));
    let typed = store
        .begin_attempt(typed.id)
        .await
        .expect("begin typed")
        .expect("row");
    assert_eq!(typed.stage, None, "a typed job never shows stt");

    // Attempts and stages.
    let running = store
        .begin_attempt(job.id)
        .await
        .expect("begin")
        .expect("row");
    assert_eq!(
        (running.status, running.attempts),
        (JobStatus::Processing, 1)
    );
    assert!(running.timings.queue_wait.is_some());
    assert_eq!(
        running.stage,
        Some(Stage::Stt),
        "a job waiting for its transcript shows stt from its first attempt"
    );
    store.set_stage(job.id, Stage::Stt).await.expect("stage");

    // Checkpoints: the first write wins.
    store
        .save_transcript(job.id, "first words", 12, Some(Stage::Memory))
        .await
        .expect("transcript");
    store
        .save_transcript(job.id, "second words", 99, Some(Stage::Tts))
        .await
        .expect("transcript again");
    let job_row = store.get_job(job.id).await.expect("get").expect("row");
    assert_eq!(job_row.transcript.as_deref(), Some("first words"));
    assert_eq!(job_row.timings.stt, Some(12));
    assert_eq!(
        job_row.stage,
        Some(Stage::Memory),
        "the checkpoint shows the next stage; the losing write changes nothing"
    );

    // The reply and its two turns, once.
    store
        .save_reply(&job_row, "a gentle reply", 30, Some(Stage::Tts))
        .await
        .expect("reply");
    store
        .save_reply(&job_row, "another reply", 31, None)
        .await
        .expect("reply again");
    let replied = store.get_job(job.id).await.expect("get").expect("row");
    assert_eq!(replied.stage, Some(Stage::Tts));
    let turns = store.recent_turns(session.id, 10).await.expect("turns");
    assert_eq!(turns.len(), 2);
    assert_eq!(
        (turns[0].role, turns[0].text.as_str()),
        (Role::User, "first words")
    );
    assert_eq!(
        (turns[1].role, turns[1].text.as_str()),
        (Role::Assistant, "a gentle reply")
    );
    let limited = store.recent_turns(session.id, 1).await.expect("turns");
    assert_eq!(limited.len(), 1);
    assert_eq!(
        limited[0].role,
        Role::Assistant,
        "the latest turns are kept"
    );

    // Speech, once.
    let speech = || NewAudio {
        bytes: vec![0xFF, 0xFB, 0x90, 0xC4],
        mime: "audio/mpeg".to_owned(),
    };
    let audio_id = store
        .save_speech(&job_row, speech(), 40)
        .await
        .expect("speech");
    let audio_again = store
        .save_speech(&job_row, speech(), 41)
        .await
        .expect("speech again");
    assert_eq!(audio_id, audio_again);

    store
        .complete_job(job.id, &["memory".to_owned()])
        .await
        .expect("complete");
    // A late failure does not overwrite success.
    let err = JobError {
        code: "x".to_owned(),
        message: "y".to_owned(),
    };
    store.fail_job(job.id, &err).await.expect("fail");
    let done = store.get_job(job.id).await.expect("get").expect("row");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.degraded, vec!["memory".to_owned()]);
    assert_eq!(done.reply_text.as_deref(), Some("a gentle reply"));
    assert_eq!(done.reply_audio_id, Some(audio_id));
    assert!(done.timings.total.is_some());
    assert!(done.error.is_none());
    // A finished job is not restarted.
    let not_again = store
        .begin_attempt(job.id)
        .await
        .expect("begin")
        .expect("row");
    assert_eq!(
        (not_again.status, not_again.attempts),
        (JobStatus::Succeeded, 1)
    );

    // Failing the other job records the error.
    store.fail_job(other.id, &err).await.expect("fail other");
    let failed = store.get_job(other.id).await.expect("get").expect("row");
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error, Some(err));
    // An operator revives it: queued again, checkpoints kept.
    assert!(store.requeue_job(other.id).await.expect("requeue"));
    assert!(
        !store.requeue_job(other.id).await.expect("requeue twice"),
        "only failed jobs"
    );
    assert!(
        !store.requeue_job(job.id).await.expect("requeue success"),
        "never a succeeded job"
    );
    let revived = store.get_job(other.id).await.expect("get").expect("row");
    assert_eq!((revived.status, revived.error), (JobStatus::Queued, None));

    // Erasing the session takes everything it owns.
    assert!(store.delete_session(session.id).await.expect("delete"));
    assert!(
        !store
            .delete_session(session.id)
            .await
            .expect("delete again")
    );
    assert!(store.get_job(job.id).await.expect("get").is_none());
    assert!(
        store
            .recent_turns(session.id, 10)
            .await
            .expect("turns")
            .is_empty()
    );
    assert_eq!(
        store.get_audio(audio_id).await.expect("audio"),
        AudioLookup::Missing
    );
    f.drop_schema().await;
}

#[tokio::test]
async fn sqlite_store_contract() {
    contract(sqlite().await).await;
}

#[tokio::test]
async fn postgres_store_contract() {
    contract(postgres().await).await;
}

/// Uploads racing for the last places of a session's in-flight cap: no more
/// than the cap get in, however many arrive at once.
async fn the_cap_holds_under_concurrency(f: Fixture) {
    let session = f.store.create_session(None).await.expect("session");
    let mut racers = Vec::new();
    for _ in 0..24 {
        let store = f.store.clone();
        let mut job = new_job(session.id, None);
        job.max_in_flight = Some(2);
        racers.push(tokio::spawn(async move { store.create_job(job).await }));
    }
    let mut accepted = 0;
    for racer in racers {
        match racer.await.expect("join") {
            Ok(_) => accepted += 1,
            Err(rose_shared::store::StoreError::SessionBusy(2)) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(accepted, 2, "the cap of 2 held");
    f.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_flight_cap_is_atomic() {
    the_cap_holds_under_concurrency(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_in_flight_cap_is_atomic() {
    the_cap_holds_under_concurrency(postgres().await).await;
}

/// A person's profile, what they forgot and their erasure, kept apart from
/// every other person's.
async fn people(f: Fixture) {
    let store = f.store.clone();
    let anna = "pk_anna";
    let ben = "pk_ben";
    let a1 = store.create_session(Some(anna)).await.expect("session");
    let a2 = store.create_session(Some(anna)).await.expect("session");
    let b1 = store.create_session(Some(ben)).await.expect("session");
    store.create_job(new_job(a1.id, None)).await.expect("job");
    store.create_job(new_job(b1.id, None)).await.expect("job");

    let name = store
        .add_profile_line(anna, "name", "Her name is Anna.", Some("job-1"))
        .await
        .expect("add");
    store
        .add_profile_line(anna, "loss", "Her mother Rosa died last spring.", None)
        .await
        .expect("add");
    store
        .add_profile_line(ben, "name", "His name is Ben.", None)
        .await
        .expect("add");
    let lines = store.profile(anna).await.expect("profile");
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().any(|l| l.field == "name" && l.id == name));
    assert!(
        !store
            .update_profile_line(ben, &name, "stolen")
            .await
            .expect("update"),
        "another owner's line cannot be changed"
    );
    assert!(!store.delete_profile_line(ben, &name).await.expect("delete"));
    assert!(
        store
            .update_profile_line(anna, &name, "She is called Anna.")
            .await
            .expect("update")
    );
    assert!(
        store
            .profile(anna)
            .await
            .expect("profile")
            .iter()
            .any(|l| l.id == name && l.text == "She is called Anna.")
    );

    store
        .forget(anna, "She is called Anna.", Some("job-1"))
        .await
        .expect("forget");
    assert!(
        store
            .is_forgotten(anna, "she is called anna", None)
            .await
            .expect("check")
    );
    assert!(
        store
            .is_forgotten(anna, "Anna is her name.", Some("job-1"))
            .await
            .expect("check"),
        "nothing is learnt again from the job it came from"
    );
    assert!(
        !store
            .is_forgotten(ben, "She is called Anna.", None)
            .await
            .expect("check")
    );

    let sessions = store.sessions_of(anna, 10).await.expect("sessions");
    let mut ids: Vec<_> = sessions.iter().map(|s| s.id).collect();
    ids.sort();
    let mut expected = vec![a1.id, a2.id];
    expected.sort();
    assert_eq!(ids, expected, "Anna's only");
    assert!(
        sessions
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );

    let erased = store.erase_owner(anna).await.expect("erase");
    assert_eq!((erased.sessions, erased.profile_lines), (2, 2));
    assert!(store.get_session(a1.id).await.expect("get").is_none());
    assert!(store.profile(anna).await.expect("profile").is_empty());
    assert!(
        !store
            .is_forgotten(anna, "She is called Anna.", None)
            .await
            .expect("check")
    );
    assert!(
        store.get_session(b1.id).await.expect("get").is_some(),
        "Ben is untouched"
    );
    assert_eq!(store.profile(ben).await.expect("profile").len(), 1);
    f.drop_schema().await;
}

#[tokio::test]
async fn sqlite_people_are_kept_apart_and_erased_whole() {
    people(sqlite().await).await;
}

#[tokio::test]
async fn postgres_people_are_kept_apart_and_erased_whole() {
    people(postgres().await).await;
}
