//! A stack's first boot: `pulse migrate` started before ClickHouse answers
//! waits for it (bounded) instead of failing once and leaving every service
//! that depends on the schema unstarted.

use std::process::Command;
use std::time::{Duration, Instant};

use pulse_testkit::{PrivateClickHouse, free_port, stack_clickhouse, unique_name};

#[test]
fn migrate_waits_for_a_clickhouse_that_is_still_starting() {
    if stack_clickhouse("first_boot").is_none() {
        return;
    }
    let mut ch = PrivateClickHouse::new(free_port());
    let database = unique_name("pulse_first_boot");
    let migrate = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["migrate", "--wait", "60s", "--clickhouse-url", &ch.url(), "--clickhouse-database", &database])
        .env("PULSE_SPEC", concat!(env!("CARGO_MANIFEST_DIR"), "/pulse.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pulse migrate");
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    ch.start();
    let out = migrate.wait_with_output().expect("migrate output");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ClickHouse not ready, retrying"), "it had to wait: {log}");
    assert!(log.contains("pulse_progress"), "every table created: {log}");
    assert!(started.elapsed() < Duration::from_secs(60));

    // And gives up, clearly, when nothing ever answers.
    let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["migrate", "--wait", "2s", "--clickhouse-url", &format!("http://127.0.0.1:{}", free_port())])
        .env("PULSE_SPEC", concat!(env!("CARGO_MANIFEST_DIR"), "/pulse.toml"))
        .output()
        .expect("pulse migrate");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer within 2s"), "{}", String::from_utf8_lossy(&out.stderr));
}
