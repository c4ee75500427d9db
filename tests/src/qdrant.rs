//! A Qdrant stand-in for tests, over real gRPC and HTTP on loopback.
//!
//! No Qdrant server can be installed on the machines the tests run on (none
//! is packaged for the registries they reach), so the tests that exercise
//! Rose's side of Qdrant — the collection-creation race between processes
//! starting together, waiting for a Qdrant that is not up yet, snapshot
//! retention and restore — run against this stand-in. It is **not** Qdrant:
//! it serves qdrant-client's own generated tonic services (`Collections`,
//! `Points`, `Snapshots`, `Qdrant`) and answers the calls Rose makes the way
//! Qdrant 1.15 does, with its status codes and messages:
//!
//! - creating a collection that exists: `InvalidArgument`, "Wrong input:
//!   Collection `NAME` already exists!";
//! - a missing collection: `NotFound`, "Not found: Collection `NAME`
//!   doesn't exist!";
//! - creating a payload index that exists: accepted (idempotent);
//! - snapshots: named `NAME-<n>-<time>.snapshot`, a tar archive with a
//!   SHA-256 checksum; downloaded with `GET /collections/NAME/snapshots/SNAP`
//!   and recovered with `POST /collections/NAME/snapshots/upload` (multipart
//!   field `snapshot`) on the REST port, replacing the collection.
//!
//! Points keep their payloads only (no vectors, no search): enough to count
//! per owner, delete by filter, and see what a restore brought back. Every
//! other call answers `Unimplemented`. Tests that want to force the creation
//! race make `collection_exists` answer only once N callers are waiting
//! ([`StandIn::hold_exists_until`]), so every starter sees "missing".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, Path as UrlPath, State};
use qdrant_client::qdrant::{
    self as q, collections_server, points_server, qdrant_server, snapshots_server,
};
use serde_json::{Value as Json, json};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// One collection: its vector shape, payload indexes and points' payloads.
#[derive(Debug, Clone, Default)]
pub struct Collection {
    pub size: u64,
    pub distance: i32,
    pub indexes: BTreeSet<String>,
    /// Point id → payload (JSON).
    pub points: BTreeMap<String, serde_json::Map<String, Json>>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    name: String,
    bytes: Vec<u8>,
    checksum: String,
}

#[derive(Debug, Default)]
struct Inner {
    collections: HashMap<String, Collection>,
    snapshots: HashMap<String, Vec<Snapshot>>,
    /// `collection_exists` answers only once this many callers wait.
    exists_barrier: Option<Arc<tokio::sync::Barrier>>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    counter: AtomicU64,
    /// Calls answered, by method.
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl Shared {
    fn count(&self, call: &'static str) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(call).or_default() += 1;
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut inner)
    }
}

/// A running stand-in: gRPC at [`StandIn::grpc_url`], REST at
/// [`StandIn::rest_url`]. Stops when dropped.
pub struct StandIn {
    pub grpc_url: String,
    pub rest_url: String,
    shared: Arc<Shared>,
    token: CancellationToken,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("Not found: Collection `{name}` doesn't exist!"))
}

fn done() -> Option<q::UpdateResult> {
    Some(q::UpdateResult {
        operation_id: Some(0),
        status: q::UpdateStatus::Completed as i32,
    })
}

impl StandIn {
    /// Starts one on two fresh loopback ports.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        Self::start_on(grpc).await
    }

    /// Starts one whose gRPC side listens on `grpc` (a port chosen earlier).
    ///
    /// # Panics
    /// When the REST port cannot be bound.
    pub async fn start_on(grpc: TcpListener) -> Self {
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind REST");
        let grpc_addr: SocketAddr = grpc.local_addr().expect("addr");
        let rest_addr: SocketAddr = rest.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let token = CancellationToken::new();
        let svc = Service(shared.clone());
        let stop = token.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(collections_server::CollectionsServer::new(svc.clone()))
                .add_service(points_server::PointsServer::new(svc.clone()))
                .add_service(snapshots_server::SnapshotsServer::new(svc.clone()))
                .add_service(qdrant_server::QdrantServer::new(svc))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc),
                    stop.cancelled_owned(),
                )
                .await;
        });
        let app = axum::Router::new()
            .route(
                "/collections/{name}/snapshots/{snapshot}",
                axum::routing::get(download),
            )
            .route(
                "/collections/{name}/snapshots/upload",
                axum::routing::post(upload),
            )
            .with_state(shared.clone());
        let stop = token.clone();
        tokio::spawn(async move {
            let _ = axum::serve(rest, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Self {
            grpc_url: format!("http://{grpc_addr}"),
            rest_url: format!("http://{rest_addr}"),
            shared,
            token,
        }
    }

    /// From now on, `collection_exists` answers only when `n` callers wait.
    pub fn hold_exists_until(&self, n: usize) {
        self.shared
            .with(|i| i.exists_barrier = Some(Arc::new(tokio::sync::Barrier::new(n))));
    }

    /// A copy of collection `name`, if it exists.
    #[must_use]
    pub fn collection(&self, name: &str) -> Option<Collection> {
        self.shared.with(|i| i.collections.get(name).cloned())
    }

    /// Makes collection `name` with vectors of `size` and `distance`.
    pub fn put_collection(&self, name: &str, size: u64, distance: q::Distance) {
        self.shared.with(|i| {
            i.collections.insert(
                name.to_owned(),
                Collection {
                    size,
                    distance: distance as i32,
                    ..Collection::default()
                },
            )
        });
    }

    /// Names of the snapshots kept for collection `name`.
    #[must_use]
    pub fn snapshot_names(&self, name: &str) -> Vec<String> {
        self.shared.with(|i| {
            i.snapshots
                .get(name)
                .map(|s| s.iter().map(|s| s.name.clone()).collect())
                .unwrap_or_default()
        })
    }

    /// How many times `call` was answered (e.g. `"create_collection"`).
    #[must_use]
    pub fn calls(&self, call: &str) -> u64 {
        self.shared
            .calls
            .lock()
            .map_or(0, |c| c.get(call).copied().unwrap_or(0))
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>);

/// Implements a generated service trait: the calls written out, and every
/// other one answering `Unimplemented`.
macro_rules! service {
    ($trait:path { $($body:tt)* } unimplemented { $($name:ident: $req:ident => $resp:ident),* $(,)? }) => {
        #[tonic::async_trait]
        impl $trait for Service {
            $($body)*
            $(
                async fn $name(&self, _: Request<q::$req>) -> Result<Response<q::$resp>, Status> {
                    Err(Status::unimplemented(concat!(
                        "the Qdrant stand-in does not answer ",
                        stringify!($name)
                    )))
                }
            )*
        }
    };
}

fn point_key(id: &q::PointId) -> String {
    match &id.point_id_options {
        Some(q::point_id::PointIdOptions::Uuid(u)) => u.clone(),
        Some(q::point_id::PointIdOptions::Num(n)) => n.to_string(),
        None => String::new(),
    }
}

/// Whether `payload` passes `filter` (only `must` keyword matches, all Rose uses).
fn passes(
    filter: Option<&q::Filter>,
    payload: &serde_json::Map<String, Json>,
) -> Result<bool, Status> {
    let Some(filter) = filter else {
        return Ok(true);
    };
    if !filter.should.is_empty() || !filter.must_not.is_empty() {
        return Err(Status::unimplemented(
            "the Qdrant stand-in only filters with must",
        ));
    }
    for condition in &filter.must {
        let Some(q::condition::ConditionOneOf::Field(field)) = &condition.condition_one_of else {
            return Err(Status::unimplemented(
                "the Qdrant stand-in only filters on fields",
            ));
        };
        let Some(q::r#match::MatchValue::Keyword(want)) =
            field.r#match.as_ref().and_then(|m| m.match_value.as_ref())
        else {
            return Err(Status::unimplemented(
                "the Qdrant stand-in only matches keywords",
            ));
        };
        if payload.get(&field.key).and_then(Json::as_str) != Some(want.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

service!(collections_server::Collections {
    async fn get(&self, request: Request<q::GetCollectionInfoRequest>) -> Result<Response<q::GetCollectionInfoResponse>, Status> {
        self.0.count("get_collection");
        let name = request.into_inner().collection_name;
        let found = self.0.with(|i| i.collections.get(&name).cloned()).ok_or_else(|| not_found(&name))?;
        let params = q::VectorParams { size: found.size, distance: found.distance, ..Default::default() };
        Ok(Response::new(q::GetCollectionInfoResponse {
            result: Some(q::CollectionInfo {
                status: q::CollectionStatus::Green as i32,
                points_count: Some(found.points.len() as u64),
                config: Some(q::CollectionConfig {
                    params: Some(q::CollectionParams {
                        vectors_config: Some(q::VectorsConfig {
                            config: Some(q::vectors_config::Config::Params(params)),
                        }),
                        shard_number: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            time: 0.0,
        }))
    }
    async fn list(&self, _: Request<q::ListCollectionsRequest>) -> Result<Response<q::ListCollectionsResponse>, Status> {
        self.0.count("list_collections");
        let names: Vec<String> = self.0.with(|i| i.collections.keys().cloned().collect());
        Ok(Response::new(q::ListCollectionsResponse {
            collections: names.into_iter().map(|name| q::CollectionDescription { name }).collect(),
            time: 0.0,
        }))
    }
    async fn create(&self, request: Request<q::CreateCollection>) -> Result<Response<q::CollectionOperationResponse>, Status> {
        self.0.count("create_collection");
        let create = request.into_inner();
        let Some(q::vectors_config::Config::Params(params)) =
            create.vectors_config.and_then(|v| v.config)
        else {
            return Err(Status::unimplemented("the Qdrant stand-in only makes unnamed vectors"));
        };
        self.0.with(|i| {
            if i.collections.contains_key(&create.collection_name) {
                return Err(Status::invalid_argument(format!(
                    "Wrong input: Collection `{}` already exists!",
                    create.collection_name
                )));
            }
            i.collections.insert(
                create.collection_name.clone(),
                Collection { size: params.size, distance: params.distance, ..Collection::default() },
            );
            Ok(())
        })?;
        Ok(Response::new(q::CollectionOperationResponse { result: true, time: 0.0 }))
    }
    async fn delete(&self, request: Request<q::DeleteCollection>) -> Result<Response<q::CollectionOperationResponse>, Status> {
        self.0.count("delete_collection");
        let name = request.into_inner().collection_name;
        let existed = self.0.with(|i| i.collections.remove(&name).is_some());
        Ok(Response::new(q::CollectionOperationResponse { result: existed, time: 0.0 }))
    }
    async fn collection_exists(&self, request: Request<q::CollectionExistsRequest>) -> Result<Response<q::CollectionExistsResponse>, Status> {
        self.0.count("collection_exists");
        let name = request.into_inner().collection_name;
        let barrier = self.0.with(|i| i.exists_barrier.clone());
        let exists = self.0.with(|i| i.collections.contains_key(&name));
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
        Ok(Response::new(q::CollectionExistsResponse {
            result: Some(q::CollectionExists { exists }),
            time: 0.0,
        }))
    }
} unimplemented {
        update: UpdateCollection => CollectionOperationResponse,
        update_aliases: ChangeAliases => CollectionOperationResponse,
        list_collection_aliases: ListCollectionAliasesRequest => ListAliasesResponse,
        list_aliases: ListAliasesRequest => ListAliasesResponse,
        collection_cluster_info: CollectionClusterInfoRequest => CollectionClusterInfoResponse,
        update_collection_cluster_setup: UpdateCollectionClusterSetupRequest => UpdateCollectionClusterSetupResponse,
        create_shard_key: CreateShardKeyRequest => CreateShardKeyResponse,
        delete_shard_key: DeleteShardKeyRequest => DeleteShardKeyResponse,
        list_shard_keys: ListShardKeysRequest => ListShardKeysResponse
});

service!(points_server::Points {
    async fn upsert(&self, request: Request<q::UpsertPoints>) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.0.count("upsert");
        let upsert = request.into_inner();
        self.0.with(|i| {
            let c = i.collections.get_mut(&upsert.collection_name).ok_or_else(|| not_found(&upsert.collection_name))?;
            for point in upsert.points {
                let payload = point.payload.into_iter().map(|(k, v)| (k, Json::from(v))).collect();
                c.points.insert(point.id.as_ref().map(point_key).unwrap_or_default(), payload);
            }
            Ok::<_, Status>(())
        })?;
        Ok(Response::new(q::PointsOperationResponse { result: done(), time: 0.0, usage: None }))
    }
    async fn delete(&self, request: Request<q::DeletePoints>) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.0.count("delete_points");
        let delete = request.into_inner();
        self.0.with(|i| {
            let c = i.collections.get_mut(&delete.collection_name).ok_or_else(|| not_found(&delete.collection_name))?;
            match delete.points.and_then(|p| p.points_selector_one_of) {
                Some(q::points_selector::PointsSelectorOneOf::Points(list)) => {
                    for id in &list.ids {
                        c.points.remove(&point_key(id));
                    }
                }
                Some(q::points_selector::PointsSelectorOneOf::Filter(filter)) => {
                    let mut keep = BTreeMap::new();
                    for (id, payload) in std::mem::take(&mut c.points) {
                        if !passes(Some(&filter), &payload)? {
                            keep.insert(id, payload);
                        }
                    }
                    c.points = keep;
                }
                None => return Err(Status::invalid_argument("no points selected")),
            }
            Ok(())
        })?;
        Ok(Response::new(q::PointsOperationResponse { result: done(), time: 0.0, usage: None }))
    }
    async fn count(&self, request: Request<q::CountPoints>) -> Result<Response<q::CountResponse>, Status> {
        self.0.count("count");
        let count = request.into_inner();
        let n = self.0.with(|i| {
            let c = i.collections.get(&count.collection_name).ok_or_else(|| not_found(&count.collection_name))?;
            let mut n = 0u64;
            for payload in c.points.values() {
                if passes(count.filter.as_ref(), payload)? {
                    n += 1;
                }
            }
            Ok::<_, Status>(n)
        })?;
        Ok(Response::new(q::CountResponse { result: Some(q::CountResult { count: n }), time: 0.0, usage: None }))
    }
    async fn create_field_index(&self, request: Request<q::CreateFieldIndexCollection>) -> Result<Response<q::PointsOperationResponse>, Status> {
        self.0.count("create_field_index");
        let index = request.into_inner();
        self.0.with(|i| {
            let c = i.collections.get_mut(&index.collection_name).ok_or_else(|| not_found(&index.collection_name))?;
            c.indexes.insert(index.field_name);
            Ok::<_, Status>(())
        })?;
        Ok(Response::new(q::PointsOperationResponse { result: done(), time: 0.0, usage: None }))
    }
} unimplemented {
        get: GetPoints => GetResponse,
        update_vectors: UpdatePointVectors => PointsOperationResponse,
        delete_vectors: DeletePointVectors => PointsOperationResponse,
        set_payload: SetPayloadPoints => PointsOperationResponse,
        overwrite_payload: SetPayloadPoints => PointsOperationResponse,
        delete_payload: DeletePayloadPoints => PointsOperationResponse,
        clear_payload: ClearPayloadPoints => PointsOperationResponse,
        delete_field_index: DeleteFieldIndexCollection => PointsOperationResponse,
        create_vector_name: CreateVectorNameRequest => PointsOperationResponse,
        delete_vector_name: DeleteVectorNameRequest => PointsOperationResponse,
        search: SearchPoints => SearchResponse,
        search_batch: SearchBatchPoints => SearchBatchResponse,
        search_groups: SearchPointGroups => SearchGroupsResponse,
        scroll: ScrollPoints => ScrollResponse,
        recommend: RecommendPoints => RecommendResponse,
        recommend_batch: RecommendBatchPoints => RecommendBatchResponse,
        recommend_groups: RecommendPointGroups => RecommendGroupsResponse,
        discover: DiscoverPoints => DiscoverResponse,
        discover_batch: DiscoverBatchPoints => DiscoverBatchResponse,
        update_batch: UpdateBatchPoints => UpdateBatchResponse,
        query: QueryPoints => QueryResponse,
        query_batch: QueryBatchPoints => QueryBatchResponse,
        query_groups: QueryPointGroups => QueryGroupsResponse,
        facet: FacetCounts => FacetResponse,
        search_matrix_pairs: SearchMatrixPoints => SearchMatrixPairsResponse,
        search_matrix_offsets: SearchMatrixPoints => SearchMatrixOffsetsResponse
});

service!(snapshots_server::Snapshots {
    async fn create(&self, request: Request<q::CreateSnapshotRequest>) -> Result<Response<q::CreateSnapshotResponse>, Status> {
        self.0.count("create_snapshot");
        let name = request.into_inner().collection_name;
        let n = self.0.counter.fetch_add(1, Ordering::Relaxed);
        let description = self.0.with(|i| {
            let c = i.collections.get(&name).ok_or_else(|| not_found(&name))?;
            let dump = json!({
                "size": c.size,
                "distance": c.distance,
                "indexes": c.indexes,
                "points": c.points,
            });
            let bytes = tar(&[("config.json", json!({"collection": name}).to_string().into_bytes()),
                              ("points.json", dump.to_string().into_bytes())]);
            let checksum = format!("{:x}", sha2::Sha256::digest(&bytes));
            let snapshot = Snapshot {
                name: format!("{name}-{n}-{}.snapshot", ulid::Ulid::generate()),
                bytes,
                checksum,
            };
            let description = q::SnapshotDescription {
                name: snapshot.name.clone(),
                creation_time: None,
                size: snapshot.bytes.len() as i64,
                checksum: Some(snapshot.checksum.clone()),
            };
            i.snapshots.entry(name.clone()).or_default().push(snapshot);
            Ok::<_, Status>(description)
        })?;
        Ok(Response::new(q::CreateSnapshotResponse { snapshot_description: Some(description), time: 0.0 }))
    }
    async fn list(&self, request: Request<q::ListSnapshotsRequest>) -> Result<Response<q::ListSnapshotsResponse>, Status> {
        self.0.count("list_snapshots");
        let name = request.into_inner().collection_name;
        let snapshot_descriptions = self.0.with(|i| {
            if !i.collections.contains_key(&name) {
                return Err(not_found(&name));
            }
            Ok(i.snapshots.get(&name).map(|all| all.iter().map(|s| q::SnapshotDescription {
                name: s.name.clone(),
                creation_time: None,
                size: s.bytes.len() as i64,
                checksum: Some(s.checksum.clone()),
            }).collect()).unwrap_or_default())
        })?;
        Ok(Response::new(q::ListSnapshotsResponse { snapshot_descriptions, time: 0.0 }))
    }
    async fn delete(&self, request: Request<q::DeleteSnapshotRequest>) -> Result<Response<q::DeleteSnapshotResponse>, Status> {
        self.0.count("delete_snapshot");
        let request = request.into_inner();
        self.0.with(|i| {
            let all = i.snapshots.entry(request.collection_name.clone()).or_default();
            let before = all.len();
            all.retain(|s| s.name != request.snapshot_name);
            if all.len() == before {
                return Err(Status::not_found(format!(
                    "Not found: Snapshot {} not found",
                    request.snapshot_name
                )));
            }
            Ok(())
        })?;
        Ok(Response::new(q::DeleteSnapshotResponse { time: 0.0 }))
    }
} unimplemented {
        create_full: CreateFullSnapshotRequest => CreateSnapshotResponse,
        list_full: ListFullSnapshotsRequest => ListSnapshotsResponse,
        delete_full: DeleteFullSnapshotRequest => DeleteSnapshotResponse
});

#[tonic::async_trait]
impl qdrant_server::Qdrant for Service {
    async fn health_check(
        &self,
        _: Request<q::HealthCheckRequest>,
    ) -> Result<Response<q::HealthCheckReply>, Status> {
        self.0.count("health_check");
        Ok(Response::new(q::HealthCheckReply {
            title: "qdrant - vector search engine (Rose's test stand-in)".to_owned(),
            version: "1.15.0".to_owned(),
            commit: None,
        }))
    }
}

async fn download(
    State(shared): State<Arc<Shared>>,
    UrlPath((name, snapshot)): UrlPath<(String, String)>,
) -> Result<Vec<u8>, (axum::http::StatusCode, String)> {
    shared.count("download_snapshot");
    shared
        .with(|i| {
            i.snapshots
                .get(&name)
                .and_then(|all| all.iter().find(|s| s.name == snapshot))
                .map(|s| s.bytes.clone())
        })
        .ok_or((
            axum::http::StatusCode::NOT_FOUND,
            format!("Snapshot {snapshot} not found"),
        ))
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    mut form: Multipart,
) -> Result<axum::Json<Json>, (axum::http::StatusCode, String)> {
    shared.count("upload_snapshot");
    let bad = |m: String| (axum::http::StatusCode::BAD_REQUEST, m);
    let mut bytes = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(e.to_string()))? {
        if field.name() == Some("snapshot") {
            bytes = Some(field.bytes().await.map_err(|e| bad(e.to_string()))?);
        }
    }
    let bytes = bytes.ok_or_else(|| bad("no snapshot field".to_owned()))?;
    let dump = untar(&bytes, "points.json").ok_or_else(|| bad("not a snapshot".to_owned()))?;
    let dump: Json = serde_json::from_slice(&dump).map_err(|e| bad(e.to_string()))?;
    let collection = Collection {
        size: dump["size"].as_u64().unwrap_or(0),
        distance: dump["distance"].as_i64().unwrap_or(0) as i32,
        indexes: serde_json::from_value(dump["indexes"].clone()).unwrap_or_default(),
        points: serde_json::from_value(dump["points"].clone()).unwrap_or_default(),
    };
    shared.with(|i| i.collections.insert(name, collection));
    Ok(axum::Json(
        json!({"result": true, "status": "ok", "time": 0.0}),
    ))
}

/// A ustar archive of `files`.
fn tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[148..156].copy_from_slice(b"        ");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The member `name` of a ustar archive made by [`tar`].
fn untar(archive: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut at = 0;
    while at + 512 <= archive.len() {
        let header = &archive[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            return None;
        }
        let end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let size = usize::from_str_radix(std::str::from_utf8(&header[124..135]).ok()?, 8).ok()?;
        let data = archive.get(at + 512..at + 512 + size)?;
        if &header[..end] == name.as_bytes() {
            return Some(data.to_vec());
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    None
}
