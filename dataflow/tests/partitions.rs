//! Partitions added while the job runs, on the local broker (Tansu) and
//! ClickHouse: the job finds them within its metadata interval, their owner
//! (by partition number, so every worker agrees) reads them from their first
//! offset, and their events are counted exactly once: every final equals SQL
//! over the raw table, and every record is counted once, none late.
//!
//! Tansu 0.6 (and librdkafka's mock cluster) cannot add partitions to a topic
//! (CreatePartitions is unsupported), so here the rides topic's partitions
//! appear while the job runs by creating the topic then (0 -> 12 partitions);
//! on a broker that can, the test grows it by four more as well.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clickhouse_finals, close, on_the_local_broker, produce_and_store, produce_and_store_to, recomputed, records, short_windows_spec, start_job_with};
use pulse_dataflow::service::{Cluster, DataflowConfig};
use pulse_gen::GenDomain;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

type Recs = Vec<(GenDomain, String, String)>;

/// Rides of a city of their own, about now.
fn city_rides(city: &str, n: i64, now: i64) -> Recs {
    (0..n)
        .map(|i| {
            let id = format!("{city}-{i}");
            let kind = ["requested", "accepted", "completed", "cancelled"][(i % 4) as usize];
            let json = format!(
                "{{\"event_type\":\"{kind}\",\"ride_id\":\"{id}\",\"city\":\"{city}\",\"estimated_fare\":{}.5,\"user_id\":\"{city}-u{}\",\"timestamp\":{}}}",
                i % 40,
                i % 37,
                now - 2_000 + i * 25
            );
            (GenDomain::Rides, id, json)
        })
        .collect()
}

/// Waits until the broker's metadata shows `partitions` partitions of `topic`.
fn wait_for_partitions(kafka: &pulse_kafka::KafkaConfig, topic: &str, partitions: i32) {
    let probe: BaseConsumer = kafka.consumer("df-partitions-probe").create().expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.fetch_metadata(Some(topic), Duration::from_secs(5)).ok().and_then(|md| md.topics().first().map(|t| t.partitions().len()))
        != Some(partitions as usize)
    {
        assert!(Instant::now() < deadline, "the broker does not show {partitions} partitions of {topic}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn partitions_added_while_the_job_runs_are_read_once() {
    let spec = short_windows_spec();
    let rides = spec.domain("rides").expect("rides").clone();
    let Some((rt, kafka, ch, group)) = on_the_local_broker("df_partitions", &spec, &[&rides.topic]) else { return };
    let metric = spec.metric("city_metrics").expect("city_metrics");

    let admin: AdminClient<DefaultClientContext> = kafka.client().create().expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));

    // The other domains' events, read by a job of two workers; the rides topic has no partition yet.
    let others = |recs: Recs| -> Recs { recs.into_iter().filter(|(d, _, _)| *d != GenDomain::Rides).collect() };
    let first = others(records(800, 51, pulse_model::now_ms() - 20_000, 0));
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &first));
    let cfg = DataflowConfig {
        group,
        cluster: Cluster::Process { workers: 2 },
        emit_interval: Some(Duration::from_millis(100)),
        idle_timeout: Some(Duration::from_secs(2)),
        metadata_interval: Duration::from_secs(1),
        ..DataflowConfig::default()
    };
    let (stop, job) = start_job_with(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rt.block_on(clickhouse_finals(&spec, &ch)).keys().any(|(m, _, _)| m == "event_metrics") {
        assert!(Instant::now() < deadline, "no finals from the first events");
        std::thread::sleep(Duration::from_millis(300));
    }

    // The rides topic's partitions appear while the job runs.
    let created = rt.block_on(admin.create_topics([&NewTopic::new(&rides.topic, rides.partitions, TopicReplication::Fixed(1))], &opts)).expect("create topic");
    for r in created {
        r.map_err(|(t, e)| format!("{t}: {e}")).expect("rides topic created");
    }
    wait_for_partitions(&kafka, &rides.topic, rides.partitions);
    let now = pulse_model::now_ms();
    // A city written to partitions 8..12 only, and the ordinary stream around it.
    let newport: Recs = city_rides("Newport", 400, now);
    rt.block_on(produce_and_store_to(&spec, &kafka, &ch, &newport, &|i| Some(8 + (i as i32 % 4))));
    let second = records(800, 52, now - 1_000, 1_000_000);
    rt.block_on(produce_and_store(&spec, &kafka, &ch, &second));
    let mut partitions = rides.partitions;

    // Four partitions more, where the broker can add them.
    let grown = partitions + 4;
    let grow = NewPartitions::new(&rides.topic, grown as usize);
    let added: Recs = match rt.block_on(admin.create_partitions([&grow], &opts)) {
        Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature)) => {
            eprintln!("the broker cannot add partitions (CreatePartitions): only the topic created while running is tested");
            Vec::new()
        }
        result => {
            for r in result.expect("create partitions") {
                r.map_err(|(t, e)| format!("{t}: {e}")).expect("partitions added");
            }
            wait_for_partitions(&kafka, &rides.topic, grown);
            let recs = city_rides("Eastport", 400, pulse_model::now_ms());
            rt.block_on(produce_and_store_to(&spec, &kafka, &ch, &recs, &|i| Some(partitions + (i as i32 % 4))));
            partitions = grown;
            recs
        }
    };

    // Every window holding a ride becomes final (the domain then goes quiet).
    let rides_recs: Vec<&(GenDomain, String, String)> = newport.iter().chain(&second).chain(&added).filter(|(d, _, _)| *d == GenDomain::Rides).collect();
    let ride_times: Vec<i64> = rides_recs.iter().filter_map(|(_, _, j)| serde_json::from_str::<serde_json::Value>(j).ok()?["timestamp"].as_i64()).collect();
    let (window, slide) = (metric.window.ms(), metric.slide.ms());
    let expected: BTreeSet<i64> = ride_times.iter().flat_map(|&t| (0..window / slide).map(move |k| (t.div_euclid(slide) - k) * slide)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let finals = loop {
        let finals = rt.block_on(clickhouse_finals(&spec, &ch));
        let closed: BTreeSet<i64> = finals.keys().filter(|(m, _, _)| m == "city_metrics").map(|(_, _, ws)| *ws).collect();
        if expected.is_subset(&closed) {
            break finals;
        }
        assert!(Instant::now() < deadline, "windows never closed: {:?}", expected.difference(&closed).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.trigger();
    let summaries = job.join().expect("job thread");

    // Every event record counted once: none missed, none read twice, none late.
    let sum = |f: fn(&pulse_dataflow::job::WorkerSummary) -> u64| summaries.iter().map(f).sum::<u64>();
    let events = (first.len() + newport.len() + second.len() + added.len()) as u64;
    assert_eq!(sum(|s| s.events + s.stale + s.duplicates + s.late), events, "{summaries:?}");
    assert_eq!(sum(|s| s.late + s.duplicates), 0, "{summaries:?}");
    // The cities of the new partitions are there, and every ride final equals SQL over the raw table.
    for city in ["Newport"].into_iter().chain((!added.is_empty()).then_some("Eastport")) {
        let n = finals.keys().filter(|(m, g, _)| m == "city_metrics" && g == city).count();
        assert!(n >= 2, "{n} finals of {city}");
    }
    for ((m, group_value, ws), values) in &finals {
        if m != "city_metrics" {
            continue;
        }
        let sql = rt.block_on(recomputed(&spec, &ch, metric, *ws, group_value)).unwrap_or_default();
        assert!(close(values, &sql), "{group_value}/{ws}: {values:?} != SQL {sql:?}");
    }
    eprintln!("{} ride finals over {partitions} partitions equal SQL; {summaries:?}", finals.keys().filter(|(m, _, _)| m == "city_metrics").count());
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}
