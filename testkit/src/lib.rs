//! Pulse's test kit: the pipeline in one process (`pipeline`, also what
//! `pulse demo` and `pulse soak` run), the local stack in tests, unique names,
//! a private ClickHouse that a test can stop and start, an ingest server in
//! the test's process, plain HTTP requests, and reading a topic back. No
//! service links it.

pub mod clickhouse;
pub mod http;
pub mod ingest;
pub mod pipeline;
pub mod stack;
pub mod topic;

pub use clickhouse::{PrivateClickHouse, json_rows, stack_clickhouse};
pub use http::{Answer, Http};
pub use pipeline::{Pipeline, PipelineConfig, PipelineError};
pub use stack::{exit_with_parent, free_port, stack_brokers, unique_name, unique_spec, unique_spec_text, with_unique_topics};
pub use topic::{Record, count_topic, latest_by_key, read_topic, send};
