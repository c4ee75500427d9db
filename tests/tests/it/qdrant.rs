//! Rose's side of Qdrant: processes racing to create the collection, a
//! Qdrant not up yet at start, a collection of the wrong shape, and backups
//! holding the collection's snapshots (retention, listing, verification,
//! restore). They run against the stand-in in `rose_tests::qdrant`, which
//! answers as Qdrant 1.15 does (no Qdrant server can be installed here); the
//! store's own behaviour against a real Qdrant is in `memory::qdrant_*`,
//! run when `QDRANT_URL` is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rose_scheduler::{Task, run_task};
use rose_shared::backup::{self, BackupError, Kind, Target};
use rose_shared::domain::SessionId;
use rose_shared::memory::qdrant::{COLLECTION, QdrantMemory};
use rose_shared::memory::{DIMENSIONS, NewMemory};
use rose_tests::qdrant::StandIn;
use rose_tests::{AppOptions, Deployment, spawn_app_with, unique};

#[tokio::test]
async fn starters_racing_to_create_the_collection_all_start() {
    let qdrant = StandIn::start().await;
    // Every starter is told the collection is missing, so all four create it.
    qdrant.hold_exists_until(4);
    let mut starters = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = qdrant.grpc_url.clone();
        starters.spawn(async move {
            QdrantMemory::connect(&url, None, COLLECTION)
                .await
                .map(|_| ())
        });
    }
    while let Some(started) = starters.join_next().await {
        started.expect("task").expect("every starter starts");
    }
    assert_eq!(qdrant.calls("create_collection"), 4, "the race happened");
    let made = qdrant.collection(COLLECTION).expect("collection");
    assert_eq!(made.size, DIMENSIONS as u64);
    assert_eq!(
        made.distance,
        qdrant_client::qdrant::Distance::Cosine as i32
    );
    assert!(made.indexes.contains("user_id") && made.indexes.contains("session_id"));
    assert_eq!(
        qdrant.calls("get_collection"),
        4,
        "each re-checked the shape"
    );
}

#[tokio::test]
async fn a_collection_of_another_shape_is_refused_saying_what_it_is() {
    use qdrant_client::qdrant::Distance;
    let qdrant = StandIn::start().await;
    qdrant.put_collection("small", 128, Distance::Cosine);
    let error = QdrantMemory::connect(&qdrant.grpc_url, None, "small")
        .await
        .expect_err("128 is not 384")
        .to_string();
    assert!(
        error.contains("size 128") && error.contains("384"),
        "{error}"
    );
    assert!(!error.contains("Some("), "{error}");
    qdrant.put_collection("dot", 384, Distance::Dot);
    let error = QdrantMemory::connect(&qdrant.grpc_url, None, "dot")
        .await
        .expect_err("dot is not cosine")
        .to_string();
    assert!(error.contains("Dot") && error.contains("cosine"), "{error}");
}

/// Nothing answers at first (connections are taken and dropped, as by a
/// Qdrant still starting); once Qdrant is up, the waiting start completes.
#[tokio::test]
async fn a_qdrant_not_up_yet_is_waited_for() {
    let early = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = early.local_addr().expect("addr");
    let tried = Arc::new(AtomicU64::new(0));
    let knocked = Arc::new(tokio::sync::Notify::new());
    let refuse = {
        let (tried, knocked) = (tried.clone(), knocked.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = early.accept().await {
                drop(conn);
                if tried.fetch_add(1, Ordering::SeqCst) + 1 >= 2 {
                    knocked.notify_one();
                }
            }
        })
    };
    let url = format!("http://{addr}");
    let starting = tokio::spawn({
        let url = url.clone();
        async move {
            QdrantMemory::connect_patiently(&url, None, COLLECTION, Duration::from_secs(60)).await
        }
    });
    knocked.notified().await;
    refuse.abort();
    let _ = refuse.await;
    // Qdrant comes up on the same port.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let qdrant = StandIn::start_on(listener).await;
    starting
        .await
        .expect("task")
        .expect("started once Qdrant answered");
    assert!(tried.load(Ordering::SeqCst) >= 2);
    assert!(qdrant.collection(COLLECTION).is_some());

    // The wait is bounded.
    let closed = rose_tests::process::free_port();
    let gave_up = QdrantMemory::connect_patiently(
        &format!("http://127.0.0.1:{closed}"),
        None,
        COLLECTION,
        Duration::from_secs(1),
    )
    .await
    .expect_err("nothing listens there")
    .to_string();
    assert!(gave_up.contains("did not answer within 1 s"), "{gave_up}");
}

fn memory_for(owner: &str) -> NewMemory {
    let mut vector = vec![0.0f32; DIMENSIONS];
    vector[0] = 1.0;
    NewMemory {
        owner: owner.to_owned(),
        session_id: SessionId::new(),
        text: "The user's mother died last spring.".to_owned(),
        vector,
        source_job: None,
    }
}

/// The nightly backup holds the Qdrant collection: one snapshot per database
/// backup, same stamp, same `BACKUP_KEEP`, none left on Qdrant; verified and
/// restored with its database file.
#[tokio::test]
async fn backups_keep_list_verify_and_restore_the_qdrant_snapshots() {
    let qdrant = StandIn::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let backups = dir.path().join("backups");
    let app = spawn_app_with(
        Deployment::Embedded,
        AppOptions {
            env: [
                ("QDRANT_URL".to_owned(), qdrant.grpc_url.clone()),
                ("QDRANT_REST_URL".to_owned(), qdrant.rest_url.clone()),
                ("BACKUP_DIR".to_owned(), backups.display().to_string()),
                ("BACKUP_KEEP".to_owned(), "1".to_owned()),
            ]
            .into(),
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let store = app.rose.memory.store.clone();
    let user = unique("user");
    store.add(memory_for(&user)).await.expect("add");
    // A snapshot an earlier version left on Qdrant.
    let client = qdrant_client::Qdrant::from_url(&qdrant.grpc_url)
        .build()
        .expect("client");
    client
        .create_snapshot(COLLECTION)
        .await
        .expect("old snapshot");
    assert_eq!(qdrant.snapshot_names(COLLECTION).len(), 1);

    for _ in 0..3 {
        let report = run_task(&app.rose, Task::Backup, None, "test")
            .await
            .expect("run")
            .expect("recorded");
        assert_eq!(report.outcome, "ok", "{report:?}");
        assert!(report.counts["qdrant_snapshot"].is_string(), "{report:?}");
    }
    let files = backup::list(&backups).expect("list");
    let kinds: Vec<Kind> = files.iter().map(|f| f.kind).collect();
    assert_eq!(kinds.len(), 2, "BACKUP_KEEP=1 of each kind: {files:?}");
    assert!(
        kinds.contains(&Kind::Sqlite) && kinds.contains(&Kind::Qdrant),
        "{files:?}"
    );
    assert_eq!(
        files[0].taken_at, files[1].taken_at,
        "paired by stamp: {files:?}"
    );
    assert!(
        qdrant.snapshot_names(COLLECTION).is_empty(),
        "no snapshot (holding erased memories) is left on Qdrant"
    );
    let database = files
        .iter()
        .find(|f| f.kind == Kind::Sqlite)
        .expect("db")
        .path
        .clone();
    let snapshot = files
        .iter()
        .find(|f| f.kind == Kind::Qdrant)
        .expect("snapshot")
        .path
        .clone();
    assert_eq!(backup::paired_snapshot(&database), Some(snapshot.clone()));
    let checked = backup::verify_with_pair(&database).await.expect("verify");
    assert_eq!(checked.len(), 2);
    assert!(checked.iter().all(|v| v.ok), "{checked:?}");

    // A damaged snapshot fails verification.
    let bytes = std::fs::read(&snapshot).expect("read");
    let damaged = dir.path().join("damaged.qdrant");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).expect("write");
    let check = backup::verify(&damaged).await.expect("verify runs");
    assert!(!check.ok && check.kind == Kind::Qdrant, "{check:?}");

    // Restore takes both back. Into a collection that holds points: refused.
    let qdrant_store = store.as_qdrant().expect("qdrant store");
    let target = Target::Sqlite(dir.path().join("restored.db"));
    let refused = backup::restore_with_memory(&database, &target, Some(qdrant_store), false).await;
    assert!(
        matches!(refused, Err(BackupError::TargetNotEmpty { rows: 1 })),
        "{refused:?}"
    );
    assert!(!dir.path().join("restored.db").exists(), "nothing touched");
    store.delete_owner(&user).await.expect("erase");
    assert_eq!(store.count(&user).await.expect("count"), 0);
    let restored = backup::restore_with_memory(&database, &target, Some(qdrant_store), false)
        .await
        .expect("restore");
    assert!(restored.database.is_some());
    assert_eq!(restored.memory, Some(snapshot));
    assert_eq!(
        store.count(&user).await.expect("count"),
        1,
        "the memory is back"
    );
    app.stop().await;
}

/// `DELETE /api/me` on the scaled deployment with memories in Qdrant: the
/// person's points go from Qdrant, their rows from PostgreSQL, and another
/// person's points stay.
#[tokio::test]
async fn erasing_a_person_removes_their_points_and_rows() {
    let qdrant = StandIn::start().await;
    let app = spawn_app_with(
        Deployment::Scaled,
        AppOptions {
            env: [("QDRANT_URL".to_owned(), qdrant.grpc_url.clone())].into(),
            no_worker: true,
            ..AppOptions::default()
        },
    )
    .await;
    let key = rose_tests::person_key();
    let owner = app.owner_of_key(&key);
    let started = app.start_session_with_key(&key).await;
    let session: SessionId = started["session_id"]
        .as_str()
        .expect("session")
        .parse()
        .expect("id");
    let other = unique("other");
    let store = &app.rose.memory.store;
    assert_eq!(store.kind(), "qdrant");
    for (who, i) in [(&owner, 0), (&owner, 1), (&other, 2)] {
        let mut vector = vec![0.0; DIMENSIONS];
        vector[i] = 1.0;
        store
            .add(NewMemory {
                owner: who.clone(),
                session_id: session,
                text: format!("Fact {i}."),
                vector,
                source_job: None,
            })
            .await
            .expect("add");
    }
    app.rose
        .store
        .add_profile_line(&owner, "name", "Their name is Ada.", None)
        .await
        .expect("line");
    assert_eq!(store.count(&owner).await.expect("count"), 2);
    let erased = app
        .http
        .delete(format!("{}/api/me", app.url))
        .header("X-Person-Key", &key)
        .send()
        .await
        .expect("erase");
    assert_eq!(erased.status(), 204);
    assert_eq!(store.count(&owner).await.expect("count"), 0);
    assert_eq!(store.count(&other).await.expect("count"), 1);
    let rows = |table: &str, column: &str| {
        format!("SELECT COUNT(*) FROM {table} WHERE {column} = '{owner}'")
    };
    assert_eq!(app.scalar(&rows("sessions", "user_id")).await, 0);
    assert_eq!(app.scalar(&rows("profile_lines", "owner")).await, 0);
    app.stop().await;
}
