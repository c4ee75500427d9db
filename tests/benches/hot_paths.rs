//! In-process hot paths of accepting a job: telling the audio container,
//! the whole `POST /api/voice/process` of a 200 KB upload (HTTP, multipart,
//! validation, job row, push), the job row written and read back, and the
//! push alone, on both deployments.
//!
//! ```sh
//! scripts/test --no-run        # once: services up, model unpacked
//! cargo bench -p rose-tests --bench hot_paths
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use reqwest::multipart::{Form, Part};
use rose_shared::audio::sniff;
use rose_shared::domain::VoiceTask;
use rose_shared::store::{JobInput, NewJob};
use rose_tests::{AppOptions, Deployment, SPOKEN_WAV, TestApp, spawn_app_with};

/// A 200 KB WAV: the fixture's header and samples, padded with silence.
fn upload_200k() -> Vec<u8> {
    let mut wav = SPOKEN_WAV.to_vec();
    wav.resize(200 * 1024, 0);
    wav
}

fn sniffing(c: &mut Criterion) {
    let wav = upload_200k();
    c.bench_function("sniff 200 KB upload", |b| b.iter(|| sniff(black_box(&wav))));
}

fn app(runtime: &tokio::runtime::Runtime, deployment: Deployment) -> TestApp {
    runtime.block_on(spawn_app_with(
        deployment,
        AppOptions {
            no_worker: true,
            ..AppOptions::default()
        },
    ))
}

fn accept(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let wav = upload_200k();
    let mut group = c.benchmark_group("POST /api/voice/process 200 KB");
    group.measurement_time(Duration::from_secs(8));
    for deployment in [Deployment::Embedded, Deployment::Scaled] {
        let app = app(&runtime, deployment);
        let session = runtime.block_on(app.start_session());
        group.bench_function(format!("{deployment:?}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let form = Form::new()
                    .part("audio", Part::bytes(wav.clone()).file_name("a.wav"))
                    .text("session_id", session.clone());
                let response = app
                    .http
                    .post(format!("{}/api/voice/process", app.url))
                    .multipart(form)
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(response.status(), 202);
            });
        });
        runtime.block_on(app.stop());
    }
    group.finish();
}

fn rows_and_pushes(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let wav = upload_200k();
    let mut rows = c.benchmark_group("job row write + read");
    for deployment in [Deployment::Embedded, Deployment::Scaled] {
        let app = app(&runtime, deployment);
        let session = runtime.block_on(app.start_session());
        let session_id = session.parse().expect("session id");
        rows.bench_function(format!("{deployment:?}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let (job, _) = app
                    .rose
                    .store
                    .create_job(NewJob {
                        session_id,
                        input: JobInput::Audio {
                            bytes: wav.clone(),
                            mime: "audio/wav".to_owned(),
                        },
                        idempotency_key: None,
                        request_id: None,
                        callback_url: None,
                        max_in_flight: None,
                    })
                    .await
                    .expect("create");
                app.rose.store.get_job(job.id).await.expect("read")
            });
        });
        runtime.block_on(app.stop());
    }
    rows.finish();

    let mut pushes = c.benchmark_group("enqueue one voice job");
    for deployment in [Deployment::Embedded, Deployment::Scaled] {
        let app = app(&runtime, deployment);
        pushes.bench_function(format!("{deployment:?}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let task = VoiceTask {
                    job_id: rose_shared::domain::JobId::new(),
                    request_id: None,
                };
                app.rose.queue.push_voice(&task).await.expect("push");
            });
        });
        runtime.block_on(app.stop());
    }
    pushes.finish();
}

criterion_group!(benches, sniffing, accept, rows_and_pushes);
criterion_main!(benches);
