//! The local stack (`scripts/stack up`) in tests: whether this run has it,
//! unique names for topics, groups and databases, and specs using them.

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
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The default spec (`pulse.toml` at the workspace root) with every topic
/// renamed to a name unique to this call, so tests can share one broker.
pub fn unique_spec() -> std::sync::Arc<pulse_model::Spec> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
    match pulse_model::Spec::parse(&path, &unique_spec_text()) {
        Ok(spec) => std::sync::Arc::new(spec),
        Err(e) => panic!("{e}"),
    }
}

/// The text of the default spec with every topic renamed to a name unique to
/// this call (for tests that hand a spec file to another process).
pub fn unique_spec_text() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
    match std::fs::read_to_string(&path) {
        Ok(t) => with_unique_topics(&t),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// `text` (a spec) with every topic renamed to a name unique to this call.
pub fn with_unique_topics(text: &str) -> String {
    let prefix = unique_name("t").replace('_', "-");
    let mut text = text.to_string();
    let topics: Vec<String> = text.lines().filter_map(|l| l.trim().strip_prefix("topic = \"").and_then(|r| r.strip_suffix('"')).map(String::from)).collect();
    for topic in topics {
        text = text.replace(&format!("topic = \"{topic}\""), &format!("topic = \"{prefix}-{topic}\""));
    }
    let own = format!("aggregated_topic = \"{prefix}-aggregated\"\ndead_letter_topic = \"{prefix}-dead-letter\"\nalerts_topic = \"{prefix}-alerts\"\n");
    if text.contains("[pipeline]\n") { text.replace("[pipeline]\n", &format!("[pipeline]\n{own}")) } else { format!("[pipeline]\n{own}{text}") }
}

/// For test children: exits this process when its parent is gone, so that a
/// failed test run never leaves a child running (and holding its pipes).
pub fn exit_with_parent() {
    fn ppid() -> Option<u32> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    }
    let Some(parent) = ppid() else { return };
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if ppid() != Some(parent) {
                std::process::exit(1);
            }
        }
    });
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a process the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
