//! Final windows of the dataflow equal a from-scratch reference over random
//! streams with disorder, late events, updates and deletes, for 1 and 2 workers.
//!
//! The reference recomputes every window from the events it holds. It follows
//! the job's documented semantics for what is late: in epoch e a worker drops an
//! event whose windows are all closed at the job watermark of epoch e-1, and a
//! window is closed once the minimum watermark any worker used reaches its end.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use pulse_dataflow::replay::{self, ReplayInput, ReplayRecord};
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::{Spec, Windows};

const SPEC: &str = r#"
[pipeline]
late_events = "dead_letter"

[[domain]]
name = "orders"
topic = "orders"
partitions = 4
key = "id"
time_field = "ts"
fields = [
  { name = "id", type = "string" },
  { name = "shop", type = "string", dimension = true },
  { name = "kind", type = "enum", values = ["a", "b", "c"] },
  { name = "amount", type = "float" },
  { name = "user", type = "string" },
  { name = "ts", type = "timestamp" },
]

[[domain]]
name = "edits"
topic = "edits"
partitions = 3
key = "event_id"
time_field = "ts"
mutable = true
fields = [
  { name = "event_id", type = "string" },
  { name = "page", type = "string", dimension = true },
  { name = "ms", type = "float" },
  { name = "err", type = "string", optional = true },
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
  { name = "n_a", fn = "count", filter = { field = "kind", eq = "a" } },
  { name = "total", fn = "sum", field = "amount" },
  { name = "mean", fn = "avg", field = "amount" },
  { name = "users", fn = "count_distinct", field = "user" },
  { name = "lo", fn = "min", field = "amount" },
  { name = "hi", fn = "max", field = "amount" },
  { name = "median", fn = "quantile", field = "amount", q = 0.5 },
  { name = "share_a", fn = "ratio", numerator = "n_a", denominator = "n" },
]

[[metric]]
name = "page_stats"
domain = "edits"
group_by = ["page"]
window = "30ms"
slide = "10ms"
lateness = "0ms"
aggregates = [
  { name = "n", fn = "count" },
  { name = "errors", fn = "count", filter = { field = "err", non_empty = true } },
  { name = "p90", fn = "quantile", field = "ms", q = 0.9 },
  { name = "kinds", fn = "count_distinct", field = "err" },
  { name = "error_rate", fn = "ratio", numerator = "errors", denominator = "n" },
  { name = "total_ms", fn = "sum", field = "ms" },
  { name = "mean_ms", fn = "avg", field = "ms" },
]
"#;

#[derive(Debug, Clone)]
enum Op {
    Order {
        shop: u8,
        kind: u8,
        amount: u8,
        user: u8,
        ts: i64,
    },
    EditUpsert {
        id: u16,
        page: u8,
        ms: u8,
        err: Option<u8>,
        ts: i64,
    },
    EditDelete {
        id: u16,
    },
    /// The live version of `id` again with only its number changed (same group, same pane).
    EditNumber {
        id: u16,
        ms: u8,
    },
}

/// One event as the reference sees it.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Order { shop: u8, kind: u8, amount: f64, user: u8, ts: i64 },
    Edit { page: u8, ms: f64, err: Option<u8>, ts: i64 },
}

impl Ev {
    fn ts(&self) -> i64 {
        match self {
            Ev::Order { ts, .. } | Ev::Edit { ts, .. } => *ts,
        }
    }
    fn metric(&self) -> usize {
        match self {
            Ev::Order { .. } => 0,
            Ev::Edit { .. } => 1,
        }
    }
    fn group(&self) -> String {
        match self {
            Ev::Order { shop, .. } => format!("shop{shop}"),
            Ev::Edit { page, .. } => format!("page{page}"),
        }
    }
}

struct Rec {
    domain: usize,
    partition: i32,
    payload: String,
    /// What it does, for the reference.
    action: Action,
}

enum Action {
    Insert(Ev),
    Upsert { id: u16, version: u64, ev: Ev },
    Delete { id: u16, version: u64 },
}

/// The number an edit carries: fractional, so that sums are not exact in binary.
fn edit_ms(ms: u8) -> f64 {
    f64::from(ms) + 0.1
}

fn to_records(ops: &[Op]) -> Vec<Rec> {
    let mut version = 0u64;
    let mut next_order = 0u32;
    // The live edits (page, err, ts), to re-send one with only its number changed.
    let mut live: HashMap<u16, (u8, Option<u8>, i64)> = HashMap::new();
    ops.iter()
        .filter_map(|op| {
            version += 1;
            let op = match *op {
                Op::EditNumber { id, ms } => {
                    let &(page, err, ts) = live.get(&id)?;
                    Op::EditUpsert { id, page, ms, err, ts }
                }
                ref other => other.clone(),
            };
            match op {
                Op::EditUpsert { id, page, err, ts, .. } => {
                    live.insert(id, (page, err, ts));
                }
                Op::EditDelete { id } => {
                    live.remove(&id);
                }
                _ => {}
            }
            Some(match op {
                Op::Order { shop, kind, amount, user, ts } => {
                    next_order += 1;
                    let id = format!("o{next_order}");
                    let kinds = ["a", "b", "c"];
                    let payload = format!(
                        "{{\"id\":\"{id}\",\"shop\":\"shop{shop}\",\"kind\":\"{}\",\"amount\":{amount},\"user\":\"u{user}\",\"ts\":{ts}}}",
                        kinds[kind as usize]
                    );
                    let partition = (xxhash_rust_free_hash(&id) % 4) as i32;
                    Rec { domain: 0, partition, payload, action: Action::Insert(Ev::Order { shop, kind, amount: f64::from(amount), user, ts }) }
                }
                Op::EditUpsert { id, page, ms, err, ts } => {
                    let err_json = err.map(|e| format!(",\"err\":\"e{e}\"")).unwrap_or_default();
                    let payload =
                        format!("{{\"event_id\":\"x{id}\",\"page\":\"page{page}\",\"ms\":{}{err_json},\"ts\":{ts},\"_version\":{version}}}", edit_ms(ms));
                    Rec {
                        domain: 1,
                        partition: i32::from(id % 3),
                        payload,
                        action: Action::Upsert { id, version, ev: Ev::Edit { page, ms: edit_ms(ms), err, ts } },
                    }
                }
                Op::EditDelete { id } => {
                    let payload = format!("{{\"event_id\":\"x{id}\",\"_deleted\":true,\"_version\":{version}}}");
                    Rec { domain: 1, partition: i32::from(id % 3), payload, action: Action::Delete { id, version } }
                }
                Op::EditNumber { .. } => return None,
            })
        })
        .collect()
}

/// A tiny deterministic string hash for partitioning orders (any function works).
fn xxhash_rust_free_hash(s: &str) -> u64 {
    s.bytes().fold(1469598103934665603u64, |h, b| (h ^ u64::from(b)).wrapping_mul(1099511628211))
}

const WM_START: i64 = i64::MIN / 4;
const WM_END: i64 = i64::MAX / 4;

/// (metric, group, window start, aggregate values) of one final window.
type FinalRow = (usize, String, i64, Vec<Option<f64>>);

/// Simulates the job's deterministic replay semantics and recomputes every window.
fn reference(recs: &[Rec], workers: usize, epoch_records: usize) -> Vec<FinalRow> {
    let geometry = [(Windows::new(40, 10), 5i64), (Windows::new(30, 10), 0i64)];
    // Each worker's records in order, chunked into epochs.
    let per_worker: Vec<Vec<&Rec>> = (0..workers).map(|w| recs.iter().filter(|r| r.partition as usize % workers == w).collect()).collect();
    let chunks: Vec<Vec<&[&Rec]>> = per_worker.iter().map(|rs| if rs.is_empty() { vec![&rs[..]] } else { rs.chunks(epoch_records).collect() }).collect();
    let last_epoch: Vec<usize> = chunks.iter().map(Vec::len).collect();
    let epochs = *last_epoch.iter().max().unwrap_or(&1);

    // Per worker, per domain: partition max times, used watermark.
    let mut part_max: Vec<HashMap<(usize, i32), i64>> = vec![HashMap::new(); workers];
    let mut used = vec![[WM_START; 2]; workers];
    let mut job_wm = [WM_START; 2];
    let mut closed = [WM_START; 2];
    // Window contents: (metric, group, start) -> events (with multiplicity by identity).
    let mut contents: BTreeMap<(usize, String, i64), Vec<Ev>> = BTreeMap::new();
    let mut live: HashMap<u16, (u64, Option<Ev>)> = HashMap::new();

    for e in 1..=epochs {
        // Windows closed before this epoch's changes apply (per metric).
        let closed_below = [closed[0] - geometry[0].1, closed[1] - geometry[1].1];
        let open = |ev: &Ev, start: i64| -> bool {
            let (w, _) = geometry[ev.metric()];
            w.end(start) > closed_below[ev.metric()]
        };
        for w in 0..workers {
            if e > last_epoch[w] {
                continue;
            }
            for d in 0..2 {
                used[w][d] = used[w][d].max(job_wm[d]);
            }
            for r in chunks[w][e - 1] {
                let domain = r.domain;
                let (win, lateness) = geometry[domain];
                let is_late = |ts: i64| win.is_late(ts, used[w][domain] - lateness);
                match &r.action {
                    Action::Insert(ev) => {
                        let p = part_max[w].entry((domain, r.partition)).or_insert(ev.ts());
                        *p = (*p).max(ev.ts());
                        if is_late(ev.ts()) {
                            continue;
                        }
                        for s in win.starts(ev.ts()).filter(|&s| open(ev, s)) {
                            contents.entry((ev.metric(), ev.group(), s)).or_default().push(ev.clone());
                        }
                    }
                    Action::Upsert { id, version, ev } => {
                        let p = part_max[w].entry((domain, r.partition)).or_insert(ev.ts());
                        *p = (*p).max(ev.ts());
                        if live.get(id).is_some_and(|(v, _)| *v >= *version) {
                            continue;
                        }
                        if let Some((_, Some(old))) = live.remove(id) {
                            for s in win.starts(old.ts()).filter(|&s| open(&old, s)) {
                                if let Some(v) = contents.get_mut(&(old.metric(), old.group(), s))
                                    && let Some(i) = v.iter().position(|x| *x == old)
                                {
                                    v.remove(i);
                                }
                            }
                        }
                        let counted = !is_late(ev.ts());
                        if counted {
                            for s in win.starts(ev.ts()).filter(|&s| open(ev, s)) {
                                contents.entry((ev.metric(), ev.group(), s)).or_default().push(ev.clone());
                            }
                        }
                        live.insert(*id, (*version, counted.then(|| ev.clone())));
                    }
                    Action::Delete { id, version } => {
                        if live.get(id).is_some_and(|(v, _)| *v >= *version) {
                            continue;
                        }
                        if let Some((_, Some(old))) = live.remove(id) {
                            for s in win.starts(old.ts()).filter(|&s| open(&old, s)) {
                                if let Some(v) = contents.get_mut(&(old.metric(), old.group(), s))
                                    && let Some(i) = v.iter().position(|x| *x == old)
                                {
                                    v.remove(i);
                                }
                            }
                        }
                        live.insert(*id, (*version, None));
                    }
                }
            }
        }
        // Reports of epoch e and the job watermarks after it.
        for d in 0..2 {
            let mut min_active: Option<i64> = None;
            let mut max_seen: Option<i64> = None;
            let mut min_used = i64::MAX;
            for w in 0..workers {
                let ended = e >= last_epoch[w];
                let times: Vec<i64> = part_max[w].iter().filter(|((dd, _), _)| *dd == d).map(|(_, t)| *t).collect();
                if let Some(&m) = times.iter().max() {
                    max_seen = Some(max_seen.map_or(m, |x: i64| x.max(m)));
                }
                if !ended && let Some(&m) = times.iter().min() {
                    min_active = Some(min_active.map_or(m, |x: i64| x.min(m)));
                }
                min_used = min_used.min(if ended { WM_END } else { used[w][d] });
            }
            if let Some(wm) = min_active.or(max_seen) {
                job_wm[d] = job_wm[d].max(wm);
            }
            closed[d] = closed[d].max(min_used);
        }
    }

    contents.into_iter().filter(|(_, evs)| !evs.is_empty()).map(|((m, g, s), evs)| (m, g, s, aggregate(m, &evs))).collect()
}

fn quantile(mut xs: Vec<f64>, q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let i = if q < 1.0 { ((q * xs.len() as f64) as usize).min(xs.len() - 1) } else { xs.len() - 1 };
    Some(xs[i])
}

fn aggregate(metric: usize, evs: &[Ev]) -> Vec<Option<f64>> {
    let n = evs.len() as f64;
    match metric {
        0 => {
            let mut amounts = Vec::new();
            let mut users = std::collections::HashSet::new();
            let mut n_a = 0.0;
            for e in evs {
                if let Ev::Order { kind, amount, user, .. } = e {
                    amounts.push(*amount);
                    users.insert(*user);
                    if *kind == 0 {
                        n_a += 1.0;
                    }
                }
            }
            let total: f64 = amounts.iter().sum();
            vec![
                Some(n),
                Some(n_a),
                Some(total),
                Some(total / n),
                Some(users.len() as f64),
                amounts.iter().copied().reduce(f64::min),
                amounts.iter().copied().reduce(f64::max),
                quantile(amounts, 0.5),
                Some(n_a / n),
            ]
        }
        _ => {
            let mut ms = Vec::new();
            let mut errs = std::collections::HashSet::new();
            let mut errors = 0.0;
            for e in evs {
                if let Ev::Edit { ms: x, err, .. } = e {
                    ms.push(*x);
                    if let Some(k) = err {
                        errors += 1.0;
                        errs.insert(*k);
                    }
                }
            }
            let total: f64 = ms.iter().sum();
            vec![Some(n), Some(errors), quantile(ms, 0.9), Some(errs.len() as f64), Some(errors / n), Some(total), Some(total / n)]
        }
    }
}

fn pipeline(recs: &[Rec], workers: usize, epoch_records: usize) -> (Vec<FinalRow>, replay::ReplayResult) {
    let spec = Arc::new(Spec::parse(Path::new("reference.toml"), SPEC).unwrap_or_else(|e| panic!("{e}")));
    let input: Vec<ReplayRecord> =
        recs.iter().map(|r| ReplayRecord { domain: r.domain, partition: r.partition, payload: r.payload.clone().into_bytes() }).collect();
    let result = replay::run(spec, ReplayInput::Memory(Arc::new(input)), workers, epoch_records, true).unwrap_or_else(|e| panic!("{e}"));
    let mut rows: Vec<FinalRow> = result
        .rows
        .iter()
        .filter(|r: &&MetricRow| !r.deleted)
        .map(|r| {
            let group = match &r.group[0] {
                GroupValue::Str(s) => s.to_string(),
                other => format!("{other:?}"),
            };
            (r.metric, group, r.window_start, r.values.iter().map(|v| v.as_f64()).collect())
        })
        .collect();
    rows.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
    (rows, result)
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = (0u8..10, 0u8..3, 0u8..3, 0u8..50, 0u8..6, 0u16..12, 0u8..30, proptest::option::of(0u8..3), 0i64..12, 0u8..100);
    proptest::collection::vec(op, 1..160).prop_map(|raw| {
        let mut t = 1_000i64;
        raw.into_iter()
            .map(|(which, shop, kind, amount, user, id, ms, err, jitter, late)| {
                t += 1 + (jitter % 3);
                // Mostly in order with some disorder; a few far behind (late).
                let ts = if late < 6 { t - 60 } else { t - jitter };
                match which {
                    0..=4 => Op::Order { shop, kind, amount, user, ts },
                    5..=7 => Op::EditUpsert { id, page: shop, ms, err, ts },
                    8 => Op::EditNumber { id, ms },
                    _ => Op::EditDelete { id },
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn finals_equal_the_reference(ops in ops(), workers in 1usize..=2, epoch_records in 1usize..20) {
        let recs = to_records(&ops);
        let expected = reference(&recs, workers, epoch_records);
        let (got, result) = pipeline(&recs, workers, epoch_records);
        prop_assert_eq!(got.len(), expected.len(), "windows: got {:#?}\nexpected {:#?}", got, expected);
        for (g, e) in got.iter().zip(&expected) {
            prop_assert_eq!((g.0, &g.1, g.2), (e.0, &e.1, e.2));
            for (a, b) in g.3.iter().zip(&e.3) {
                match (a, b) {
                    (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{:?} vs {:?}", g, e),
                    (a, b) => prop_assert_eq!(a, b, "{:?} vs {:?}", g, e),
                }
            }
        }
        // No final of an empty window (a group whose events were all deleted or moved away).
        for r in &result.rows {
            prop_assert!(r.deleted || !matches!(r.values[0], AggValue::Count(0)), "a final of an empty window: {r:?}");
        }
        // Each window is final exactly once.
        let mut seen = std::collections::HashSet::new();
        for r in &result.rows {
            prop_assert!(seen.insert((r.metric, format!("{:?}", r.group), r.window_start)), "window emitted as final twice: {r:?}");
        }
        // Every late event was dead-lettered (the spec says so), and counted.
        prop_assert_eq!(result.dead.len() as u64, result.total(|w| w.late + w.dead_lettered));
    }
}

#[test]
fn a_known_stream_by_hand() {
    // Three orders in shop0 at t=1000..1002 and one late far behind.
    let ops = vec![
        Op::Order { shop: 0, kind: 0, amount: 10, user: 1, ts: 1000 },
        Op::Order { shop: 0, kind: 1, amount: 30, user: 2, ts: 1001 },
        Op::Order { shop: 0, kind: 0, amount: 20, user: 1, ts: 1012 },
        Op::Order { shop: 0, kind: 0, amount: 5, user: 3, ts: 2000 },
        Op::Order { shop: 0, kind: 0, amount: 99, user: 3, ts: 900 },
    ];
    let recs = to_records(&ops);
    let (got, _) = pipeline(&recs, 1, 2);
    // Window [970, 1010) holds the first two orders.
    let w = got.iter().find(|r| r.0 == 0 && r.2 == 970).unwrap_or_else(|| panic!("{got:#?}"));
    assert_eq!(w.3, vec![Some(2.0), Some(1.0), Some(40.0), Some(20.0), Some(2.0), Some(10.0), Some(30.0), Some(30.0), Some(0.5)]);
    // The order at 900 arrives when every window holding it is closed: late, in no window.
    assert!(!got.iter().any(|r| r.2 <= 900 && r.2 + 40 > 900), "{got:#?}");
    assert_eq!(got, reference(&recs, 1, 2));
}
