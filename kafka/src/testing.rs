//! Helpers for tests that run against the local stack (`scripts/stack up`).

use std::sync::atomic::{AtomicU32, Ordering};

/// Broker list of the local stack's Kafka, when the tests run with it
/// (`PULSE_TEST_STACK=1`, set by `make test`). `None` means: skip, the stack
/// is not part of this run.
pub fn stack_brokers() -> Option<String> {
    if std::env::var("PULSE_TEST_STACK").as_deref() != Ok("1") {
        eprintln!("skipped: needs the local stack (run `make test`, or `scripts/stack up` and PULSE_TEST_STACK=1)");
        return None;
    }
    Some(std::env::var("PULSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()))
}

/// A name unique to this process and call, for topics, groups and databases.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
