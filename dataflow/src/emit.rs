//! The emitter: where windows close. It holds the current value of every slot
//! of every open window (as differential reports them), emits changed windows
//! as non-final revisions once per epoch, and emits a window as `final`
//! exactly once when the job's closed watermark passes its end, then forgets it.

use std::collections::BTreeMap;
use std::sync::Arc;

use pulse_model::metric_row::{AggValue, GroupValue, MetricRow};
use pulse_model::value::FxHashMap;

use crate::plan::{JobPlan, Output, Stat};
use crate::types::{Acc, EmitIn, WM_START};

/// Revisions of final rows carry this bit, so a final always outranks any live revision.
pub const FINAL_BIT: u64 = 1 << 62;

struct WindowState {
    add: Vec<Acc>,
    distinct: Vec<i64>,
    /// Per multiset slot, per statistic.
    stats: Vec<Vec<Option<f64>>>,
    dirty: bool,
    /// A revision of it was emitted (so an empty end withdraws it).
    emitted: bool,
}

impl WindowState {
    fn new(plan: &crate::plan::MetricPlan) -> WindowState {
        WindowState {
            add: vec![Acc::ZERO; plan.add.len()],
            distinct: vec![0; plan.distinct.len()],
            stats: plan.multisets.iter().map(|m| vec![None; m.stats.len()]).collect(),
            dirty: false,
            emitted: false,
        }
    }

    /// Every event of the window was retracted (deleted, or moved by an update).
    fn is_empty(&self) -> bool {
        use differential_dataflow::difference::IsZero as _;
        self.add.iter().all(Acc::is_zero) && self.distinct.iter().all(|&d| d == 0) && self.stats.iter().flatten().all(Option::is_none)
    }
}

pub struct Emitter {
    plan: Arc<JobPlan>,
    /// Group values per group id, with how many workers hold the group open.
    names: FxHashMap<u64, (isize, Vec<GroupValue>)>,
    /// Per metric: open windows by (window start, group id).
    windows: Vec<BTreeMap<(i64, u64), WindowState>>,
    /// Per metric: windows with `end <= closed_below` are closed.
    closed_below: Vec<i64>,
    last_revision: u64,
    pub finals: u64,
    pub revisions: u64,
    /// Windows that ended empty after revisions of them were emitted.
    pub withdrawn: u64,
    /// Changes that arrived for windows already closed (ignored).
    pub ignored: u64,
}

impl Emitter {
    /// `closed` is the closed watermark per domain the job starts from (after a restart).
    pub fn new(plan: Arc<JobPlan>, closed: &[i64]) -> Emitter {
        let closed_below = plan.metrics.iter().map(|m| closed.get(m.domain).copied().unwrap_or(WM_START).saturating_sub(m.lateness)).collect();
        Emitter {
            windows: plan.metrics.iter().map(|_| BTreeMap::new()).collect(),
            names: FxHashMap::default(),
            closed_below,
            last_revision: 0,
            finals: 0,
            revisions: 0,
            withdrawn: 0,
            ignored: 0,
            plan,
        }
    }

    /// Applies the changes of one epoch (retractions before insertions, so a slot
    /// ends with its new value).
    pub fn apply(&mut self, mut changes: Vec<(EmitIn, isize)>) {
        changes.sort_by_key(|(_, diff)| *diff > 0);
        for (change, diff) in changes {
            if let EmitIn::Names(gid, _, values) = &change {
                // Every worker that has the group open holds one reference to its names.
                let entry = self.names.entry(*gid).or_insert_with(|| (0, values.iter().map(GroupValue::from).collect()));
                entry.0 += diff;
                if entry.0 <= 0 {
                    self.names.remove(gid);
                }
                continue;
            }
            let key = match &change {
                EmitIn::Add(k, _) | EmitIn::Distinct(k, _) | EmitIn::Stat(k, ..) => *k,
                EmitIn::Names(..) => continue,
            };
            let m = key.metric as usize;
            let Some(mp) = self.plan.metrics.get(m) else { continue };
            if mp.windows.end(key.win) <= self.closed_below[m] {
                self.ignored += 1;
                continue;
            }
            let w = match self.windows[m].get_mut(&(key.win, key.gid)) {
                Some(w) => w,
                None if diff > 0 => self.windows[m].entry((key.win, key.gid)).or_insert_with(|| WindowState::new(mp)),
                None => continue,
            };
            w.dirty = true;
            let slot = key.slot as usize;
            match change {
                EmitIn::Add(_, acc) => {
                    if let Some(a) = w.add.get_mut(slot) {
                        *a = if diff > 0 { acc } else { Acc::ZERO };
                    }
                }
                EmitIn::Distinct(_, n) => {
                    if let Some(d) = w.distinct.get_mut(slot) {
                        *d = if diff > 0 { n } else { 0 };
                    }
                }
                EmitIn::Stat(_, pos, v) => {
                    if let Some(s) = w.stats.get_mut(slot).and_then(|s| s.get_mut(pos as usize)) {
                        *s = if diff > 0 { v.map(|v| v.0) } else { None };
                    }
                }
                EmitIn::Names(..) => {}
            }
        }
    }

    fn next_revision(&mut self, now_us: u64) -> u64 {
        self.last_revision = (self.last_revision + 1).max(now_us);
        self.last_revision
    }

    /// Ends an epoch: closes the windows the closed watermarks (per domain) now
    /// cover, emitting them as final, and emits every other changed window as a revision.
    pub fn finish_epoch(&mut self, closed: &[i64], now_ms: i64, rows: &mut Vec<MetricRow>) {
        let now_us = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
        for m in 0..self.plan.metrics.len() {
            let plan = Arc::clone(&self.plan);
            let mp = &plan.metrics[m];
            let limit = closed.get(mp.domain).copied().unwrap_or(WM_START).saturating_sub(mp.lateness);
            if limit > self.closed_below[m] {
                self.closed_below[m] = limit;
            }
            // Windows are keyed by start: every start with start + size <= limit is closed.
            let first_open = self.closed_below[m].saturating_sub(mp.windows.size).saturating_add(1);
            let open = self.windows[m].split_off(&(first_open, 0));
            let closing = std::mem::replace(&mut self.windows[m], open);
            for ((win, gid), state) in closing {
                if state.is_empty() {
                    // No event is left in the window: it has no final (a batch
                    // recomputation has no row for it); withdraw what was emitted.
                    if state.emitted {
                        let revision = self.next_revision(now_us) | FINAL_BIT;
                        let mut row = self.row(m, win, gid, &state, true, revision, now_ms);
                        row.deleted = true;
                        row.values.iter_mut().for_each(|v| *v = AggValue::Float(None));
                        rows.push(row);
                        self.withdrawn += 1;
                    }
                    continue;
                }
                let revision = self.next_revision(now_us) | FINAL_BIT;
                rows.push(self.row(m, win, gid, &state, true, revision, now_ms));
                self.finals += 1;
            }
            let dirty: Vec<(i64, u64)> = self.windows[m].iter().filter(|(_, w)| w.dirty).map(|(k, _)| *k).collect();
            for (win, gid) in dirty {
                let revision = self.next_revision(now_us);
                if let Some(state) = self.windows[m].get_mut(&(win, gid)) {
                    state.dirty = false;
                    state.emitted = true;
                }
                if let Some(state) = self.windows[m].get(&(win, gid)) {
                    rows.push(self.row(m, win, gid, state, false, revision, now_ms));
                    self.revisions += 1;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(&self, m: usize, win: i64, gid: u64, w: &WindowState, is_final: bool, revision: u64, now_ms: i64) -> MetricRow {
        let mp = &self.plan.metrics[m];
        let count = |slot: usize| w.add.get(slot).map_or(0, |a| a.n.max(0) as u64);
        let plain = |o: &Output| -> AggValue {
            match *o {
                Output::Count(s) => AggValue::Count(count(s)),
                Output::Sum(s) => AggValue::Float(Some(w.add.get(s).map_or(0.0, |a| a.sum.to_f64()))),
                Output::Avg(s) => AggValue::Float(w.add.get(s).and_then(|a| (a.n > 0).then(|| a.sum.to_f64() / a.n as f64))),
                Output::Distinct(s) => AggValue::Count(w.distinct.get(s).map_or(0, |&n| n.max(0) as u64)),
                Output::Stat(s, p) => AggValue::Float(w.stats.get(s).and_then(|v| v.get(p)).copied().flatten()),
                Output::Ratio(..) => AggValue::Float(None),
            }
        };
        let values = mp
            .outputs
            .iter()
            .map(|o| match *o {
                Output::Ratio(n, d) => {
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
            group: self.names.get(&gid).map(|(_, v)| v.clone()).unwrap_or_default(),
            window_start: win,
            window_end: mp.windows.end(win),
            values,
            is_final,
            revision,
            emitted_at: now_ms,
            deleted: false,
        }
    }

    /// Open windows held (for memory metrics).
    pub fn open_windows(&self) -> usize {
        self.windows.iter().map(BTreeMap::len).sum()
    }
}

/// Exact order statistics of a sorted multiset given as (value, multiplicity).
pub fn stats_of(sorted: &[(f64, isize)], stats: &[Stat], out: &mut Vec<Option<f64>>) {
    out.clear();
    let n: isize = sorted.iter().map(|(_, c)| (*c).max(0)).sum();
    for stat in stats {
        if n <= 0 {
            out.push(None);
            continue;
        }
        let v = match *stat {
            Stat::Min => sorted.iter().find(|(_, c)| *c > 0).map(|(v, _)| *v),
            Stat::Max => sorted.iter().rev().find(|(_, c)| *c > 0).map(|(v, _)| *v),
            Stat::Quantile(q) => {
                // ClickHouse quantileExact: element at floor(q * n) of the sorted values (n - 1 for q >= 1).
                let idx = if q < 1.0 { ((q * n as f64) as isize).min(n - 1) } else { n - 1 };
                let mut seen = 0isize;
                sorted.iter().find_map(|(v, c)| {
                    seen += (*c).max(0);
                    (seen > idx).then_some(*v)
                })
            }
        };
        out.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_clickhouse_quantile_exact() {
        let sorted = [(1.0, 1), (2.0, 2), (5.0, 1), (9.0, 1)]; // 1 2 2 5 9
        let mut out = Vec::new();
        stats_of(&sorted, &[Stat::Quantile(0.5), Stat::Quantile(0.95), Stat::Quantile(0.0), Stat::Quantile(1.0), Stat::Min, Stat::Max], &mut out);
        // n = 5: q=0.5 -> index 2 -> 2; q=0.95 -> index 4 -> 9; q=0 -> 1; q=1 -> 9.
        assert_eq!(out, [Some(2.0), Some(9.0), Some(1.0), Some(9.0), Some(1.0), Some(9.0)]);
        stats_of(&[], &[Stat::Min], &mut out);
        assert_eq!(out, [None]);
    }
}
