//! `pulse dataflow`: the timely/differential job that maintains the spec's
//! watermarked sliding-window metrics incrementally.
//!
//! - `plan`: the spec compiled into per-event work.
//! - `state`: a worker's ingestion (pre-aggregation, retention, upserts, offsets).
//! - `graph`: the timely dataflow: pane changes exchanged by group to the emitter.
//! - `emit`: where windows close and rows are made.
//! - `watermark`: partition clocks and the job's watermarks.
//! - `job`: the worker loop (Kafka or replay in, rows out, commits).
//! - `output`: durable delivery of rows to ClickHouse and Kafka.
//! - `alerts`: the spec's alert rules evaluated on those rows, and their delivery.

pub mod alerts;
pub mod backfill;
pub mod ddsketch;
pub mod derived;
pub mod distinct;
pub mod driver;
pub mod emit;
pub mod gate;
pub mod graph;
pub mod hll;
pub mod job;
pub mod kafka;
pub mod lease;
pub mod metrics;
pub mod multiset;
pub mod output;
pub mod plan;
pub mod progress;
pub mod replay;
pub mod service;
pub mod state;
pub mod store;
pub mod types;
pub mod watermark;
