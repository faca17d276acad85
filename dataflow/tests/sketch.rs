//! Sketch aggregates end to end: a spec declaring `hll` count_distinct and
//! `ddsketch` quantiles next to the exact ones, fed production-shaped data
//! (every visit a new user, unique float latencies; on a mutable domain,
//! updates and deletes too). Every final equals ClickHouse's exact SQL
//! recomputation over the raw tables (`recompute_sql`): the exact aggregates
//! to the last bit, the sketches within their stated error (HLL: 3 standard
//! errors, 3 x 1.04 / sqrt(2^p); DDSketch: the relative accuracy).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use pulse_clickhouse::recompute::recompute_sql;
use pulse_clickhouse::schema::{Provenance, raw_table};
use pulse_clickhouse::{ClickHouseConfig, Writer, WriterMetrics};
use pulse_dataflow::replay::{self, ReplayInput, ReplayRecord};
use pulse_model::metric_row::GroupValue;
use pulse_model::spec::{AggKind, AggMethod};
use pulse_model::{Decoder, Spec};
use pulse_ops::Shutdown;
use pulse_ops::prometheus::Registry;
use pulse_testkit::stack_clickhouse;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SPEC: &str = r#"
[[domain]]
name = "visits"
topic = "visits"
partitions = 4
key = "id"
time_field = "ts"
fields = [
  { name = "id", type = "string" },
  { name = "page", type = "string", dimension = true },
  { name = "user", type = "string" },
  { name = "latency", type = "float" },
  { name = "ts", type = "timestamp" },
]

[[domain]]
name = "calls"
topic = "calls"
partitions = 3
key = "event_id"
time_field = "ts"
mutable = true
fields = [
  { name = "event_id", type = "string" },
  { name = "service", type = "string", dimension = true },
  { name = "ms", type = "float" },
  { name = "ts", type = "timestamp" },
]

[[metric]]
name = "page_stats"
domain = "visits"
group_by = ["page"]
window = "20s"
slide = "5s"
lateness = "3s"
aggregates = [
  { name = "n", fn = "count" },
  { name = "users", fn = "count_distinct", field = "user" },
  { name = "users_hll", fn = "count_distinct", field = "user", method = "hll" },
  { name = "users_hll10", fn = "count_distinct", field = "user", method = "hll", precision = 10 },
  { name = "p50", fn = "quantile", field = "latency", q = 0.5 },
  { name = "p50_dd", fn = "quantile", field = "latency", q = 0.5, method = "ddsketch" },
  { name = "p99", fn = "quantile", field = "latency", q = 0.99 },
  { name = "p99_dd", fn = "quantile", field = "latency", q = 0.99, method = "ddsketch" },
  { name = "lo", fn = "min", field = "latency" },
  { name = "per_user", fn = "ratio", numerator = "n", denominator = "users_hll" },
]

[[metric]]
name = "service_stats"
domain = "calls"
group_by = ["service"]
window = "20s"
slide = "10s"
lateness = "3s"
aggregates = [
  { name = "n", fn = "count" },
  { name = "p90", fn = "quantile", field = "ms", q = 0.9 },
  { name = "p90_dd", fn = "quantile", field = "ms", q = 0.9, method = "ddsketch" },
  { name = "p10", fn = "quantile", field = "ms", q = 0.1 },
  { name = "p10_dd", fn = "quantile", field = "ms", q = 0.1, method = "ddsketch", relative_accuracy = 0.02 },
  { name = "hi", fn = "max", field = "ms" },
]
"#;

/// An hour ago (the raw tables' TTL would drop older events), on a minute.
fn t0() -> i64 {
    (pulse_model::now_ms() - 3_600_000) / 60_000 * 60_000
}

/// (domain, partition, payload) of every record, in the order they are sent.
fn records(seed: u64) -> Vec<(usize, i32, String)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    // Live calls: (id, service, ts, version) of the most recent ones, to update or delete.
    let mut recent: Vec<(u64, usize, i64)> = Vec::new();
    let mut version = 0u64;
    let t0 = t0();
    let latency = |rng: &mut SmallRng| rng.random_range(0.0..1.0f64).powi(3) * 900.0 + 5.0 + rng.random_range(0.0..1.0);
    for i in 0..30_000u64 {
        // 300 events per second of event time, up to 200 ms out of order.
        let ts = t0 + (i as i64) * 10 / 3 + rng.random_range(0..200);
        // Every visit from a new user; unique float latencies.
        let page = ["home", "search", "cart", "checkout"][rng.random_range(0..4usize)];
        let payload = format!(r#"{{"id":"v{i}","page":"{page}","user":"u{seed}-{i}","latency":{},"ts":{ts}}}"#, latency(&mut rng));
        out.push((0, (i % 4) as i32, payload));
        if i % 3 != 0 {
            continue;
        }
        version += 1;
        let partition = |id: u64| (id % 3) as i32;
        let roll = rng.random_range(0..10);
        if roll < 2 && !recent.is_empty() {
            // An update of a recent call (its number, or its service too), or a delete.
            let k = rng.random_range(0..recent.len());
            let (id, service, at) = recent[k];
            if roll == 0 {
                recent.swap_remove(k);
                out.push((1, partition(id), format!(r#"{{"event_id":"c{id}","_deleted":true,"_version":{version}}}"#)));
            } else {
                let service = if rng.random_bool(0.3) { rng.random_range(0..3) } else { service };
                recent[k].1 = service;
                let payload = format!(r#"{{"event_id":"c{id}","service":"s{service}","ms":{},"ts":{at},"_version":{version}}}"#, latency(&mut rng) * 2.0);
                out.push((1, partition(id), payload));
            }
        } else {
            let (id, service) = (i, rng.random_range(0..3usize));
            let ms = if rng.random_bool(0.02) { 0.0 } else { latency(&mut rng) };
            out.push((1, partition(id), format!(r#"{{"event_id":"c{id}","service":"s{service}","ms":{ms},"ts":{ts},"_version":{version}}}"#)));
            recent.push((id, service, ts));
            // Changes pick among the last 20 calls (well within the lateness).
            if recent.len() > 20 {
                recent.remove(0);
            }
        }
    }
    out
}

/// Stores every record in its raw table, as the sink would.
async fn store(spec: &Spec, ch: &ClickHouseConfig, recs: &[(usize, i32, String)]) {
    let writer = Writer::new(ch, WriterMetrics::new(&Registry::new()).expect("metrics"));
    let decoders: Vec<Decoder> = spec.domains.iter().map(Decoder::new).collect();
    let mut bodies: BTreeMap<usize, (BytesMut, usize)> = BTreeMap::new();
    for (offset, (d, partition, json)) in recs.iter().enumerate() {
        let ev = decoders[*d].decode(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
        let domain = &spec.domains[*d];
        let at = Provenance { topic: &domain.topic, partition: *partition, offset: offset as i64, timestamp_ms: ev.time };
        let (buf, n) = bodies.entry(*d).or_insert_with(|| (BytesMut::new(), 0));
        raw_table(domain).encode(&ev, &at, buf);
        *n += 1;
    }
    for (d, (body, n)) in bodies {
        let t = raw_table(&spec.domains[d]).table;
        writer.insert(&t.name, &t.insert_sql(&ch.database), body.freeze(), n, &Shutdown::new()).await.expect("raw insert");
    }
}

type Windows = BTreeMap<(String, i64), Vec<Option<f64>>>;

fn number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// ClickHouse's exact recomputation of every window of `metric`.
async fn recomputed(spec: &Spec, ch: &ClickHouseConfig, metric: &pulse_model::Metric, from: i64, to: i64) -> Windows {
    let group = &spec.metric_domain(metric).fields[metric.group_by[0]].name;
    let sql = format!("SELECT toString(`{group}`) AS g, * FROM ({}) FORMAT JSONEachRow", recompute_sql(spec, metric, &ch.database));
    let mut cursor = ch.client().query_raw(&sql).param("from", from).param("to", to).fetch_bytes("JSONEachRow").expect("query");
    let bytes = cursor.collect().await.expect("rows");
    let mut out = Windows::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("json row");
        let ws = number(&v["window_start"]).expect("window_start") as i64;
        let g = v["g"].as_str().unwrap_or_default().to_string();
        out.insert((g, ws), metric.aggregates.iter().map(|a| number(&v[&a.name])).collect());
    }
    out
}

#[test]
fn sketch_finals_are_within_their_error_of_the_exact_recomputation() {
    let Some(ch) = stack_clickhouse("pulse_df_sketch") else { return };
    let spec = Arc::new(Spec::parse(Path::new("sketch.toml"), SPEC).unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");
    let recs = records(5);
    rt.block_on(store(&spec, &ch, &recs));

    let input: Vec<ReplayRecord> = recs.iter().map(|(d, p, json)| ReplayRecord { domain: *d, partition: *p, payload: json.clone().into_bytes() }).collect();
    let result = replay::run(Arc::clone(&spec), ReplayInput::Memory(Arc::new(input)), 2, 500, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.total(|w| w.late), 0, "nothing is late: every final sees what SQL sees");

    let mut checked = [0usize; 2];
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    for (m, metric) in spec.metrics.iter().enumerate() {
        let mut got = Windows::new();
        for r in result.rows.iter().filter(|r| r.metric == m && !r.deleted) {
            let g = match r.group.first() {
                Some(GroupValue::Str(s)) => s.to_string(),
                other => format!("{other:?}"),
            };
            got.insert((g, r.window_start), r.values.iter().map(|v| v.as_f64()).collect());
        }
        let from = got.keys().map(|k| k.1).min().expect("finals");
        let to = got.keys().map(|k| k.1).max().expect("finals") + 1;
        let want = rt.block_on(recomputed(&spec, &ch, metric, from, to));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{}: the same windows", metric.name);
        for (key, exact) in &want {
            let row = &got[key];
            for (i, a) in metric.aggregates.iter().enumerate() {
                let (g, e) = (row[i], exact[i]);
                // SQL is exact throughout; a ratio carries the error of its sketch part.
                let method = match a.kind {
                    AggKind::Ratio(n, d) => {
                        [metric.aggregates[n].method, metric.aggregates[d].method].into_iter().find(|m| *m != AggMethod::Exact).unwrap_or(AggMethod::Exact)
                    }
                    _ => a.method,
                };
                let (Some(g), Some(e)) = (g, e) else {
                    assert_eq!(g, e, "{}.{} {key:?}", metric.name, a.name);
                    continue;
                };
                let (error, bound) = match method {
                    AggMethod::Exact => ((g - e).abs() / e.abs().max(1.0), 1e-9),
                    AggMethod::Hll { precision } => ((g - e).abs() / e, 3.0 * 1.04 / f64::from(1u32 << precision).sqrt()),
                    AggMethod::DdSketch { relative_accuracy } => {
                        if e == 0.0 {
                            (g.abs(), 0.0)
                        } else {
                            ((g - e).abs() / e.abs(), relative_accuracy * (1.0 + 1e-9))
                        }
                    }
                };
                assert!(error <= bound, "{}.{} {key:?}: got {g}, exact {e}: relative error {error} > {bound}", metric.name, a.name);
                let w = worst.entry(format!("{}.{}", metric.name, a.name)).or_default();
                *w = w.max(error);
            }
        }
        checked[m] = want.len();
    }
    eprintln!("windows checked {checked:?}; worst relative error per aggregate: {worst:#?}");
    assert!(checked.iter().all(|&n| n > 20), "{checked:?}");
    // The sketches did something: a window of page_stats holds over a thousand distinct users.
    assert!(worst["page_stats.users_hll"] > 0.0 && worst["page_stats.p50_dd"] > 0.0, "{worst:#?}");
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}
