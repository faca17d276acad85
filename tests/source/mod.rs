//! What the code says about itself, for tests that check deployment files
//! against it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The workspace's members, from Cargo.toml.
fn crates() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let members = text.lines().find(|l| l.trim_start().starts_with("members")).expect("workspace members");
    members.split('"').skip(1).step_by(2).map(String::from).collect()
}

/// Every `PULSE_*` variable the code reads: clap `env = "..."` attributes and
/// `env::var("...")` calls. `PULSE_KAFKA_<PROPERTY>` is librdkafka's
/// passthrough, not a fixed variable (only `PULSE_KAFKA_BROKERS` is).
pub fn code_variables() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root().join("src")];
    stack.extend(crates().iter().map(|k| root().join(k).join("src")));
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for (i, _) in text.match_indices("\"PULSE_") {
                    let rest = &text[i + 1..];
                    let name = &rest[..rest.find('"').unwrap_or(0)];
                    let passthrough = name.starts_with("PULSE_KAFKA_") && name != "PULSE_KAFKA_BROKERS";
                    if name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') && !name.ends_with('_') && !passthrough {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn finds_the_variables_of_every_crate() {
    let vars = code_variables();
    // One read in the binary, one in a library crate, one in the alert crate's users.
    for v in ["PULSE_SPEC", "PULSE_CLICKHOUSE_URL", "PULSE_ALERT_WEBHOOK_URL"] {
        assert!(vars.contains(v), "{v} not found in {vars:?}");
    }
}
