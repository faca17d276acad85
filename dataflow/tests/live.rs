//! The dataflow as a service: Kafka (librdkafka's mock cluster) in, ClickHouse
//! and the aggregated topic out. Final windows equal ClickHouse's own batch
//! recomputation over the same events; each final appears once on the topic
//! even across a stop and restart; live revisions come before finals; late
//! events are counted.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clickhouse_finals, close, produce_and_store, recomputed, records, start_job, topic_rows};
use pulse_clickhouse::migrate;
use pulse_gen::GenDomain;
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_testkit::stack_clickhouse;
use pulse_testkit::unique_spec;
use rdkafka::mocking::MockCluster;

#[test]
fn finals_equal_sql_recomputation_across_a_restart() {
    // Recent, so that the raw tables' TTL keeps the events the SQL recomputes from.
    let start_ms = pulse_gen::recent_start_ms();
    let Some(ch) = stack_clickhouse("pulse_df_live") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(3).expect("mock cluster");
    let spec = unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(migrate(&ch, &spec)).expect("migrate");

    // 40 events per second of event time: 12,000 events span 5 minutes.
    let first = records(12_000, 7, start_ms, 0);
    let last_ts = |recs: &[(GenDomain, String, String)]| {
        recs.iter().filter_map(|(_, _, j)| serde_json::from_str::<serde_json::Value>(j).ok()?["timestamp"].as_i64()).max().unwrap_or(0)
    };
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &first));
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), "df-live");
    // Wait for some finals, then stop in the middle of the stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(clickhouse_finals(&spec, &ch)).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.trigger();
    let before = job.join().expect("job thread");
    assert!(before.iter().map(|s| s.events).sum::<u64>() > 0);

    // More events (continuing in event time), a few of them far too late.
    let second = records(12_000, 8, last_ts(&first) - 2_000, 1_000_000);
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &second[..4_000]));
    let late = vec![(
        GenDomain::Rides,
        "late-1".to_string(),
        format!(
            "{{\"event_type\":\"requested\",\"ride_id\":\"late-1\",\"city\":\"Lima\",\"estimated_fare\":1,\"user_id\":\"u-late\",\"timestamp\":{start_ms}}}"
        ),
    )];
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), "df-live");
    // Broker faults while the job runs and events keep coming: every partition's
    // leader moves, then one broker goes down for 3 s and comes back.
    let rest = {
        let (spec, kafka, ch, recs) = (Arc::clone(&spec), kafka.clone(), ch.clone(), second[4_000..].to_vec());
        rt.spawn(async move { produce_and_store(&spec, &kafka, &ch, &recs).await })
    };
    std::thread::sleep(Duration::from_millis(500));
    for d in &spec.domains {
        for p in 0..d.partitions {
            mock.partition_leader(&d.topic, p, Some(1 + (p + 1) % 3)).expect("leader change");
        }
    }
    mock.broker_down(2).expect("broker down");
    std::thread::sleep(Duration::from_secs(3));
    mock.broker_up(2).expect("broker up");
    rt.block_on(rest).expect("producer task");
    // Every window ending a minute before the newest event must become final.
    let horizon = last_ts(&second) - 60_000;
    let expected_closed = |finals: &HashMap<(String, String, i64), Vec<Option<f64>>>| {
        // Windows from the one holding the whole first minute on (earlier ones see only a few cities).
        finals.keys().filter(|(m, _, ws)| m == "city_metrics" && *ws >= start_ms - 240_000 && ws + 300_000 <= horizon).count()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut finals = rt.block_on(clickhouse_finals(&spec, &ch));
    while Instant::now() < deadline && expected_closed(&finals) < 20 * 8 {
        std::thread::sleep(Duration::from_millis(500));
        finals = rt.block_on(clickhouse_finals(&spec, &ch));
    }
    // Now a ride from the first minute arrives: every window holding it is closed.
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &late));
    std::thread::sleep(Duration::from_secs(2));
    finals = rt.block_on(clickhouse_finals(&spec, &ch));
    stop.trigger();
    let after = job.join().expect("job thread");
    assert!(after.iter().map(|s| s.late).sum::<u64>() >= 1, "the late ride is counted as late: {after:?}");

    // 1. Every final equals ClickHouse's recomputation over the raw events.
    let mut checked = 0;
    for ((metric, group, ws), values) in &finals {
        let m = spec.metric(metric).expect("metric");
        // The late ride sits in the raw table but in no window: skip its windows
        // (and those of the metric derived from city_metrics).
        if (metric == "city_metrics" || metric == "city_balance") && group == "Lima" && *ws <= start_ms && start_ms < ws + 300_000 {
            continue;
        }
        let expected = rt.block_on(recomputed(&spec, &ch, m, *ws, group)).unwrap_or_default();
        assert!(close(values, &expected), "{metric}/{group}/{ws}: dataflow {values:?} != SQL {expected:?}\nfirst run {before:?}\nsecond run {after:?}");
        checked += 1;
    }
    assert!(checked >= 20 * 8, "only {checked} finals checked");
    // Windows that closed must all be there (20 cities, 8 window starts).
    assert!(expected_closed(&finals) >= 20 * 8, "{} closed city windows", expected_closed(&finals));

    // 2. The aggregated topic holds each final exactly once, equal to ClickHouse's,
    //    after live revisions of the same window.
    let rows = topic_rows(&kafka, &spec.pipeline.aggregated_topic);
    let mut final_keys = HashMap::new();
    for (key, is_final, revision, v) in &rows {
        // A window that ended empty is withdrawn (a final row marked deleted): no final in ClickHouse.
        if *is_final && v["deleted"] != true {
            assert!(final_keys.insert(key.clone(), (*revision, v.clone())).is_none(), "final emitted twice: {key}");
        }
    }
    assert_eq!(final_keys.len(), finals.len(), "finals on the topic and in ClickHouse");
    let with_live_revision_first = final_keys.iter().filter(|(k, (rev, _))| rows.iter().any(|(k2, f, r2, _)| k2 == *k && !f && r2 < rev)).count();
    assert!(with_live_revision_first * 2 > final_keys.len(), "most windows were seen live before final ({with_live_revision_first} of {})", final_keys.len());
    for (key, (_, v)) in &final_keys {
        let metric = v["metric"].as_str().unwrap_or_default();
        let m = spec.metric(metric).expect("metric");
        let group = v[&spec.metric_domain(m).fields[m.group_by[0]].name].as_str().unwrap_or_default().to_string();
        let ws = v["window_start"].as_i64().unwrap_or_default();
        let ch_values = &finals[&(metric.to_string(), group, ws)];
        let topic_values: Vec<Option<f64>> = m.aggregates.iter().map(|a| v[&a.name].as_f64()).collect();
        assert!(close(&topic_values, ch_values), "{key}: topic {topic_values:?} != ClickHouse {ch_values:?}");
    }
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}
