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
        "GET /api/me/memories",
        "DELETE /api/me/memories/{id}",
        "DELETE /api/me",
        "POST /api/voice/process",
        "GET /api/jobs/{id}",
        "GET /api/jobs/{id}/events",
        "POST /api/jobs/{id}/cancel",
        "GET /api/audio/{id}",
        "GET /api/health",
        "GET /api/resources",
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

/// Follows a `$ref` into `components` (one level is all the document uses).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .expect("a component reference");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} documents `{name}`"))
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Where the document and the validation disagreed, the document now says
/// what the server enforces, and the server does what the document says.
#[tokio::test]
async fn the_document_says_what_the_server_enforces() {
    let token = "openapi-admin-token-0123456789abcdef";
    let app = rose_tests::spawn_app_with(
        Deployment::Embedded,
        rose_tests::AppOptions {
            env: [("ROSE_ADMIN_TOKEN".to_owned(), token.to_owned())].into(),
            no_worker: true,
            ..rose_tests::AppOptions::default()
        },
    )
    .await;
    let doc: Value = app
        .http
        .get(format!("{}/api/openapi.json", app.url))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");

    // The session body is optional; when sent it is an object, never `null`.
    let body = &doc["paths"]["/api/session/start"]["post"]["requestBody"];
    assert_ne!(body["required"], true, "{body}");
    let schema = resolve(&doc, &body["content"]["application/json"]["schema"]);
    // One object per way of naming the person, each closed: never two.
    let variants = schema["oneOf"].as_array().expect("oneOf");
    assert_eq!(variants.len(), 4, "{schema}");
    for variant in variants {
        assert_eq!(variant["type"], "object", "{schema}");
        assert_eq!(variant["additionalProperties"], false, "{schema}");
    }
    let start = format!("{}/api/session/start", app.url);
    let two = app
        .http
        .post(&start)
        .json(&serde_json::json!({"person_key": rose_tests::person_key(), "user_token": null}))
        .send()
        .await
        .expect("two identities");
    assert_eq!(two.status(), 400);
    let null = app
        .http
        .post(&start)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .expect("null body");
    assert_eq!(null.status(), 400);
    let empty = app.http.post(&start).send().await.expect("empty body");
    assert_eq!(empty.status(), 201);

    // `wait` is 0 to 60 seconds wherever it is taken.
    for (path, method) in [("/api/jobs/{id}", "get"), ("/api/voice/process", "post")] {
        let wait = &parameter(&doc, path, method, "wait")["schema"];
        assert_eq!(wait["minimum"], 0, "{method} {path}: {wait}");
        assert_eq!(wait["maximum"], 60, "{method} {path}: {wait}");
    }
    let session = app.start_session().await;
    let too_long = app
        .http
        .get(format!(
            "{}/api/jobs/01J0000000000000000000000?wait=61",
            app.url
        ))
        .send()
        .await
        .expect("wait 61");
    assert_eq!(too_long.status(), 400);

    // A voice job takes exactly one of `audio` and `text`, always with `session_id`.
    let form = resolve(
        &doc,
        &doc["paths"]["/api/voice/process"]["post"]["requestBody"]["content"]["multipart/form-data"]
            ["schema"],
    );
    let branches: BTreeSet<BTreeSet<String>> = form["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("the form is oneOf its two shapes: {form}"))
        .iter()
        .map(|b| required(resolve(&doc, b)))
        .collect();
    let expected: BTreeSet<BTreeSet<String>> = [["audio", "session_id"], ["text", "session_id"]]
        .into_iter()
        .map(|r| r.into_iter().map(str::to_owned).collect())
        .collect();
    assert_eq!(branches, expected, "{form}");
    let both = Form::new()
        .text("session_id", session)
        .text("text", "Both at once.")
        .part(
            "audio",
            reqwest::multipart::Part::bytes(rose_tests::SPOKEN_WAV.to_vec()).file_name("a.wav"),
        );
    let refused = app
        .http
        .post(format!("{}/api/voice/process", app.url))
        .multipart(both)
        .send()
        .await
        .expect("both");
    assert_eq!(refused.status(), 400);

    // The admin listing's parameters are query parameters, `limit` 1 to 200.
    for name in ["status", "limit", "cursor"] {
        let p = parameter(&doc, "/api/admin/jobs", "get", name);
        assert_eq!(p["in"], "query", "{p}");
        assert_ne!(p["required"], true, "{p}");
    }
    let limit = &parameter(&doc, "/api/admin/jobs", "get", "limit")["schema"];
    assert_eq!(limit["minimum"], 1, "{limit}");
    assert_eq!(limit["maximum"], 200, "{limit}");
    for (query, status) in [("limit=201", 400), ("limit=0", 400), ("limit=200", 200)] {
        let response = app
            .http
            .get(format!("{}/api/admin/jobs?{query}", app.url))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin jobs");
        assert_eq!(response.status(), status, "{query}");
    }
    app.stop().await;
}
