//! Two workers of a live job that start seconds apart (a slow Kafka start on
//! one of them): the job's epochs are numbered by one clock, the late worker
//! joins the others' epochs, and every final equals a from-scratch
//! aggregation of the stream.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pulse_dataflow::job::{Record, RecordSource, SourceStatus, WorkerConfig, run_worker};
use pulse_dataflow::metrics::JobMetrics;
use pulse_dataflow::replay::{CollectSink, MemorySource, ReplayRecord};
use pulse_model::Spec;
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};

const SPEC: &str = r#"
[[domain]]
name = "orders"
topic = "orders"
partitions = 4
key = "id"
time_field = "ts"
fields = [
  { name = "id", type = "string" },
  { name = "shop", type = "string", dimension = true },
  { name = "amount", type = "float" },
  { name = "user", type = "string" },
  { name = "ts", type = "timestamp" },
]

[[metric]]
name = "shop_stats"
domain = "orders"
group_by = ["shop"]
window = "40ms"
slide = "10ms"
lateness = "5ms"
aggregates = [
  { name = "n", fn = "count" },
  { name = "total", fn = "sum", field = "amount" },
  { name = "users", fn = "count_distinct", field = "user" },
  { name = "median", fn = "quantile", field = "amount", q = 0.5 },
]
"#;

/// A source that reads nothing until `start` (a worker whose broker connection
/// is slow): its partitions are assigned but not read to their end, as a Kafka
/// source reports them.
struct Late {
    inner: MemorySource,
    start: Instant,
    partitions: Vec<i32>,
}

impl RecordSource for Late {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> SourceStatus {
        if Instant::now() < self.start {
            std::thread::sleep(Duration::from_millis(5));
            return SourceStatus::Idle;
        }
        self.inner.poll(max, f)
    }
    fn commit(&mut self, offsets: &[((usize, i32), i64)], closed: &[i64]) {
        self.inner.commit(offsets, closed);
    }
    fn caught_up(&mut self) -> Vec<((usize, i32), bool)> {
        if Instant::now() < self.start { self.partitions.iter().map(|&p| ((0, p), false)).collect() } else { Vec::new() }
    }
}

struct Order {
    shop: usize,
    amount: f64,
    user: usize,
    ts: i64,
}

fn orders() -> Vec<Order> {
    // In time order per partition (nothing late), four partitions, three shops.
    (0..3_000).map(|i| Order { shop: (i * 7) % 3, amount: ((i * 13) % 50) as f64 + 0.25, user: (i * 11) % 37, ts: 10_000 + (i as i64) / 3 }).collect()
}

type Finals = BTreeMap<(String, i64), Vec<Option<f64>>>;

fn expected(orders: &[Order]) -> Finals {
    let mut out = Finals::new();
    let (size, slide) = (40, 10);
    for shop in 0..3 {
        let first = orders.iter().map(|o| o.ts).min().unwrap_or(0).div_euclid(slide) * slide - size + slide;
        let last = orders.iter().map(|o| o.ts).max().unwrap_or(0);
        let mut start = first;
        while start <= last {
            let inside: Vec<&Order> = orders.iter().filter(|o| o.shop == shop && o.ts >= start && o.ts < start + size).collect();
            if !inside.is_empty() {
                let mut amounts: Vec<f64> = inside.iter().map(|o| o.amount).collect();
                amounts.sort_by(f64::total_cmp);
                let users: std::collections::BTreeSet<usize> = inside.iter().map(|o| o.user).collect();
                let median = amounts[((0.5 * amounts.len() as f64) as usize).min(amounts.len() - 1)];
                out.insert((format!("s{shop}"), start), vec![Some(inside.len() as f64), Some(amounts.iter().sum()), Some(users.len() as f64), Some(median)]);
            }
            start += slide;
        }
    }
    out
}

fn finals(rows: &[MetricRow]) -> Finals {
    rows.iter()
        .filter(|r| r.is_final)
        .map(|r| {
            let shop = match r.group.first() {
                Some(GroupValue::Str(s)) => s.to_string(),
                other => format!("{other:?}"),
            };
            ((shop, r.window_start), r.values.iter().cloned().map(AggValue::as_f64).collect())
        })
        .collect()
}

#[test]
fn a_worker_starting_seconds_late_joins_the_job_and_nothing_is_lost() {
    let spec = Arc::new(Spec::parse(Path::new("staggered.toml"), SPEC).expect("spec"));
    let orders = orders();
    let records: Vec<ReplayRecord> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| ReplayRecord {
            domain: 0,
            partition: (i % 4) as i32,
            payload: format!(r#"{{"id":"o{i}","shop":"s{}","amount":{},"user":"u{}","ts":{}}}"#, o.shop, o.amount, o.user, o.ts).into_bytes(),
        })
        .collect();
    let records = Arc::new(records);
    let rows: Arc<Mutex<Vec<MetricRow>>> = Arc::new(Mutex::new(Vec::new()));
    let late_by = Duration::from_secs(2);
    let started = Instant::now();
    let (spec2, rows2) = (Arc::clone(&spec), Arc::clone(&rows));
    let metrics = JobMetrics::new(&pulse_ops::prometheus::Registry::new()).expect("metrics");
    let guards = timely::execute(timely::Config::process(2), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let inner = MemorySource::new(&spec2, Arc::clone(&records), index, peers);
        // Worker 1 starts reading two seconds after worker 0.
        let partitions = (0..4).filter(|p| p % peers as i32 == index as i32).collect();
        let mut source = Late { inner, start: started + if index == 1 { late_by } else { Duration::ZERO }, partitions };
        let mut sink = CollectSink::default();
        sink.finals_only = true;
        let cfg = WorkerConfig { emit_interval: Duration::from_millis(20), idle_timeout: Some(Duration::from_millis(200)), ..WorkerConfig::live(&spec2) };
        let stop = AtomicBool::new(false);
        run_worker(worker, Arc::clone(&spec2), &mut source, &mut sink, &cfg, &metrics, &stop);
        if let Ok(mut r) = rows2.lock() {
            r.extend(sink.rows);
        }
    })
    .expect("timely");
    drop(guards.join());
    let elapsed = started.elapsed();
    let got = finals(&rows.lock().expect("rows"));
    let want = expected(&orders);
    assert!(!want.is_empty());
    let differ: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
        .chain(got.keys().filter(|k| !want.contains_key(*k)).map(|k| format!("{k:?}: unexpected")))
        .collect();
    assert!(differ.is_empty(), "{} of {} finals differ:\n{}", differ.len(), want.len(), differ.join("\n"));
    // The late worker delays the job by its start, not for good.
    assert!(elapsed < late_by + Duration::from_secs(20), "took {elapsed:?}");
}
