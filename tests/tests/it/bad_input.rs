//! Every bad input gets a 4xx JSON error with a stable code, and nothing is
//! stored or enqueued.

use futures::stream;
use reqwest::multipart::{Form, Part};
use rose_shared::audio::samples;
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, spawn_app_with};
use serde_json::Value;

async fn expect_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

async fn post_form(app: &TestApp, form: Form) -> reqwest::Response {
    app.http
        .post(format!("{}/api/voice/process", app.url))
        .multipart(form)
        .send()
        .await
        .expect("request")
}

fn audio_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).file_name("speech.wav")
}

async fn bad_inputs(deployment: Deployment) {
    // No worker: anything enqueued would stay visible.
    let app = spawn_app_with(
        deployment,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;

    // Missing audio.
    expect_error(
        post_form(&app, Form::new().text("session_id", session.clone())).await,
        400,
        "audio_missing",
    )
    .await;
    // Typed words: blank, too long, or sent along with audio.
    let form = Form::new()
        .text("session_id", session.clone())
        .text("text", " \n ");
    expect_error(post_form(&app, form).await, 400, "text_empty").await;
    let form = Form::new()
        .text("session_id", session.clone())
        .text("text", "a".repeat(2001));
    expect_error(post_form(&app, form).await, 400, "text_too_long").await;
    let form = Form::new()
        .text("session_id", session.clone())
        .text("text", "x".repeat(100_000));
    expect_error(post_form(&app, form).await, 400, "text_too_long").await;
    let form = Form::new()
        .part("audio", audio_part(SPOKEN_WAV.to_vec()))
        .text("text", "hello")
        .text("session_id", session.clone());
    expect_error(post_form(&app, form).await, 400, "audio_and_text").await;
    // Empty audio.
    let form = Form::new()
        .part("audio", audio_part(Vec::new()))
        .text("session_id", session.clone());
    expect_error(post_form(&app, form).await, 400, "audio_empty").await;
    // Not audio by its magic bytes, whatever its name says.
    let form = Form::new()
        .part("audio", audio_part(b"%PDF-1.7 this is a document".to_vec()))
        .text("session_id", session.clone());
    expect_error(post_form(&app, form).await, 415, "unsupported_audio_format").await;
    // A known container with no decodable audio in it.
    for broken in [
        samples::wav_zero_fmt(),
        samples::webm_without_frames(),
        samples::wav_without_data(),
        samples::wav_with(1, 0, 16_000, 2, 16, 64),
        samples::mp4(samples::Mp4 {
            sound: false,
            ..samples::Mp4::default()
        }),
    ] {
        let form = Form::new()
            .part("audio", audio_part(broken))
            .text("session_id", session.clone());
        expect_error(post_form(&app, form).await, 422, "invalid_audio").await;
    }
    // Session id missing, malformed, unknown.
    let form = Form::new().part("audio", audio_part(SPOKEN_WAV.to_vec()));
    expect_error(post_form(&app, form).await, 400, "session_id_required").await;
    let form = Form::new()
        .part("audio", audio_part(SPOKEN_WAV.to_vec()))
        .text("session_id", "nope");
    expect_error(post_form(&app, form).await, 400, "invalid_session_id").await;
    let unknown = ulid::Ulid::generate().to_string();
    let form = Form::new()
        .part("audio", audio_part(SPOKEN_WAV.to_vec()))
        .text("session_id", unknown);
    expect_error(post_form(&app, form).await, 404, "session_not_found").await;
    // Bad callback URL and idempotency key.
    let form = Form::new()
        .part("audio", audio_part(SPOKEN_WAV.to_vec()))
        .text("session_id", session.clone())
        .text("callback_url", "ftp://example.com/x");
    expect_error(post_form(&app, form).await, 400, "invalid_callback_url").await;
    let form = Form::new()
        .part("audio", audio_part(SPOKEN_WAV.to_vec()))
        .text("session_id", session.clone());
    let response = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .header("Idempotency-Key", "has spaces in it")
        .multipart(form)
        .send()
        .await
        .expect("request");
    expect_error(response, 400, "invalid_idempotency_key").await;
    // Bad wait.
    let form = Form::new()
        .part("audio", audio_part(SPOKEN_WAV.to_vec()))
        .text("session_id", session.clone());
    let response = app
        .http
        .post(format!("{}/api/voice/process?wait=600", app.url))
        .multipart(form)
        .send()
        .await
        .expect("request");
    expect_error(response, 400, "invalid_wait").await;

    // Malformed multipart: not multipart at all, and a broken body.
    let response = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("request");
    expect_error(response, 400, "malformed_multipart").await;
    let response = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"audio\"\r\n\r\nRIFF")
        .send()
        .await
        .expect("request");
    expect_error(response, 400, "malformed_multipart").await;

    // Over 10 MB, streamed with no Content-Length to trust.
    let boundary = "roseboundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\n{session}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"big.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\n"
    );
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(head.into_bytes()), Ok(SPOKEN_WAV.to_vec())];
    for _ in 0..11 {
        chunks.push(Ok(vec![0u8; 1024 * 1024]));
    }
    chunks.push(Ok(format!("\r\n--{boundary}--\r\n").into_bytes()));
    let response = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await;
    match response {
        Ok(response) => expect_error(response, 413, "audio_too_large").await,
        // The server may answer and close before the client finished sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected failure: {e}"),
    }

    // Unknown job and audio ids, malformed or well-formed.
    for path in [
        "/api/jobs/nope".to_owned(),
        format!("/api/jobs/{}", ulid::Ulid::generate()),
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        expect_error(response, 404, "job_not_found").await;
    }
    for path in [
        "/api/audio/nope".to_owned(),
        format!("/api/audio/{}", ulid::Ulid::generate()),
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        expect_error(response, 404, "audio_not_found").await;
    }
    // A bad session start body.
    let response = app
        .http
        .post(format!("{}/api/session/start", app.url))
        .body("{not json")
        .send()
        .await
        .expect("request");
    expect_error(response, 400, "invalid_json").await;

    assert_eq!(app.count_rows("voice_jobs").await, 0, "no job stored");
    assert_eq!(app.count_rows("audio").await, 0, "no audio stored");
    assert_eq!(app.queued_messages().await, 0, "nothing enqueued");
    app.stop().await;
}

#[tokio::test]
async fn embedded_bad_inputs_are_refused_and_nothing_is_stored() {
    bad_inputs(Deployment::Embedded).await;
}

#[tokio::test]
async fn scaled_bad_inputs_are_refused_and_nothing_is_stored() {
    bad_inputs(Deployment::Scaled).await;
}

#[tokio::test]
async fn a_valid_upload_is_stored_and_enqueued_once() {
    // The counterpart of the test above: the same checks see a good upload.
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let session = app.start_session().await;
    assert_eq!(app.upload(&session, SPOKEN_WAV, None).await.status(), 202);
    assert_eq!(app.count_rows("voice_jobs").await, 1);
    assert_eq!(app.count_rows("audio").await, 1);
    assert_eq!(app.queued_messages().await, 1);
    // What browsers record passes the same check: Chrome's WebM, Firefox's
    // Ogg/Opus, Safari's fragmented MP4.
    for recording in [
        samples::webm(),
        samples::ogg_opus(5),
        samples::mp4(samples::Mp4 {
            fragmented: true,
            ..samples::Mp4::default()
        }),
    ] {
        assert_eq!(app.upload(&session, &recording, None).await.status(), 202);
    }
    assert_eq!(app.count_rows("voice_jobs").await, 4);
    app.stop().await;
}

/// Session start: no body names no one; a body that is not a JSON object
/// (whitespace included) is refused, and no session is made.
#[tokio::test]
async fn a_session_start_body_is_nothing_or_a_json_object() {
    let app = rose_tests::spawn_app(Deployment::Embedded).await;
    let start = format!("{}/api/session/start", app.url);
    let empty = app.http.post(&start).send().await.expect("request");
    assert_eq!(empty.status(), 201);
    for body in ["\t", " \n", "null", "[]", "{"] {
        let response = app
            .http
            .post(&start)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        expect_error(response, 400, "invalid_json").await;
    }
    assert_eq!(app.count_rows("sessions").await, 1, "only the empty start");
    app.stop().await;
}
