//! The dataflow as a service: Kafka (librdkafka's mock cluster) in, ClickHouse
//! and the aggregated topic out. Final windows equal ClickHouse's own batch
//! recomputation over the same events; each final appears once on the topic
//! even across a stop and restart; live revisions come before finals; late
//! events are counted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pulse_dataflow::service::{Cluster, DataflowConfig, run};
use pulse_kafka::testing::unique_spec;
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::generate::{GenConfig, GenDomain, GenOp, Generator};
use pulse_model::{Decoder, Spec};
use pulse_ops::prometheus::Registry;
use pulse_ops::{Readiness, Shutdown};
use pulse_sink::schema::{Provenance, raw_table};
use pulse_sink::testing::stack_clickhouse;
use pulse_sink::verify::recompute_sql;
use pulse_sink::{ClickHouseConfig, Writer, WriterMetrics, migrate};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Generated writes as the records producers would send straight to Kafka.
fn records(n: usize, seed: u64, start_ms: i64, version0: u64) -> Vec<(GenDomain, String, String)> {
    // Changes pick among the last 10 app events (about 2 s of event time): they
    // arrive before any window of their event closes (30 s of lateness), so the
    // finals must equal SQL over the final table. A change arriving later is late
    // for the windows already closed and, by design, does not change them.
    let cfg = GenConfig { seed, start_ms, rate: 40.0, disorder_ms: 2_000, update_fraction: 0.03, delete_fraction: 0.02, change_pool: 10, ..GenConfig::default() };
    let mut version = version0;
    // App event ids are unique to each call (the generator numbers them from 1).
    let unique = |s: String| s.replace("app-", &format!("app{seed}-"));
    Generator::new(cfg)
        .take(n)
        .map(|op| {
            version += 1;
            match op {
                GenOp::Insert { domain, json } | GenOp::Update { domain, json, .. } => {
                    let v: serde_json::Value = serde_json::from_str(&json).expect("generated JSON");
                    let key = match domain {
                        GenDomain::Rides => v["ride_id"].as_str(),
                        GenDomain::DriverLocations => v["driver_id"].as_str(),
                        GenDomain::AppEvents => v["event_id"].as_str(),
                    }
                    .unwrap_or_default()
                    .to_string();
                    let json = if domain == GenDomain::AppEvents { format!("{},\"_version\":{version}}}", &json[..json.len() - 1]) } else { json };
                    (domain, unique(key), unique(json))
                }
                GenOp::Delete { domain, id } => {
                    let id = unique(id);
                    (domain, id.clone(), format!("{{\"event_id\":\"{id}\",\"_deleted\":true,\"_version\":{version}}}"))
                }
            }
        })
        .collect()
}

/// Produces the records and stores each one in its raw table (the ground truth for SQL).
async fn produce_and_store(spec: &Spec, kafka: &KafkaConfig, ch: &ClickHouseConfig, recs: &[(GenDomain, String, String)]) {
    let producer: FutureProducer = kafka.reliable_producer().create().expect("producer");
    let writer = Writer::new(ch, WriterMetrics::new(&Registry::new()));
    let mut bodies: HashMap<usize, (BytesMut, usize)> = HashMap::new();
    let decoders: Vec<Decoder> = spec.domains.iter().map(Decoder::new).collect();
    for chunk in recs.chunks(2_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(gd, key, json)| {
                let d = spec.domain_index(gd.name()).expect("domain");
                let topic = spec.domains[d].topic.clone();
                let producer = producer.clone();
                async move {
                    let delivery = producer.send(FutureRecord::to(&topic).key(key).payload(json), Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("ack");
                    (d, delivery.partition, delivery.offset)
                }
            })
            .collect();
        let acks = futures::future::join_all(sends).await;
        for ((_, _, json), (d, partition, offset)) in chunk.iter().zip(acks) {
            let ev = decoders[d].decode(json.as_bytes()).expect("valid event");
            let domain = &spec.domains[d];
            let at = Provenance { topic: &domain.topic, partition, offset, timestamp_ms: ev.time };
            let (buf, n) = bodies.entry(d).or_insert_with(|| (BytesMut::new(), 0));
            raw_table(domain).encode(&ev, &at, buf);
            *n += 1;
        }
    }
    for (d, (body, n)) in bodies {
        let t = raw_table(&spec.domains[d]).table;
        writer.insert(&t.name, &t.insert_sql(&ch.database), body.freeze(), n, &Shutdown::new()).await.expect("raw insert");
    }
}

fn start_job(spec: Arc<Spec>, kafka: KafkaConfig, ch: ClickHouseConfig, rt: tokio::runtime::Handle) -> (Shutdown, std::thread::JoinHandle<Vec<pulse_dataflow::job::WorkerSummary>>) {
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let handle = std::thread::spawn(move || {
        let cfg = DataflowConfig {
            group: "df-live".into(),
            cluster: Cluster::Process { workers: 2 },
            emit_interval: Some(Duration::from_millis(100)),
            idle_timeout: Some(Duration::from_secs(2)),
            ..DataflowConfig::default()
        };
        run(spec, &kafka, &ch, cfg, Registry::new(), Readiness::default(), s, &rt).expect("dataflow runs")
    });
    (shutdown, handle)
}

fn as_f64(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

/// Final rows of every metric in ClickHouse, by (metric, group, window).
async fn clickhouse_finals(spec: &Spec, ch: &ClickHouseConfig) -> HashMap<(String, String, i64), Vec<Option<f64>>> {
    let client = ch.client();
    let mut out = HashMap::new();
    for m in &spec.metrics {
        let group = &spec.metric_domain(m).fields[m.group_by[0]].name;
        let aggs: Vec<String> = m.aggregates.iter().map(|a| format!("`{}`", a.name)).collect();
        let sql = format!(
            "SELECT toString(`{group}`) AS g, toUnixTimestamp64Milli(window_start) AS ws, {} FROM `{}` FINAL WHERE final FORMAT JSONEachRow",
            aggs.join(", "),
            m.name
        );
        let mut cursor = client.query(&sql).fetch_bytes("JSONEachRow").expect("query");
        let bytes = cursor.collect().await.expect("rows");
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("json row");
            let ws = v["ws"].as_i64().or_else(|| v["ws"].as_str().and_then(|s| s.parse().ok())).expect("ws");
            let vals = m.aggregates.iter().map(|a| as_f64(&v[&a.name]).or_else(|| v[&a.name].as_str().and_then(|s| s.parse().ok()))).collect();
            out.insert((m.name.clone(), v["g"].as_str().unwrap_or_default().to_string(), ws), vals);
        }
    }
    out
}

/// ClickHouse's batch recomputation of the same windows from the raw tables.
async fn recomputed(spec: &Spec, ch: &ClickHouseConfig, metric: &pulse_model::Metric, window_start: i64, group: &str) -> Option<Vec<Option<f64>>> {
    let sql = recompute_sql(spec, metric, &ch.database);
    let gname = &spec.metric_domain(metric).fields[metric.group_by[0]].name;
    let sql = format!("SELECT * FROM ({sql}) WHERE toString(`{gname}`) = {{g:String}} FORMAT JSONEachRow");
    let mut cursor = ch.client().query_raw(&sql).param("from", window_start).param("to", window_start + 1).param("g", group).fetch_bytes("JSONEachRow").expect("query");
    let bytes = cursor.collect().await.expect("rows");
    let line = bytes.split(|b| *b == b'\n').find(|l| !l.is_empty())?;
    let v: serde_json::Value = serde_json::from_slice(line).expect("json");
    Some(metric.aggregates.iter().map(|a| as_f64(&v[&a.name]).or_else(|| v[&a.name].as_str().and_then(|s| s.parse().ok()))).collect())
}

fn close(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
            (None, None) => true,
            // A count of zero and an absent aggregate are the same empty window.
            (Some(x), None) | (None, Some(x)) => *x == 0.0,
        })
}

/// Every row on the aggregated topic: (key, final, revision, json).
fn topic_rows(kafka: &KafkaConfig, topic: &str) -> Vec<(String, bool, u64, serde_json::Value)> {
    let consumer: BaseConsumer = kafka.consumer("df-live-reader").create().expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
        ends.insert(p.id(), high);
    }
    consumer.assign(&tpl).expect("assign");
    let mut rows = Vec::new();
    let mut done: HashSet<i32> = ends.iter().filter(|(_, h)| **h == 0).map(|(p, _)| *p).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < ends.len() && Instant::now() < deadline {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let v: serde_json::Value = serde_json::from_slice(msg.payload().unwrap_or_default()).expect("row json");
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        rows.push((key, v["final"].as_bool().unwrap_or(false), v["revision"].as_u64().unwrap_or(0), v));
        if msg.offset() + 1 >= ends[&msg.partition()] {
            done.insert(msg.partition());
        }
    }
    rows
}

#[test]
fn finals_equal_sql_recomputation_across_a_restart() {
    // Recent, so that the raw tables' TTL keeps the events the SQL recomputes from.
    let start_ms = pulse_model::generate::recent_start_ms();
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
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone());
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
    let late = vec![(GenDomain::Rides, "late-1".to_string(), format!(
        "{{\"event_type\":\"requested\",\"ride_id\":\"late-1\",\"city\":\"Lima\",\"estimated_fare\":1,\"user_id\":\"u-late\",\"timestamp\":{start_ms}}}"
    ))];
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone());
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
        // The late ride sits in the raw table but in no window: skip its windows.
        if metric == "city_metrics" && group == "Lima" && *ws <= start_ms && start_ms < ws + 300_000 {
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
        if *is_final {
            assert!(final_keys.insert(key.clone(), (*revision, v.clone())).is_none(), "final emitted twice: {key}");
        }
    }
    assert_eq!(final_keys.len(), finals.len(), "finals on the topic and in ClickHouse");
    let with_live_revision_first = final_keys
        .iter()
        .filter(|(k, (rev, _))| rows.iter().any(|(k2, f, r2, _)| k2 == *k && !f && r2 < rev))
        .count();
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
