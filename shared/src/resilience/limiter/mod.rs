//! Rate limiting shared by every worker: per provider, a requests-per-minute
//! budget (a sliding window, 60 s unless tuned: no window-long span ever
//! holds more than the budget) and a concurrency cap (leased slots, so a crashed worker's slot
//! frees itself). A provider's own "wait" (429 + `retry-after`) pauses every
//! worker for that long.
//!
//! Callers waiting for a slot stand in one line per provider, ordered by
//! [`Rank`] and then by arrival: a reply's first sentence (rank 0) is spoken
//! before another reply's third (rank 2), so the time to first audio stays
//! low when speech is the bottleneck. Calls that do not care pass rank 0 and
//! are served first come, first served.
//!
//! Redis keys (`P` = `ROSE_REDIS_PREFIX`, `N` = provider):
//!
//! | key | type | lifetime |
//! |---|---|---|
//! | `P:rl:N:window` | sorted set of request tokens by time | entries older than 60 s are dropped on each acquire; the key expires 60 s after the last request |
//! | `P:rl:N:slots` | sorted set of slot tokens by lease expiry | a slot lives until released or its lease (call timeout + 10 s) ends |
//! | `P:rl:N:pause` | string with a TTL | until the provider's requested wait is over |
//! | `P:rl:N:line` | sorted set of waiting tokens by rank (ties by token: ULIDs, so by arrival) | a waiter leaves when served or gone; the key expires a minute after the last waiter |
//! | `P:rl:N:alive` | sorted set of waiting tokens by the time they last asked + 2 s | a waiter that stops asking (its process died) is dropped from the line |
//!
//! Pub/sub channel `P:rl:N:free` announces a released slot (or a waiter
//! leaving) to waiters. A waiter sleeps until its turn (the window's oldest
//! entry ages out, a slot is announced free, or at most 250 ms): it waits,
//! never fails, never spins. On the embedded deployment the same rules run
//! in-process.

mod remote;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::remote::RedisLimiter;
use super::Provider;

/// Budget for one provider; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: u32,
    pub concurrency: u32,
}

/// A caller's place in the line for a concurrency slot: lower goes first,
/// equal ranks in arrival order.
pub type Rank = u32;

/// The highest rank kept apart; later sentences all share it.
pub const MAX_RANK: Rank = 100;

/// Longest a waiter sleeps before asking again.
const MAX_NAP: Duration = Duration::from_millis(250);

/// The limiter, in Redis (scaled) or in-process (embedded).
#[derive(Clone)]
pub struct Limiter {
    limits: Arc<HashMap<Provider, Limits>>,
    lease: Duration,
    /// The span a requests-per-minute budget applies to (a minute, unless tuned).
    window: Duration,
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local(Arc<Local>),
    Redis(Arc<RedisLimiter>),
}

#[derive(Default)]
struct Local {
    state: Mutex<HashMap<Provider, LocalState>>,
    freed: Notify,
}

#[derive(Default)]
struct LocalState {
    window: VecDeque<Instant>,
    in_use: u32,
    paused_until: Option<Instant>,
    /// Callers waiting for a slot: (rank, arrival).
    line: BTreeSet<(Rank, u64)>,
    arrivals: u64,
}

/// A held concurrency slot; dropping it releases the slot.
pub struct Permit {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// One caller's place in the line while it waits; dropping it (the caller
/// gave up, or its job was cancelled) leaves the line.
struct Ticket {
    provider: Provider,
    rank: Rank,
    /// The Redis line's member: a ULID, so equal ranks sort by arrival.
    token: String,
    /// The local line's arrival number, once in line.
    arrival: Option<u64>,
    /// In the Redis line (it may hold the token).
    queued: bool,
    inner: Inner,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Local(local) => {
                if let Some(arrival) = self.arrival.take() {
                    if let Ok(mut all) = local.state.lock()
                        && let Some(s) = all.get_mut(&self.provider)
                    {
                        s.line.remove(&(self.rank, arrival));
                    }
                    local.freed.notify_waiters();
                }
            }
            Inner::Redis(redis) => {
                if self.queued {
                    let (redis, provider, token) = (
                        redis.clone(),
                        self.provider,
                        std::mem::take(&mut self.token),
                    );
                    if let Ok(handle) = tokio::runtime::Handle::try_current() {
                        handle.spawn(async move { redis.leave_line(provider, &token).await });
                    }
                }
            }
        }
    }
}

impl Limiter {
    /// An in-process limiter.
    #[must_use]
    pub fn local(limits: HashMap<Provider, Limits>, lease: Duration, window: Duration) -> Self {
        Self {
            limits: Arc::new(limits),
            lease,
            window,
            inner: Inner::Local(Arc::default()),
        }
    }

    /// A limiter shared through Redis.
    #[must_use]
    pub fn redis(
        limits: HashMap<Provider, Limits>,
        lease: Duration,
        window: Duration,
        client: redis::Client,
        conn: ConnectionManager,
        prefix: &str,
    ) -> Self {
        Self {
            limits: Arc::new(limits),
            lease,
            window,
            inner: Inner::Redis(Arc::new(RedisLimiter::new(client, conn, prefix))),
        }
    }

    /// The budget of `provider`.
    #[must_use]
    pub fn limits(&self, provider: Provider) -> Limits {
        self.limits.get(&provider).copied().unwrap_or_default()
    }

    /// Waits for budget and a slot for one call to `provider`, first come,
    /// first served.
    pub async fn acquire(&self, provider: Provider) -> Permit {
        self.acquire_ranked(provider, 0).await
    }

    /// Waits for budget and a slot for one call to `provider`, ahead of
    /// every waiter of a higher `rank` (capped at [`MAX_RANK`]).
    pub async fn acquire_ranked(&self, provider: Provider, rank: Rank) -> Permit {
        let limits = self.limits(provider);
        let started = Instant::now();
        let mut logged = false;
        let mut ticket = Ticket {
            provider,
            rank: rank.min(MAX_RANK),
            token: ulid::Ulid::generate().to_string(),
            arrival: None,
            queued: false,
            inner: self.inner.clone(),
        };
        loop {
            let freed = match &self.inner {
                Inner::Local(local) => &local.freed,
                Inner::Redis(redis) => {
                    redis.listen();
                    &redis.freed
                }
            };
            // Armed before asking, so a slot freed meanwhile is not missed.
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = match self.try_acquire(limits, &mut ticket).await {
                Ok(permit) => {
                    if logged {
                        crate::metrics::rate_limit_wait(provider.as_str(), started.elapsed());
                        tracing::info!(
                            event = "rate_limited",
                            provider = provider.as_str(),
                            wait_ms = started.elapsed().as_millis() as u64,
                            "rate_limited"
                        );
                    }
                    return permit;
                }
                Err(wait) => wait,
            };
            logged = true;
            let nap = wait.unwrap_or(MAX_NAP).min(MAX_NAP);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// One attempt: a permit, or how long to wait (`None`: until a slot frees).
    async fn try_acquire(
        &self,
        limits: Limits,
        ticket: &mut Ticket,
    ) -> Result<Permit, Option<Duration>> {
        match &self.inner {
            Inner::Local(local) => self.try_local(local, limits, ticket),
            Inner::Redis(redis) => {
                redis
                    .try_acquire(limits, self.lease, self.window, ticket)
                    .await
            }
        }
    }

    fn try_local(
        &self,
        local: &Arc<Local>,
        limits: Limits,
        ticket: &mut Ticket,
    ) -> Result<Permit, Option<Duration>> {
        let provider = ticket.provider;
        let now = Instant::now();
        let mut all = local.state.lock().map_err(|_| Some(MAX_NAP))?;
        let s = all.entry(provider).or_default();
        if let Some(until) = s.paused_until
            && until > now
        {
            return Err(Some(until - now));
        }
        if limits.concurrency > 0 {
            let place = match ticket.arrival {
                Some(arrival) => (ticket.rank, arrival),
                None => {
                    let arrival = s.arrivals;
                    s.arrivals += 1;
                    s.line.insert((ticket.rank, arrival));
                    ticket.arrival = Some(arrival);
                    (ticket.rank, arrival)
                }
            };
            let free = limits.concurrency.saturating_sub(s.in_use) as usize;
            if free == 0 || s.line.range(..place).count() >= free {
                return Err(None);
            }
        }
        if limits.rpm > 0 {
            while s
                .window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                s.window.pop_front();
            }
            if s.window.len() >= limits.rpm as usize {
                let oldest = s.window.front().copied().unwrap_or(now);
                return Err(Some((oldest + self.window).saturating_duration_since(now)));
            }
            s.window.push_back(now);
        }
        if limits.concurrency == 0 {
            return Ok(Permit { release: None });
        }
        if let Some(arrival) = ticket.arrival.take() {
            s.line.remove(&(ticket.rank, arrival));
        }
        s.in_use += 1;
        let local = local.clone();
        Ok(Permit {
            release: Some(Box::new(move || {
                if let Ok(mut all) = local.state.lock()
                    && let Some(s) = all.get_mut(&provider)
                {
                    s.in_use = s.in_use.saturating_sub(1);
                }
                local.freed.notify_waiters();
            })),
        })
    }

    /// Makes every worker wait `wait` before calling `provider` again (the
    /// provider said so).
    pub async fn pause(&self, provider: Provider, wait: Duration) {
        let wait = wait.min(Duration::from_secs(300));
        if wait.is_zero() {
            return;
        }
        match &self.inner {
            Inner::Local(local) => {
                if let Ok(mut all) = local.state.lock() {
                    let s = all.entry(provider).or_default();
                    let until = Instant::now() + wait;
                    s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
                }
            }
            Inner::Redis(redis) => redis.pause(provider, wait).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rpm: u32, concurrency: u32) -> Limiter {
        Limiter::local(
            HashMap::from([(Provider::Llm, Limits { rpm, concurrency })]),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_holds_no_more_than_the_budget() {
        let l = limiter(3, 0);
        let started = Instant::now();
        for _ in 0..3 {
            let _ = l.acquire(Provider::Llm).await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "within budget: no wait");
        let _ = l.acquire(Provider::Llm).await;
        assert!(
            started.elapsed() >= Duration::from_secs(60),
            "the fourth waits for the window"
        );
        // Other providers are not limited.
        let before = Instant::now();
        let _ = l.acquire(Provider::Stt).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_capped_and_freed_on_drop() {
        let l = limiter(0, 2);
        let a = l.acquire(Provider::Llm).await;
        let _b = l.acquire(Provider::Llm).await;
        let waiter = tokio::spawn({
            let l = l.clone();
            async move {
                let _c = l.acquire(Provider::Llm).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "a third caller waits for a slot");
        let freed_at = Instant::now();
        drop(a);
        let got = waiter.await.expect("join");
        assert!(got >= freed_at);
    }

    /// Waiters of ranks 2, 1, 0 (arriving in that order) behind one held
    /// slot are served 0, 1, 2; equal ranks keep their arrival order.
    #[tokio::test(start_paused = true)]
    async fn lower_ranks_are_served_first_and_ties_in_arrival_order() {
        let l = limiter(0, 1);
        let held = l.acquire(Provider::Llm).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, rank) in [("c", 2), ("b1", 1), ("a", 0), ("b2", 1)] {
            let (l, order) = (l.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = l.acquire_ranked(Provider::Llm, rank).await;
                order.lock().expect("order").push(name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
            }));
            // Each is in line before the next arrives.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.expect("join");
        }
        assert_eq!(*order.lock().expect("order"), vec!["a", "b1", "b2", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_leaves_the_line() {
        let l = limiter(0, 1);
        let held = l.acquire(Provider::Llm).await;
        let first = tokio::spawn({
            let l = l.clone();
            async move { l.acquire_ranked(Provider::Llm, 0).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = tokio::spawn({
            let l = l.clone();
            async move {
                let _p = l.acquire_ranked(Provider::Llm, 1).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        let _ = first.await;
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("served once the one ahead left")
            .expect("join");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller() {
        let l = limiter(0, 0);
        l.pause(Provider::Llm, Duration::from_secs(7)).await;
        let started = Instant::now();
        let _ = l.acquire(Provider::Llm).await;
        assert!(started.elapsed() >= Duration::from_secs(7));
    }
}
