//! Who a person is, and that no one else can borrow it: person keys, user
//! tokens, a bare `user_id` only from the server holding `ROSE_API_KEY`;
//! the profile Rose always knows; the previous conversation picked up; and
//! `/api/me` — what Rose keeps, shown to its person and erasable by them.
//! Both deployments, against the simulator's request log.

use std::time::Duration;

use reqwest::StatusCode;
use rose_shared::audio::build_wav;
use rose_shared::domain::{MemoryTask, SessionId};
use rose_shared::identity::sign_user_token;
use rose_shared::queue::{MEMORY_QUEUE, SUMMARY_QUEUE};
use rose_tests::{API_KEY, Deployment, TestApp, USER_TOKEN_SECRET, person_key, spawn_app, unique};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

async fn say(app: &TestApp, session: &str, text: &str) -> Value {
    let wav = build_wav(16_000, &[0; 1_600], Some(text));
    let response = app.upload(session, &wav, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    let job = app
        .wait_for_job(body["job_id"].as_str().expect("job_id"), LIMIT)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// Everything the last reply prompt told the model, as one text.
async fn last_prompt(app: &TestApp) -> String {
    let prompts = app.reply_requests().await;
    let last = prompts.last().expect("a reply prompt");
    last["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn start(app: &TestApp, body: Value, bearer: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}/api/session/start", app.url))
        .json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("session request")
}

async fn code_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("error json");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

async fn memories(app: &TestApp, key: &str, query: &str) -> Value {
    let response = app
        .http
        .get(format!("{}/api/me/memories{query}", app.url))
        .header("X-Person-Key", key)
        .send()
        .await
        .expect("memories request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("memories json")
}

/// A tells her name with her key; B, with another key, or naming A's owner
/// as a bare `user_id` without the server credential, never gets it.
async fn no_one_borrows_a_person(app: TestApp) {
    let anna = person_key();
    let first = app.start_session_with_key(&anna).await;
    assert_eq!(first["returning"], false);
    let session = first["session_id"].as_str().expect("session");
    say(
        &app,
        session,
        "Hello, my name is Anna. My mother died last spring.",
    )
    .await;
    app.wait_completed(MEMORY_QUEUE, 1, LIMIT).await;
    let owner = app.owner_of_key(&anna);
    let profile = app.rose.store.profile(&owner).await.expect("profile");
    assert!(
        profile.iter().any(|l| l.text == "Their name is Anna."),
        "{profile:?}"
    );

    let stranger = app.start_session_with_key(&person_key()).await;
    assert_eq!(stranger["returning"], false);
    say(
        &app,
        stranger["session_id"].as_str().expect("session"),
        "Do you remember my name?",
    )
    .await;
    let prompt = last_prompt(&app).await;
    assert!(!prompt.contains("Anna"), "another key saw Anna: {prompt}");
    assert!(!prompt.contains("mother died"), "{prompt}");

    // Naming Anna's owner directly: refused without the server credential,
    // with a wrong one, and even with it (owners of keys are not user ids).
    let borrowed = json!({ "user_id": owner });
    assert_eq!(
        code_of(start(&app, borrowed.clone(), None).await).await,
        (
            StatusCode::UNAUTHORIZED,
            "user_id_requires_token".to_owned()
        )
    );
    assert_eq!(
        code_of(
            start(
                &app,
                borrowed.clone(),
                Some("not-the-api-key-0123456789abcdef")
            )
            .await
        )
        .await,
        (
            StatusCode::UNAUTHORIZED,
            "user_id_requires_token".to_owned()
        )
    );
    assert_eq!(
        code_of(start(&app, borrowed, Some(API_KEY)).await).await,
        (StatusCode::BAD_REQUEST, "invalid_user_id".to_owned())
    );
    // Nor with the key's owner as a token's subject.
    let token = sign_user_token(USER_TOKEN_SECRET, &owner, now_secs() + 600);
    assert_eq!(
        code_of(start(&app, json!({ "user_token": token }), None).await).await,
        (StatusCode::UNAUTHORIZED, "invalid_user_token".to_owned())
    );
    // Nothing of Anna's is listed for the stranger.
    assert_eq!(memories(&app, &person_key(), "").await["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn embedded_no_one_borrows_a_person() {
    no_one_borrows_a_person(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_no_one_borrows_a_person() {
    no_one_borrows_a_person(spawn_app(Deployment::Scaled).await).await;
}

fn now_secs() -> i64 {
    rose_shared::domain::now_ms() / 1000
}

/// A returning person: her name is in the prompt though nothing recalls
/// it, and the previous conversation's summary is too.
async fn a_returning_person_is_known(app: TestApp) {
    let key = person_key();
    let first = app.start_session_with_key(&key).await;
    let first_id = first["session_id"].as_str().expect("session").to_owned();
    say(
        &app,
        &first_id,
        "Hello, my name is Anna. My mother died last spring.",
    )
    .await;
    app.wait_completed(MEMORY_QUEUE, 1, LIMIT).await;

    let second = app.start_session_with_key(&key).await;
    assert_eq!(second["returning"], true);
    // Starting again closed the first conversation with a summary.
    app.wait_completed(SUMMARY_QUEUE, 1, LIMIT).await;
    let first_session: SessionId = first_id.parse().expect("id");
    let summary = app
        .rose
        .store
        .get_session(first_session)
        .await
        .expect("session")
        .expect("kept")
        .summary
        .expect("a closing summary");
    assert!(!summary.trim().is_empty());

    say(
        &app,
        second["session_id"].as_str().expect("session"),
        "Do you remember my name?",
    )
    .await;
    let prompt = last_prompt(&app).await;
    assert!(prompt.contains("Their name is Anna."), "{prompt}");
    assert!(
        prompt.contains("Their mother died last spring."),
        "{prompt}"
    );
    assert!(prompt.contains("Last time you spoke"), "{prompt}");
    assert!(prompt.contains(summary.trim()), "{prompt}");
    app.stop().await;
}

#[tokio::test]
async fn embedded_a_returning_person_is_known() {
    a_returning_person_is_known(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_a_returning_person_is_known() {
    a_returning_person_is_known(spawn_app(Deployment::Scaled).await).await;
}

#[tokio::test]
async fn identities_are_checked() {
    let app = spawn_app(Deployment::Embedded).await;
    let bad = |body: Value| start(&app, body, None);
    for key in ["", "short", "!!!!", &"A".repeat(44), &"A".repeat(42)] {
        assert_eq!(
            code_of(bad(json!({ "person_key": key })).await).await,
            (StatusCode::BAD_REQUEST, "invalid_person_key".to_owned()),
            "{key:?}"
        );
    }
    let expired = sign_user_token(USER_TOKEN_SECRET, "user-7", now_secs() - 3_600);
    let forged = sign_user_token(
        "another-secret-0123456789abcdef012",
        "user-7",
        now_secs() + 600,
    );
    for token in [expired, forged, "a.b.c".to_owned()] {
        assert_eq!(
            code_of(bad(json!({ "user_token": token })).await).await,
            (StatusCode::UNAUTHORIZED, "invalid_user_token".to_owned())
        );
    }
    assert_eq!(
        code_of(bad(json!({ "person_key": person_key(), "user_id": "u" })).await).await,
        (StatusCode::BAD_REQUEST, "ambiguous_identity".to_owned())
    );
    // A good token and the API key both name the integrator's user.
    let user = unique("user");
    let token = sign_user_token(USER_TOKEN_SECRET, &user, now_secs() + 600);
    let by_token = start(&app, json!({ "user_token": token }), None).await;
    assert_eq!(by_token.status(), 201);
    let by_key = start(&app, json!({ "user_id": user }), Some(API_KEY)).await;
    assert_eq!(by_key.status(), 201);
    let body: Value = by_key.json().await.expect("json");
    assert_eq!(body["returning"], true, "the token's session was theirs");
    // The person routes need an identity, and refuse malformed ones.
    let me = format!("{}/api/me/memories", app.url);
    let none = app.http.get(&me).send().await.expect("request");
    assert_eq!(
        code_of(none).await,
        (StatusCode::UNAUTHORIZED, "identity_required".to_owned())
    );
    let malformed = app
        .http
        .get(&me)
        .header("X-Person-Key", "nope")
        .send()
        .await
        .expect("request");
    assert_eq!(
        code_of(malformed).await,
        (StatusCode::BAD_REQUEST, "invalid_person_key".to_owned())
    );
    let token = sign_user_token(USER_TOKEN_SECRET, &user, now_secs() + 600);
    let with_token = app
        .http
        .get(&me)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(with_token.status(), 200);
    app.stop().await;
}

/// What Rose keeps is listed newest first a page at a time; a forgotten
/// line stays forgotten when its turn is extracted again; another person's
/// id is not found; erasing the person leaves no row of theirs.
async fn a_person_sees_and_erases_what_is_kept(app: TestApp) {
    let key = person_key();
    let owner = app.owner_of_key(&key);
    let started = app.start_session_with_key(&key).await;
    let session = started["session_id"].as_str().expect("session").to_owned();
    let job = say(&app, &session, "My name is Anna. My mother loved roses.").await;
    app.wait_completed(MEMORY_QUEUE, 1, LIMIT).await;

    let all = memories(&app, &key, "").await;
    let items = all["items"].as_array().expect("items").clone();
    let texts: Vec<&str> = items.iter().filter_map(|i| i["text"].as_str()).collect();
    assert_eq!(items.len(), 2, "{all}");
    assert!(texts.contains(&"Their name is Anna."), "{all}");
    assert!(texts.contains(&"Their mother loved roses."), "{all}");
    let memory = items
        .iter()
        .find(|i| i["kind"] == "memory")
        .expect("a memory");
    let line = items
        .iter()
        .find(|i| i["kind"] == "profile")
        .expect("a profile line");
    assert_eq!(line["field"], "name");
    // Pages of one.
    let page = memories(&app, &key, "?limit=1").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let next = memories(&app, &key, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(next["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(page["items"][0]["id"], next["items"][0]["id"]);
    assert_eq!(next["next_cursor"], Value::Null);

    // Another person cannot forget (or learn of) Anna's memory.
    let other = person_key();
    let id = memory["id"].as_str().expect("id");
    let url = |id: &str| format!("{}/api/me/memories/{id}", app.url);
    let theirs = app
        .http
        .delete(url(id))
        .header("X-Person-Key", &other)
        .send()
        .await
        .expect("delete");
    assert_eq!(
        code_of(theirs).await,
        (StatusCode::NOT_FOUND, "memory_not_found".to_owned())
    );
    // Anna forgets both.
    for item in [memory, line] {
        let id = item["id"].as_str().expect("id");
        let gone = app
            .http
            .delete(url(id))
            .header("X-Person-Key", &key)
            .send()
            .await
            .expect("delete");
        assert_eq!(gone.status(), 204);
    }
    assert_eq!(memories(&app, &key, "").await["items"], json!([]));
    // Extracting the same turn again does not bring them back.
    let job_id = job["job_id"].as_str().expect("job id").parse().expect("id");
    app.rose
        .queue
        .push(
            MEMORY_QUEUE,
            &format!("{job_id}:again"),
            &MemoryTask { job_id, attempt: 0 },
        )
        .await
        .expect("push");
    app.wait_completed(MEMORY_QUEUE, 2, LIMIT).await;
    assert_eq!(memories(&app, &key, "").await["items"], json!([]));
    // Nor is it in the next prompt.
    say(&app, &session, "Do you remember my name?").await;
    let prompt = last_prompt(&app).await;
    assert!(!prompt.contains("Their name is Anna."), "{prompt}");

    // Erasing the person leaves no row of theirs.
    say(&app, &session, "My father loved jazz.").await;
    app.wait_completed(MEMORY_QUEUE, 4, LIMIT).await;
    assert_eq!(app.rose.memory.store.count(&owner).await.expect("count"), 1);
    let erased = app
        .http
        .delete(format!("{}/api/me", app.url))
        .header("X-Person-Key", &key)
        .send()
        .await
        .expect("erase");
    assert_eq!(erased.status(), 204);
    for (table, column) in [
        ("sessions", "user_id"),
        ("profile_lines", "owner"),
        ("memories", "owner"),
        ("forgotten", "owner"),
    ] {
        let n = app
            .scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE {column} = '{owner}'"
            ))
            .await;
        assert_eq!(n, 0, "{table} still holds the person");
    }
    let sql = format!("SELECT COUNT(*) FROM voice_jobs WHERE session_id = '{session}'");
    assert_eq!(app.scalar(&sql).await, 0);
    let sql = format!("SELECT COUNT(*) FROM turns WHERE session_id = '{session}'");
    assert_eq!(app.scalar(&sql).await, 0);
    assert_eq!(app.rose.memory.store.count(&owner).await.expect("count"), 0);
    assert_eq!(memories(&app, &key, "").await["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn embedded_a_person_sees_and_erases_what_is_kept() {
    a_person_sees_and_erases_what_is_kept(spawn_app(Deployment::Embedded).await).await;
}

#[tokio::test]
async fn scaled_a_person_sees_and_erases_what_is_kept() {
    a_person_sees_and_erases_what_is_kept(spawn_app(Deployment::Scaled).await).await;
}
