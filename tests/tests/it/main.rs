//! Rose's integration tests in one binary: one link of the whole stack
//! instead of one per file, which keeps builds quick and the target directory
//! small. Each module is one area; run one with `cargo test -p rose-tests --test it pipeline::`.

mod backup;
mod bad_input;
mod callbacks;
mod edge;
mod events;
mod fuzz;
mod hostile;
mod identity;
mod memory;
mod metrics;
mod openapi;
mod pipeline;
mod qdrant;
mod queue_delay;
mod queue_retry;
mod redis_queue;
mod resilience;
mod resilience_redis;
mod safety;
mod scheduler;
mod security;
mod sqlite_file;
mod sqlite_queue;
mod store;
mod streaming;
