//! `pulse backfill` recomputes a metric's closed windows over the raw tables
//! and writes them as finals that supersede the job's: on the same data they
//! equal the streaming job's finals, with higher revisions, in ClickHouse and
//! on the topic; windows the job has not closed are left to the job.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use pulse_gen::{GenConfig, Generator};

/// (city, window start) -> (aggregates as JSON, revision) of the final rows.
fn finals(p: &support::Pipeline) -> BTreeMap<(String, i64), (serde_json::Value, u64)> {
    p.rows("SELECT *, toUnixTimestamp64Milli(window_start) AS ws FROM city_metrics FINAL WHERE final")
        .into_iter()
        .map(|r| ((r["city"].as_str().unwrap_or_default().to_string(), r["ws"].as_i64().unwrap_or(0)), (r.clone(), r["revision"].as_u64().unwrap_or(0))))
        .collect()
}

/// Runs `pulse backfill --metric METRIC --from FROM --no-topic` on the pipeline's database; its output.
fn backfill(p: &support::Pipeline, spec_path: &std::path::Path, metric: &str, from: i64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["backfill", "--metric", metric, "--from", &from.to_string(), "--no-topic"])
        .env("PULSE_SPEC", spec_path)
        .env("PULSE_CLICKHOUSE_DATABASE", &p.ch.database)
        .env("PULSE_CLICKHOUSE_URL", &p.ch.url)
        .output()
        .expect("pulse backfill");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    log
}

#[test]
fn backfilled_windows_equal_the_streamed_finals_and_supersede_them() {
    let Some(mut p) = support::Pipeline::start("pulse_backfill") else { return };
    let now = support::now_ms();
    // 12 minutes of rides and more, no late events: the stream's finals are complete.
    let cfg = GenConfig { start_ms: now - 12 * 60_000, rate: 50.0, late_fraction: 0.0, disorder_ms: 1_000, ..GenConfig::default() };
    let produced = p.produce(Generator::new(cfg).take(36_000)) as f64;
    p.wait_for("every record stored by the sink", Duration::from_secs(120), |p| {
        p.scalar("SELECT sum(value) FROM pulse_pipeline_stats WHERE service = 'sink' AND name = 'events_stored'") >= produced
    });
    p.wait_for("some closed city windows", Duration::from_secs(120), |p| finals(p).len() >= 40);
    std::thread::sleep(Duration::from_secs(2));
    let streamed = finals(&p);

    let spec_path = std::env::temp_dir().join(pulse_testkit::unique_name("backfill-spec"));
    std::fs::write(&spec_path, pulse_testkit::unique_spec_text()).expect("spec");
    let log = backfill(&p, &spec_path, "city_metrics", now - 30 * 60_000);
    let after = finals(&p);

    // Every window the job had closed was recomputed: same values, a higher revision.
    let mut superseded = 0;
    for (key, (row, revision)) in &streamed {
        let (now_row, now_revision) = after.get(key).unwrap_or_else(|| panic!("{key:?} lost by the backfill"));
        for a in ["total_events", "requests", "completions", "cancellations", "unique_riders"] {
            assert_eq!(now_row[a], row[a], "{key:?}.{a}: backfill {} vs stream {}", now_row[a], row[a]);
        }
        for a in ["avg_fare", "cancellation_rate"] {
            let (x, y) = (now_row[a].as_f64(), row[a].as_f64());
            assert!(x == y || matches!((x, y), (Some(x), Some(y)) if (x - y).abs() <= 1e-9 * y.abs().max(1.0)), "{key:?}.{a}: {x:?} vs {y:?}");
        }
        superseded += usize::from(now_revision > revision);
    }
    assert_eq!(superseded, streamed.len(), "every closed window superseded: {log}");
    // Nothing beyond what the job closed: the still-open windows stay the job's.
    assert!(after.len() <= streamed.len() + 20 * 2, "{} finals after, {} before", after.len(), streamed.len());

    // The stored finals, as a derived metric's join reads them at start and to rebuild.
    let spec = std::sync::Arc::clone(&p.spec);
    let m = spec.metrics.iter().position(|x| x.name == "city_metrics").expect("city_metrics");
    let stored = p.rt.block_on(pulse_dataflow::backfill::stored_finals(&spec, m, &p.ch, now - 60 * 60_000, now + 60 * 60_000)).expect("stored finals");
    assert_eq!(stored.len(), finals(&p).len(), "every final window of city_metrics read back");

    // A derived metric rebuilt from its inputs' stored finals: the stream's values, superseded.
    let balance = |p: &support::Pipeline| -> BTreeMap<(String, i64), (String, u64)> {
        p.rows("SELECT city, toUnixTimestamp64Milli(window_start) AS ws, requests, active_drivers, revision FROM city_balance FINAL WHERE final")
            .into_iter()
            .map(|r| {
                let key = (r["city"].as_str().unwrap_or_default().to_string(), r["ws"].as_i64().unwrap_or(0));
                (key, (format!("{},{}", r["requests"], r["active_drivers"]), r["revision"].as_u64().unwrap_or(0)))
            })
            .collect()
    };
    let streamed = balance(&p);
    assert!(!streamed.is_empty(), "the job closed city_balance windows");
    let log = backfill(&p, &spec_path, "city_balance", now - 30 * 60_000);
    let rebuilt = balance(&p);
    let mut superseded = 0;
    for (key, (values, revision)) in &streamed {
        let (now_values, now_revision) = rebuilt.get(key).unwrap_or_else(|| panic!("{key:?} lost by the backfill"));
        assert_eq!(now_values, values, "city_balance {key:?}: rebuilt vs streamed");
        superseded += usize::from(now_revision > revision);
    }
    assert!(superseded > 0, "the derived metric's closed windows were rebuilt: {log}");
    let _ = std::fs::remove_file(&spec_path);
    p.stop();
}
