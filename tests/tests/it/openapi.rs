//! `GET /api/openapi.json`: an OpenAPI 3.1 document of every `/api` route,
//! whose schemas match what the api really answers.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::multipart::Form;
use rose_tests::{Deployment, spawn_app};
use serde_json::Value;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The property names of a component schema.
fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    let s = &doc["components"]["schemas"][schema];
    assert!(s.is_object(), "schema {schema} in the document");
    keys(&s["properties"])
}

#[tokio::test]
async fn the_document_covers_every_route_and_matches_real_answers() {
    let app = spawn_app(Deployment::Embedded).await;
    let doc: Value = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /api/session/start",
        "DELETE /api/session/{id}",
        "POST /api/voice/process",
        "GET /api/jobs/{id}",
        "GET /api/jobs/{id}/events",
        "GET /api/audio/{id}",
        "GET /api/health",
        "GET /api/admin/schedules",
        "POST /api/admin/schedules/{name}/run",
        "GET /api/admin/queues",
        "GET /api/admin/jobs",
        "POST /api/admin/jobs/{id}/retry",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(routes, expected);
    assert_eq!(
        doc["paths"]["/api/voice/process"]["post"]["requestBody"]["content"]
            .as_object()
            .map(|c| c.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["multipart/form-data".to_owned()])
    );
    // Each refusal of a recording is documented with its code.
    let responses = &doc["paths"]["/api/voice/process"]["post"]["responses"];
    for (status, code) in [
        ("415", "unsupported_audio_format"),
        ("422", "invalid_audio"),
        ("413", "audio_too_large"),
    ] {
        let description = responses[status]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(description.contains(code), "{status}: {description:?}");
    }

    // The schemas are the shapes the api really answers with.
    let session = app.start_session().await;
    let form = Form::new()
        .text("session_id", session.clone())
        .text("text", "It has been a year today.");
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
    assert_eq!(keys(&accepted), properties(&doc, "Accepted"));
    let job_id = accepted["job_id"].as_str().expect("job id");
    let job = app.wait_for_job(job_id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(keys(&job), properties(&doc, "Job"));
    assert_eq!(keys(&job["result"]), properties(&doc, "JobResult"));

    let error: Value = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .multipart(Form::new().text("session_id", session))
        .send()
        .await
        .expect("bad upload")
        .json()
        .await
        .expect("json");
    assert_eq!(keys(&error), properties(&doc, "ErrorBody"));
    assert_eq!(keys(&error["error"]), properties(&doc, "ErrorDetail"));
    app.stop().await;
}
