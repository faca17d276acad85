//! Helpers for tests against the local stack's ClickHouse.

use crate::config::ClickHouseConfig;

/// A config pointing at the local stack's ClickHouse with a fresh database name,
/// when the tests run with the stack (`PULSE_TEST_STACK=1`); `None` means skip.
pub fn stack_clickhouse(prefix: &str) -> Option<ClickHouseConfig> {
    pulse_kafka::testing::stack_brokers()?;
    let url = std::env::var("PULSE_CLICKHOUSE_URL").unwrap_or_else(|_| crate::config::DEFAULT_URL.into());
    Some(ClickHouseConfig { url, database: pulse_kafka::testing::unique_name(prefix), ..ClickHouseConfig::default() })
}
