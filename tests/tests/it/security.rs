//! Security headers on every response, CORS only for `ALLOWED_ORIGINS`,
//! request ids echoed, oversized headers refused.

use std::collections::HashMap;

use rose_tests::{AppOptions, Deployment, spawn_app_with};

fn with_origins() -> AppOptions {
    AppOptions {
        env: HashMap::from([(
            "ALLOWED_ORIGINS".to_owned(),
            "https://app.example".to_owned(),
        )]),
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app_with(Deployment::Embedded, with_origins()).await;
    let paths = [
        "/api/health",
        "/api/jobs/nope",
        "/api/openapi.json",
        "/no/such/route",
        "/",
    ];
    for path in paths {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .expect("request");
        let h = response.headers();
        let csp = h["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(
            h["permissions-policy"]
                .to_str()
                .expect("ascii")
                .contains("microphone=(self)"),
            "{path}"
        );
        assert!(h.contains_key("x-request-id"), "{path}");
    }

    // An incoming request id is echoed; a malformed one is replaced.
    let response = app
        .http
        .get(format!("{}/api/health", app.url))
        .header("x-request-id", "client-req-42")
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["x-request-id"], "client-req-42");
    let response = app
        .http
        .get(format!("{}/api/health", app.url))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .expect("request");
    assert_ne!(response.headers()["x-request-id"], "bad id with spaces");

    // CORS: the configured origin may call; any other gets no grant.
    let preflight = |origin: &'static str| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/voice/process", app.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://app.example").await.expect("preflight");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        other.headers()
    );

    // Oversized headers: 431, never a crash.
    let response = app
        .http
        .get(format!("{}/api/health", app.url))
        .header("x-padding", "a".repeat(512 * 1024))
        .send()
        .await;
    match response {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    app.stop().await;
}
