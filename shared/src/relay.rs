//! Speech relayed while it is synthesised: a worker writes a sentence's
//! audio as it arrives from the speech provider, and `GET /api/audio/{id}`
//! streams it to a listener before the sentence is stored, so the first
//! sound can be heard at the provider's first byte rather than when the
//! whole sentence is ready. Once stored, the audio is served from the
//! database; the relay is kept half a minute after its end
//! ([`KEEP_AFTER_END`]) so a listener between the two always gets it whole.
//!
//! Scaled deployment: one Redis stream per audio id, `P:relay:{id}` (`P` =
//! `ROSE_REDIS_PREFIX`): a first entry `mime`, then `b` entries (the bytes in
//! order), then `end` (`ok` or `failed`); it expires [`KEEP_AFTER_END`]
//! after its last write. A reader blocks on `XREAD` on a connection of its
//! own. Embedded deployment: the same in process.
//!
//! Best effort: a relay that cannot be written only costs listeners the
//! early start (they fetch the stored audio); a reader that hears nothing
//! for [`STALL`] ends its body (the writer died; the sentence is spoken
//! again by the job's next delivery, and stored).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::domain::AudioId;

/// How long a relay outlives its end (and its last write).
pub const KEEP_AFTER_END: Duration = Duration::from_secs(30);
/// A reader that hears nothing this long ends.
pub const STALL: Duration = Duration::from_secs(30);

/// A relayed sentence's bytes as they come: an error ends them early.
pub type RelayBody = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A relayed sentence for a listener.
pub struct RelayRead {
    pub mime: String,
    pub body: RelayBody,
}

/// The relay, in Redis (scaled) or in-process (embedded).
#[derive(Clone)]
pub struct Relay {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Local(Arc<Mutex<HashMap<AudioId, Arc<LocalRelay>>>>),
    Redis {
        client: redis::Client,
        conn: ConnectionManager,
        prefix: String,
    },
}

#[derive(Default)]
struct LocalRelay {
    mime: String,
    state: Mutex<LocalState>,
    changed: Notify,
}

#[derive(Default)]
struct LocalState {
    parts: Vec<Bytes>,
    /// `Some(ok)` once ended, and when.
    ended: Option<(bool, Instant)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Local(_) => "Relay(local)",
            Inner::Redis { .. } => "Relay(redis)",
        })
    }
}

/// Writes one sentence's audio to the relay.
pub struct RelayWriter {
    id: AudioId,
    /// `None` once finished.
    target: Option<Target>,
}

enum Target {
    Local(Arc<LocalRelay>),
    Redis {
        conn: ConnectionManager,
        key: String,
        /// A write failed: the rest is not relayed.
        broken: bool,
    },
}

impl Relay {
    /// An in-process relay.
    #[must_use]
    pub fn local() -> Self {
        Self {
            inner: Inner::Local(Arc::default()),
        }
    }

    /// A relay shared through Redis.
    #[must_use]
    pub fn redis(client: redis::Client, conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            inner: Inner::Redis {
                client,
                conn,
                prefix: prefix.to_owned(),
            },
        }
    }

    /// Starts relaying audio `id` of type `mime` (a relay of the same id
    /// left by an earlier attempt is replaced).
    pub async fn open(&self, id: AudioId, mime: &str) -> RelayWriter {
        match &self.inner {
            Inner::Local(relays) => {
                let relay = Arc::new(LocalRelay {
                    mime: mime.to_owned(),
                    ..LocalRelay::default()
                });
                if let Ok(mut all) = relays.lock() {
                    // Sweep relays ended long ago.
                    all.retain(|_, r| {
                        r.state
                            .lock()
                            .ok()
                            .and_then(|s| s.ended)
                            .is_none_or(|(_, at)| at.elapsed() < KEEP_AFTER_END)
                    });
                    all.insert(id, relay.clone());
                }
                RelayWriter {
                    id,
                    target: Some(Target::Local(relay)),
                }
            }
            Inner::Redis { conn, prefix, .. } => {
                let key = relay_key(prefix, id);
                let mut conn = conn.clone();
                let opened: Result<((), String, ()), _> = redis::pipe()
                    .del(&key)
                    .xadd(&key, "*", &[("mime", mime)])
                    .pexpire(&key, KEEP_AFTER_END.as_millis() as i64)
                    .query_async(&mut conn)
                    .await;
                let broken = match opened {
                    Ok(_) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "speech relay unavailable; listeners wait for the stored audio");
                        true
                    }
                };
                RelayWriter {
                    id,
                    target: Some(Target::Redis { conn, key, broken }),
                }
            }
        }
    }

    /// The relay of audio `id`, if there is one.
    pub async fn read(&self, id: AudioId) -> Option<RelayRead> {
        match &self.inner {
            Inner::Local(relays) => {
                let relay = relays.lock().ok()?.get(&id)?.clone();
                let failed = relay
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.ended)
                    .is_some_and(|(ok, _)| !ok);
                if failed {
                    return None;
                }
                Some(RelayRead {
                    mime: relay.mime.clone(),
                    body: local_body(relay),
                })
            }
            Inner::Redis { client, prefix, .. } => {
                let key = relay_key(prefix, id);
                // A connection of its own: XREAD BLOCK would hold up a shared one.
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                let first: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async::<Vec<(String, HashMap<String, redis::Value>)>>(&mut conn)
                    .await
                    .ok()?;
                let (first_id, fields) = first.into_iter().next()?;
                // A sentence whose speech broke has no audio to give.
                let last: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let failed = last
                    .first()
                    .and_then(|(_, f)| f.get("end"))
                    .is_some_and(|v| {
                        redis::from_redis_value::<String>(v.clone()).is_ok_and(|v| v != "ok")
                    });
                if failed {
                    return None;
                }
                let mime = match fields.get("mime") {
                    Some(value) => redis::from_redis_value::<String>(value.clone()).ok()?,
                    None => return None,
                };
                Some(RelayRead {
                    mime,
                    body: redis_body(conn, key, first_id),
                })
            }
        }
    }
}

fn relay_key(prefix: &str, id: AudioId) -> String {
    format!("{prefix}:relay:{id}")
}

fn local_body(relay: Arc<LocalRelay>) -> RelayBody {
    let stream = futures::stream::unfold((relay, 0usize), |(relay, next)| async move {
        loop {
            if next == usize::MAX {
                return None;
            }
            let watched = relay.clone();
            let changed = watched.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (part, ended) = match relay.state.lock() {
                Ok(state) => (state.parts.get(next).cloned(), state.ended),
                Err(_) => return None,
            };
            if let Some(part) = part {
                return Some((Ok(part), (relay, next + 1)));
            }
            match ended {
                Some((true, _)) => return None,
                // Speech that broke ends the body where it broke (the
                // chunk loses its audio in the job).
                Some((false, _)) => return None,
                None => {}
            }
            if tokio::time::timeout(STALL, changed).await.is_err() {
                return None;
            }
        }
    });
    Box::pin(stream)
}

fn redis_body(conn: redis::aio::MultiplexedConnection, key: String, after: String) -> RelayBody {
    let state = (conn, key, after, Vec::<Bytes>::new(), false);
    let stream = futures::stream::unfold(
        state,
        |(mut conn, key, mut after, mut ready, done)| async move {
            loop {
                if let Some(part) = (!ready.is_empty()).then(|| ready.remove(0)) {
                    return Some((Ok(part), (conn, key, after, ready, done)));
                }
                if done {
                    return None;
                }
                let options = StreamReadOptions::default()
                    .block(STALL.as_millis() as usize)
                    .count(64);
                let reply: StreamReadReply =
                    match conn.xread_options(&[&key], &[&after], &options).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            let e = std::io::Error::other(e.to_string());
                            return Some((Err(e), (conn, key, after, ready, true)));
                        }
                    };
                let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
                if entries.is_empty() {
                    // Nothing for STALL: the writer is gone.
                    return None;
                }
                let mut ended = None;
                for entry in entries {
                    after.clone_from(&entry.id);
                    if let Some(value) = entry.map.get("b")
                        && let Ok(bytes) = redis::from_redis_value::<Vec<u8>>(value.clone())
                    {
                        ready.push(Bytes::from(bytes));
                    }
                    if let Some(value) = entry.map.get("end") {
                        let ok = redis::from_redis_value::<String>(value.clone())
                            .is_ok_and(|v| v == "ok");
                        ended = Some(ok);
                    }
                }
                match ended {
                    Some(true) => {
                        if ready.is_empty() {
                            return None;
                        }
                        return Some((Ok(ready.remove(0)), (conn, key, after, ready, true)));
                    }
                    // Speech that broke ends the body where it broke.
                    Some(false) => {
                        if ready.is_empty() {
                            return None;
                        }
                        return Some((Ok(ready.remove(0)), (conn, key, after, ready, true)));
                    }
                    None => {}
                }
            }
        },
    );
    Box::pin(stream)
}

use redis::AsyncCommands as _;

impl RelayWriter {
    /// The audio id relayed.
    #[must_use]
    pub fn id(&self) -> AudioId {
        self.id
    }

    /// Relays the next bytes.
    pub async fn push(&mut self, bytes: &Bytes) {
        match &mut self.target {
            None => {}
            Some(Target::Local(relay)) => {
                if let Ok(mut state) = relay.state.lock() {
                    state.parts.push(bytes.clone());
                }
                relay.changed.notify_waiters();
            }
            Some(Target::Redis { conn, key, broken }) => {
                if *broken {
                    return;
                }
                let written: Result<(String, ()), _> = redis::pipe()
                    .xadd(&*key, "*", &[("b", bytes.as_ref())])
                    .pexpire(&*key, KEEP_AFTER_END.as_millis() as i64)
                    .query_async(conn)
                    .await;
                if let Err(e) = written {
                    tracing::warn!(error = %e, "speech relay write failed; the rest waits for the stored audio");
                    *broken = true;
                }
            }
        }
    }

    /// Ends the relay: `ok` when the sentence's audio is whole. A writer
    /// dropped unfinished (its job was cancelled) ends it as failed.
    pub async fn finish(mut self, ok: bool) {
        let Some(target) = self.target.take() else {
            return;
        };
        end(target, ok).await;
    }
}

impl Drop for RelayWriter {
    fn drop(&mut self) {
        if let Some(target) = self.target.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(end(target, false));
        }
    }
}

async fn end(target: Target, ok: bool) {
    {
        match target {
            Target::Local(relay) => {
                if let Ok(mut state) = relay.state.lock() {
                    state.ended = Some((ok, Instant::now()));
                }
                relay.changed.notify_waiters();
            }
            Target::Redis {
                mut conn,
                key,
                broken,
            } => {
                if broken {
                    return;
                }
                let end = if ok { "ok" } else { "failed" };
                let written: Result<(String, ()), _> = redis::pipe()
                    .xadd(&key, "*", &[("end", end)])
                    .pexpire(&key, KEEP_AFTER_END.as_millis() as i64)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = written {
                    tracing::debug!(error = %e, "speech relay end not written");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_listener_hears_what_was_written_and_what_comes_after() {
        let relay = Relay::local();
        let id = AudioId::new();
        assert!(relay.read(id).await.is_none(), "no relay yet");
        let mut writer = relay.open(id, "audio/mpeg").await;
        writer.push(&Bytes::from_static(b"ab")).await;
        let mut read = relay.read(id).await.expect("a relay");
        assert_eq!(read.mime, "audio/mpeg");
        let first = read.body.next().await.expect("a part").expect("ok");
        assert_eq!(first.as_ref(), b"ab");
        let later = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Some(part) = read.body.next().await {
                rest.extend_from_slice(&part.expect("ok"));
            }
            rest
        });
        writer.push(&Bytes::from_static(b"cd")).await;
        writer.finish(true).await;
        assert_eq!(later.await.expect("join"), b"cd");
        // A late listener gets it whole.
        let mut late = relay.read(id).await.expect("kept after its end");
        let mut all = Vec::new();
        while let Some(part) = late.body.next().await {
            all.extend_from_slice(&part.expect("ok"));
        }
        assert_eq!(all, b"abcd");
    }

    #[tokio::test]
    async fn speech_that_broke_ends_its_listeners_and_is_not_served_after() {
        let relay = Relay::local();
        let id = AudioId::new();
        let mut writer = relay.open(id, "audio/mpeg").await;
        writer.push(&Bytes::from_static(b"ab")).await;
        let mut read = relay.read(id).await.expect("a relay");
        writer.finish(false).await;
        assert!(read.body.next().await.expect("a part").is_ok());
        assert!(read.body.next().await.is_none(), "ends where it broke");
        assert!(relay.read(id).await.is_none(), "no audio to give");
    }
}
