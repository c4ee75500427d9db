//! The shared limiter and breakers against a real Redis: two instances stand
//! for two worker processes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rose_shared::queue::RedisQueue;
use rose_shared::resilience::{BreakerConfig, Breakers, Limiter, Limits, Provider, State};
use rose_tests::{delete_prefix, redis_url, unique};

async fn redis() -> RedisQueue {
    RedisQueue::connect(&redis_url(), &unique("rose_res"))
        .await
        .expect("Redis must be running (scripts/test starts it)")
}

fn limiter(q: &RedisQueue, limits: Limits, window: Duration) -> Limiter {
    Limiter::redis(
        HashMap::from([(Provider::Tts, limits)]),
        Duration::from_secs(30),
        window,
        q.client().clone(),
        q.connection(),
        q.prefix(),
    )
}

#[tokio::test]
async fn two_processes_share_one_concurrency_cap() {
    let q = redis().await;
    let a = limiter(
        &q,
        Limits {
            rpm: 0,
            concurrency: 2,
        },
        Duration::from_secs(60),
    );
    let b = limiter(
        &q,
        Limits {
            rpm: 0,
            concurrency: 2,
        },
        Duration::from_secs(60),
    );
    let running = Arc::new(AtomicU32::new(0));
    let highest = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (running, highest) = (running.clone(), highest.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = l.acquire(Provider::Tts).await;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            highest.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(40)).await;
            running.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(
        highest.load(Ordering::SeqCst),
        2,
        "never more than the cap, and the cap is used"
    );
    delete_prefix(q.connection(), q.prefix()).await;
}

#[tokio::test]
async fn two_processes_share_one_request_budget() {
    let q = redis().await;
    let window = Duration::from_millis(1000);
    let a = limiter(
        &q,
        Limits {
            rpm: 5,
            concurrency: 0,
        },
        window,
    );
    let b = limiter(
        &q,
        Limits {
            rpm: 5,
            concurrency: 0,
        },
        window,
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let _ = l.acquire(Provider::Tts).await;
            Instant::now()
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.expect("join"));
    }
    times.sort();
    // 12 requests at 5 per window need at least two more windows.
    assert!(started.elapsed() >= window * 2, "{:?}", started.elapsed());
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < window)
            .count();
        // Redis and this process read different clocks: allow a 50 ms skew.
        let strict = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < window - Duration::from_millis(50))
            .count();
        assert!(strict <= 5, "{in_window} requests within one window");
    }
    delete_prefix(q.connection(), q.prefix()).await;
}

#[tokio::test]
async fn a_pause_set_by_one_process_holds_the_other() {
    let q = redis().await;
    let a = limiter(
        &q,
        Limits {
            rpm: 0,
            concurrency: 0,
        },
        Duration::from_secs(60),
    );
    let b = limiter(
        &q,
        Limits {
            rpm: 0,
            concurrency: 0,
        },
        Duration::from_secs(60),
    );
    a.pause(Provider::Tts, Duration::from_millis(600)).await;
    let started = Instant::now();
    let _ = b.acquire(Provider::Tts).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    delete_prefix(q.connection(), q.prefix()).await;
}

/// A shorter pause heard later never shortens a longer one, whichever
/// process hears it; a longer one lengthens it.
#[tokio::test]
async fn a_pause_only_ever_lengthens() {
    let q = redis().await;
    let limits = Limits {
        rpm: 0,
        concurrency: 0,
    };
    let a = limiter(&q, limits, Duration::from_secs(60));
    let b = limiter(&q, limits, Duration::from_secs(60));
    let key = format!("{}:rl:tts:pause", q.prefix());
    let left = || {
        let mut conn = q.connection();
        let key = key.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("pttl");
            ms
        }
    };
    a.pause(Provider::Tts, Duration::from_secs(20)).await;
    b.pause(Provider::Tts, Duration::from_secs(1)).await;
    assert!(left().await > 15_000, "a later, shorter pause shortened it");
    b.pause(Provider::Tts, Duration::from_secs(40)).await;
    assert!(left().await > 35_000, "a longer pause lengthens it");
    delete_prefix(q.connection(), q.prefix()).await;
}

#[tokio::test]
async fn breakers_are_shared_and_grant_one_trial() {
    let q = redis().await;
    let config = BreakerConfig {
        failures: 3,
        window: Duration::from_secs(10),
        cooldown: Duration::from_millis(400),
        trial_lease: Duration::from_secs(10),
    };
    let a = Breakers::redis(config, q.connection(), q.prefix());
    let b = Breakers::redis(config, q.connection(), q.prefix());
    a.record(Provider::Llm, false).await;
    b.record(Provider::Llm, false).await;
    assert!(b.allow(Provider::Llm).await.is_ok());
    a.record(Provider::Llm, false).await;
    let open = b
        .allow(Provider::Llm)
        .await
        .expect_err("opened by failures seen in two processes");
    assert!(open.retry_in <= Duration::from_millis(400));
    assert_eq!(a.snapshot().await[&Provider::Llm].state, State::Open);
    assert!(
        a.allow(Provider::Stt).await.is_ok(),
        "one provider's breaker only"
    );

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(a.allow(Provider::Llm).await.is_ok(), "the trial");
    assert!(
        b.allow(Provider::Llm).await.is_err(),
        "no second trial meanwhile"
    );
    assert_eq!(b.snapshot().await[&Provider::Llm].state, State::HalfOpen);
    a.record(Provider::Llm, true).await;
    assert!(b.allow(Provider::Llm).await.is_ok(), "closed again");
    assert_eq!(b.snapshot().await[&Provider::Llm].state, State::Closed);
    delete_prefix(q.connection(), q.prefix()).await;
}
