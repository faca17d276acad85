//! Pulse's test kit (dev-only; never linked by a service): the local stack in
//! tests, unique names, a private ClickHouse that a test can stop and start.

pub mod clickhouse;
pub mod stack;

pub use clickhouse::{PrivateClickHouse, stack_clickhouse};
pub use stack::{exit_with_parent, stack_brokers, unique_name, unique_spec, unique_spec_text, with_unique_topics};
