//! The incremental engine against a from-scratch evaluation: after every batch
//! of rows, each group's state must equal the fold, in window order, of every
//! complete window's newest row (its final when there is one), and the
//! transitions reported must be exactly the changes of that state.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;
use pulse_alert::engine::{EventKind, Fold, GroupKey, Status, diff, verdict};
use pulse_alert::{AlertMessage, Engine, WebhookMessage};
use pulse_model::Spec;
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};

const SLIDE: i64 = 60_000;

fn spec() -> Spec {
    let text = r#"
[[domain]]
name = "rides"
topic = "ride-events"
key = "ride_id"
time_field = "ts"
fields = [
  { name = "ride_id", type = "string" },
  { name = "city", type = "string", dimension = true },
  { name = "kind", type = "enum", values = ["requested", "cancelled"] },
  { name = "ts", type = "timestamp" },
]

[[metric]]
name = "m"
domain = "rides"
group_by = ["city"]
window = "3m"
slide = "1m"
lateness = "30s"
aggregates = [
  { name = "requests", fn = "count", filter = { field = "kind", eq = "requested" } },
  { name = "cancels", fn = "count", filter = { field = "kind", eq = "cancelled" } },
  { name = "rate", fn = "ratio", numerator = "cancels", denominator = "requests" },
]

[[alert]]
name = "high"
metric = "m"
condition = { aggregate = "rate", op = "gt", value = 0.3 }
for = "2m"
guard = { aggregate = "requests", op = "ge", value = 5 }
annotations = { summary = "{{city}} at {{value}}" }
"#;
    match Spec::parse(Path::new("t.toml"), text) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn row(city: &str, end: i64, requests: u64, rate: Option<f64>, is_final: bool, revision: u64, deleted: bool) -> MetricRow {
    MetricRow {
        metric: 0,
        group: vec![GroupValue::Str(city.into())],
        window_start: end - 3 * SLIDE,
        window_end: end,
        values: vec![AggValue::Count(requests), AggValue::Count(0), AggValue::Float(rate)],
        is_final,
        revision,
        emitted_at: end,
        deleted,
    }
}

/// One group's activity at one tick.
#[derive(Debug, Clone)]
struct Act {
    active: bool,
    requests: u64,
    rate: Option<f64>,
    final_requests: u64,
    final_rate: Option<f64>,
    deleted: bool,
}

fn act() -> impl Strategy<Value = Act> {
    let rate = prop_oneof![4 => Just(Some(0.5)), 3 => Just(Some(0.1)), 1 => Just(None)];
    let final_rate = prop_oneof![4 => Just(Some(0.5)), 3 => Just(Some(0.1)), 1 => Just(None)];
    (prop::bool::weighted(0.85), 0u64..10, rate, 0u64..10, final_rate, prop::bool::weighted(0.03))
        .prop_map(|(active, requests, rate, final_requests, final_rate, deleted)| Act { active, requests, rate, final_requests, final_rate, deleted })
}

/// Realistic row sequences: at tick i the newest window starts at i·slide; an
/// active group revises its open windows; windows end + 1 slide old get their final.
fn rows_for(ticks: &[Vec<Act>]) -> Vec<MetricRow> {
    let cities = ["Paris", "Lima", "Oslo"];
    let mut out = Vec::new();
    let mut revision: HashMap<(usize, i64), u64> = HashMap::new();
    let mut had: HashMap<(usize, i64), bool> = HashMap::new();
    for (i, acts) in ticks.iter().enumerate() {
        let i = i as i64 + 10;
        for (g, a) in acts.iter().enumerate() {
            if a.active {
                for k in 1..=3 {
                    let end = (i + k) * SLIDE;
                    let r = revision.entry((g, end)).or_insert(0);
                    *r += 1;
                    had.insert((g, end), true);
                    out.push(row(cities[g], end, a.requests, a.rate, false, *r, false));
                }
            }
            let closing = (i - 1) * SLIDE;
            if had.remove(&(g, closing)).is_some() {
                let r = revision.entry((g, closing)).or_insert(0);
                *r += 1;
                out.push(row(cities[g], closing, a.final_requests, a.final_rate, true, *r, a.deleted));
            }
        }
    }
    out
}

/// From scratch: each group's fold over the complete windows of the prefix.
fn reference(spec: &Spec, prefix: &[MetricRow], params: &pulse_alert::Params) -> BTreeMap<String, Fold> {
    let rule = &spec.alerts[0];
    let mut progress = i64::MIN;
    let mut windows: BTreeMap<String, BTreeMap<i64, (bool, u64, &MetricRow)>> = BTreeMap::new();
    for r in prefix {
        progress = progress.max(if r.is_final { r.window_end.max(r.window_start) } else { r.window_start });
        let key = GroupKey::new(&["city".to_string()], &r.group).key;
        let w = windows.entry(key).or_default();
        match w.get(&r.window_end) {
            Some((true, _, _)) => {}
            Some((false, rev, _)) if !r.is_final && *rev > r.revision => {}
            _ => {
                w.insert(r.window_end, (r.is_final || r.deleted, r.revision, r));
            }
        }
    }
    windows
        .into_iter()
        .map(|(key, w)| {
            let mut f = Fold::default();
            for (end, (settled, _, r)) in w {
                if !settled && end > progress {
                    continue;
                }
                let (v, value, guard) = verdict(rule, &r.values, r.deleted);
                f.step(params, end, v, value, guard);
            }
            (key, f.at_progress(params, progress))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn engine_equals_from_scratch(ticks in prop::collection::vec(prop::collection::vec(act(), 3), 1..40), cuts in prop::collection::vec(1usize..12, 1..60)) {
        let spec = spec();
        let rows = rows_for(&ticks);
        let mut engine = Engine::new(&spec);
        let params = engine.params(0);
        let mut notified: BTreeMap<String, Status> = BTreeMap::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < rows.len() {
            let n = (*cut.next().unwrap_or(&1)).min(rows.len() - at);
            let got = engine.observe(&rows[at..at + n]);
            at += n;
            let expected = reference(&spec, &rows[..at], &params);
            let mut want = Vec::new();
            for (key, fold) in &expected {
                let old = notified.get(key).copied().unwrap_or(Status::Inactive);
                let changes = diff(old, fold);
                for (kind, status) in &changes {
                    want.push((key.clone(), *kind, status.since()));
                }
                if !changes.is_empty() {
                    notified.insert(key.clone(), fold.status);
                }
            }
            let mut have: Vec<_> = got
                .iter()
                .filter(|t| t.kind != EventKind::Checkpoint)
                .map(|t| (t.group.key.clone(), t.kind, if t.kind == EventKind::Cleared || t.kind == EventKind::Resolved { Some(t.since) } else { t.notified.since() }))
                .collect();
            have.sort_by(|a, b| (&a.0, a.1.name()).cmp(&(&b.0, b.1.name())));
            want.sort_by(|a, b| (&a.0, a.1.name()).cmp(&(&b.0, b.1.name())));
            prop_assert_eq!(&have, &want, "after {} rows", at);
            let mut active: Vec<_> = engine.active().into_iter().map(|(_, g, s)| (g.key, s)).collect();
            active.sort_by(|a, b| a.0.cmp(&b.0));
            let want_active: Vec<_> = notified.iter().filter(|(_, s)| **s != Status::Inactive).map(|(k, s)| (k.clone(), *s)).collect();
            prop_assert_eq!(active.iter().map(|(k, s)| (k.clone(), s.since())).collect::<Vec<_>>(), want_active.iter().map(|(k, s)| (k.clone(), s.since())).collect::<Vec<_>>());
        }
    }

    /// Restarting from the recorded state (after any transition or checkpoint)
    /// and replaying the rows from there notifies nothing twice.
    #[test]
    fn a_restart_from_the_recorded_state_repeats_no_notification(ticks in prop::collection::vec(prop::collection::vec(act(), 3), 5..30), cut in 0usize..400) {
        let spec = spec();
        let rows = rows_for(&ticks);
        let cut = cut.min(rows.len());
        let mut a = Engine::new(&spec);
        let mut recorded: BTreeMap<String, (Fold, Status, GroupKey, Option<i64>)> = BTreeMap::new();
        let mut notified_before = Vec::new();
        for r in &rows[..cut] {
            for t in a.observe(std::slice::from_ref(r)) {
                if t.kind.notifies() {
                    notified_before.push((t.group.key.clone(), t.kind, t.starts_at));
                }
                recorded.insert(t.group.key.clone(), (t.checkpoint, t.notified, t.group.clone(), t.decided_end));
            }
        }
        // Restored eagerly (one process: every group evaluated from now on) or lazily
        // (cluster mode: a group from its first row on).
        let mut b = Engine::new(&spec);
        let mut lazy = Engine::new(&spec);
        for (_, (ck, st, g, d)) in recorded {
            b.restore(0, g.clone(), ck, st, d);
            lazy.restore(0, g, ck, st, d);
        }
        b.install_restored();
        // The job resumes from the oldest event of an open window: every window
        // still open at the crash is rebuilt and emitted again, then the stream goes on.
        let mut open_at_cut: BTreeMap<(String, i64), MetricRow> = BTreeMap::new();
        for r in &rows[..cut] {
            let k = (GroupKey::new(&["city".to_string()], &r.group).key, r.window_end);
            if r.is_final || r.deleted {
                open_at_cut.remove(&k);
            } else {
                open_at_cut.insert(k, r.clone());
            }
        }
        let mut replay: Vec<MetricRow> = open_at_cut.into_values().collect();
        replay.sort_by_key(|r| r.window_end);
        replay.extend(rows[cut..].iter().cloned());
        let mut after = Vec::new();
        let mut after_lazy = Vec::new();
        for r in &replay {
            for t in lazy.observe(std::slice::from_ref(r)) {
                if t.kind.notifies() {
                    after_lazy.push((t.group.key.clone(), t.kind, t.starts_at));
                }
            }
            for t in b.observe(std::slice::from_ref(r)) {
                if t.kind.notifies() {
                    after.push((t.group.key.clone(), t.kind, t.starts_at));
                }
            }
        }
        // An uninterrupted run's notifications: the restart adds none.
        let mut whole = Engine::new(&spec);
        let mut uninterrupted = Vec::new();
        for r in &rows {
            for t in whole.observe(std::slice::from_ref(r)) {
                if t.kind.notifies() {
                    uninterrupted.push((t.group.key.clone(), t.kind, t.starts_at));
                }
            }
        }
        let count = |v: &[(String, EventKind, i64)], n: &(String, EventKind, i64)| v.iter().filter(|x| *x == n).count();
        for replayed in [&after, &after_lazy] {
            let both: Vec<_> = notified_before.iter().chain(replayed.iter()).cloned().collect();
            for n in &both {
                if n.1 == EventKind::Firing {
                    prop_assert!(count(&both, n) <= count(&uninterrupted, n), "{:?} notified more often than without the restart", n);
                }
            }
        }
    }
}

#[test]
fn webhook_message_is_alertmanager_v4() {
    let spec = spec();
    let mut engine = Engine::new(&spec);
    let mut rows = Vec::new();
    for k in 1..=4 {
        rows.push(row("Paris", k * SLIDE, 8, Some(0.5), true, 1, false));
    }
    let t = engine.observe(&rows);
    let firing = t.iter().find(|t| t.kind == EventKind::Firing).expect("fires after 2m");
    assert_eq!((firing.since, firing.starts_at), (SLIDE, 3 * SLIDE));
    let m = AlertMessage::new(&spec, firing, 0);
    assert_eq!(m.annotations["summary"], "Paris at 0.5");
    let json = serde_json::to_value(WebhookMessage::from_alert(&m)).expect("json");
    assert_eq!(json["version"], "4");
    assert_eq!(json["status"], "firing");
    let alert = &json["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "high");
    assert_eq!(alert["labels"]["city"], "Paris");
    assert_eq!(alert["startsAt"], "1970-01-01T00:03:00.000Z");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(alert["fingerprint"].as_str().map(str::len), Some(16));
    let t = engine.observe(&[row("Paris", 5 * SLIDE, 8, Some(0.1), true, 1, false)]);
    let resolved = AlertMessage::new(&spec, t.iter().find(|t| t.kind == EventKind::Resolved).expect("resolves"), 0);
    assert_eq!((resolved.starts_at.as_str(), resolved.ends_at.as_deref()), ("1970-01-01T00:03:00.000Z", Some("1970-01-01T00:05:00.000Z")));
    assert_eq!(resolved.fingerprint, m.fingerprint);
}

/// Live revisions reach the engine out of order across a group's windows (its
/// partitions are read at different paces). A window that fills a gap after the
/// group fired moves the start of its run earlier: the alert goes on firing, and
/// receivers hear nothing until it resolves, with the `startsAt` they were told.
#[test]
fn a_run_that_grows_backwards_while_firing_notifies_nothing() {
    let spec = spec();
    let mut engine = Engine::new(&spec);
    let hold = |end: i64, revision: u64| row("Paris", end * SLIDE, 8, Some(0.5), false, revision, false);
    // Windows ending at minutes 1..=9 hold, except minute 3's, which has no row yet.
    let rows: Vec<MetricRow> = (1..=9).filter(|&m| m != 3).map(|m| hold(m, 1)).collect();
    let got = engine.observe(&rows);
    let fired: Vec<_> = got.iter().filter(|t| t.kind.notifies()).collect();
    assert_eq!(fired.len(), 1, "{got:#?}");
    assert_eq!((fired[0].kind, fired[0].since, fired[0].starts_at), (EventKind::Firing, 4 * SLIDE, 6 * SLIDE));
    // Minute 3's revision arrives: the run now starts at minute 1.
    let got = engine.observe(&[hold(3, 1), hold(10, 1)]);
    assert!(got.iter().all(|t| !t.kind.notifies()), "{got:#?}");
    // Finals of every window, then a break: one resolution, of the episode notified.
    let mut finals: Vec<MetricRow> = (1..=10).map(|m| row("Paris", m * SLIDE, 8, Some(0.5), true, 2, false)).collect();
    finals.push(row("Paris", 11 * SLIDE, 8, Some(0.1), true, 1, false));
    let got = engine.observe(&finals);
    let notified: Vec<_> = got.iter().filter(|t| t.kind.notifies()).map(|t| (t.kind, t.starts_at, t.ends_at)).collect();
    assert_eq!(notified, vec![(EventKind::Resolved, 6 * SLIDE, Some(11 * SLIDE))], "{got:#?}");
}
