//! Memories in Qdrant: collection `long_term_memory` (384 dimensions,
//! cosine), payload `user_id` (the owner), `session_id`, `text`,
//! `created_at`, `last_recalled_at` (unix ms) and `source_job`, with keyword
//! indexes on `user_id` and `session_id`. Every search is filtered by owner.
//!
//! [`QdrantMemory::connect`] creates the collection and indexes when missing
//! and refuses a collection whose vectors are not 384-long cosine, so a
//! mismatch stops a worker at start, not mid-job. Processes starting together
//! race to create it: "already exists" is success, and the collection is then
//! read back and its shape checked like any existing one. A Qdrant that does
//! not answer yet is waited for ([`QdrantMemory::connect_patiently`]:
//! backoff from 250 ms doubling to 5 s, within `ROSE_QDRANT_START_TIMEOUT_SECS`,
//! each retry logged).
//!
//! Snapshots for backups go through Qdrant's REST API (gRPC can create, list
//! and delete them but neither download nor upload one):
//! [`QdrantMemory::snapshot_to`] creates one, downloads it into a file and
//! deletes it (and any older one of the collection) from Qdrant, so erased
//! memories survive only in the backup files Rose prunes;
//! [`QdrantMemory::recover_from`] uploads such a file, replacing the collection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, PointId, PointStruct, PointsIdsList,
    QueryPointsBuilder, ScrollPointsBuilder, SetPayloadPointsBuilder, UpsertPointsBuilder,
    VectorParamsBuilder, vectors_config,
};
use qdrant_client::{Payload, Qdrant};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{DIMENSIONS, Listed, MemoryError, MemoryStore, NewMemory, Scored};
use crate::domain::{SessionId, now_ms};

mod snapshots;

/// The collection Rose keeps memories in.
pub const COLLECTION: &str = "long_term_memory";

fn qerr(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::Qdrant(e.to_string())
}

/// Why one connection attempt failed.
enum Attempt {
    /// Qdrant did not answer (not up yet, or unreachable): worth waiting for.
    Unreachable(String),
    /// Qdrant answered, and the answer is wrong (or the setup is).
    Failed(MemoryError),
}

impl From<MemoryError> for Attempt {
    fn from(e: MemoryError) -> Self {
        Self::Failed(e)
    }
}

/// A gRPC failure that means "nobody answered", not "Qdrant said no": a
/// refused connection (`Unavailable`), one dropped mid-handshake
/// (`Cancelled`, as while Qdrant starts), no answer in time, or a transport
/// error tonic cannot classify (`Unknown`). qdrant-client reports a refused
/// TCP connection as `Internal`, "Failed to connect to …".
fn unreachable(e: &qdrant_client::QdrantError) -> bool {
    match e {
        qdrant_client::QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
            ) || (status.code() == tonic::Code::Internal
                && status.message().starts_with("Failed to connect to"))
        }
        _ => false,
    }
}

fn attempt_err(e: qdrant_client::QdrantError) -> Attempt {
    if unreachable(&e) {
        Attempt::Unreachable(e.to_string())
    } else {
        Attempt::Failed(qerr(e))
    }
}

/// Qdrant's answer when a collection of that name exists (Qdrant 1.15:
/// `InvalidArgument`, "Wrong input: Collection `…` already exists!").
fn already_exists(e: &qdrant_client::QdrantError) -> bool {
    match e {
        qdrant_client::QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
            ) && status.message().contains("already exists")
        }
        _ => false,
    }
}

/// A Qdrant-backed [`MemoryStore`].
pub struct QdrantMemory {
    client: Qdrant,
    collection: String,
    /// Qdrant's REST API (snapshot download and upload).
    rest: Option<String>,
    api_key: Option<SecretString>,
    http: reqwest::Client,
}

impl std::fmt::Debug for QdrantMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantMemory")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

/// A ULID as the UUID Qdrant takes for point ids.
fn point_id(ulid: &str) -> String {
    let n = ulid::Ulid::from_string(ulid)
        .map(u128::from)
        .unwrap_or_default();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl QdrantMemory {
    /// Connects, and makes sure the collection exists with the right shape.
    /// One attempt: see [`QdrantMemory::connect_patiently`] to wait for a
    /// Qdrant that is starting.
    ///
    /// # Errors
    /// [`MemoryError::Config`] when the collection's vectors are not
    /// [`DIMENSIONS`]-long cosine; [`MemoryError::Qdrant`] when Qdrant cannot
    /// be reached or refuses.
    pub async fn connect(
        url: &str,
        api_key: Option<&SecretString>,
        collection: &str,
    ) -> Result<Self, MemoryError> {
        match Self::connect_once(url, api_key, collection).await {
            Ok(me) => Ok(me),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Unreachable(e)) => Err(MemoryError::Qdrant(e)),
        }
    }

    /// [`QdrantMemory::connect`], retrying while Qdrant does not answer (it is
    /// starting: compose only waits for its container to start) with backoff
    /// from 250 ms doubling to 5 s, for at most `patience`, each retry logged.
    /// A Qdrant that answers wrongly (a collection of another shape) is not
    /// retried.
    ///
    /// # Errors
    /// As [`QdrantMemory::connect`]; unreachable after `patience`, an error
    /// saying how long it waited.
    pub async fn connect_patiently(
        url: &str,
        api_key: Option<&SecretString>,
        collection: &str,
        patience: Duration,
    ) -> Result<Self, MemoryError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        let mut attempt = 1u32;
        loop {
            match Self::connect_once(url, api_key, collection).await {
                Ok(me) => {
                    if attempt > 1 {
                        tracing::info!(
                            attempt,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "Qdrant answered; vector memory ready"
                        );
                    }
                    return Ok(me);
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Unreachable(e)) => {
                    if started.elapsed() + wait > patience {
                        return Err(MemoryError::Qdrant(format!(
                            "Qdrant at {url} did not answer within {} s ({e}); check QDRANT_URL, \
                             or wait longer with ROSE_QDRANT_START_TIMEOUT_SECS",
                            patience.as_secs()
                        )));
                    }
                    tracing::warn!(
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        patience_s = patience.as_secs(),
                        error = %e,
                        "Qdrant not answering yet; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
    }

    /// Where snapshots are downloaded from and uploaded to (Qdrant's REST
    /// API; see `QDRANT_REST_URL`).
    #[must_use]
    pub fn with_rest(mut self, rest_url: Option<String>) -> Self {
        self.rest = rest_url.map(|u| u.trim_end_matches('/').to_owned());
        self
    }

    async fn connect_once(
        url: &str,
        api_key: Option<&SecretString>,
        collection: &str,
    ) -> Result<Self, Attempt> {
        let mut builder = Qdrant::from_url(url).skip_compatibility_check();
        if let Some(key) = api_key {
            builder = builder.api_key(key.expose_secret().to_owned());
        }
        let client = builder.build().map_err(qerr)?;
        let me = Self {
            client,
            collection: collection.to_owned(),
            rest: None,
            api_key: api_key.cloned(),
            http: reqwest::Client::new(),
        };
        me.ensure_collection().await?;
        Ok(me)
    }

    async fn ensure_collection(&self) -> Result<(), Attempt> {
        let exists = self
            .client
            .collection_exists(&self.collection)
            .await
            .map_err(attempt_err)?;
        if !exists {
            let created = self
                .client
                .create_collection(
                    CreateCollectionBuilder::new(&self.collection).vectors_config(
                        VectorParamsBuilder::new(DIMENSIONS as u64, Distance::Cosine),
                    ),
                )
                .await;
            match created {
                Ok(_) => tracing::info!(collection = %self.collection, "Qdrant collection created"),
                // Another process starting at the same time won the race.
                Err(e) if already_exists(&e) => tracing::info!(
                    collection = %self.collection,
                    "Qdrant collection created by another process meanwhile; checking its shape"
                ),
                Err(e) => return Err(attempt_err(e)),
            }
        }
        self.check_shape().await?;
        for field in ["user_id", "session_id"] {
            // Creating an index that exists is accepted by Qdrant.
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(
                        &self.collection,
                        field,
                        FieldType::Keyword,
                    )
                    .wait(true),
                )
                .await
                .map_err(attempt_err)?;
        }
        Ok(())
    }

    /// Refuses a collection whose vectors are not one unnamed
    /// [`DIMENSIONS`]-long cosine vector.
    async fn check_shape(&self) -> Result<(), Attempt> {
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(attempt_err)?;
        let config = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        let wrong = match config {
            Some(vectors_config::Config::Params(p)) => {
                if p.size != DIMENSIONS as u64 {
                    Some(format!("has vectors of size {}", p.size))
                } else if p.distance != Distance::Cosine as i32 {
                    let distance = Distance::try_from(p.distance)
                        .map_or_else(|_| p.distance.to_string(), |d| format!("{d:?}"));
                    Some(format!("uses {distance} distance"))
                } else {
                    None
                }
            }
            Some(vectors_config::Config::ParamsMap(_)) => Some("has named vectors".to_owned()),
            None => Some("has no vector configuration".to_owned()),
        };
        match wrong {
            None => Ok(()),
            Some(what) => Err(Attempt::Failed(MemoryError::Config(format!(
                "Qdrant collection {} {what}; Rose's embeddings are {DIMENSIONS} long, compared by cosine; \
                 point QDRANT_URL at another instance or drop the collection",
                self.collection
            )))),
        }
    }

    fn owner_filter(owner: &str) -> Filter {
        Filter::must([Condition::matches("user_id", owner.to_owned())])
    }

    /// Every point matching `filter` (or all), as `(id, payload)`, page by page.
    async fn scroll_all(
        &self,
        filter: Option<Filter>,
    ) -> Result<Vec<(PointId, HashMap<String, qdrant_client::qdrant::Value>)>, MemoryError> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.collection)
                .limit(1_000)
                .with_payload(true)
                .with_vectors(false);
            if let Some(f) = &filter {
                request = request.filter(f.clone());
            }
            if let Some(o) = offset.take() {
                request = request.offset(o);
            }
            let page = self.client.scroll(request).await.map_err(qerr)?;
            out.extend(
                page.result
                    .into_iter()
                    .filter_map(|p| Some((p.id?, p.payload))),
            );
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The client, for snapshots.
    #[must_use]
    pub fn client(&self) -> &Qdrant {
        &self.client
    }
}

/// A point's id as Rose shows it: the uuid (or the number).
fn id_string(id: PointId) -> String {
    id.point_id_options
        .map(|o| match o {
            qdrant_client::qdrant::point_id::PointIdOptions::Uuid(u) => u,
            qdrant_client::qdrant::point_id::PointIdOptions::Num(n) => n.to_string(),
        })
        .unwrap_or_default()
}

/// `Some(id)` when `id` is a uuid (8-4-4-4-12 hex digits).
fn uuid_shaped(id: &str) -> Option<&str> {
    let groups: Vec<&str> = id.split('-').collect();
    let shaped = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    shaped.then_some(id)
}

fn listed(id: PointId, payload: &HashMap<String, qdrant_client::qdrant::Value>) -> Listed {
    let source_job = payload_str(payload, "source_job");
    Listed {
        id: id_string(id),
        text: payload_str(payload, "text"),
        created_at: payload_i64(payload, "created_at"),
        source_job: (!source_job.is_empty()).then_some(source_job),
    }
}

fn payload_str(payload: &HashMap<String, qdrant_client::qdrant::Value>, key: &str) -> String {
    payload
        .get(key)
        .and_then(|v| v.as_str().map(ToString::to_string))
        .unwrap_or_default()
}

fn payload_i64(payload: &HashMap<String, qdrant_client::qdrant::Value>, key: &str) -> i64 {
    payload.get(key).and_then(|v| v.as_integer()).unwrap_or(0)
}

#[async_trait]
impl MemoryStore for QdrantMemory {
    fn kind(&self) -> &'static str {
        "qdrant"
    }

    fn as_qdrant(&self) -> Option<&QdrantMemory> {
        Some(self)
    }

    async fn ping(&self) -> Result<(), MemoryError> {
        self.client.health_check().await.map_err(qerr)?;
        Ok(())
    }

    async fn add(&self, m: NewMemory) -> Result<String, MemoryError> {
        let id = point_id(&ulid::Ulid::generate().to_string());
        let now = now_ms();
        let payload: Payload = json!({
            "user_id": m.owner,
            "session_id": m.session_id.to_string(),
            "text": m.text,
            "created_at": now,
            "last_recalled_at": now,
            "source_job": m.source_job,
        })
        .try_into()
        .map_err(qerr)?;
        self.client
            .upsert_points(
                UpsertPointsBuilder::new(
                    &self.collection,
                    vec![PointStruct::new(id.clone(), m.vector, payload)],
                )
                .wait(true),
            )
            .await
            .map_err(qerr)?;
        Ok(id)
    }

    async fn search(
        &self,
        owner: &str,
        vector: &[f32],
        limit: usize,
    ) -> Result<Vec<Scored>, MemoryError> {
        let response = self
            .client
            .query(
                QueryPointsBuilder::new(&self.collection)
                    .query(vector.to_vec())
                    .filter(Self::owner_filter(owner))
                    .limit(limit as u64)
                    .with_payload(true),
            )
            .await
            .map_err(qerr)?;
        Ok(response
            .result
            .into_iter()
            .map(|p| {
                let id = p
                    .id
                    .and_then(|id| id.point_id_options)
                    .map(|o| match o {
                        qdrant_client::qdrant::point_id::PointIdOptions::Uuid(u) => u,
                        qdrant_client::qdrant::point_id::PointIdOptions::Num(n) => n.to_string(),
                    })
                    .unwrap_or_default();
                Scored {
                    id,
                    text: payload_str(&p.payload, "text"),
                    score: p.score,
                    created_at: payload_i64(&p.payload, "created_at"),
                    last_recalled_at: payload_i64(&p.payload, "last_recalled_at"),
                }
            })
            .collect())
    }

    async fn touch(&self, _owner: &str, ids: &[String]) -> Result<(), MemoryError> {
        if ids.is_empty() {
            return Ok(());
        }
        let payload: Payload = json!({"last_recalled_at": now_ms()})
            .try_into()
            .map_err(qerr)?;
        self.client
            .set_payload(
                SetPayloadPointsBuilder::new(&self.collection, payload)
                    .points_selector(PointsIdsList {
                        ids: ids.iter().map(|id| id.clone().into()).collect(),
                    })
                    .wait(true),
            )
            .await
            .map_err(qerr)?;
        Ok(())
    }

    async fn delete_session(&self, session: SessionId) -> Result<u64, MemoryError> {
        let filter = Filter::must([Condition::matches("session_id", session.to_string())]);
        let count = self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(filter.clone())
                    .exact(true),
            )
            .await
            .map_err(qerr)?
            .result
            .map_or(0, |r| r.count);
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(qerr)?;
        Ok(count)
    }

    async fn owners(&self) -> Result<Vec<String>, MemoryError> {
        let mut owners: Vec<String> = self
            .scroll_all(None)
            .await?
            .iter()
            .map(|(_, payload)| payload_str(payload, "user_id"))
            .filter(|o| !o.is_empty())
            .collect();
        owners.sort();
        owners.dedup();
        Ok(owners)
    }

    async fn list(&self, owner: &str) -> Result<Vec<Listed>, MemoryError> {
        let mut listed: Vec<Listed> = self
            .scroll_all(Some(Self::owner_filter(owner)))
            .await?
            .into_iter()
            .map(|(id, payload)| listed(id, &payload))
            .collect();
        listed.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(listed)
    }

    async fn delete_one(&self, owner: &str, id: &str) -> Result<Option<Listed>, MemoryError> {
        // Only a uuid can name a point; anything else is no one's memory.
        if uuid_shaped(id).is_none() {
            return Ok(None);
        }
        let mine = Filter::must([
            Condition::matches("user_id", owner.to_owned()),
            Condition::has_id([PointId::from(id.to_owned())]),
        ]);
        let found = self.scroll_all(Some(mine.clone())).await?;
        let Some((point, payload)) = found.into_iter().next() else {
            return Ok(None);
        };
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(mine)
                    .wait(true),
            )
            .await
            .map_err(qerr)?;
        Ok(Some(listed(point, &payload)))
    }

    async fn delete_owner(&self, owner: &str) -> Result<u64, MemoryError> {
        let count = self.count(owner).await?;
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(Self::owner_filter(owner))
                    .wait(true),
            )
            .await
            .map_err(qerr)?;
        Ok(count)
    }

    async fn cap(&self, owner: &str, keep: usize) -> Result<u64, MemoryError> {
        let mut points = self.scroll_all(Some(Self::owner_filter(owner))).await?;
        if points.len() <= keep {
            return Ok(0);
        }
        points.sort_by_key(|(_, payload)| {
            std::cmp::Reverse(payload_i64(payload, "last_recalled_at"))
        });
        let excess: Vec<PointId> = points.into_iter().skip(keep).map(|(id, _)| id).collect();
        let n = excess.len() as u64;
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(PointsIdsList { ids: excess })
                    .wait(true),
            )
            .await
            .map_err(qerr)?;
        Ok(n)
    }

    async fn count(&self, owner: &str) -> Result<u64, MemoryError> {
        Ok(self
            .client
            .count(
                CountPointsBuilder::new(&self.collection)
                    .filter(Self::owner_filter(owner))
                    .exact(true),
            )
            .await
            .map_err(qerr)?
            .result
            .map_or(0, |r| r.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_uuid_shaped_and_stable() {
        let ulid = "01M8H84BCFRZDMTCZHHFKY77PS";
        let id = point_id(ulid);
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(id, point_id(ulid));
    }
}
