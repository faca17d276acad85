//! A worker's ingestion state: turns decoded events into differential updates.
//!
//! - Additive contributions are pre-aggregated per (metric, group, pane) within
//!   an epoch and sent once per window of the pane when the epoch ends.
//! - Every contribution is remembered per pane until the last window holding
//!   the pane closes; then it is retracted, so differential's state (and this
//!   one) stays bounded by the open windows.
//! - Mutable domains keep each live event's latest version: an update or a
//!   delete retracts the old version's contributions (differential retractions).
//! - Per partition, the offset of the oldest event still in an open window is
//!   tracked: that is what may be committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use pulse_model::metric_row::GroupValue;
use pulse_model::value::FxHashMap;
use pulse_model::{Event, Op, Spec, Value};

use crate::plan::{JobPlan, MetricPlan};
use crate::types::{Acc, Bag, DomainWm, NamedValue, OrdF64, WinKey};
use crate::watermark::LocalClocks;

/// Where ingestion sends its updates (the differential input sessions, or a test double).
pub trait Updates {
    fn add(&mut self, key: WinKey, acc: Acc);
    /// Changes of a window's distinct-value presence counts.
    fn distinct(&mut self, key: WinKey, delta: Bag<u128>);
    /// Changes of a window's multiset of numbers.
    fn multiset(&mut self, key: WinKey, delta: Bag<OrdF64>);
    fn names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>);
}

/// What one pane of one metric holds until it expires.
#[derive(Default)]
struct Pane {
    add: FxHashMap<u64, Vec<Acc>>,
    distinct: FxHashMap<(u64, u16, u128), isize>,
    multiset: FxHashMap<(u64, u16, OrdF64), isize>,
}

/// The latest version of a live event of a mutable domain.
struct Live {
    version: u64,
    /// `None` once deleted (a tombstone that rejects older versions).
    event: Option<Event>,
    release: i64,
}

/// Offsets of one partition: the next one to read, and the oldest offsets
/// still needed by open windows, by the watermark that releases them.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    pub next: i64,
    open: BTreeMap<i64, i64>,
}

impl PartitionOffsets {
    fn hold(&mut self, release: i64, offset: i64) {
        let e = self.open.entry(release).or_insert(offset);
        *e = (*e).min(offset);
    }

    /// The offset to commit once every window closed by `closed` is durable.
    pub fn committable(&mut self, closed: i64) -> i64 {
        // Entries whose release is at or below the closed watermark no longer hold anything.
        let keep = self.open.split_off(&(closed.saturating_add(1)));
        self.open = keep;
        self.open.values().copied().min().unwrap_or(self.next).min(self.next)
    }
}

/// Outcome of offering one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Counted,
    /// Every window of every metric of the domain was closed.
    Late,
    /// An older version than the one already applied (mutable domains).
    Stale,
}

pub struct IngestState {
    spec: Arc<Spec>,
    plan: Arc<JobPlan>,
    epoch_add: FxHashMap<(u16, u64, i64), Vec<Acc>>,
    /// Per (metric, group, pane, slot): value changes of this epoch.
    epoch_distinct: FxHashMap<(u16, u64, i64, u16), Vec<(u128, i64)>>,
    epoch_multiset: FxHashMap<(u16, u64, i64, u16), Vec<(OrdF64, i64)>>,
    panes: Vec<BTreeMap<i64, Pane>>,
    names_sent: FxHashMap<u64, ()>,
    gid_cache: Vec<FxHashMap<Vec<Value>, u64>>,
    gid_fast: Vec<FxHashMap<(u8, u64), u64>>,
    live: Vec<HashMap<CompactString, Live>>,
    clocks: LocalClocks,
    /// Event-time watermark in use per domain (drops late data).
    pub used: Vec<i64>,
    pub offsets: BTreeMap<(usize, i32), PartitionOffsets>,
    scratch: Vec<(i64, f64)>,
}

impl IngestState {
    pub fn new(spec: Arc<Spec>, plan: Arc<JobPlan>, start: &[i64]) -> IngestState {
        let domains = spec.domains.len();
        IngestState {
            epoch_add: FxHashMap::default(),
            epoch_distinct: FxHashMap::default(),
            epoch_multiset: FxHashMap::default(),
            panes: (0..plan.metrics.len()).map(|_| BTreeMap::new()).collect(),
            names_sent: FxHashMap::default(),
            gid_cache: (0..plan.metrics.len()).map(|_| FxHashMap::default()).collect(),
            gid_fast: (0..plan.metrics.len()).map(|_| FxHashMap::default()).collect(),
            live: (0..domains).map(|_| HashMap::new()).collect(),
            clocks: LocalClocks::default(),
            used: (0..domains).map(|d| start.get(d).copied().unwrap_or(crate::types::WM_START)).collect(),
            offsets: BTreeMap::new(),
            scratch: Vec::new(),
            spec,
            plan,
        }
    }

    /// Records that a partition was read up to `next` (also for records that were
    /// not events, e.g. dead-lettered ones).
    pub fn advance_offset(&mut self, domain: usize, partition: i32, next: i64) {
        let o = self.offsets.entry((domain, partition)).or_default();
        o.next = o.next.max(next);
    }

    pub fn set_caught_up(&mut self, domain: usize, partition: i32, caught_up: bool, now: std::time::Instant) {
        self.clocks.set_caught_up(domain, partition, caught_up, now);
    }

    /// The watermark of `domain` below which a metric's windows are closed for this worker.
    fn metric_closed(&self, m: &MetricPlan) -> i64 {
        self.used[m.domain].saturating_sub(m.lateness)
    }

    /// When an event at `time` stops mattering: the job watermark of its domain
    /// at which its last window (over all the domain's metrics) closes.
    fn release(&self, domain: usize, time: i64) -> i64 {
        self.plan.by_domain[domain]
            .iter()
            .map(|&m| {
                let m = &self.plan.metrics[m];
                m.windows.last_end(time) + m.lateness
            })
            .max()
            .unwrap_or(time)
    }

    /// Offers one decoded event read at (partition, offset).
    pub fn offer(&mut self, domain: usize, partition: i32, offset: i64, ev: Event, now: Instant, out: &mut impl Updates) -> Accepted {
        self.advance_offset(domain, partition, offset + 1);
        let mutable = self.spec.domains[domain].mutable;
        if ev.op == Op::Upsert {
            self.clocks.observe(domain, partition, ev.time, now);
        }
        let late = ev.op == Op::Upsert
            && self.plan.by_domain[domain].iter().all(|&m| {
                let m = &self.plan.metrics[m];
                m.windows.is_late(ev.time, self.metric_closed(m))
            });
        if !mutable {
            if late {
                return Accepted::Late;
            }
            let release = self.release(domain, ev.time);
            self.offsets.entry((domain, partition)).or_default().hold(release, offset);
            self.contribute(domain, &ev, 1, out);
            return Accepted::Counted;
        }

        // Mutable domain: the event's identity is its id; versions order its changes.
        let Some(id) = ev.event_id.clone() else {
            return Accepted::Stale;
        };
        let version = ev.version.unwrap_or(0);
        if let Some(live) = self.live[domain].get(&id)
            && live.version >= version
        {
            return Accepted::Stale;
        }
        if let Some(old) = self.live[domain].remove(&id)
            && let Some(old_ev) = old.event
        {
            self.contribute(domain, &old_ev, -1, out);
        }
        let release = match ev.op {
            Op::Upsert if !late => self.release(domain, ev.time),
            // A delete (or a late version) keeps a tombstone for as long as the old version could matter.
            _ => self.used[domain].saturating_add(self.plan.horizon(domain)),
        };
        self.offsets.entry((domain, partition)).or_default().hold(release, offset);
        let counted = ev.op == Op::Upsert && !late;
        if counted {
            self.contribute(domain, &ev, 1, out);
        }
        self.live[domain].insert(id, Live { version, event: counted.then_some(ev), release });
        if late { Accepted::Late } else { Accepted::Counted }
    }

    fn group_id(&mut self, m: usize, ev: &Event, out: &mut impl Updates) -> u64 {
        let plan = &self.plan.metrics[m];
        // The common case, one interned or small group value, is looked up without allocating.
        let fast = match plan.group_by.as_slice() {
            [g] => match ev.values[*g] {
                Value::Sym(s) => Some((1u8, u64::from(s.0))),
                Value::Enum(i) => Some((2, u64::from(i))),
                Value::Int(i) => Some((3, i as u64)),
                Value::Bool(b) => Some((4, u64::from(b))),
                Value::Null => Some((5, 0)),
                _ => None,
            },
            _ => None,
        };
        if let Some(k) = fast
            && let Some(&gid) = self.gid_fast[m].get(&k)
        {
            return gid;
        }
        let key: Vec<Value> = plan.group_by.iter().map(|&g| ev.values[g].clone()).collect();
        if let Some(&gid) = self.gid_cache[m].get(&key) {
            return gid;
        }
        let values: Vec<GroupValue> = plan.group_values(ev);
        let gid = plan.group_id(&values);
        self.gid_cache[m].insert(key, gid);
        if let Some(k) = fast {
            self.gid_fast[m].insert(k, gid);
        }
        if self.names_sent.insert(gid, ()).is_none() {
            out.names(gid, m as u16, values.iter().map(NamedValue::from).collect());
        }
        gid
    }

    /// Adds (`sign` = 1) or retracts (-1) an event's contributions to every metric of its domain.
    fn contribute(&mut self, domain: usize, ev: &Event, sign: isize, out: &mut impl Updates) {
        let metrics = self.plan.by_domain[domain].clone();
        for m in metrics {
            let plan = Arc::clone(&self.plan);
            let mp = &plan.metrics[m];
            let pane = mp.windows.pane(ev.time);
            if sign > 0 {
                if mp.windows.is_late(ev.time, self.metric_closed(mp)) {
                    continue;
                }
                // The pane exists from its first contribution until it expires.
                self.panes[m].entry(pane).or_default();
            } else if !self.panes[m].contains_key(&pane) {
                // The pane already expired: its contributions were retracted with it.
                continue;
            }
            let gid = self.group_id(m, ev, out);
            mp.add_contrib(ev, &mut self.scratch);
            if self.scratch.iter().any(|c| c.0 != 0) {
                let accs = self.epoch_add.entry((m as u16, gid, pane)).or_insert_with(|| vec![Acc::ZERO; mp.add.len()]);
                for (acc, &(n, s)) in accs.iter_mut().zip(&self.scratch) {
                    acc.n += n * sign as i64;
                    acc.sum += s * sign as f64;
                }
            }
            if mp.distinct.is_empty() && mp.multisets.is_empty() {
                continue;
            }
            let pane_state = self.panes[m].entry(pane).or_default();
            for slot in 0..mp.distinct.len() {
                if let Some(v) = mp.distinct_value(slot, ev) {
                    // Only a value's presence in the pane matters to distinct counts: windows
                    // hear of it when it appears in (or disappears from) this worker's pane.
                    let count = pane_state.distinct.entry((gid, slot as u16, v)).or_insert(0);
                    let before = *count;
                    *count += sign;
                    if (before == 0) != (*count == 0) {
                        let diff = if *count > 0 { 1 } else { -1 };
                        self.epoch_distinct.entry((m as u16, gid, pane, slot as u16)).or_default().push((v, diff));
                    }
                    if *count == 0 {
                        pane_state.distinct.remove(&(gid, slot as u16, v));
                    }
                }
            }
            for slot in 0..mp.multisets.len() {
                if let Some(x) = mp.multiset_value(slot, ev) {
                    self.epoch_multiset.entry((m as u16, gid, pane, slot as u16)).or_default().push((OrdF64(x), sign as i64));
                }
            }
        }
    }

    /// Ends an epoch: sends the pre-aggregated additive and multiset contributions.
    pub fn flush_epoch(&mut self, out: &mut impl Updates) {
        // One bag per window: every change of the epoch to that window's values.
        for ((m, gid, pane, slot), changes) in self.epoch_distinct.drain() {
            let bag = Bag::from_unsorted(changes);
            if bag.0.is_empty() {
                continue;
            }
            for win in self.plan.metrics[m as usize].windows.starts(pane) {
                out.distinct(WinKey { gid, win, metric: m, slot }, bag.clone());
            }
        }
        for ((m, gid, pane, slot), changes) in self.epoch_multiset.drain() {
            let bag = Bag::from_unsorted(changes);
            if bag.0.is_empty() {
                continue;
            }
            let kept = self.panes[m as usize].entry(pane).or_default();
            for (v, c) in &bag.0 {
                bump(&mut kept.multiset, (gid, slot, *v), *c as isize);
            }
            for win in self.plan.metrics[m as usize].windows.starts(pane) {
                out.multiset(WinKey { gid, win, metric: m, slot }, bag.clone());
            }
        }
        for ((m, gid, pane), accs) in self.epoch_add.drain() {
            let mp = &self.plan.metrics[m as usize];
            for (slot, acc) in accs.iter().enumerate() {
                if acc.n == 0 {
                    continue;
                }
                for win in mp.windows.starts(pane) {
                    out.add(WinKey { gid, win, metric: m, slot: slot as u16 }, *acc);
                }
            }
            let kept = self.panes[m as usize].entry(pane).or_default().add.entry(gid).or_insert_with(|| vec![Acc::ZERO; accs.len()]);
            for (k, a) in kept.iter_mut().zip(&accs) {
                k.n += a.n;
                k.sum += a.sum;
            }
        }
    }

    /// Retracts every pane whose last window is closed at `closed[domain]`, and
    /// forgets live events that no longer matter.
    pub fn expire(&mut self, closed: &[i64], out: &mut impl Updates) {
        for m in 0..self.plan.metrics.len() {
            let plan = Arc::clone(&self.plan);
            let mp = &plan.metrics[m];
            let limit = closed[mp.domain].saturating_sub(mp.lateness);
            // Panes p with p + size <= limit: every window holding them is closed.
            let first_open = limit.saturating_sub(mp.windows.size).saturating_add(1);
            let keep = self.panes[m].split_off(&first_open);
            let expired = std::mem::replace(&mut self.panes[m], keep);
            for (pane, state) in expired {
                for (gid, accs) in state.add {
                    for (slot, acc) in accs.into_iter().enumerate() {
                        if acc.n == 0 {
                            continue;
                        }
                        for win in mp.windows.starts(pane) {
                            out.add(WinKey { gid, win, metric: m as u16, slot: slot as u16 }, Acc { n: -acc.n, sum: -acc.sum });
                        }
                    }
                }
                let mut distinct: FxHashMap<(u64, u16), Vec<(u128, i64)>> = FxHashMap::default();
                for ((gid, slot, v), count) in state.distinct {
                    if count > 0 {
                        distinct.entry((gid, slot)).or_default().push((v, -1));
                    }
                }
                for ((gid, slot), values) in distinct {
                    let bag = Bag::from_unsorted(values);
                    for win in mp.windows.starts(pane) {
                        out.distinct(WinKey { gid, win, metric: m as u16, slot }, bag.clone());
                    }
                }
                let mut multiset: FxHashMap<(u64, u16), Vec<(OrdF64, i64)>> = FxHashMap::default();
                for ((gid, slot, v), count) in state.multiset {
                    if count != 0 {
                        multiset.entry((gid, slot)).or_default().push((v, -(count as i64)));
                    }
                }
                for ((gid, slot), values) in multiset {
                    let bag = Bag::from_unsorted(values);
                    for win in mp.windows.starts(pane) {
                        out.multiset(WinKey { gid, win, metric: m as u16, slot }, bag.clone());
                    }
                }
            }
        }
        for (d, live) in self.live.iter_mut().enumerate() {
            let c = closed.get(d).copied().unwrap_or(i64::MIN);
            live.retain(|_, l| l.release > c);
        }
    }

    /// This worker's watermark report per domain.
    pub fn report(&self, now: Instant, idle: Option<std::time::Duration>) -> Vec<DomainWm> {
        (0..self.spec.domains.len()).map(|d| self.clocks.domain_wm(d, self.used[d], now, idle)).collect()
    }

    /// Number of retained panes and live events (for memory metrics).
    pub fn retained(&self) -> (usize, usize) {
        let panes = self.panes.iter().map(BTreeMap::len).sum();
        let live = self.live.iter().map(HashMap::len).sum();
        (panes, live)
    }
}

fn bump<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, isize>, key: K, by: isize) {
    let e = map.entry(key).or_insert(0);
    *e += by;
}
