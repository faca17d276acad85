//! Restarts against the local broker (Tansu), which returns committed offsets
//! without their commit metadata: the job's progress must come from where
//! Pulse keeps it (ClickHouse), or a plain restart would re-finalise closed
//! windows from the few records it replays.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clickhouse_finals, close, continuation_start, produce_and_store, recomputed, records, start_job, start_job_watched};
use pulse_clickhouse::migrate;
use pulse_gen::GenDomain;
use pulse_kafka::{KafkaConfig, plan_topics};
use pulse_ops::Readiness;
use pulse_testkit::stack_clickhouse;
use pulse_testkit::{stack_brokers, unique_name, unique_spec};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

type Finals = HashMap<(String, String, i64), Vec<Option<f64>>>;

/// Waits until the finals stop changing for `quiet` (and there are some).
fn settled(rt: &tokio::runtime::Runtime, spec: &pulse_model::Spec, ch: &pulse_clickhouse::ClickHouseConfig, quiet: Duration, timeout: Duration) -> Finals {
    let deadline = Instant::now() + timeout;
    let mut last = rt.block_on(clickhouse_finals(spec, ch));
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = rt.block_on(clickhouse_finals(spec, ch));
        if now.len() != last.len() {
            since = Instant::now();
            last = now;
        } else if !last.is_empty() && since.elapsed() >= quiet {
            return last;
        }
        assert!(Instant::now() < deadline, "finals did not settle ({} so far)", last.len());
    }
}

/// A runtime, a fresh spec with its topics on Tansu, a migrated database and a
/// consumer group of its own; `None` without the local stack.
fn on_the_local_broker(name: &str) -> Option<(tokio::runtime::Runtime, Arc<pulse_model::Spec>, KafkaConfig, pulse_clickhouse::ClickHouseConfig, String)> {
    let brokers = stack_brokers()?;
    let ch = stack_clickhouse(&format!("pulse_{name}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let spec = unique_spec();
    let kafka = KafkaConfig { brokers, properties: Vec::new() };
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = kafka.client().create().expect("admin");
        pulse_kafka::ensure_topics(&admin, &plan_topics(&spec)).await.expect("topics");
    });
    rt.block_on(migrate(&ch, &spec)).expect("migrate");
    let group = unique_name(&name.replace('_', "-"));
    Some((rt, spec, kafka, ch, group))
}

type Records = Vec<(GenDomain, String, String)>;

/// Seven minutes of events (40 per second of event time) ending a few seconds
/// ago, written to the topics and the raw tables; the job runs until its
/// finals settle and stops. Returns the events and those finals.
fn first_run(
    rt: &tokio::runtime::Runtime,
    spec: &Arc<pulse_model::Spec>,
    kafka: &KafkaConfig,
    ch: &pulse_clickhouse::ClickHouseConfig,
    group: &str,
    seed: u64,
) -> (Records, Finals) {
    let first = records(16_000, seed, pulse_model::now_ms() - 7 * 60_000, 0);
    rt.block_on(produce_and_store(spec, kafka, ch, &first));
    let (stop, job) = start_job(Arc::clone(spec), kafka.clone(), ch.clone(), rt.handle().clone(), group);
    let before = settled(rt, spec, ch, Duration::from_secs(6), Duration::from_secs(120));
    stop.trigger();
    job.join().expect("job thread");
    (first, before)
}

/// A little more of the stream, from where `first` left off (see
/// [`continuation_start`]): rides only.
fn more_rides(rt: &tokio::runtime::Runtime, ch: &pulse_clickhouse::ClickHouseConfig, first: &Records, seed: u64) -> Records {
    let start = rt.block_on(continuation_start(ch, first));
    records(1_200, seed, start, 1_000_000).into_iter().filter(|(d, _, _)| *d == GenDomain::Rides).collect()
}

/// The finals of `before` that `after` no longer has with the same values.
fn replaced(before: &Finals, after: &Finals) -> Vec<String> {
    before.iter().filter(|(k, v)| !after.get(*k).is_some_and(|now| close(now, v))).map(|(k, v)| format!("{k:?}: {v:?} -> {:?}", after.get(k))).collect()
}

#[test]
fn a_plain_restart_on_the_local_broker_replaces_no_final() {
    let Some((rt, spec, kafka, ch, group)) = on_the_local_broker("df_restart") else { return };

    let (first, before) = first_run(&rt, &spec, &kafka, &ch, &group, 21);
    let city_finals = before.keys().filter(|(m, _, _)| m == "city_metrics").count();
    assert!(city_finals >= 20, "only {city_finals} city finals before the restart");

    // The same job again, same group and spec, and the stream goes on a little.
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), &group);
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &more_rides(&rt, &ch, &first, 22)));
    std::thread::sleep(Duration::from_secs(8));
    stop.trigger();
    let summaries = job.join().expect("job thread");
    let after = rt.block_on(clickhouse_finals(&spec, &ch));

    let replaced = replaced(&before, &after);
    assert!(replaced.is_empty(), "{} of {} finals changed by a plain restart:\n{}\n{summaries:?}", replaced.len(), before.len(), replaced.join("\n"));
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}

#[test]
fn a_second_instance_on_the_group_waits_until_the_first_stops() {
    let Some((rt, spec, kafka, ch, group)) = on_the_local_broker("df_two") else { return };

    let start_ms = pulse_model::now_ms() - 7 * 60_000;
    let first = records(8_000, 31, start_ms, 0);
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &first));
    let (stop_a, job_a) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), &group);
    let before = settled(&rt, &spec, &ch, Duration::from_secs(4), Duration::from_secs(120));

    // A second instance (a blue/green deploy, a replacement pod) on the same group waits.
    let (stop_b, job_b, ready_b) = start_job_watched(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), &group, Readiness::default());
    std::thread::sleep(Duration::from_secs(4));
    assert!(!ready_b.get(), "the second instance must not be ready while the first holds the group");
    assert!(!job_b.is_finished());

    // The first stops cleanly (it releases the group): the second takes over and goes on.
    stop_a.trigger();
    let a = job_a.join().expect("job a");
    let second = records(4_000, 32, rt.block_on(continuation_start(&ch, &first)), 1_000_000);
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &second));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready_b.get() {
        assert!(Instant::now() < deadline, "the second instance never took over");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = settled(&rt, &spec, &ch, Duration::from_secs(6), Duration::from_secs(120));
    stop_b.trigger();
    let b = job_b.join().expect("job b");
    assert!(b.iter().map(|s| s.events).sum::<u64>() > 0, "the second instance processed the rest: {b:?} (first: {a:?})");

    // Nothing the first finalised changed; everything final equals SQL over the raw tables.
    for (key, values) in &before {
        assert!(after.get(key).is_some_and(|v| close(v, values)), "{key:?}: {values:?} -> {:?}", after.get(key));
    }
    assert!(after.len() > before.len(), "the second instance closed more windows");
    for ((metric, group_value, ws), values) in &after {
        let m = spec.metric(metric).expect("metric");
        let expected = rt.block_on(recomputed(&spec, &ch, m, *ws, group_value)).unwrap_or_default();
        assert!(close(values, &expected), "{metric}/{group_value}/{ws}: {values:?} != SQL {expected:?}");
    }
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}

/// A released lease stays released once ClickHouse merges the lease table
/// (its TTL must not drop the release and bring the last renewal back).
#[test]
fn a_released_lease_stays_released_after_a_merge() {
    let Some(ch) = stack_clickhouse("pulse_df_lease") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let spec = unique_spec();
    rt.block_on(migrate(&ch, &spec)).expect("migrate");
    let writer = pulse_clickhouse::Writer::new(&ch, pulse_clickhouse::WriterMetrics::new(&pulse_ops::prometheus::Registry::new()).expect("metrics"));
    let shutdown = pulse_ops::Shutdown::new();
    let ttl = Duration::from_secs(30);
    let group = unique_name("lease");
    rt.block_on(async {
        let first = pulse_dataflow::lease::Lease::acquire(&ch, &writer, &group, "a", ttl, &shutdown).await.expect("first");
        first.release().await;
        writer.client().query(&format!("OPTIMIZE TABLE `{}`.`{}` FINAL", ch.database, pulse_clickhouse::schema::LEASE_TABLE)).execute().await.expect("merge");
        // Well within the time to live: only the release lets the second in.
        let second = tokio::time::timeout(Duration::from_secs(10), pulse_dataflow::lease::Lease::acquire(&ch, &writer, &group, "b", ttl, &shutdown)).await;
        assert!(second.is_ok(), "the released lease looked held after a merge");
    });
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}

/// The spec changes between two runs on the same group: a copy of
/// `city_metrics` is added under a new name and `city_metrics`' lateness is
/// raised. The new metric gets every closed window of history, rebuilt from
/// the raw tables and equal to SQL; no final of any metric is replaced by a
/// partial one.
#[test]
fn a_new_metric_is_rebuilt_from_history_and_a_raised_lateness_reopens_nothing() {
    let Some((rt, spec, kafka, ch, group)) = on_the_local_broker("df_evolve") else { return };

    let (first, before) = first_run(&rt, &spec, &kafka, &ch, &group, 41);

    // The new spec: city_metrics waits 60 s instead of 30 s, and `city_copy` is city_metrics under another name.
    let mut next = (*spec).clone();
    let city = next.metrics.iter().position(|m| m.name == "city_metrics").expect("city_metrics");
    let mut copy = next.metrics[city].clone();
    copy.name = "city_copy".into();
    next.metrics[city].lateness = pulse_model::Millis(60_000);
    next.metrics.push(copy);
    let next = Arc::new(next);
    rt.block_on(migrate(&ch, &next)).expect("migrate the new metric's table");
    // The stream went on while the job was down (written before it starts again:
    // a pause longer than idle_timeout would let the quiet domain's clock close windows).
    rt.block_on(produce_and_store(&next, &kafka, &ch, &more_rides(&rt, &ch, &first, 42)));
    let (stop, job) = start_job(Arc::clone(&next), kafka.clone(), ch.clone(), rt.handle().clone(), &group);
    std::thread::sleep(Duration::from_secs(10));
    stop.trigger();
    job.join().expect("job thread");
    let after = rt.block_on(clickhouse_finals(&next, &ch));

    let replaced = replaced(&before, &after);
    assert!(replaced.is_empty(), "{} of {} finals changed by the new spec:\n{}", replaced.len(), before.len(), replaced.join("\n"));
    // Every closed city_metrics window of the first run has its city_copy twin, equal to SQL.
    let copy = next.metric("city_copy").expect("city_copy");
    let mut missing = Vec::new();
    for ((metric, g, ws), values) in &before {
        if metric != "city_metrics" {
            continue;
        }
        match after.get(&("city_copy".to_string(), g.clone(), *ws)) {
            Some(v) if close(v, values) => {}
            other => missing.push(format!("{g}/{ws}: city_metrics {values:?}, city_copy {other:?}")),
        }
    }
    assert!(missing.is_empty(), "{} city_copy windows missing or different:\n{}", missing.len(), missing.join("\n"));
    for ((metric, g, ws), values) in &after {
        if metric == "city_copy" {
            let expected = rt.block_on(recomputed(&next, &ch, copy, *ws, g)).unwrap_or_default();
            if !close(values, &expected) {
                let progress: Vec<(String, i64)> =
                    rt.block_on(ch.client().query("SELECT domain, closed FROM pulse_progress ORDER BY written_at").fetch_all()).unwrap_or_default();
                let revs: Vec<(u64, bool, i64)> = rt
                    .block_on(ch.client().query("SELECT revision, final, toUnixTimestamp64Milli(emitted_at) FROM city_copy WHERE city = ? AND toUnixTimestamp64Milli(window_start) = ?").bind(g.as_str()).bind(*ws).fetch_all())
                    .unwrap_or_default();
                panic!("city_copy/{g}/{ws}: {values:?} != SQL {expected:?}\nprogress {progress:?}\nrows {revs:?}");
            }
        }
    }
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}
