//! The emitter: where windows close. It owns the window store of the groups
//! this worker owns (see `store`), emits changed windows as non-final
//! revisions once per epoch, and emits a window as `final` exactly once when
//! the job's closed watermark passes its end (or withdraws it when every
//! event of it was retracted), then forgets it.

use std::sync::Arc;

use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::value::FxHashMap;

use crate::derived::InputRow;
use crate::plan::{JobPlan, Readout};
use crate::store::{Evaluated, MetricStore, StoreSize, WindowValues};
use crate::types::{Delta, WM_START};

/// Revisions of final rows carry this bit, so a final always outranks any live revision.
pub const FINAL_BIT: u64 = 1 << 62;

/// What the emitter has done, and what it holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EmitterStats {
    pub finals: u64,
    pub revisions: u64,
    /// Windows that ended empty after revisions of them were emitted.
    pub withdrawn: u64,
    /// Changes that arrived for windows already closed (ignored).
    pub ignored: u64,
    pub open_windows: usize,
    /// Per metric: the window store's size.
    pub state: Vec<StoreSize>,
}

/// Revision numbers of one emitting operator: each above every earlier one.
#[derive(Debug, Clone)]
pub struct Revisions {
    last: u64,
}

impl Revisions {
    /// Revisions continue above `floor`, the highest one already written.
    pub fn new(floor: u64) -> Revisions {
        Revisions { last: floor }
    }

    /// A revision above every earlier one: the wall clock in µs when it is
    /// ahead (revisions then say when), else the next number.
    pub fn next(&mut self, now_us: u64) -> u64 {
        self.last = (self.last + 1).max(now_us);
        self.last
    }
}

pub struct Emitter {
    plan: Arc<JobPlan>,
    /// Group values per group id, with how many workers hold the group open.
    names: FxHashMap<u64, (i64, Vec<GroupValue>)>,
    stores: Vec<MetricStore>,
    revisions: Revisions,
    /// Input windows of derived metrics handed in directly (a restart's seed), passed on.
    forward: Vec<InputRow>,
    pub stats: EmitterStats,
}

impl Emitter {
    /// `closed` is the closed watermark per domain the job starts from (after a
    /// restart), `metric_floor` (per metric, may be empty) the window end below
    /// which each metric's windows are already final; revisions continue above
    /// `revision_floor`, the highest one already written, so they grow across
    /// restarts whatever the wall clock does.
    pub fn new(plan: Arc<JobPlan>, closed: &[i64], metric_floor: &[i64], revision_floor: u64) -> Emitter {
        let stores = plan
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let from_domain = closed.get(m.domain).copied().unwrap_or(WM_START).saturating_sub(m.lateness);
                MetricStore::new(from_domain.max(metric_floor.get(i).copied().unwrap_or(WM_START)))
            })
            .collect();
        Emitter { stores, names: FxHashMap::default(), revisions: Revisions::new(revision_floor), forward: Vec::new(), stats: EmitterStats::default(), plan }
    }

    /// Applies the changes of one epoch.
    pub fn apply(&mut self, changes: Vec<Delta>) {
        for change in changes {
            match change {
                Delta::Names { gid, values, diff, .. } => {
                    // Every worker that has the group open holds one reference to its names.
                    let entry = self.names.entry(gid).or_insert_with(|| (0, values.iter().map(GroupValue::from).collect()));
                    entry.0 += i64::from(diff);
                    if entry.0 <= 0 {
                        self.names.remove(&gid);
                    }
                }
                Delta::Input(r) => self.forward.push(r),
                Delta::Pane(d) => {
                    let m = d.metric as usize;
                    if let (Some(plan), Some(store)) = (self.plan.metrics.get(m), self.stores.get_mut(m)) {
                        store.apply(plan, &d);
                    }
                }
            }
        }
    }

    fn next_revision(&mut self, now_us: u64) -> u64 {
        self.revisions.next(now_us)
    }

    /// Ends an epoch: closes the windows the closed watermarks (per domain) now
    /// cover, emitting them as final, and emits every other changed window as a
    /// revision. What derived metrics read of them goes to `derived`.
    pub fn finish_epoch(&mut self, closed: &[i64], now_ms: i64, rows: &mut Vec<MetricRow>, derived: &mut Vec<InputRow>) {
        let now_us = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
        let plan = Arc::clone(&self.plan);
        derived.append(&mut self.forward);
        for (m, mp) in plan.metrics.iter().enumerate() {
            let first_row = rows.len();
            let limit = closed.get(mp.domain).copied().unwrap_or(WM_START).saturating_sub(mp.lateness);
            let mut evaluated = Vec::new();
            self.stores[m].finish_epoch(mp, limit, &mut |e| evaluated.push(e));
            for e in evaluated {
                let empty = e.values.events <= 0;
                if e.is_final && empty {
                    // No event is left in the window: it has no final (a batch
                    // recomputation has no row for it); withdraw what was emitted.
                    if e.emitted {
                        let revision = self.next_revision(now_us) | FINAL_BIT;
                        let mut row = self.row(m, &e, revision, now_ms);
                        row.deleted = true;
                        row.values.iter_mut().for_each(|v| *v = AggValue::Float(None));
                        rows.push(row);
                        self.stats.withdrawn += 1;
                    }
                    continue;
                }
                let revision = self.next_revision(now_us) | if e.is_final { FINAL_BIT } else { 0 };
                rows.push(self.row(m, &e, revision, now_ms));
                if e.is_final {
                    self.stats.finals += 1;
                } else {
                    self.stats.revisions += 1;
                }
            }
            for &(d, position) in &plan.feeds[m] {
                derived.extend(rows[first_row..].iter().map(|r| plan.derived[d].input_row(d, position, r)));
            }
        }
        self.stats.ignored = self.stores.iter().map(|s| s.ignored).sum();
        self.stats.open_windows = self.stores.iter().map(MetricStore::open_windows).sum();
    }

    /// The window stores' sizes, per metric (walks every group: call it per epoch, not per event).
    pub fn measure(&mut self) {
        self.stats.state = self.stores.iter().map(MetricStore::size).collect();
    }

    fn row(&self, m: usize, e: &Evaluated, revision: u64, now_ms: i64) -> MetricRow {
        let mp = &self.plan.metrics[m];
        let w: &WindowValues = &e.values;
        let count = |slot: usize| w.add.get(slot).map_or(0, |a| a.n.max(0) as u64);
        let plain = |o: &Readout| -> AggValue {
            match *o {
                Readout::Count(s) => AggValue::Count(count(s)),
                Readout::Sum(s) => AggValue::Float(Some(w.add.get(s).map_or(0.0, |a| a.sum.to_f64()))),
                Readout::Avg(s) => AggValue::Float(w.add.get(s).and_then(|a| (a.n > 0).then(|| a.sum.to_f64() / a.n as f64))),
                Readout::Distinct(s) => AggValue::Count(w.distinct.get(s).map_or(0, |&n| n.max(0) as u64)),
                Readout::Stat(s, p) => AggValue::Float(w.stats.get(s).and_then(|v| v.get(p)).copied().flatten()),
                Readout::Ratio(..) | Readout::Derived => AggValue::Float(None),
            }
        };
        let values = mp
            .outputs
            .iter()
            .map(|o| match *o {
                Readout::Ratio(n, d) => {
                    let num = mp.outputs.get(n).map(&plain).and_then(AggValue::as_f64);
                    let den = mp.outputs.get(d).map(&plain).and_then(AggValue::as_f64);
                    AggValue::Float(match (num, den) {
                        (Some(n), Some(d)) if d != 0.0 => Some(n / d),
                        _ => None,
                    })
                }
                ref other => plain(other),
            })
            .collect();
        MetricRow {
            metric: m,
            group: self.names.get(&e.gid).map(|(_, v)| v.clone()).unwrap_or_default(),
            window_start: e.window_start,
            window_end: mp.windows.end(e.window_start),
            values,
            is_final: e.is_final,
            revision,
            emitted_at: now_ms,
            deleted: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Acc, Fixed, NamedValue, PaneDelta};

    #[test]
    fn revisions_continue_above_the_floor_whatever_the_clock() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let spec = pulse_model::Spec::parse(&path, &std::fs::read_to_string(&path).expect("spec")).expect("spec");
        let plan = Arc::new(JobPlan::new(&spec));
        // A floor far above the wall clock (an earlier run on a clock that was ahead).
        let floor = 1u64 << 60;
        let mut emitter = Emitter::new(Arc::clone(&plan), &[], &[], floor);
        let slots = plan.metrics[0].add.len();
        emitter.apply(vec![
            Delta::Names { gid: 7, metric: 0, values: vec![NamedValue::Str("Lima".into())], diff: 1 },
            Delta::Pane(PaneDelta {
                gid: 7,
                metric: 0,
                pane: 60_000,
                events: 1,
                add: vec![Acc { n: 1, sum: Fixed::from_f64(2.0) }; slots],
                ..PaneDelta::default()
            }),
        ]);
        let mut rows = Vec::new();
        emitter.finish_epoch(&[WM_START, WM_START, WM_START], 1_000, &mut rows, &mut Vec::new());
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r.revision > floor && r.revision & FINAL_BIT == 0), "{:?}", rows.iter().map(|r| r.revision).collect::<Vec<_>>());
        // Closing them: finals carry the final bit over a revision still above the floor.
        let revisions: Vec<u64> = rows.iter().map(|r| r.revision).collect();
        rows.clear();
        emitter.finish_epoch(&[i64::MAX / 4; 3], 2_000, &mut rows, &mut Vec::new());
        assert!(rows.iter().all(|r| r.is_final && (r.revision & !FINAL_BIT) > revisions.iter().copied().max().unwrap_or(0)));
    }
}
