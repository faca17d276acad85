//! The window store: where a worker keeps the groups it owns, pane by pane.
//!
//! Every event's contribution is kept once, in its slide-sized pane (as
//! Flink's sliced windows do): additive accumulators, the numbers of order
//! statistics (see `multiset`) and distinct-value presence (see `distinct`),
//! or, for quantiles that ask for it, a DDSketch per pane whose window value
//! is the merge of its panes' sketches. HyperLogLog distinct counts are the
//! exception: a window keeps its own sketch, which takes the values of every
//! pane delta of the window (see `WindowMeta::hll`), because merging 2^p
//! registers per pane on every revision costs more than the events do. A
//! window is otherwise the merge of its panes, computed when it changed,
//! never copied:
//!
//! - a pane change marks the open windows holding the pane dirty (a list, so
//!   a tick visits only what changed);
//! - a dirty window is evaluated at the end of the epoch from its panes
//!   (k additions, a selection per quantile) and emitted as a revision;
//! - when the closed watermark passes a window's end it is evaluated one last
//!   time and emitted as final (or withdrawn when its events were all
//!   retracted); once the last window holding a pane closes, the pane goes.

use std::collections::{BTreeMap, BTreeSet};

use pulse_model::value::FxHashMap;

use crate::ddsketch::{self, DdSketch, Mapping};
use crate::distinct::{PaneIdx, Presence, Transition, pane_diff};
use crate::hll::{self, Hll};
use crate::multiset::{self, PaneValues};
use crate::plan::MetricPlan;
use crate::types::{Acc, PaneDelta};

/// One pane of one group.
#[derive(Debug)]
struct Pane {
    events: i64,
    add: Vec<Acc>,
    values: Vec<PaneValues>,
    /// Per multiset slot, the DDSketch of a `ddsketch` slot (empty when the metric has none).
    sketches: Vec<Option<DdSketch>>,
}

impl Pane {
    fn new(plan: &MetricPlan) -> Pane {
        let sketches = if plan.multisets.iter().any(|m| m.sketch.is_some()) {
            plan.multisets.iter().map(|m| m.sketch.map(|a| DdSketch::new(Mapping::new(a)))).collect()
        } else {
            Vec::new()
        };
        Pane { events: 0, add: vec![Acc::ZERO; plan.add.len()], values: vec![PaneValues::default(); plan.multisets.len()], sketches }
    }

    /// Bytes of its sketches (structs and contents).
    fn sketch_bytes(&self) -> usize {
        self.sketches.capacity() * std::mem::size_of::<Option<DdSketch>>() + self.sketches.iter().flatten().map(DdSketch::heap_bytes).sum::<usize>()
    }
}

/// Reusable buffers for evaluating windows.
#[derive(Debug, Default)]
struct Scratch {
    stats: Vec<Option<f64>>,
    dd: ddsketch::Scratch,
    /// Register words of one `hll` slot of a pane delta.
    words: Vec<u32>,
}

/// What the store keeps of an open window beyond its panes.
#[derive(Debug)]
struct WindowMeta {
    /// Distinct values per distinct slot (maintained on presence transitions).
    distinct: Vec<i64>,
    /// Per distinct slot, the HyperLogLog of an `hll` slot (empty when the
    /// metric has none): every value any pane of the window took since the
    /// window opened. A window opens with the first delta to any of its panes
    /// and takes every later one until it closes, so this is exactly the
    /// union of its panes' sketches; registers only rise (`hll` domains are
    /// immutable), so the sketch keeps its estimator's rank counts as it goes
    /// and a revision costs O(q), not a merge of 2^p registers per pane.
    hll: Vec<Option<Hll>>,
    dirty: bool,
    /// A revision of it was emitted (so an empty end withdraws it).
    emitted: bool,
}

impl WindowMeta {
    fn new(plan: &MetricPlan) -> WindowMeta {
        let hll = if plan.distinct.iter().any(|d| d.hll.is_some()) { plan.distinct.iter().map(|d| d.hll.map(Hll::new)).collect() } else { Vec::new() };
        WindowMeta { distinct: vec![0; plan.distinct.len()], hll, dirty: false, emitted: false }
    }

    /// Distinct values per distinct slot: the exact counts, and the sketches' estimates.
    fn distinct_counts(&self) -> Vec<i64> {
        let mut counts = self.distinct.clone();
        for (n, h) in counts.iter_mut().zip(&self.hll) {
            if let Some(h) = h {
                *n = h.estimate().round() as i64;
            }
        }
        counts
    }

    /// Bytes of its sketches (structs and contents).
    fn sketch_bytes(&self) -> usize {
        self.hll.capacity() * std::mem::size_of::<Option<Hll>>() + self.hll.iter().flatten().map(Hll::heap_bytes).sum::<usize>()
    }
}

/// The groups of one metric a worker owns.
#[derive(Debug, Default)]
struct Group {
    panes: BTreeMap<i64, Pane>,
    distinct: Vec<Presence>,
    windows: BTreeMap<i64, WindowMeta>,
}

/// A window's values, as the emitter turns them into a row.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WindowValues {
    pub events: i64,
    pub add: Vec<Acc>,
    pub distinct: Vec<i64>,
    /// Per multiset slot, per statistic.
    pub stats: Vec<Vec<Option<f64>>>,
}

/// A window the store hands to the emitter.
pub struct Evaluated {
    pub window_start: i64,
    pub gid: u64,
    pub values: WindowValues,
    /// Closing: `true` with `values.events == 0` means "withdraw".
    pub is_final: bool,
    /// A revision of it was emitted before.
    pub emitted: bool,
}

/// The state of one metric's windows on this worker.
pub struct MetricStore {
    groups: FxHashMap<u64, Group>,
    /// Open windows, by (start, group): what the closed watermark closes next.
    open: BTreeSet<(i64, u64)>,
    dirty: Vec<(i64, u64)>,
    /// Windows that end at or before this are closed.
    closed_below: i64,
    /// Pane deltas that arrived for panes whose windows were all closed.
    pub ignored: u64,
    scratch: Scratch,
    others: Vec<PaneIdx>,
}

impl MetricStore {
    pub fn new(closed_below: i64) -> MetricStore {
        MetricStore {
            groups: FxHashMap::default(),
            open: BTreeSet::new(),
            dirty: Vec::new(),
            closed_below,
            ignored: 0,
            scratch: Scratch::default(),
            others: Vec::new(),
        }
    }

    fn pane_idx(plan: &MetricPlan, pane: i64) -> PaneIdx {
        pane.div_euclid(plan.windows.slide) as PaneIdx
    }

    /// Applies one worker's changes of one epoch to one pane.
    pub fn apply(&mut self, plan: &MetricPlan, d: &PaneDelta) {
        let w = plan.windows;
        if w.is_late(d.pane, self.closed_below) {
            self.ignored += 1;
            return;
        }
        let group =
            self.groups.entry(d.gid).or_insert_with(|| Group { distinct: (0..plan.distinct.len()).map(|_| Presence::default()).collect(), ..Group::default() });
        for s in w.open_starts(d.pane, self.closed_below) {
            let meta = group.windows.entry(s).or_insert_with(|| {
                self.open.insert((s, d.gid));
                WindowMeta::new(plan)
            });
            if !meta.dirty {
                meta.dirty = true;
                self.dirty.push((s, d.gid));
            }
        }
        let pane = group.panes.entry(d.pane).or_insert_with(|| Pane::new(plan));
        pane.events += d.events;
        for (a, b) in pane.add.iter_mut().zip(&d.add) {
            a.plus(b);
        }
        for &(slot, v, c) in &d.multiset {
            if let Some(Some(sketch)) = pane.sketches.get_mut(slot as usize) {
                sketch.change(v, c);
            } else if let Some(values) = pane.values.get_mut(slot as usize) {
                values.change(v, c);
            }
        }
        if d.distinct.is_empty() {
            return;
        }
        // HyperLogLog slots: every open window holding the pane takes the
        // delta's values at once. Their domains are immutable (the spec
        // refuses `hll` on mutable ones): nothing is ever retracted from them.
        for (slot, ds) in plan.distinct.iter().enumerate() {
            let Some(p) = ds.hll else { continue };
            let words = &mut self.scratch.words;
            words.clear();
            words.extend(d.distinct.iter().filter(|&&(s, _, c)| s as usize == slot && c > 0).map(|&(_, v, _)| hll::encode(p, v)));
            if words.is_empty() {
                continue;
            }
            words.sort_unstable();
            words.dedup();
            for s in w.open_starts(d.pane, self.closed_below) {
                if let Some(Some(h)) = group.windows.get_mut(&s).and_then(|m| m.hll.get_mut(slot)) {
                    h.insert_sorted(words);
                }
            }
        }
        let p = Self::pane_idx(plan, d.pane);
        let k = w.per_event() as i32;
        // The open windows holding the pane (their first panes), and what their
        // distinct counts gain, applied once for the whole delta.
        let windows: Vec<(i64, PaneIdx)> = w.open_starts(d.pane, self.closed_below).map(|s| (s, Self::pane_idx(plan, s))).collect();
        let slots = plan.distinct.len();
        let mut gained = vec![0i64; windows.len() * slots];
        let others = &mut self.others;
        for &(slot, v, c) in &d.distinct {
            if plan.distinct.get(slot as usize).is_none_or(|s| s.hll.is_some()) {
                continue;
            }
            let Some(presence) = group.distinct.get_mut(slot as usize) else { continue };
            let Some(t) = presence.change(v, p, c, others) else { continue };
            let step = if t == Transition::Appeared { 1 } else { -1 };
            // Each open window holding the pane counts the value once, whichever of its panes hold it.
            for (j, &(_, first)) in windows.iter().enumerate() {
                if others.is_empty() || !others.iter().any(|&q| (0..k).contains(&pane_diff(q, first))) {
                    gained[j * slots + slot as usize] += step;
                }
            }
        }
        for (j, (s, _)) in windows.iter().enumerate() {
            if let Some(meta) = group.windows.get_mut(s) {
                for (n, g) in meta.distinct.iter_mut().zip(&gained[j * slots..(j + 1) * slots]) {
                    *n += g;
                }
            }
        }
    }

    /// A window's values from its panes (and its distinct counts, kept by the window).
    fn evaluate(plan: &MetricPlan, group: &mut Group, start: i64, distinct: Vec<i64>, scratch: &mut Scratch) -> WindowValues {
        let end = plan.windows.end(start);
        let mut v = WindowValues { events: 0, add: vec![Acc::ZERO; plan.add.len()], distinct, stats: Vec::with_capacity(plan.multisets.len()) };
        for pane in group.panes.range_mut(start..end).map(|(_, p)| p) {
            v.events += pane.events;
            for (a, b) in v.add.iter_mut().zip(&pane.add) {
                a.plus(b);
            }
            pane.values.iter_mut().for_each(PaneValues::settle);
            pane.sketches.iter_mut().flatten().for_each(DdSketch::shrink);
        }
        for (slot, ms) in plan.multisets.iter().enumerate() {
            let wanted: Vec<_> = ms.stats.iter().map(|(_, s)| *s).collect();
            if ms.sketch.is_some() {
                let sketches: Vec<&DdSketch> = group.panes.range(start..end).filter_map(|(_, p)| p.sketches.get(slot)?.as_ref()).collect();
                ddsketch::stats(&sketches, &wanted, &mut scratch.stats, &mut scratch.dd);
            } else {
                let sorted: Vec<&[f64]> = group.panes.range(start..end).filter_map(|(_, p)| p.values.get(slot)).map(PaneValues::sorted).collect();
                multiset::stats(&sorted, &wanted, &mut scratch.stats);
            }
            v.stats.push(scratch.stats.clone());
        }
        v
    }

    /// Ends an epoch: closes the windows that end at or before `limit` (finals,
    /// or withdrawals), then evaluates every other window that changed (revisions).
    pub fn finish_epoch(&mut self, plan: &MetricPlan, limit: i64, out: &mut impl FnMut(Evaluated)) {
        let size = plan.windows.size;
        self.closed_below = self.closed_below.max(limit);
        // Every window starting before `first_open` is closed; so is every pane before it.
        let first_open = self.closed_below.saturating_sub(size).saturating_add(1);
        let still_open = self.open.split_off(&(first_open, 0));
        let closing = std::mem::replace(&mut self.open, still_open);
        let mut touched: Vec<u64> = Vec::new();
        for (start, gid) in closing {
            let Some(group) = self.groups.get_mut(&gid) else { continue };
            let Some(meta) = group.windows.remove(&start) else { continue };
            let values = Self::evaluate(plan, group, start, meta.distinct_counts(), &mut self.scratch);
            out(Evaluated { window_start: start, gid, values, is_final: true, emitted: meta.emitted });
            if touched.last() != Some(&gid) {
                touched.push(gid);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        // The first pane kept: the first multiple of the slide at or after `first_open`.
        let first_pane = Self::pane_idx(plan, first_open.saturating_add(plan.windows.slide - 1));
        for gid in touched {
            let Some(group) = self.groups.get_mut(&gid) else { continue };
            let keep = group.panes.split_off(&first_open);
            group.panes = keep;
            for p in &mut group.distinct {
                p.expire(first_pane);
            }
            if group.windows.is_empty() && group.panes.is_empty() {
                self.groups.remove(&gid);
            }
        }
        for (start, gid) in std::mem::take(&mut self.dirty) {
            let Some(group) = self.groups.get_mut(&gid) else { continue };
            let Some(meta) = group.windows.get_mut(&start) else { continue };
            if !meta.dirty {
                continue;
            }
            meta.dirty = false;
            let emitted = std::mem::replace(&mut meta.emitted, true);
            let distinct = meta.distinct_counts();
            let values = Self::evaluate(plan, group, start, distinct, &mut self.scratch);
            out(Evaluated { window_start: start, gid, values, is_final: false, emitted });
        }
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Bytes held, and the events and open windows they hold.
    pub fn size(&self) -> StoreSize {
        let mut s = StoreSize { bytes: self.open.len() * 24 + self.dirty.capacity() * 16, windows: self.open.len(), ..StoreSize::default() };
        s.bytes += self.groups.capacity() * (std::mem::size_of::<(u64, Group)>() + 1);
        for g in self.groups.values() {
            for p in g.panes.values() {
                s.events += p.events.max(0) as u64;
                let sketches = p.sketch_bytes();
                s.sketch_bytes += sketches;
                s.bytes += std::mem::size_of::<(i64, Pane)>()
                    + p.add.capacity() * std::mem::size_of::<Acc>()
                    + p.values.iter().map(|v| v.bytes() + std::mem::size_of::<PaneValues>()).sum::<usize>()
                    + sketches;
            }
            s.bytes += g.distinct.iter().map(Presence::bytes).sum::<usize>();
            s.bytes += g.windows.len() * (std::mem::size_of::<(i64, WindowMeta)>() + g.distinct.len() * 8);
            for m in g.windows.values() {
                let sketches = m.sketch_bytes();
                s.sketch_bytes += sketches;
                s.bytes += sketches;
            }
        }
        s
    }
}

/// The size of a store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreSize {
    pub bytes: usize,
    /// Events held in open panes.
    pub events: u64,
    /// Open windows.
    pub windows: usize,
    /// Of `bytes`, those of the sketches (the windows' `hll`, the panes' `ddsketch`).
    pub sketch_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::JobPlan;
    use proptest::prelude::*;

    const SPEC: &str = r#"
[[domain]]
name = "visits"
topic = "visits"
partitions = 1
key = "id"
time_field = "ts"
fields = [
  { name = "id", type = "string" },
  { name = "page", type = "string", dimension = true },
  { name = "user", type = "string" },
  { name = "ts", type = "timestamp" },
]

[[metric]]
name = "page_users"
domain = "visits"
group_by = ["page"]
window = "20s"
slide = "5s"
lateness = "1s"
aggregates = [
  { name = "n", fn = "count" },
  { name = "users", fn = "count_distinct", field = "user" },
  { name = "users_hll4", fn = "count_distinct", field = "user", method = "hll", precision = 4 },
  { name = "users_hll10", fn = "count_distinct", field = "user", method = "hll", precision = 10 },
]
"#;

    fn plan() -> MetricPlan {
        let spec = pulse_model::Spec::parse(std::path::Path::new("store-test.toml"), SPEC).unwrap_or_else(|e| panic!("{e}"));
        JobPlan::new(&spec).metrics.swap_remove(0)
    }

    fn hash(v: u64) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&v.to_le_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Every `hll` count a window emits (revision or final) equals the
        /// estimate of the union of its panes' sketches, as the store computed
        /// it before windows kept their own sketch: deltas to random panes of
        /// two groups (some late, some to panes whose older windows are
        /// closed), epochs that close windows in between.
        #[test]
        fn window_sketches_estimate_the_union_of_their_panes(
            epochs in prop::collection::vec(
                (prop::collection::vec((0u64..2, -4i64..8, prop::collection::vec(0u64..3_000, 0..300)), 0..6), 0i64..12_000),
                1..12,
            ),
        ) {
            let plan = plan();
            let w = plan.windows;
            let hll_slots: Vec<(usize, u8)> = plan.distinct.iter().enumerate().filter_map(|(i, d)| Some((i, d.hll?))).collect();
            prop_assert_eq!(hll_slots.len(), 2);
            let mut store = MetricStore::new(0);
            let mut closed = 0i64;
            // The panes' sketches, per (group, pane start), per `hll` slot.
            let mut panes: BTreeMap<(u64, i64), Vec<Hll>> = BTreeMap::new();
            let mut scratch = hll::Scratch::default();
            let mut checked = 0usize;
            for (deltas, advance) in epochs {
                for (gid, offset, values) in deltas {
                    // Panes from a window before the closed watermark to two windows past it.
                    let pane = w.pane(closed) + offset * w.slide;
                    let distinct: Vec<(u16, u128, i32)> = values.iter().flat_map(|&v| (0..plan.distinct.len() as u16).map(move |s| (s, hash(v), 1))).collect();
                    let d = PaneDelta { gid, metric: 0, pane, events: values.len() as i64, distinct, ..PaneDelta::default() };
                    if !w.is_late(pane, store.closed_below) {
                        let sketches = panes.entry((gid, pane)).or_insert_with(|| hll_slots.iter().map(|&(_, p)| Hll::new(p)).collect());
                        for (h, &(_, p)) in sketches.iter_mut().zip(&hll_slots) {
                            h.insert_words(&mut values.iter().map(|&v| hll::encode(p, hash(v))).collect());
                        }
                    }
                    store.apply(&plan, &d);
                }
                closed += advance;
                let mut out = Vec::new();
                store.finish_epoch(&plan, closed, &mut |e| out.push(e));
                for e in out {
                    let in_window = panes.range((e.gid, e.window_start)..(e.gid, w.end(e.window_start)));
                    let sketches: Vec<&Vec<Hll>> = in_window.map(|(_, s)| s).collect();
                    for (j, &(slot, _)) in hll_slots.iter().enumerate() {
                        let refs: Vec<&Hll> = sketches.iter().map(|s| &s[j]).collect();
                        let union = hll::union_estimate(&refs, &mut scratch).round() as i64;
                        prop_assert_eq!(e.values.distinct[slot], union, "window {} of group {}, slot {}, final {}", e.window_start, e.gid, slot, e.is_final);
                        checked += 1;
                    }
                }
            }
            // Not vacuous when there was something to emit.
            prop_assert!(checked > 0 || panes.is_empty());
        }
    }
}
