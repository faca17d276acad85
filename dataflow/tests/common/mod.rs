//! What the dataflow's service tests share: generated records produced to
//! Kafka and stored in the raw tables (the ground truth), the job started as a
//! library service, and its finals read back from ClickHouse and the topic.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pulse_clickhouse::recompute::recompute_sql;
use pulse_clickhouse::schema::{Provenance, raw_table};
use pulse_clickhouse::{ClickHouseConfig, Writer, WriterMetrics};
use pulse_dataflow::service::{Cluster, DataflowConfig, run};
use pulse_gen::{GenConfig, GenDomain, Generator};
use pulse_kafka::KafkaConfig;
use pulse_model::{Decoder, Spec};
use pulse_ops::prometheus::Registry;
use pulse_ops::{Readiness, ServiceContext, Shutdown};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Generated writes as the records producers would send straight to Kafka.
pub fn records(n: usize, seed: u64, start_ms: i64, version0: u64) -> Vec<(GenDomain, String, String)> {
    // Changes pick among the last 10 app events (about 2 s of event time): they
    // arrive before any window of their event closes (30 s of lateness), so the
    // finals must equal SQL over the final table. A change arriving later is late
    // for the windows already closed and, by design, does not change them.
    let cfg =
        GenConfig { seed, start_ms, rate: 40.0, disorder_ms: 2_000, update_fraction: 0.03, delete_fraction: 0.02, change_pool: 10, ..GenConfig::default() };
    let mut version = version0;
    // App event ids are unique to each call (the generator numbers them from 1).
    let unique = |s: String| s.replace("app-", &format!("app{seed}-"));
    Generator::new(cfg)
        .take(n)
        .map(|op| {
            version += 1;
            let (key, json) = op.kafka_record(version);
            (op.domain(), unique(key), unique(json))
        })
        .collect()
}

/// Produces the records and stores each one in its raw table (the ground truth for SQL).
pub async fn produce_and_store(spec: &Spec, kafka: &KafkaConfig, ch: &ClickHouseConfig, recs: &[(GenDomain, String, String)]) {
    produce_and_store_to(spec, kafka, ch, recs, &|_| None).await;
}

pub fn start_job(
    spec: Arc<Spec>,
    kafka: KafkaConfig,
    ch: ClickHouseConfig,
    rt: tokio::runtime::Handle,
    group: &str,
) -> (Shutdown, std::thread::JoinHandle<Vec<pulse_dataflow::job::WorkerSummary>>) {
    let (shutdown, handle, _) = start_job_watched(spec, kafka, ch, rt, group, Readiness::default());
    (shutdown, handle)
}

/// The job as a service, with the readiness its operations endpoint would show.
pub fn start_job_watched(
    spec: Arc<Spec>,
    kafka: KafkaConfig,
    ch: ClickHouseConfig,
    rt: tokio::runtime::Handle,
    group: &str,
    ready: Readiness,
) -> (Shutdown, std::thread::JoinHandle<Vec<pulse_dataflow::job::WorkerSummary>>, Readiness) {
    let watched = ready.clone();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let group = group.to_string();
    let handle = std::thread::spawn(move || {
        let cfg = DataflowConfig {
            group,
            cluster: Cluster::Process { workers: 2 },
            emit_interval: Some(Duration::from_millis(100)),
            idle_timeout: Some(Duration::from_secs(2)),
            ..DataflowConfig::default()
        };
        run(spec, &kafka, &ch, cfg, ServiceContext::new(rt, s).with_ready(ready)).expect("dataflow runs")
    });
    (shutdown, handle, watched)
}

pub fn as_f64(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
}

/// Final rows of every metric in ClickHouse, by (metric, group, window).
pub async fn clickhouse_finals(spec: &Spec, ch: &ClickHouseConfig) -> HashMap<(String, String, i64), Vec<Option<f64>>> {
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

/// Where the stream may go on, after a run of the job, without any event
/// being late: at or after the newest event of that run (less a second of
/// overlap), and past every window end the run finalised (its metrics'
/// progress) plus the generator's disorder. A run that idles on its caught-up
/// partitions lets their watermark follow the wall clock and finalises
/// windows up to about the wall clock less lateness; an event dated in such a
/// window is late by design (its finals keep out what the raw tables keep), so
/// a continuation dated there would make finals differ from SQL over the raw
/// tables by how long the run happened to last.
pub async fn continuation_start(ch: &ClickHouseConfig, recs: &[(GenDomain, String, String)]) -> i64 {
    let newest = recs.iter().filter_map(|(_, _, j)| serde_json::from_str::<serde_json::Value>(j).ok()?["timestamp"].as_i64()).max().unwrap_or(0);
    let sql = format!("SELECT max(closed) FROM `{}` FINAL WHERE domain LIKE 'metric/%'", pulse_clickhouse::schema::PROGRESS_TABLE);
    let finalised: i64 = ch.client().query(&sql).fetch_one().await.expect("progress");
    // The generator moves events up to 2 s back in time.
    (newest - 1_000).max(finalised + 3_000)
}

/// ClickHouse's batch recomputation of the same windows from the raw tables.
pub async fn recomputed(spec: &Spec, ch: &ClickHouseConfig, metric: &pulse_model::Metric, window_start: i64, group: &str) -> Option<Vec<Option<f64>>> {
    if metric.is_derived() {
        // A derived metric: the join of its inputs' recomputations.
        let m = spec.metrics.iter().position(|x| x.name == metric.name)?;
        let rows = pulse_dataflow::backfill::recompute(spec, m, ch, window_start, window_start + 1, 0).await.expect("recompute the inputs");
        let row = rows.into_iter().find(|r| match r.group.first() {
            Some(pulse_model::metric_row::GroupValue::Str(s)) => &**s == group,
            Some(other) => format!("{other:?}") == group,
            None => group.is_empty(),
        })?;
        return Some(row.values.iter().map(|v| v.as_f64()).collect());
    }
    let sql = recompute_sql(spec, metric, &ch.database);
    let gname = &spec.metric_domain(metric).fields[metric.group_by[0]].name;
    let sql = format!("SELECT * FROM ({sql}) WHERE toString(`{gname}`) = {{g:String}} FORMAT JSONEachRow");
    let mut cursor =
        ch.client().query_raw(&sql).param("from", window_start).param("to", window_start + 1).param("g", group).fetch_bytes("JSONEachRow").expect("query");
    let bytes = cursor.collect().await.expect("rows");
    let line = bytes.split(|b| *b == b'\n').find(|l| !l.is_empty())?;
    let v: serde_json::Value = serde_json::from_slice(line).expect("json");
    Some(metric.aggregates.iter().map(|a| as_f64(&v[&a.name]).or_else(|| v[&a.name].as_str().and_then(|s| s.parse().ok()))).collect())
}

pub fn close(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
            (None, None) => true,
            // A count of zero and an absent aggregate are the same empty window.
            (Some(x), None) | (None, Some(x)) => *x == 0.0,
        })
}

/// Every row on the aggregated (or alerts) topic: (key, final, revision, json).
pub fn topic_rows(kafka: &KafkaConfig, topic: &str) -> Vec<(String, bool, u64, serde_json::Value)> {
    let rows = pulse_testkit::read_topic(kafka, topic).into_iter();
    rows.map(|r| (r.key.unwrap_or_default(), r.value["final"].as_bool().unwrap_or(false), r.value["revision"].as_u64().unwrap_or(0), r.value)).collect()
}

/// `produce_and_store`, each record sent to the partition `partition_of(i)`
/// says (its key's partition when `None`).
pub async fn produce_and_store_to(
    spec: &Spec,
    kafka: &KafkaConfig,
    ch: &ClickHouseConfig,
    recs: &[(GenDomain, String, String)],
    partition_of: &(dyn Fn(usize) -> Option<i32> + Sync),
) {
    let producer: FutureProducer = kafka.reliable_producer().create().expect("producer");
    let writer = Writer::new(ch, WriterMetrics::new(&Registry::new()).expect("metrics"));
    let mut bodies: HashMap<usize, (BytesMut, usize)> = HashMap::new();
    let decoders: Vec<Decoder> = spec.domains.iter().map(Decoder::new).collect();
    for (c, chunk) in recs.chunks(2_000).enumerate() {
        let sends: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (gd, key, json))| {
                let d = spec.domain_index(gd.name()).expect("domain");
                let topic = spec.domains[d].topic.clone();
                let producer = producer.clone();
                let partition = partition_of(c * 2_000 + i);
                async move {
                    let mut record = FutureRecord::to(&topic).key(key).payload(json);
                    if let Some(p) = partition {
                        record = record.partition(p);
                    }
                    let delivery = producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("ack");
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

/// The default spec with unique topics and short windows (20 s sliding every
/// 10 s, 5 s of lateness), so that windows close within seconds.
pub fn short_windows_spec() -> Arc<Spec> {
    let text = pulse_testkit::unique_spec_text()
        .replace("window = \"5m\"", "window = \"20s\"")
        .replace("slide = \"1m\"", "slide = \"10s\"")
        .replace("lateness = \"30s\"", "lateness = \"5s\"");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
    Arc::new(Spec::parse(&path, &text).unwrap_or_else(|e| panic!("{e}")))
}

/// A runtime, `spec`'s topics on the local broker (Tansu) but those of
/// `later` (created by the test), a migrated database and a consumer group of
/// its own; `None` without the local stack.
pub fn on_the_local_broker(name: &str, spec: &Spec, later: &[&str]) -> Option<(tokio::runtime::Runtime, KafkaConfig, ClickHouseConfig, String)> {
    let brokers = pulse_testkit::stack_brokers()?;
    let ch = pulse_testkit::stack_clickhouse(&format!("pulse_{name}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let kafka = KafkaConfig { brokers, properties: Vec::new() };
    rt.block_on(async {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> = kafka.client().create().expect("admin");
        let plans: Vec<_> = pulse_kafka::plan_topics(spec).into_iter().filter(|p| !later.contains(&p.name.as_str())).collect();
        pulse_kafka::ensure_topics(&admin, &plans).await.expect("topics");
    });
    rt.block_on(pulse_clickhouse::migrate(&ch, spec)).expect("migrate");
    let group = pulse_testkit::unique_name(&name.replace('_', "-"));
    Some((rt, kafka, ch, group))
}

/// The job as a service with the given configuration (its group, workers, timings).
pub fn start_job_with(
    spec: Arc<Spec>,
    kafka: KafkaConfig,
    ch: ClickHouseConfig,
    rt: tokio::runtime::Handle,
    cfg: DataflowConfig,
) -> (Shutdown, std::thread::JoinHandle<Vec<pulse_dataflow::job::WorkerSummary>>) {
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let handle = std::thread::spawn(move || run(spec, &kafka, &ch, cfg, ServiceContext::new(rt, s)).expect("dataflow runs"));
    (shutdown, handle)
}
