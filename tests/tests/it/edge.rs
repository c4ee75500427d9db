//! The api's HTTP edge: how long a client may take to send a request head or
//! leave a connection idle, the error JSON of unmatched routes, and the admin
//! token compared exactly.

use std::collections::HashMap;
use std::time::Duration;

use rose_tests::{AppOptions, Deployment, TestApp, spawn_app, spawn_app_with};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that a connection the server keeps open is told apart from
/// one it closed at its one-second bound.
const GUARD: Duration = Duration::from_secs(30);

fn with_env(pairs: &[(&str, &str)]) -> AppOptions {
    AppOptions {
        env: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        ..AppOptions::default()
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .expect("connect to the api")
}

/// Everything read until the peer closes the connection (end of stream or
/// reset), or `None` when it is still open after [`GUARD`].
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GUARD, read).await.ok().map(|()| seen)
}

/// A client sending its request head one header line at a time never gets
/// to hold the connection: it is closed at the head's time bound.
#[tokio::test]
async fn a_request_head_sent_slowly_is_cut_off() {
    let app = spawn_app_with(
        Deployment::Embedded,
        with_env(&[("ROSE_HEADER_READ_TIMEOUT_SECS", "1")]),
    )
    .await;
    let (mut read, mut write) = connect(&app).await.into_split();
    let trickle = tokio::spawn(async move {
        write
            .write_all(b"GET /api/health HTTP/1.1\r\nHost: rose\r\n")
            .await
            .expect("request line");
        // A line every 300 ms for 30 s; the blank line ending the head never comes.
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let line = format!("x-slow-{i}: 1\r\n");
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let answer = read_until_closed(&mut read).await;
    trickle.abort();
    let answer = answer.expect("the server closed the slow connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("200 OK"),
        "an unfinished head is never answered: {text}"
    );
    app.stop().await;
}

/// A connection that sends nothing, and a kept-alive one that sends no next
/// request, are both closed after the bound.
#[tokio::test]
async fn idle_connections_are_closed() {
    let app = spawn_app_with(
        Deployment::Embedded,
        with_env(&[("ROSE_HEADER_READ_TIMEOUT_SECS", "1")]),
    )
    .await;

    let mut silent = connect(&app).await;
    assert!(
        read_until_closed(&mut silent).await.is_some(),
        "a connection that never sends a request is closed"
    );

    let mut kept = connect(&app).await;
    kept.write_all(b"GET /api/openapi.json HTTP/1.1\r\nHost: rose\r\n\r\n")
        .await
        .expect("request");
    let answer = read_until_closed(&mut kept)
        .await
        .expect("the idle kept-alive connection is closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "answered first: {text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "the answer itself kept the connection alive: {text}"
    );
    app.stop().await;
}

/// The idle bound is about connections with nothing in flight: a long-poll
/// longer than it is answered in full.
#[tokio::test]
async fn a_long_poll_outlasts_the_idle_bound() {
    let mut options = with_env(&[("ROSE_HEADER_READ_TIMEOUT_SECS", "1")]);
    options.no_worker = true;
    let app = spawn_app_with(Deployment::Embedded, options).await;
    let session = app.start_session().await;
    let form = reqwest::multipart::Form::new()
        .text("session_id", session)
        .text("text", "Still here.");
    let accepted: Value = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let job_id = accepted["job_id"].as_str().expect("job id");
    // No worker: the job stays queued and the long-poll runs its full 3 s.
    let response = app
        .http
        .get(format!("{}/api/jobs/{job_id}?wait=3", app.url))
        .send()
        .await
        .expect("long-poll answered");
    assert_eq!(response.status(), 200);
    let job: Value = response.json().await.expect("job json");
    assert_eq!(job["status"], "queued", "{job}");
    app.stop().await;
}

async fn error_of(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.expect("body");
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, allow, json)
}

#[tokio::test]
async fn unmatched_routes_answer_the_error_json() {
    let app = spawn_app(Deployment::Embedded).await;
    for path in [
        "/api/nope",
        "/nope",
        "/api/jobs",
        "/api/session/start/extra",
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        let (status, _, body) = error_of(response).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    for (method, path, allowed) in [
        (reqwest::Method::PUT, "/api/health", "GET"),
        (reqwest::Method::GET, "/api/session/start", "POST"),
        (
            reqwest::Method::POST,
            "/api/jobs/01J0000000000000000000000",
            "GET",
        ),
        (reqwest::Method::DELETE, "/", "GET"),
    ] {
        let response = app
            .http
            .request(method.clone(), format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        let (status, allow, body) = error_of(response).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
        assert!(
            allow.as_deref().is_some_and(|a| a.contains(allowed)),
            "{method} {path}: Allow {allow:?}"
        );
    }
    // The web client is still served.
    for path in [
        "/",
        "/app.js",
        "/identity.js",
        "/safety.js",
        "/jobs.js",
        "/player.js",
        "/listen.js",
        "/vad.js",
        "/app.css",
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path}");
    }
    app.stop().await;
}

const TOKEN: &str = "adm1n-t0ken-of-forty-characters-01234567";

#[tokio::test]
async fn the_admin_token_must_match_exactly() {
    assert!(TOKEN.len() >= 32, "long enough to start with");
    let app = spawn_app_with(
        Deployment::Embedded,
        with_env(&[("ROSE_ADMIN_TOKEN", TOKEN)]),
    )
    .await;
    let url = format!("{}/api/admin/queues", app.url);
    let short = &TOKEN[..3];
    // (Whitespace at either end of a header value is not part of it in HTTP,
    // so `Bearer <token> ` arrives as `Bearer <token>`; inside, it counts.)
    for header in [
        format!("Bearer  {TOKEN}  "),
        format!("Bearer  {TOKEN}"),
        format!("Bearer \t{TOKEN}"),
        format!("Bearer {short}"),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Basic {TOKEN}"),
        TOKEN.to_owned(),
    ] {
        let response = app
            .http
            .get(&url)
            .header("authorization", &header)
            .send()
            .await
            .expect("request");
        let (status, _, body) = error_of(response).await;
        assert_eq!(status, 401, "{header:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{header:?}");
    }
    for header in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}")] {
        let response = app
            .http
            .get(&url)
            .header("authorization", &header)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{header:?}");
    }
    app.stop().await;
}
