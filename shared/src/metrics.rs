//! Prometheus metrics: one registry per process, rendered at `GET /metrics`
//! by the api and by a worker's `ROSE_METRICS_PORT` listener.
//!
//! Every name Rose records is below; all carry the `rose_` prefix and
//! durations are in seconds, as Prometheus conventions ask:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rose_http_requests_total` | counter | `method`, `status` |
//! | `rose_http_request_duration_seconds` | histogram | `method` |
//! | `rose_jobs_enqueued_total` | counter | `queue` (messages pushed, delayed retries included) |
//! | `rose_jobs_succeeded_total` | counter | `queue` |
//! | `rose_jobs_failed_total` | counter | `queue`, `code` |
//! | `rose_job_retries_total` | counter | `queue`, `reason` (`retry`, `breaker`) |
//! | `rose_orphan_messages_total` | counter | `queue` (messages naming no row, acknowledged and dropped) |
//! | `rose_safety_marked_total` | counter | (none: turns marked `safety: crisis`; nothing of their content) |
//! | `rose_queue_wait_seconds` | histogram | `queue` |
//! | `rose_stage_duration_seconds` | histogram | `stage` (`stt`, `memory`, `llm`, `tts`) |
//! | `rose_job_duration_seconds` | histogram | `queue` (end to end, created → finished) |
//! | `rose_queue_depth` | gauge | `queue`, `state` (`pending`, `delayed`, `running`, `dead`) |
//! | `rose_queue_oldest_pending_seconds` | gauge | `queue` |
//! | `rose_provider_requests_total` | counter | `provider`, `status` (HTTP code, or `error`) |
//! | `rose_provider_retries_total` | counter | `provider` |
//! | `rose_rate_limit_waits_total` | counter | `provider` |
//! | `rose_rate_limit_wait_seconds` | histogram | `provider` |
//! | `rose_circuit_breaker_state` | gauge | `provider` (0 closed, 1 half-open, 2 open) |
//! | `rose_callback_deliveries_total` | counter | `outcome` (`delivered`, `failed`, `gone`, `refused`) |
//! | `rose_scheduler_runs_total` | counter | `name`, `outcome` |
//! | `rose_active_sessions` | gauge | (sessions used in the last 15 minutes, per api process's last count) |

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets from 1 ms to 2 min: queue waits of a millisecond and provider
/// stages of seconds both fall where they can be told apart.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Queue depths are read at most once per this interval per process;
/// scrapes in between render the last figures.
pub const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// The longest one queue's depth may take to read before a scrape goes on
/// without it.
pub const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// When a Rose last read its queue depths for the gauges. Scrapes take it
/// in turn, so concurrent scrapes never read the queues more than once.
#[derive(Debug, Default)]
pub struct DepthReads(tokio::sync::Mutex<Option<tokio::time::Instant>>);

/// Reads what is a state rather than an event (queue depths, breaker
/// states) and renders every metric: the body of `GET /metrics`. However
/// often it is scraped, the queues are read at most once per
/// [`DEPTH_EVERY`] (one depth read per queue, each bounded by
/// [`DEPTH_TIMEOUT`]); a queue that cannot be read in time keeps its last
/// figures and the failure is logged.
pub async fn scrape(rose: &crate::Rose) -> String {
    handle();
    {
        let mut last = rose.depth_reads.0.lock().await;
        let due = last.is_none_or(|at| at.elapsed() >= DEPTH_EVERY);
        if due {
            for queue in crate::queue::QUEUES {
                match tokio::time::timeout(DEPTH_TIMEOUT, rose.queue.depth(queue)).await {
                    Ok(Ok(d)) => {
                        queue_depth(queue, "pending", d.pending);
                        queue_depth(queue, "delayed", d.delayed);
                        queue_depth(queue, "running", d.running);
                        queue_depth(queue, "dead", d.dead);
                        oldest_pending(queue, d.oldest_pending_age.unwrap_or_default());
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(queue, error = %e, "queue depth unavailable for metrics");
                    }
                    Err(_) => {
                        tracing::warn!(queue, "queue depth took too long for metrics");
                    }
                }
            }
            *last = Some(tokio::time::Instant::now());
        }
    }
    for (provider, snapshot) in rose.resilience.breaker_states().await {
        use crate::resilience::State;
        let state = match snapshot.state {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        };
        breaker_state(provider, state);
    }
    render()
}

/// Installs the process's recorder on first use and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Only one recorder per process; a second install (never expected)
        // leaves metrics unrecorded rather than failing the process.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        handle
    })
}

/// The Prometheus text exposition of every metric so far.
#[must_use]
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// One answered HTTP request.
pub fn http_request(method: &str, status: u16, took: Duration) {
    counter!("rose_http_requests_total", "method" => method.to_owned(), "status" => status.to_string())
        .increment(1);
    histogram!("rose_http_request_duration_seconds", "method" => method.to_owned())
        .record(took.as_secs_f64());
}

/// A job pushed to `queue`.
pub fn job_enqueued(queue: &str) {
    counter!("rose_jobs_enqueued_total", "queue" => queue.to_owned()).increment(1);
}

/// A job of `queue` succeeded, `total` after it was created.
pub fn job_succeeded(queue: &'static str, total: Duration) {
    counter!("rose_jobs_succeeded_total", "queue" => queue).increment(1);
    histogram!("rose_job_duration_seconds", "queue" => queue).record(total.as_secs_f64());
}

/// A job of `queue` failed for good with `code`.
pub fn job_failed(queue: &'static str, code: &str, total: Duration) {
    counter!("rose_jobs_failed_total", "queue" => queue, "code" => code.to_owned()).increment(1);
    histogram!("rose_job_duration_seconds", "queue" => queue).record(total.as_secs_f64());
}

/// A job of `queue` was cancelled by its client.
pub fn job_cancelled(queue: &'static str) {
    counter!("rose_jobs_cancelled_total", "queue" => queue).increment(1);
}

/// A running job's work stopped `after` its cancel was recorded (its
/// provider requests in flight dropped with it).
pub fn cancel_stop(after: Duration) {
    histogram!("rose_cancel_stop_seconds").record(after.as_secs_f64());
}

/// A voice job's first sentence of speech was stored, `after` its creation.
pub fn first_audio(after: Duration) {
    histogram!("rose_first_audio_seconds").record(after.as_secs_f64());
}

/// A job of `queue` put back for a later attempt.
pub fn job_retried(queue: &'static str, breaker: bool) {
    let reason = if breaker { "breaker" } else { "retry" };
    counter!("rose_job_retries_total", "queue" => queue, "reason" => reason).increment(1);
}

/// A message of `queue` that named no row was acknowledged and dropped.
pub fn orphan_message(queue: &str) {
    counter!("rose_orphan_messages_total", "queue" => queue.to_owned()).increment(1);
}

/// A turn was marked `safety: crisis`. No labels: nothing of the turn, nor
/// who spoke it, goes with the count.
pub fn safety_marked() {
    counter!("rose_safety_marked_total").increment(1);
}

/// Push → first stage start of a job's first attempt.
pub fn queue_wait(queue: &'static str, wait: Duration) {
    histogram!("rose_queue_wait_seconds", "queue" => queue).record(wait.as_secs_f64());
}

/// One pipeline stage's duration.
pub fn stage(stage: &'static str, took: Duration) {
    histogram!("rose_stage_duration_seconds", "stage" => stage).record(took.as_secs_f64());
}

/// Depth of `queue` in `state`, read when metrics are scraped.
pub fn queue_depth(queue: &str, state: &'static str, count: u64) {
    gauge!("rose_queue_depth", "queue" => queue.to_owned(), "state" => state).set(count as f64);
}

/// Age of the oldest pending job of `queue` (0 when none waits).
pub fn oldest_pending(queue: &str, age: Duration) {
    gauge!("rose_queue_oldest_pending_seconds", "queue" => queue.to_owned()).set(age.as_secs_f64());
}

/// One provider request: its HTTP status, or `None` when no answer came.
pub fn provider_request(provider: &'static str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    counter!("rose_provider_requests_total", "provider" => provider, "status" => status)
        .increment(1);
}

/// A provider call tried again after a failure.
pub fn provider_retry(provider: &'static str) {
    counter!("rose_provider_retries_total", "provider" => provider).increment(1);
}

/// A call that waited for rate-limit budget or a concurrency slot.
pub fn rate_limit_wait(provider: &'static str, waited: Duration) {
    counter!("rose_rate_limit_waits_total", "provider" => provider).increment(1);
    histogram!("rose_rate_limit_wait_seconds", "provider" => provider).record(waited.as_secs_f64());
}

/// A breaker's state: 0 closed, 1 half-open, 2 open.
pub fn breaker_state(provider: &'static str, state: u8) {
    gauge!("rose_circuit_breaker_state", "provider" => provider).set(f64::from(state));
}

/// One callback delivery attempt's outcome.
pub fn callback_delivery(outcome: &'static str) {
    counter!("rose_callback_deliveries_total", "outcome" => outcome).increment(1);
}

/// Sessions used in the last 15 minutes.
pub fn active_sessions(count: i64) {
    gauge!("rose_active_sessions").set(count as f64);
}

/// One maintenance run's outcome.
pub fn scheduler_run(name: &str, outcome: &str) {
    counter!("rose_scheduler_runs_total", "name" => name.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
}
