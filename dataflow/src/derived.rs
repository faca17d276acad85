//! Derived metrics: other metrics' windows joined on their group fields and
//! the window, with aggregates that are expressions over the inputs'.
//!
//! The join is incremental and symmetric. Each input metric's emitter sends
//! every window it emits (revision, final or withdrawal) to the derived
//! metric's owner of that join key ([`InputRow`], exchanged by key). Inputs
//! are consolidated streams already (one current value per group and window,
//! replaced by each revision), so the join keeps exactly one value per input
//! per joined window, and a change of either input re-evaluates that window
//! only:
//!
//! - a joined window is emitted as a revision when an input changed it during
//!   the epoch;
//! - it is final once every input's windows ending at its end are closed
//!   (the slowest input decides), and then emitted once as final;
//! - an input without a window for the key counts as a window without events:
//!   its counts and sums are 0, its other aggregates null. A joined window
//!   exists while at least one input has it; one whose inputs were all
//!   withdrawn is withdrawn.

use std::collections::BTreeSet;

use pulse_model::expr::Expr;
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::spec::{AggKind, Spec};
use pulse_model::value::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::emit::{FINAL_BIT, Revisions};
use crate::plan::hash_group;
use crate::types::NamedValue;

/// One window of an input metric, as a derived metric sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputRow {
    /// Index of the derived metric in the job plan's derived metrics.
    pub derived: u16,
    /// Position of the input among the derived metric's inputs.
    pub input: u8,
    /// Hash of the join key (the derived metric's group values): the exchange key.
    pub key: u64,
    /// The join key, in the derived metric's group order.
    pub group: Vec<NamedValue>,
    pub window_start: i64,
    /// The input's aggregate values; `None` when the window was withdrawn.
    pub values: Option<Vec<Option<f64>>>,
}

/// A derived metric, compiled.
#[derive(Debug, Clone)]
pub struct DerivedPlan {
    /// Index of the derived metric in the spec.
    pub metric: usize,
    /// Indexes of its input metrics in the spec.
    pub inputs: Vec<usize>,
    /// Per input, per group field of the derived metric: its position in the input's group.
    pub key_positions: Vec<Vec<usize>>,
    pub exprs: Vec<Expr>,
    /// Per input, the values of a window without events (0 for counts and sums, else null).
    pub absent: Vec<Vec<Option<f64>>>,
    pub size: i64,
}

impl DerivedPlan {
    pub fn all(spec: &Spec) -> Vec<DerivedPlan> {
        spec.metrics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let d = m.derived.as_ref()?;
                let exprs = m.aggregates.iter().map(|a| if let AggKind::Expr(e) = &a.kind { e.clone() } else { Expr::Num(f64::NAN) }).collect();
                let absent = d
                    .inputs
                    .iter()
                    .map(|&input| {
                        spec.metrics[input]
                            .aggregates
                            .iter()
                            .map(|a| matches!(a.kind, AggKind::Count | AggKind::CountDistinct(_) | AggKind::Sum(_)).then_some(0.0))
                            .collect()
                    })
                    .collect();
                Some(DerivedPlan { metric: i, inputs: d.inputs.clone(), key_positions: d.key_positions.clone(), exprs, absent, size: m.window.ms() })
            })
            .collect()
    }

    /// The input row a window of input `input` (position) makes, from the
    /// input's emitted row; `derived` is this plan's index.
    pub fn input_row(&self, derived: usize, input: usize, row: &MetricRow) -> InputRow {
        let group: Vec<GroupValue> = self.key_positions[input].iter().map(|&p| row.group.get(p).cloned().unwrap_or(GroupValue::Null)).collect();
        InputRow {
            derived: derived as u16,
            input: input as u8,
            key: hash_group(self.metric as u64, &group),
            group: group.iter().map(NamedValue::from).collect(),
            window_start: row.window_start,
            values: (!row.deleted).then(|| row.values.iter().map(|v| v.as_f64()).collect()),
        }
    }

    /// The derived values of a joined window.
    pub fn evaluate(&self, inputs: &[Option<Vec<Option<f64>>>]) -> Vec<AggValue> {
        let get = |i: usize, a: usize| -> Option<f64> {
            match inputs.get(i).and_then(Option::as_ref) {
                Some(v) => v.get(a).copied().flatten(),
                None => self.absent.get(i).and_then(|v| v.get(a)).copied().flatten(),
            }
        };
        self.exprs.iter().map(|e| AggValue::Float(e.eval(&get))).collect()
    }
}

#[derive(Debug)]
struct Joined {
    group: Vec<GroupValue>,
    inputs: Vec<Option<Vec<Option<f64>>>>,
    dirty: bool,
    emitted: bool,
}

/// The open joined windows of one derived metric on this worker.
#[derive(Debug)]
pub struct DerivedStore {
    windows: FxHashMap<(u64, i64), Joined>,
    /// Open windows by (start, key): what closes next.
    open: BTreeSet<(i64, u64)>,
    dirty: Vec<(i64, u64)>,
    /// Windows that end at or before this are closed.
    closed_below: i64,
    /// Input rows that arrived for windows already closed (ignored).
    pub ignored: u64,
}

impl DerivedStore {
    pub fn new(closed_below: i64) -> DerivedStore {
        DerivedStore { windows: FxHashMap::default(), open: BTreeSet::new(), dirty: Vec::new(), closed_below, ignored: 0 }
    }

    pub fn apply(&mut self, plan: &DerivedPlan, r: InputRow) {
        if r.window_start.saturating_add(plan.size) <= self.closed_below {
            self.ignored += 1;
            return;
        }
        let key = (r.key, r.window_start);
        let w = self.windows.entry(key).or_insert_with(|| {
            self.open.insert((r.window_start, r.key));
            Joined { group: r.group.iter().map(GroupValue::from).collect(), inputs: vec![None; plan.inputs.len()], dirty: false, emitted: false }
        });
        if let Some(slot) = w.inputs.get_mut(usize::from(r.input)) {
            *slot = r.values;
        }
        if !w.dirty {
            w.dirty = true;
            self.dirty.push((r.window_start, r.key));
        }
    }

    /// Ends an epoch: closes the windows ending at or before `limit` (finals or
    /// withdrawals), then emits every other window an input changed.
    pub fn finish_epoch(&mut self, plan: &DerivedPlan, limit: i64, revisions: &mut Revisions, now_ms: i64, rows: &mut Vec<MetricRow>) {
        self.closed_below = self.closed_below.max(limit);
        // Windows [s, s + size) with s + size <= closed_below close.
        let first_open = self.closed_below.saturating_sub(plan.size).saturating_add(1);
        let still_open = self.open.split_off(&(first_open, 0));
        let closing = std::mem::replace(&mut self.open, still_open);
        let now_us = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
        for (start, key) in closing {
            let Some(w) = self.windows.remove(&(key, start)) else { continue };
            if w.inputs.iter().all(Option::is_none) {
                if w.emitted {
                    let mut row = self.row(plan, &w, start, revisions.next(now_us) | FINAL_BIT, now_ms, true);
                    row.deleted = true;
                    row.values.iter_mut().for_each(|v| *v = AggValue::Float(None));
                    rows.push(row);
                }
                continue;
            }
            rows.push(self.row(plan, &w, start, revisions.next(now_us) | FINAL_BIT, now_ms, true));
        }
        for (start, key) in std::mem::take(&mut self.dirty) {
            let Some(w) = self.windows.get_mut(&(key, start)) else { continue };
            w.dirty = false;
            if w.inputs.iter().all(Option::is_none) {
                continue;
            }
            w.emitted = true;
            let revision = revisions.next(now_us);
            let row = Self::make_row(plan, &w.group, &w.inputs, start, revision, now_ms, false);
            rows.push(row);
        }
    }

    fn row(&self, plan: &DerivedPlan, w: &Joined, start: i64, revision: u64, now_ms: i64, is_final: bool) -> MetricRow {
        Self::make_row(plan, &w.group, &w.inputs, start, revision, now_ms, is_final)
    }

    fn make_row(
        plan: &DerivedPlan,
        group: &[GroupValue],
        inputs: &[Option<Vec<Option<f64>>>],
        start: i64,
        revision: u64,
        now_ms: i64,
        is_final: bool,
    ) -> MetricRow {
        MetricRow {
            metric: plan.metric,
            group: group.to_vec(),
            window_start: start,
            window_end: start.saturating_add(plan.size),
            values: plan.evaluate(inputs),
            is_final,
            revision,
            emitted_at: now_ms,
            deleted: false,
        }
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

/// The closed limit of a derived metric: its windows ending at or below it
/// are final. `input_limit(m)` is input metric `m`'s.
pub fn limit(plan: &DerivedPlan, input_limit: impl Fn(usize) -> i64) -> i64 {
    plan.inputs.iter().map(|&m| input_limit(m)).min().unwrap_or(i64::MIN)
}

/// Joins the inputs' rows (as a batch recomputation gives them: one row per
/// group and window) into the derived metric's rows for windows ending at or
/// below `closed`, as finals with `revision`. What `pulse backfill` and the
/// tests compare the dataflow with.
pub fn join_batch(plan: &DerivedPlan, derived: usize, inputs: &[Vec<MetricRow>], revision: u64, now_ms: i64) -> Vec<MetricRow> {
    let mut store = DerivedStore::new(i64::MIN);
    for (i, rows) in inputs.iter().enumerate() {
        for r in rows {
            store.apply(plan, plan.input_row(derived, i, r));
        }
    }
    store.dirty.clear();
    let mut out = Vec::new();
    let mut revisions = Revisions::new(revision.saturating_sub(1));
    store.finish_epoch(plan, i64::MAX / 4, &mut revisions, now_ms, &mut out);
    for r in &mut out {
        r.revision = revision | FINAL_BIT;
    }
    out.sort_by(|a, b| (a.window_start, &a.group).partial_cmp(&(b.window_start, &b.group)).unwrap_or(std::cmp::Ordering::Equal));
    out
}
