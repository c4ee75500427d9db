//! The Redis Streams queue under load, against a real Redis (no-op jobs).
//!
//! ```sh
//! cargo bench -p rose-tests --bench redis_queue            # every scenario
//! cargo bench -p rose-tests --bench redis_queue -- drain   # one: enqueue, drain,
//!                                                          # pickup, memory, backlog, idle, rss
//! ```
//!
//! Each scenario runs under its own key prefix and cleans up after itself.
//! Results are printed as Markdown rows for BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use futures::{FutureExt, StreamExt};
use redis::AsyncCommands;
use rose_shared::queue::{RedisQueue, StreamOptions};
use rose_tests::{delete_prefix, redis_url, unique};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "bench";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    /// Push time in µs since the bench's epoch (0: not measured).
    pushed_us: u64,
}

struct State {
    epoch: Instant,
    done: AtomicU64,
    target: AtomicU64,
    finished: Notify,
    latencies: Mutex<Vec<u64>>,
}

impl State {
    fn new(epoch: Instant) -> Arc<Self> {
        Arc::new(Self {
            epoch,
            done: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            finished: Notify::new(),
            latencies: Mutex::new(Vec::new()),
        })
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

async fn noop(job: Noop, state: Data<Arc<State>>) -> Result<(), BoxDynError> {
    if job.pushed_us > 0 {
        let latency = state.now_us().saturating_sub(job.pushed_us);
        if let Ok(mut l) = state.latencies.lock() {
            l.push(latency);
        }
    }
    let n = state.done.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= state.target.load(Ordering::Relaxed) {
        state.finished.notify_one();
    }
    Ok(())
}

fn start_worker(
    q: &RedisQueue,
    concurrency: usize,
    state: Arc<State>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let options = StreamOptions {
        prefetch: concurrency,
        ..StreamOptions::new(format!("bench-{}", std::process::id()))
    };
    let backend = q.backend::<Noop>(QUEUE, options);
    let signal = stop.clone().cancelled_owned().map(Ok::<(), std::io::Error>);
    let handle = tokio::spawn(async move {
        let result = WorkerBuilder::new("bench")
            .backend(backend)
            .concurrency(concurrency)
            .data(state)
            .build(noop)
            .run_until(signal)
            .await;
        if let Err(e) = result {
            eprintln!("worker failed: {e}");
        }
    });
    (stop, handle)
}

async fn fresh_queue() -> RedisQueue {
    RedisQueue::connect(&redis_url(), &unique("rose_bench"))
        .await
        .expect("Redis must be running")
}

fn noops(n: u64) -> Vec<(String, Noop)> {
    (0..n)
        .map(|i| (i.to_string(), Noop { pushed_us: 0 }))
        .collect()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn enqueue() {
    let q = fresh_queue().await;
    let n = 10_000u64;
    let started = Instant::now();
    for i in 0..n {
        q.push(QUEUE, &i.to_string(), &Noop { pushed_us: 0 })
            .await
            .expect("push");
    }
    let single = n as f64 / started.elapsed().as_secs_f64();
    let bulk_n = 50_000u64;
    let started = Instant::now();
    q.push_bulk(QUEUE, &noops(bulk_n)).await.expect("bulk");
    let bulk = bulk_n as f64 / started.elapsed().as_secs_f64();
    println!("| enqueue, one XADD per await ({n} jobs) | {single:.0} jobs/s |");
    println!("| enqueue, bulk pipeline ({bulk_n} jobs) | {bulk:.0} jobs/s |");
    delete_prefix(q.connection(), q.prefix()).await;
}

/// Pushes `n` jobs, then drains them with one worker; returns jobs/s.
async fn drain_rate(n: u64, concurrency: usize) -> f64 {
    let q = fresh_queue().await;
    q.push_bulk(QUEUE, &noops(n)).await.expect("bulk");
    let state = State::new(Instant::now());
    state.target.store(n, Ordering::Relaxed);
    let started = Instant::now();
    let (stop, handle) = start_worker(&q, concurrency, state.clone());
    let finished = state.finished.notified();
    if state.done.load(Ordering::Relaxed) < n {
        finished.await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = handle.await;
    let stats = q.stats(QUEUE).await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.completed), (0, 0, n));
    delete_prefix(q.connection(), q.prefix()).await;
    rate
}

async fn drain() {
    for concurrency in [50, 200] {
        let rate = drain_rate(50_000, concurrency).await;
        println!(
            "| drain a 50,000 backlog, one worker, concurrency {concurrency} | {rate:.0} jobs/s |"
        );
    }
}

async fn backlog() {
    let rate = drain_rate(200_000, 200).await;
    println!("| drain a 200,000 backlog, concurrency 200 (no failure) | {rate:.0} jobs/s |");
}

async fn pickup() {
    let q = fresh_queue().await;
    let state = State::new(Instant::now());
    let (stop, handle) = start_worker(&q, 50, state.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 2_000u64;
    state.target.store(n, Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..n {
        tick.tick().await;
        let job = Noop {
            pushed_us: state.now_us(),
        };
        q.push(QUEUE, &i.to_string(), &job).await.expect("push");
    }
    let finished = state.finished.notified();
    if state.done.load(Ordering::Relaxed) < n {
        finished.await;
    }
    stop.cancel();
    let _ = handle.await;
    let mut lat = state
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    println!(
        "| pickup latency at 200 jobs/s, idle worker ({n} jobs) | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms |",
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99)
    );
    delete_prefix(q.connection(), q.prefix()).await;
}

/// The floor under `pickup`: the same trickle through bare `XADD` and a
/// blocking `XREADGROUP`, with no backend or apalis in between.
async fn raw() {
    let q = fresh_queue().await;
    let stream = q.stream_key(QUEUE);
    let client = redis::Client::open(redis_url()).expect("client");
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(15)));
    let mut reader = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("conn");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut reader)
        .await
        .expect("group");
    let epoch = Instant::now();
    let n = 2_000usize;
    let reading = tokio::spawn({
        let stream = stream.clone();
        async move {
            let mut lat = Vec::with_capacity(n);
            while lat.len() < n {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(100)
                    .arg("BLOCK")
                    .arg(5000)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                    .expect("read");
                let now = epoch.elapsed().as_micros() as u64;
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for id in key.ids {
                        let pushed: u64 = id.get("t").unwrap_or(now);
                        lat.push(now.saturating_sub(pushed));
                    }
                }
            }
            lat
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = q.connection();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..n {
        tick.tick().await;
        let t = epoch.elapsed().as_micros() as u64;
        let _: String = conn.xadd(&stream, "*", &[("t", t)]).await.expect("xadd");
    }
    let mut lat = reading.await.expect("reader");
    lat.sort_unstable();
    println!(
        "| bare XADD → XREADGROUP BLOCK at 200/s (floor for pickup) | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms |",
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99)
    );
    delete_prefix(q.connection(), q.prefix()).await;
}

async fn memory() {
    let q = fresh_queue().await;
    let mut conn = q.connection();
    let before = used_memory(&mut conn).await;
    let _ = drain_rate_on(&q, 50_000).await;
    let keys: Vec<String> = conn.keys(format!("{}:*", q.prefix())).await.expect("keys");
    let mut ours = 0u64;
    for key in &keys {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("memory usage");
        ours += bytes.unwrap_or(0);
    }
    let after = used_memory(&mut conn).await;
    println!(
        "| Redis memory after 50,000 completed jobs | {:.1} KB in {} keys (used_memory delta {:.2} MB) |",
        ours as f64 / 1024.0,
        keys.len(),
        (after as f64 - before as f64) / 1_048_576.0
    );
    delete_prefix(conn, q.prefix()).await;
}

async fn drain_rate_on(q: &RedisQueue, n: u64) -> f64 {
    q.push_bulk(QUEUE, &noops(n)).await.expect("bulk");
    let state = State::new(Instant::now());
    state.target.store(n, Ordering::Relaxed);
    let started = Instant::now();
    let (stop, handle) = start_worker(q, 200, state.clone());
    let finished = state.finished.notified();
    if state.done.load(Ordering::Relaxed) < n {
        finished.await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = handle.await;
    rate
}

async fn used_memory(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts a `queue-probe` worker process (idle, default timings).
fn probe(q: &RedisQueue) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_queue_probe"))
        .args([
            redis_url(),
            q.prefix().to_owned(),
            QUEUE.to_owned(),
            "50".to_owned(),
            "60000".to_owned(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start queue-probe")
}

async fn rss() {
    let q = fresh_queue().await;
    let mut child = probe(&q);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "| worker process RSS, idle (queue-probe) | {:.1} MB |",
        idle as f64 / 1024.0
    );
    delete_prefix(q.connection(), q.prefix()).await;
}

async fn idle() {
    let q = fresh_queue().await;
    let mut child = probe(&q);
    // Let it start (group creation, first read) before listening.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = redis::Client::open(redis_url()).expect("client");
    let monitor = client.get_async_monitor().await.expect("monitor");
    let mut lines = monitor.into_on_message::<String>();
    let window = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, lines.next()).await {
        if line.contains(q.prefix()) {
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "| commands from an idle worker in {}s (blocking read 30 s, heartbeat 20 s) | {} |",
        window.as_secs(),
        seen.len()
    );
    for line in seen {
        println!("    {line}");
    }
    delete_prefix(q.connection(), q.prefix()).await;
}

#[tokio::main]
async fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name || w == "all");
    println!("| scenario | result |\n|---|---|");
    if wants("enqueue") {
        enqueue().await;
    }
    if wants("drain") {
        drain().await;
    }
    if wants("pickup") {
        pickup().await;
    }
    if wants("raw") {
        raw().await;
    }
    if wants("memory") {
        memory().await;
    }
    if wants("backlog") {
        backlog().await;
    }
    if wants("rss") {
        rss().await;
    }
    if wants("idle") {
        idle().await;
    }
}
