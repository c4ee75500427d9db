//! The library every Rose role uses: configuration, domain types, storage,
//! queue wiring, provider clients and telemetry.

pub mod abuse;
pub mod audio;
pub mod backup;
pub mod callback;
pub mod config;
pub mod domain;
pub mod events;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod providers;
pub mod queue;
pub mod relay;
pub mod resilience;
pub mod rose;
pub mod safety;
pub mod sentences;
pub mod store;
pub mod telemetry;
pub mod view;
pub mod webhook;

pub use rose::Rose;
