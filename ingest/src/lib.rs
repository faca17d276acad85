//! `pulse ingest`: the write path. An axum HTTP API validates events against
//! their domain's schema, completes their envelope (id, ingest time, version)
//! and produces them to the domain's Kafka topic, answering 202 only once Kafka
//! acknowledged every event of the request. The load generator and the ingest
//! benchmark, which drive it from outside, are in `pulse-bench`.

pub mod auth;
pub mod body;
pub mod config;
pub mod metrics;
pub mod openapi;
pub mod prepare;
pub mod producer;
pub mod service;

pub use auth::{ApiKeys, Caller, RateLimiter};
pub use config::IngestConfig;
pub use prepare::{Batch, DomainWriter, Stamp, VersionClock};
pub use producer::{ProduceError, Producer, ProducerConfig, ProducerError};
pub use service::{Ingest, IngestError, run, serve};
