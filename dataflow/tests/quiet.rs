//! Quiet domains, on the local broker (Tansu) and ClickHouse: a domain that
//! receives nothing more still closes its windows. Once every partition is
//! read to its end and silent for `idle_timeout`, the domain's watermark
//! follows the wall clock, so the finals of its last windows appear without
//! any new event (at night), and they equal SQL over the raw table.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clickhouse_finals, close, on_the_local_broker, produce_and_store, recomputed, records, short_windows_spec, start_job_with};
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::GenDomain;

#[test]
fn a_quiet_domain_closes_its_last_windows_without_new_events() {
    let spec = short_windows_spec();
    let Some((rt, kafka, ch, group)) = on_the_local_broker("df_quiet", &spec, &[]) else { return };
    let metric = spec.metric("city_metrics").expect("city_metrics");
    let (window, slide, lateness) = (metric.window.ms(), metric.slide.ms(), metric.lateness.ms());

    // About 30 s of rides ending now, then nothing more on any domain.
    let recs: Vec<_> = records(2_000, 41, pulse_model::now_ms() - 30_000, 0).into_iter().filter(|(d, _, _)| *d == GenDomain::Rides).collect();
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &recs));
    let times: Vec<i64> = recs.iter().filter_map(|(_, _, j)| serde_json::from_str::<serde_json::Value>(j).ok()?["timestamp"].as_i64()).collect();
    let newest = times.iter().copied().max().expect("events");
    // Every window holding an event; the last ones end after the newest event
    // minus the lateness: no event closes them, only the wall clock can.
    let expected: BTreeSet<i64> = times.iter().flat_map(|&t| (0..window / slide).map(move |k| (t.div_euclid(slide) - k) * slide)).collect();
    let by_clock: Vec<i64> = expected.iter().copied().filter(|ws| ws + window > newest - lateness).collect();
    assert!(!by_clock.is_empty());

    let cfg = DataflowConfig {
        group,
        cluster: Cluster::Process { workers: 2 },
        emit_interval: Some(Duration::from_millis(100)),
        idle_timeout: Some(Duration::from_secs(2)),
        ..DataflowConfig::default()
    };
    let (stop, job) = start_job_with(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), cfg);
    let deadline = Instant::now() + Duration::from_secs(90);
    let finals = loop {
        let finals = rt.block_on(clickhouse_finals(&spec, &ch));
        let closed: BTreeSet<i64> = finals.keys().filter(|(m, _, _)| m == "city_metrics").map(|(_, _, ws)| *ws).collect();
        if expected.is_subset(&closed) {
            break finals;
        }
        assert!(
            Instant::now() < deadline,
            "windows still open long after their end, lateness and idle timeout: {:?} (now {})",
            expected.difference(&closed).collect::<Vec<_>>(),
            pulse_model::now_ms()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.trigger();
    let summaries = job.join().expect("job thread");
    assert_eq!(summaries.iter().map(|s| s.events).sum::<u64>(), recs.len() as u64, "every ride counted once, none late: {summaries:?}");

    // Each of them, those closed by the clock included, equals SQL over the raw table.
    let mut checked = 0;
    for ((m, group_value, ws), values) in &finals {
        if m != "city_metrics" {
            continue;
        }
        let sql = rt.block_on(recomputed(&spec, &ch, metric, *ws, group_value)).unwrap_or_default();
        assert!(close(values, &sql), "{group_value}/{ws}: {values:?} != SQL {sql:?}");
        checked += usize::from(by_clock.contains(ws));
    }
    assert!(checked > 0, "no final of a window closed by the wall clock");
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}
