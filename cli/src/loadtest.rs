//! `rose loadtest`: drives N voice jobs through a running api, C in flight,
//! and reports what a person would feel and what Rose itself adds.
//!
//! Each job is one `POST /api/voice/process` (answered 202 at once), then
//! `GET /api/jobs/{id}?wait=60` until it ends, so the client sees the end of
//! every job as soon as the api does. Sessions: one per lane, so the
//! per-session in-flight cap never holds a lane back.
//!
//! Two ways to load: closed (the default: C lanes, each starting its next job
//! when the last one ended, so the machine sets the pace) and open
//! (`--rate R`: a job starts every 1/R s whatever the others do, which is
//! how "latency at R jobs/s" is measured; `--concurrency` then caps the jobs
//! in flight, and a start held back by that cap by more than 5 ms is counted
//! as late: many late starts mean the rate was not held). Figures:
//! - throughput: finished jobs per second of wall time;
//! - end to end: from the upload's first byte to the finished job, client side;
//! - first audio: the jobs' `timings_ms.first_audio` (from the job's creation
//!   to its first spoken sentence), over the jobs that report one; with the
//!   simulator's `realistic` profile this is the time to first audio a
//!   person would hear;
//! - upload: the `POST` until its 202 (how long accepting a job takes);
//! - stages and queue wait: the jobs' own `timings_ms`;
//! - Rose's overhead: the job's `total` minus its provider time (`stt` +
//!   `llm` + `tts`); memory recall (local embedding and search) is Rose's own
//!   work and counts as overhead.
//!
//! `--interrupt` stops each job as a person interrupting Rose would: the
//! job is read every 5 ms until its first sentence was spoken, then
//! cancelled (`POST /api/jobs/{id}/cancel`); the report adds how long the
//! cancel took to answer, and the jobs count as done when cancelled. (How
//! soon the worker dropped the job's provider requests is the worker's
//! `rose_cancel_stop_seconds`, and `stop_ms` on its "job cancelled" log line.)
//!
//! `--submit-only` measures the intake alone: each job is only uploaded (a
//! job counts as done at its 202) and is left to whatever workers run, so the
//! api can be measured at a rate the workers could not keep up with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// The recording sent when `--audio` is not given.
const DEFAULT_AUDIO: &[u8] = include_bytes!("../../tests/fixtures/spoken.wav");

/// `rose loadtest` arguments.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The api to drive.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Voice jobs to submit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    jobs: u64,
    /// Jobs kept in flight.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Start jobs at this many per second (open loop) instead of as lanes
    /// free up; `--concurrency` caps the jobs in flight.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// The recording to upload (default: a short spoken WAV).
    #[arg(long)]
    audio: Option<PathBuf>,
    /// Only upload each job (done at its 202), without following it: measures
    /// how fast the api accepts jobs, whatever the workers do.
    #[arg(long)]
    submit_only: bool,
    /// Cancel each job once its first sentence was spoken (an interruption).
    #[arg(long, conflicts_with = "submit_only")]
    interrupt: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.01..=100_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate between 0.01 and 100000 jobs/s"
        )),
    }
}

/// A start more than this after its time counts as late (open loop).
const LATE: Duration = Duration::from_millis(5);

/// What one job came to.
#[derive(Debug)]
struct Outcome {
    /// Upload to finished job, client side.
    end_to_end: Duration,
    /// With `--interrupt`: the cancel's round trip.
    cancel: Option<Duration>,
    /// The `POST` alone, until its 202.
    upload: Option<Duration>,
    job: Result<Value, String>,
}

/// Runs the load test and prints its report.
///
/// # Errors
/// When the api cannot be reached or the audio file read; failed jobs are
/// reported, not errors.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    let audio: Arc<[u8]> = match &args.audio {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .into(),
        None => DEFAULT_AUDIO.into(),
    };
    let base = args.url.trim_end_matches('/').to_owned();
    let lanes = args.concurrency.min(args.jobs);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::try_from(lanes).unwrap_or(usize::MAX))
        .timeout(Duration::from_secs(120))
        .build()?;
    http.get(format!("{base}/api/health"))
        .send()
        .await
        .with_context(|| format!("the api at {base} does not answer"))?;

    let mut sessions = Vec::new();
    for _ in 0..lanes {
        let response = http
            .post(format!("{base}/api/session/start"))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "session start answered {}",
            response.status()
        );
        let body: Value = response.json().await?;
        sessions.push(
            body["session_id"]
                .as_str()
                .context("session start answered without session_id")?
                .to_owned(),
        );
    }

    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(args.jobs), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {pos}/{len} jobs [{bar:30}] {per_sec} eta {eta} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    };

    let load = Load {
        http,
        base,
        audio,
        follow: !args.submit_only,
        interrupt: args.interrupt,
        bar: bar.clone(),
    };
    let started = Instant::now();
    let (outcomes, late) = match args.rate {
        None => (closed(&load, sessions, args.jobs).await?, None),
        Some(rate) => {
            let (outcomes, late) = open(&load, sessions, args.jobs, rate).await?;
            (outcomes, Some(late))
        }
    };
    let wall = started.elapsed();
    bar.finish_and_clear();

    let mut report = report(&outcomes, wall, args.concurrency);
    if let (Some(rate), Some(late)) = (args.rate, late) {
        report["offered_rate_jobs_per_sec"] = json!(rate);
        report["late_starts"] = json!(late);
    }
    report["submit_only"] = json!(args.submit_only);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// What every job of a run shares: the client, the api, the recording.
#[derive(Clone)]
struct Load {
    http: reqwest::Client,
    base: String,
    audio: Arc<[u8]>,
    /// Follow each job to its end (not with `--submit-only`).
    follow: bool,
    /// Cancel each job at its first spoken sentence.
    interrupt: bool,
    bar: ProgressBar,
}

impl Load {
    /// Runs one job on `session` and counts it on the progress bar.
    async fn job(&self, session: &str) -> Outcome {
        let outcome = one_job(self, session).await;
        if outcome.job.is_err() {
            self.bar.set_message("(failures)");
        }
        self.bar.inc(1);
        outcome
    }
}

/// C lanes, each starting its next job when its last one ended.
async fn closed(load: &Load, sessions: Vec<String>, total: u64) -> anyhow::Result<Vec<Outcome>> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut lanes_set = JoinSet::new();
    for session in sessions {
        let (load, next) = (load.clone(), Arc::clone(&next));
        lanes_set.spawn(async move {
            let mut outcomes = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                outcomes.push(load.job(&session).await);
            }
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    while let Some(lane) = lanes_set.join_next().await {
        outcomes.extend(lane.context("a load lane panicked")?);
    }
    Ok(outcomes)
}

/// Job `i` starts at `i / rate` s, on a session no other job holds; at most
/// one job per session, so `sessions.len()` caps the jobs in flight. Returns
/// the outcomes and how many starts were late.
async fn open(
    load: &Load,
    sessions: Vec<String>,
    total: u64,
    rate: f64,
) -> anyhow::Result<(Vec<Outcome>, u64)> {
    let (free_tx, mut free_rx) = tokio::sync::mpsc::unbounded_channel();
    for session in sessions {
        let _ = free_tx.send(session);
    }
    let start = tokio::time::Instant::now();
    let mut late = 0;
    let mut jobs = JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let session = free_rx.recv().await.context("the session pool closed")?;
        if tokio::time::Instant::now().saturating_duration_since(due) > LATE {
            late += 1;
        }
        let (load, free_tx) = (load.clone(), free_tx.clone());
        jobs.spawn(async move {
            let outcome = load.job(&session).await;
            let _ = free_tx.send(session);
            outcome
        });
    }
    let mut outcomes = Vec::new();
    while let Some(done) = jobs.join_next().await {
        outcomes.push(done.context("a load job panicked")?);
    }
    Ok((outcomes, late))
}

async fn one_job(load: &Load, session: &str) -> Outcome {
    let (http, base) = (&load.http, &load.base);
    let started = Instant::now();
    let form = Form::new()
        .part(
            "audio",
            Part::bytes(load.audio.to_vec()).file_name("speech.wav"),
        )
        .text("session_id", session.to_owned());
    let result = async {
        let response = http
            .post(format!("{base}/api/voice/process"))
            .multipart(form)
            .send()
            .await
            .map_err(|e| format!("upload: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("upload: {e}"))?;
        let upload = (status == 202).then(|| started.elapsed());
        if !status.is_success() {
            return Err(body["error"]["code"]
                .as_str()
                .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned));
        }
        let mut job = body;
        if !load.follow {
            return Ok((job, upload, None));
        }
        if load.interrupt {
            let (job, cancel) = interrupt(load, job).await?;
            return Ok((job, upload, cancel));
        }
        while !matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
            let id = job["job_id"].as_str().ok_or("no job_id")?.to_owned();
            job = http
                .get(format!("{base}/api/jobs/{id}?wait=60"))
                .send()
                .await
                .map_err(|e| format!("poll: {e}"))?
                .json()
                .await
                .map_err(|e| format!("poll: {e}"))?;
        }
        Ok((job, upload, None))
    }
    .await;
    let end_to_end = started.elapsed();
    match result {
        Ok((job, upload, cancel))
            if job["status"] == "succeeded"
                || (load.interrupt && job["status"] == "cancelled")
                || !load.follow =>
        {
            Outcome {
                end_to_end,
                cancel,
                upload,
                job: Ok(job),
            }
        }
        Ok((job, upload, cancel)) => Outcome {
            end_to_end,
            cancel,
            upload,
            job: Err(job["error"]["code"].as_str().unwrap_or("failed").to_owned()),
        },
        Err(code) => Outcome {
            end_to_end,
            cancel: None,
            upload: None,
            job: Err(code),
        },
    }
}

/// Reads the job every 5 ms until its first sentence was spoken (or it
/// ended), then cancels it; the job as the cancel answered, and the
/// cancel's round trip.
async fn interrupt(load: &Load, accepted: Value) -> Result<(Value, Option<Duration>), String> {
    let (http, base) = (&load.http, &load.base);
    let id = accepted["job_id"].as_str().ok_or("no job_id")?.to_owned();
    loop {
        let job: Value = http
            .get(format!("{base}/api/jobs/{id}"))
            .send()
            .await
            .map_err(|e| format!("poll: {e}"))?
            .json()
            .await
            .map_err(|e| format!("poll: {e}"))?;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok((job, None));
        }
        if job["result"]["chunks"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    let response = http
        .post(format!("{base}/api/jobs/{id}/cancel"))
        .send()
        .await
        .map_err(|e| format!("cancel: {e}"))?;
    let took = asked.elapsed();
    let job: Value = response.json().await.map_err(|e| format!("cancel: {e}"))?;
    Ok((job, Some(took)))
}

/// p50, p95, p99 and max of `values` in ms (empty: nulls).
fn percentiles(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return json!({"p50": null, "p95": null, "p99": null, "max": null, "count": 0});
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = (q * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    let round = |v: f64| (v * 100.0).round() / 100.0;
    json!({
        "p50": round(at(0.50)),
        "p95": round(at(0.95)),
        "p99": round(at(0.99)),
        "max": round(at(1.0)),
        "count": values.len(),
    })
}

fn report(outcomes: &[Outcome], wall: Duration, concurrency: u64) -> Value {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ok: Vec<&Value> = outcomes
        .iter()
        .filter_map(|o| o.job.as_ref().ok())
        .collect();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes {
        if let Err(code) = &o.job {
            *failures.entry(code.clone()).or_default() += 1;
        }
    }
    let timing = |part: &str| -> Vec<f64> {
        ok.iter()
            .filter_map(|j| j["timings_ms"][part].as_f64())
            .collect()
    };
    let mut stages = serde_json::Map::new();
    for part in ["queue_wait", "stt", "memory", "llm", "tts", "total"] {
        stages.insert(part.to_owned(), percentiles(timing(part)));
    }
    let overhead: Vec<f64> = ok
        .iter()
        .filter_map(|j| {
            let t = &j["timings_ms"];
            let provider: f64 = ["stt", "llm", "tts"]
                .iter()
                .filter_map(|p| t[*p].as_f64())
                .sum();
            t["total"].as_f64().map(|total| (total - provider).max(0.0))
        })
        .collect();
    let first_audio: Vec<f64> = ok
        .iter()
        .filter_map(|j| j["timings_ms"]["first_audio"].as_f64())
        .collect();
    json!({
        "jobs": outcomes.len(),
        "succeeded": ok.len(),
        "failed": outcomes.len() - ok.len(),
        "failures": failures,
        "concurrency": concurrency,
        "wall_secs": (wall.as_secs_f64() * 1000.0).round() / 1000.0,
        "throughput_jobs_per_sec": ((ok.len() as f64 / wall.as_secs_f64().max(1e-9)) * 100.0).round() / 100.0,
        "end_to_end_ms": percentiles(outcomes.iter().filter(|o| o.job.is_ok()).map(|o| ms(o.end_to_end)).collect()),
        "first_audio_ms": percentiles(first_audio),
        "upload_ms": percentiles(outcomes.iter().filter_map(|o| o.upload).map(ms).collect()),
        "stages_ms": stages,
        "overhead_ms": percentiles(overhead),
        "cancel_ms": percentiles(outcomes.iter().filter_map(|o| o.cancel).map(ms).collect()),
    })
}

fn print_report(r: &Value) {
    let row = |name: &str, p: &Value| {
        let f = |k: &str| {
            p[k].as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
        };
        println!(
            "  {name:<14} {:>9} {:>9} {:>9} {:>9}",
            f("p50"),
            f("p95"),
            f("p99"),
            f("max")
        );
    };
    println!(
        "{} jobs, {} succeeded, {} failed in {:.2} s at concurrency {}: {} jobs/s",
        r["jobs"],
        r["succeeded"],
        r["failed"],
        r["wall_secs"].as_f64().unwrap_or(0.0),
        r["concurrency"],
        r["throughput_jobs_per_sec"]
    );
    if let Some(rate) = r["offered_rate_jobs_per_sec"].as_f64() {
        println!(
            "offered {rate} jobs/s (open loop); {} starts late by more than {} ms",
            r["late_starts"],
            LATE.as_millis()
        );
    }
    if r["submit_only"] == true {
        println!("submit only: each job counted at its 202, not followed to its end");
    }
    println!(
        "  {:<14} {:>9} {:>9} {:>9} {:>9}",
        "ms", "p50", "p95", "p99", "max"
    );
    row("end to end", &r["end_to_end_ms"]);
    row("first audio", &r["first_audio_ms"]);
    row("upload (202)", &r["upload_ms"]);
    for part in ["queue_wait", "stt", "memory", "llm", "tts", "total"] {
        row(part, &r["stages_ms"][part]);
    }
    row("rose overhead", &r["overhead_ms"]);
    if r["cancel_ms"]["count"].as_u64().unwrap_or(0) > 0 {
        row("cancel", &r["cancel_ms"]);
    }
    let with_audio = r["first_audio_ms"]["count"].as_u64().unwrap_or(0);
    if with_audio != r["succeeded"].as_u64().unwrap_or(0) {
        println!(
            "first audio over the {with_audio} of {} succeeded jobs that reported one",
            r["succeeded"]
        );
    }
    if let Some(failures) = r["failures"].as_object()
        && !failures.is_empty()
    {
        println!("failures by code:");
        for (code, n) in failures {
            println!("  {code}: {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!(p["p50"], 50.0);
        assert_eq!(p["p95"], 95.0);
        assert_eq!(p["p99"], 99.0);
        assert_eq!(p["max"], 100.0);
        assert!(percentiles(Vec::new())["p50"].is_null());
    }

    #[test]
    fn first_audio_counts_only_the_jobs_that_report_it() {
        let job = |first_audio: Option<f64>| {
            let mut timings = json!({"total": 900.0});
            if let Some(ms) = first_audio {
                timings["first_audio"] = json!(ms);
            }
            Outcome {
                cancel: None,
                end_to_end: Duration::from_millis(1_000),
                upload: Some(Duration::from_millis(5)),
                job: Ok(json!({"status": "succeeded", "timings_ms": timings})),
            }
        };
        let failed = Outcome {
            cancel: None,
            end_to_end: Duration::from_millis(1_000),
            upload: None,
            job: Err("llm_failed".to_owned()),
        };
        let outcomes = [job(Some(300.0)), job(Some(500.0)), job(None), failed];
        let r = report(&outcomes, Duration::from_secs(2), 4);
        let first = &r["first_audio_ms"];
        assert_eq!(first["count"], 2);
        assert_eq!(first["p50"], 300.0);
        assert_eq!(first["p99"], 500.0);
        assert_eq!(r["end_to_end_ms"]["count"], 3);
        let none = report(&[job(None)], Duration::from_secs(1), 1);
        assert!(none["first_audio_ms"]["p50"].is_null());
        assert_eq!(none["first_audio_ms"]["count"], 0);
    }

    #[test]
    fn rates_outside_the_range_are_refused() {
        assert_eq!(parse_rate("200"), Ok(200.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "nan", "inf", "1e9", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
