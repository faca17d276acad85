//! Pulse's test kit: the pipeline in one process (`pipeline`, also what
//! `pulse demo` and `pulse soak` run), the local stack in tests, unique names,
//! a private ClickHouse that a test can stop and start. No service links it.

pub mod clickhouse;
pub mod pipeline;
pub mod stack;

pub use clickhouse::{PrivateClickHouse, stack_clickhouse};
pub use pipeline::{Pipeline, PipelineConfig, PipelineError};
pub use stack::{exit_with_parent, stack_brokers, unique_name, unique_spec, unique_spec_text, with_unique_topics};
