//! Pulse's performance tools, kept out of the services: the load generator
//! (`pulse loadgen`) and the benchmarks of ingest (`pulse bench ingest`) and of
//! the read API (`pulse bench api`). Each drives the real service code over
//! real sockets, Kafka and ClickHouse; the events come from `pulse-gen`.

pub mod api;
pub mod ingest;
pub mod loadgen;
pub mod stats;
