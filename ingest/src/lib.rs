//! `pulse ingest`: the write path. An axum HTTP API validates events against
//! their domain's schema, completes their envelope (id, ingest time, version)
//! and produces them to the domain's Kafka topic, answering 202 only once Kafka
//! acknowledged every event of the request. Also home of `pulse loadgen` and
//! `pulse bench ingest`.

pub mod auth;
pub mod bench;
pub mod body;
pub mod config;
pub mod loadgen;
pub mod metrics;
pub mod openapi;
pub mod prepare;
pub mod producer;
pub mod service;
pub mod stats;

pub use auth::{ApiKeys, Caller, RateLimiter};
pub use config::IngestConfig;
pub use prepare::{Batch, DomainWriter, Stamp, VersionClock};
pub use producer::{ProduceError, Producer, ProducerConfig, ProducerError};
pub use service::{Ingest, IngestError, run, serve};
