//! A derived metric's finals equal the join of its inputs' finals, over random
//! streams of two domains with different clocks, disorder, late events, and
//! updates and deletes that move events between groups and windows, for 1 and
//! 2 workers and any epoch size. Each derived window is final once, after its
//! last revision, and revisions only grow.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use pulse_dataflow::derived::{DerivedPlan, join_batch};
use pulse_dataflow::replay::{self, ReplayInput, ReplayRecord};
use pulse_model::Spec;
use pulse_model::metric_row::MetricRow;

const SPEC: &str = r#"
[pipeline]
late_events = "drop"

[[domain]]
name = "trips"
topic = "trips"
partitions = 4
key = "id"
time_field = "ts"
fields = [
  { name = "id", type = "string" },
  { name = "city", type = "string", dimension = true },
  { name = "fare", type = "float" },
  { name = "ts", type = "timestamp" },
]

[[domain]]
name = "cars"
topic = "cars"
partitions = 3
key = "event_id"
time_field = "ts"
mutable = true
fields = [
  { name = "event_id", type = "string" },
  { name = "car", type = "string" },
  { name = "city", type = "string", dimension = true },
  { name = "ts", type = "timestamp" },
]

[[metric]]
name = "trip_stats"
domain = "trips"
group_by = ["city"]
window = "40ms"
slide = "10ms"
lateness = "5ms"
aggregates = [
  { name = "n", fn = "count" },
  { name = "revenue", fn = "sum", field = "fare" },
  { name = "mean_fare", fn = "avg", field = "fare" },
]

[[metric]]
name = "car_stats"
domain = "cars"
group_by = ["city"]
window = "40ms"
slide = "10ms"
lateness = "12ms"
aggregates = [
  { name = "cars", fn = "count_distinct", field = "car" },
  { name = "pings", fn = "count" },
]

[[metric]]
name = "balance"
inputs = ["trip_stats", "car_stats"]
aggregates = [
  { name = "per_car", expr = "trip_stats.n / car_stats.cars" },
  { name = "gap", expr = "trip_stats.n - car_stats.cars * 2" },
  { name = "fare_per_ping", expr = "(trip_stats.revenue + 0.5) / car_stats.pings" },
  { name = "mean", expr = "-trip_stats.mean_fare" },
]
"#;

/// (domain, partition, JSON).
type Rec = (usize, i32, String);

#[derive(Debug, Clone)]
enum Op {
    Trip {
        city: u8,
        fare: u8,
        ts: i64,
    },
    /// Upsert of car event `id` (moves it when the city or time changes).
    Car {
        id: u8,
        car: u8,
        city: u8,
        ts: i64,
    },
    Delete {
        id: u8,
    },
}

fn records(ops: &[Op]) -> Vec<Rec> {
    let mut last: HashMap<u8, String> = HashMap::new();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Trip { city, fare, ts } => {
                out.push((0, (i % 4) as i32, format!(r#"{{"id":"t{i}","city":"c{city}","fare":{fare}.25,"ts":{ts}}}"#)));
            }
            Op::Car { id, car, city, ts } => {
                let json = format!(r#"{{"event_id":"e{id}","car":"k{car}","city":"c{city}","ts":{ts},"_version":{i}}}"#);
                last.insert(id, json.clone());
                out.push((1, i32::from(id % 3), json));
            }
            Op::Delete { id } => {
                if last.remove(&id).is_some() {
                    out.push((1, i32::from(id % 3), format!(r#"{{"event_id":"e{id}","_deleted":true,"_version":{i}}}"#)));
                }
            }
        }
    }
    out
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = (0u8..10, 0u8..4, 0u8..40, 0u8..12, 0u8..5, 0i64..14, 0u8..100);
    proptest::collection::vec(op, 1..200).prop_map(|raw| {
        let (mut t_trips, mut t_cars) = (1_000i64, 1_000i64);
        raw.into_iter()
            .map(|(which, city, fare, id, car, jitter, late)| match which {
                0..=4 => {
                    t_trips += 1 + jitter % 3;
                    Op::Trip { city, fare, ts: if late < 5 { t_trips - 70 } else { t_trips - jitter } }
                }
                // The cars domain runs on its own clock, slower than the trips'.
                5..=8 => {
                    t_cars += jitter % 2;
                    Op::Car { id, car, city, ts: if late < 5 { t_cars - 70 } else { t_cars - jitter } }
                }
                _ => Op::Delete { id },
            })
            .collect()
    })
}

fn key(r: &MetricRow) -> (usize, String, i64) {
    (r.metric, format!("{:?}", r.group), r.window_start)
}

fn same(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
            (x, y) => x == y,
        })
}

fn run(recs: &[Rec], workers: usize, epoch_records: usize) -> Result<(), TestCaseError> {
    let spec = Arc::new(Spec::parse(Path::new("derived.toml"), SPEC).unwrap_or_else(|e| panic!("{e}")));
    let input: Vec<ReplayRecord> = recs.iter().map(|(d, p, j)| ReplayRecord { domain: *d, partition: *p, payload: j.clone().into_bytes() }).collect();
    let result = replay::run(Arc::clone(&spec), ReplayInput::Memory(Arc::new(input)), workers, epoch_records, false).unwrap_or_else(|e| panic!("{e}"));
    let plans = DerivedPlan::all(&spec);
    let plan = &plans[0];
    // The inputs' finals (withdrawn windows have none).
    let finals = |m: usize| -> Vec<MetricRow> { result.rows.iter().filter(|r| r.metric == m && r.is_final && !r.deleted).cloned().collect() };
    let inputs: Vec<Vec<MetricRow>> = plan.inputs.iter().map(|&m| finals(m)).collect();
    let expected: HashMap<(usize, String, i64), Vec<Option<f64>>> =
        join_batch(plan, 0, &inputs, 1, 0).iter().map(|r| (key(r), r.values.iter().map(|v| v.as_f64()).collect())).collect();

    let mut got: HashMap<(usize, String, i64), Vec<Option<f64>>> = HashMap::new();
    let mut last_revision: HashMap<(usize, String, i64), u64> = HashMap::new();
    let mut closed = std::collections::HashSet::new();
    for r in result.rows.iter().filter(|r| r.metric == plan.metric) {
        let k = key(r);
        prop_assert!(!closed.contains(&k), "a row after the final: {r:?}");
        if let Some(prev) = last_revision.insert(k.clone(), r.revision) {
            prop_assert!(r.revision > prev, "revisions must grow: {r:?} after {prev}");
        }
        if r.is_final {
            closed.insert(k.clone());
            if !r.deleted {
                got.insert(k, r.values.iter().map(|v| v.as_f64()).collect());
            }
        }
    }
    prop_assert_eq!(got.len(), expected.len(), "derived finals: got {:?}\nexpected {:?}", got, expected);
    for (k, e) in &expected {
        let g = got.get(k);
        prop_assert!(g.is_some_and(|g| same(g, e)), "{:?}: derived {:?}, join of the inputs' finals {:?}", k, g, e);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn derived_finals_equal_the_join_of_the_inputs_finals(ops in ops(), workers in 1usize..=2, epoch_records in 1usize..25) {
        run(&records(&ops), workers, epoch_records)?;
    }
}

/// A window only one input has: the other's counts are 0, its other values null.
#[test]
fn a_window_one_input_lacks_counts_as_empty() {
    let recs =
        [(0, 0, r#"{"id":"t1","city":"lima","fare":4.0,"ts":1000}"#.to_string()), (0, 0, r#"{"id":"t2","city":"lima","fare":2.0,"ts":5000}"#.to_string())];
    let spec = Arc::new(Spec::parse(Path::new("derived.toml"), SPEC).unwrap_or_else(|e| panic!("{e}")));
    let input: Vec<ReplayRecord> = recs.iter().map(|(d, p, j)| ReplayRecord { domain: *d, partition: *p, payload: j.clone().into_bytes() }).collect();
    let result = replay::run(Arc::clone(&spec), ReplayInput::Memory(Arc::new(input)), 1, 1, true).unwrap_or_else(|e| panic!("{e}"));
    let balance: Vec<&MetricRow> = result.rows.iter().filter(|r| r.metric == 2 && r.window_start <= 1000 && r.window_end > 1000).collect();
    assert_eq!(balance.len(), 4, "every window holding the trip: {balance:?}");
    for r in balance {
        let v: Vec<Option<f64>> = r.values.iter().map(|v| v.as_f64()).collect();
        // n / 0 cars is null; n - 0 * 2 = 1; (4.25 + 0.5) / 0 pings is null; -mean = -4.
        assert_eq!(v, vec![None, Some(1.0), None, Some(-4.0)], "{r:?}");
    }
}
