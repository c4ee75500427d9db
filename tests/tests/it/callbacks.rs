//! Signed callbacks: a receiver in the test verifies each delivery with its
//! own implementation of Standard Webhooks, sees one `webhook-id` across
//! retries, and stops them with `410`; callback URLs to private addresses
//! are refused unless allowed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, spawn_app_with};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LIMIT: Duration = Duration::from_secs(30);

/// The scheme, written here from its specification: HMAC-SHA256 over
/// `{id}.{timestamp}.{body}` keyed by the base64 after `whsec_`.
fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[test]
fn the_reference_vector_verifies() {
    assert_eq!(
        expected_signature(
            SECRET,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    /// Statuses to answer with, in order; the last one repeats.
    script: Arc<Mutex<Vec<u16>>>,
    seen: Arc<Mutex<Vec<Received>>>,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let headers_map = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    r.seen.lock().expect("lock").push(Received {
        headers: headers_map,
        body,
    });
    let status = {
        let mut script = r.script.lock().expect("lock");
        if script.len() > 1 {
            script.remove(0)
        } else {
            script[0]
        }
    };
    let mut out = HeaderMap::new();
    if status == 302 {
        out.insert(
            "location",
            "http://127.0.0.1:9/elsewhere".parse().expect("header"),
        );
    }
    (StatusCode::from_u16(status).expect("status"), out)
}

/// A receiver on a random loopback port answering `script`; returns its URL.
async fn receiver(script: &[u16]) -> (String, Receiver) {
    let state = Receiver {
        script: Arc::new(Mutex::new(script.to_vec())),
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state)
}

fn options(extra: &[(&str, &str)]) -> AppOptions {
    let mut env: HashMap<String, String> = [
        ("ROSE_WEBHOOK_SECRET", SECRET),
        ("ROSE_CALLBACK_ALLOW_PRIVATE", "true"),
        ("ROSE_CALLBACK_RETRY_DELAYS_MS", "50,50,50"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    AppOptions {
        env,
        ..AppOptions::default()
    }
}

async fn submit(app: &TestApp, url: &str) -> String {
    let session = app.start_session().await;
    let response = app.upload_with_callback(&session, SPOKEN_WAV, url).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["job_id"].as_str().expect("job_id").to_owned()
}

/// Polls the job until its callback reaches a final state.
async fn settled_callback(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let job: Value = app
            .http
            .get(format!("{}/api/jobs/{id}", app.url))
            .send()
            .await
            .expect("job")
            .json()
            .await
            .expect("json");
        let status = job["callback"]["status"].as_str().unwrap_or_default();
        if matches!(status, "delivered" | "exhausted" | "gone") {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "callback did not settle: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 500, then a redirect (not followed), then 200: three signed attempts with
/// one id, and the job says so.
async fn retried_until_delivered(deployment: Deployment) {
    let (url, receiver) = receiver(&[500, 302, 200]).await;
    let app = spawn_app_with(deployment, options(&[])).await;
    let id = submit(&app, &url).await;
    let job = settled_callback(&app, &id).await;
    assert_eq!(job["callback"]["status"], "delivered", "{job}");
    assert_eq!(job["callback"]["attempts"], 3, "{job}");
    assert_eq!(job["callback"]["last_status_code"], 200, "{job}");

    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len(),
        3,
        "one request per attempt, the redirect not followed"
    );
    let first_id = seen[0].headers["webhook-id"].clone();
    for delivery in &seen {
        let h = &delivery.headers;
        assert_eq!(h["webhook-id"], first_id, "the same id on every retry");
        assert_eq!(h["content-type"], "application/json");
        let expected = expected_signature(
            SECRET,
            &h["webhook-id"],
            &h["webhook-timestamp"],
            &delivery.body,
        );
        assert!(
            h["webhook-signature"].split(' ').any(|s| s == expected),
            "signature verifies: {} vs {expected}",
            h["webhook-signature"]
        );
        let sent: Value = serde_json::from_slice(&delivery.body).expect("json body");
        assert_eq!(sent["job_id"], id.as_str());
        assert_eq!(sent["status"], "succeeded");
        assert!(sent["result"]["text"].is_string());
    }
    app.stop().await;
}

#[tokio::test]
async fn embedded_callback_is_signed_and_retried_until_delivered() {
    retried_until_delivered(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_callback_is_signed_and_retried_until_delivered() {
    retried_until_delivered(Deployment::Scaled).await;
}

#[tokio::test]
async fn gone_stops_retries_at_once() {
    let (url, receiver) = receiver(&[410]).await;
    let app = spawn_app_with(Deployment::Scaled, options(&[])).await;
    let id = submit(&app, &url).await;
    let job = settled_callback(&app, &id).await;
    assert_eq!(job["callback"]["status"], "gone", "{job}");
    assert_eq!(job["callback"]["attempts"], 1, "{job}");
    assert_eq!(receiver.seen.lock().expect("lock").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_exhausts_the_retries() {
    let (url, receiver) = receiver(&[503]).await;
    let app = spawn_app_with(
        Deployment::Scaled,
        options(&[("ROSE_CALLBACK_RETRY_DELAYS_MS", "20,20")]),
    )
    .await;
    let id = submit(&app, &url).await;
    let job = settled_callback(&app, &id).await;
    assert_eq!(job["callback"]["status"], "exhausted", "{job}");
    assert_eq!(
        job["callback"]["attempts"], 3,
        "the first try and two retries: {job}"
    );
    assert_eq!(job["callback"]["last_status_code"], 503, "{job}");
    assert_eq!(receiver.seen.lock().expect("lock").len(), 3);
    app.stop().await;
}

async fn refused(app: &TestApp, session: &str, url: &str, code: &str) {
    let response = app.upload_with_callback(session, SPOKEN_WAV, url).await;
    assert_eq!(response.status(), 400, "{url}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], code, "{url}: {body}");
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let app = spawn_app_with(
        Deployment::Embedded,
        options(&[("ROSE_CALLBACK_ALLOW_PRIVATE", "false")]),
    )
    .await;
    let session = app.start_session().await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:8080/hook",
    ] {
        refused(&app, &session, url, "callback_url_forbidden").await;
    }
    refused(
        &app,
        &session,
        "ftp://example.com/hook",
        "invalid_callback_url",
    )
    .await;
    refused(
        &app,
        &session,
        "http://no-such-host.invalid/hook",
        "invalid_callback_url",
    )
    .await;
    assert_eq!(app.count_rows("voice_jobs").await, 0, "nothing stored");
    assert_eq!(app.queued_messages().await, 0, "nothing enqueued");
    app.stop().await;

    // Allowed for local setups: the same loopback URL is accepted.
    let allowed = spawn_app_with(Deployment::Embedded, options(&[])).await;
    let (url, _receiver) = receiver(&[200]).await;
    let session = allowed.start_session().await;
    let response = allowed
        .upload_with_callback(&session, SPOKEN_WAV, &url)
        .await;
    assert_eq!(response.status(), 202);
    allowed.stop().await;

    // Without a signing secret, callbacks cannot be asked for.
    let unsigned = spawn_app_with(Deployment::Embedded, AppOptions::default()).await;
    let session = unsigned.start_session().await;
    refused(
        &unsigned,
        &session,
        "http://example.com/hook",
        "callbacks_not_configured",
    )
    .await;
    unsigned.stop().await;
}

/// A receiver that takes the connection and the request but never answers.
async fn hanging_receiver() -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let accepted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            *count.lock().expect("lock") += 1;
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_at_fifteen_seconds() {
    use rose_shared::callback::{Attempt, DELIVERY_TIMEOUT, deliver};

    let (url, accepted) = hanging_receiver().await;
    // No worker: the delivery is driven here, once.
    let mut opts = options(&[]);
    opts.no_worker = true;
    let app = spawn_app_with(Deployment::Embedded, opts).await;
    let id = submit(&app, &url).await;
    let job = app
        .rose
        .store
        .get_job(id.parse().expect("job id"))
        .await
        .expect("get")
        .expect("job");

    let started = std::time::Instant::now();
    let attempt = deliver(&app.rose.config, &job).await;
    let took = started.elapsed();
    assert!(
        matches!(attempt, Attempt::Failed(None, _)),
        "a timeout is a failure without a status: {attempt:?}"
    );
    assert_eq!(
        *accepted.lock().expect("lock"),
        1,
        "the receiver was reached"
    );
    assert!(
        took >= DELIVERY_TIMEOUT - Duration::from_millis(100),
        "cut no sooner than the bound: {took:?}"
    );
    assert!(
        took < DELIVERY_TIMEOUT * 3,
        "cut at the bound, not left hanging: {took:?}"
    );
    assert_eq!(DELIVERY_TIMEOUT, Duration::from_secs(15));
    app.stop().await;
}

/// The address is checked again when the delivery runs: a host that now
/// resolves to a loopback address is not called, and the delivery ends.
#[tokio::test]
async fn delivery_checks_the_address_again() {
    use rose_shared::callback::{Attempt, deliver};

    let (url, receiver) = receiver(&[200]).await;
    // Accepted (private addresses allowed) and delivered once.
    let app = spawn_app_with(Deployment::Embedded, options(&[])).await;
    let by_name = url.replace("127.0.0.1", "localhost");
    let id = submit(&app, &by_name).await;
    let job = settled_callback(&app, &id).await;
    assert_eq!(job["callback"]["status"], "delivered", "{job}");
    assert_eq!(receiver.seen.lock().expect("lock").len(), 1);

    // The same job under the default policy: `localhost` resolves to
    // loopback at delivery, so nothing is sent and no retry would help.
    let job = app
        .rose
        .store
        .get_job(id.parse().expect("job id"))
        .await
        .expect("get")
        .expect("job");
    let mut strict = (*app.rose.config).clone();
    strict.callback_allow_private = false;
    let attempt = deliver(&strict, &job).await;
    assert!(
        matches!(&attempt, Attempt::Refused(why) if why.contains("127.0.0.1") || why.contains("::1")),
        "{attempt:?}"
    );
    assert_eq!(
        receiver.seen.lock().expect("lock").len(),
        1,
        "the refused delivery sent nothing"
    );
    app.stop().await;
}

/// A job cancelled before it ran still tells its callback: one signed
/// delivery of the job, `cancelled`.
#[tokio::test]
async fn a_cancelled_job_is_delivered_as_cancelled() {
    let (url, receiver) = receiver(&[200]).await;
    let mut options = options(&[]);
    options.no_worker = true;
    let app = spawn_app_with(Deployment::Scaled, options).await;
    let id = submit(&app, &url).await;
    assert_eq!(app.cancel(&id).await.status(), 200);
    // The delivery runs on the callbacks queue: a worker for it.
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rose_worker::run(
        app.rose.clone(),
        rose_worker::WorkerOptions {
            concurrency: 1,
            name: rose_worker::unique_name(),
        },
        shutdown.clone(),
    ));
    let job = settled_callback(&app, &id).await;
    assert_eq!(job["callback"]["status"], "delivered", "{job}");
    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_slice(&seen[0].body).expect("job json");
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["status"], "cancelled");
    assert_eq!(app.sim.count("transcriptions"), 0, "it never ran");
    shutdown.cancel();
    app.stop().await;
}
