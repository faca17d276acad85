//! A worker's ingestion state: turns decoded events into pane changes.
//!
//! - An epoch's contributions are pre-aggregated per (metric, group, pane) and
//!   sent once, as one [`PaneDelta`], when the epoch ends; the pane's owner
//!   keeps them (see `store`) and forgets the pane when its windows close, so
//!   nothing here is kept per pane.
//! - Mutable domains keep each live event's latest version: an update or a
//!   delete retracts the old version's contributions.
//! - Per partition, the offset of the oldest event still in an open window is
//!   tracked: that is what may be committed.
//! - Immutable domains count an `event_id` once while any window holding it
//!   is open (a client's retry of an accepted request is not counted twice).
//! - Each metric admits at most `max_groups` groups with an open window; the
//!   events of further groups are counted in the metric's overflow group, and
//!   a group's caches and names are released when its last window closes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use pulse_model::metric_row::GroupValue;
use pulse_model::spec::OVERFLOW_GROUP;
use pulse_model::value::{FxBuildHasher, FxHashMap};
use pulse_model::{Event, Op, Spec, Value};

use crate::plan::{JobPlan, MetricPlan};
use crate::types::{Acc, DomainWm, Fixed, NamedValue, PaneDelta};
use crate::watermark::LocalClocks;

/// Where ingestion sends its changes (the dataflow's input, or a test double).
pub trait Updates {
    /// One epoch's changes to one pane.
    fn pane(&mut self, delta: PaneDelta);
    fn names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>);
    /// The group no longer has an open window on this worker.
    fn forget_names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>);
}

/// A group with an open window on this worker.
struct OpenGroup {
    /// The job watermark at which its last window closes.
    release: i64,
    /// Counted in the metric's overflow group (the metric was at `max_groups`
    /// when the group first appeared); sticky until the group closes, so that
    /// retractions go where the additions went.
    overflow: bool,
    /// The names sent for it (to retract them when it closes).
    names: Option<Vec<NamedValue>>,
}

/// Ids of counted events of an immutable domain, until their windows close.
#[derive(Default)]
struct SeenIds {
    ids: std::collections::HashSet<u128, FxBuildHasher>,
    by_release: BTreeMap<i64, Vec<u128>>,
}

impl SeenIds {
    /// Whether `id` is new (then it is remembered until `release`).
    fn insert(&mut self, id: &str, release: i64) -> bool {
        let h = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
        if !self.ids.insert(h) {
            return false;
        }
        self.by_release.entry(release).or_default().push(h);
        true
    }

    fn expire(&mut self, closed: i64) {
        let keep = self.by_release.split_off(&closed.saturating_add(1));
        for h in std::mem::replace(&mut self.by_release, keep).into_values().flatten() {
            self.ids.remove(&h);
        }
    }
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
    /// An id already counted in an open window (immutable domains): a retry.
    Duplicate,
}

pub struct IngestState {
    spec: Arc<Spec>,
    plan: Arc<JobPlan>,
    /// This epoch's changes per (metric, group, pane).
    epoch: FxHashMap<(u16, u64, i64), PaneDelta>,
    /// Per metric: groups with an open window, how many of them are admitted
    /// (not overflow), and whether the overflow group's names were sent.
    open_groups: Vec<FxHashMap<u64, OpenGroup>>,
    admitted: Vec<usize>,
    /// Per metric: the overflow group's id once its names were sent.
    overflow_gids: Vec<Option<u64>>,
    /// Events counted in overflow groups, per metric (for the metrics endpoint).
    pub overflowed: Vec<u64>,
    gid_cache: Vec<FxHashMap<Vec<Value>, u64>>,
    gid_fast: Vec<FxHashMap<(u8, u64), u64>>,
    seen: Vec<SeenIds>,
    /// Per domain: the furthest event time a partition clock may reach now.
    time_caps: Vec<i64>,
    live: Vec<HashMap<CompactString, Live>>,
    clocks: LocalClocks,
    /// Event-time watermark in use per domain (drops late data).
    pub used: Vec<i64>,
    /// The job's closed watermark per domain, as of the last expiry.
    closed: Vec<i64>,
    pub offsets: BTreeMap<(usize, i32), PartitionOffsets>,
    scratch: Vec<(i64, f64)>,
}

impl IngestState {
    pub fn new(spec: Arc<Spec>, plan: Arc<JobPlan>, start: &[i64]) -> IngestState {
        let domains = spec.domains.len();
        IngestState {
            epoch: FxHashMap::default(),
            open_groups: (0..plan.metrics.len()).map(|_| FxHashMap::default()).collect(),
            admitted: vec![0; plan.metrics.len()],
            overflow_gids: vec![None; plan.metrics.len()],
            overflowed: vec![0; plan.metrics.len()],
            gid_cache: (0..plan.metrics.len()).map(|_| FxHashMap::default()).collect(),
            gid_fast: (0..plan.metrics.len()).map(|_| FxHashMap::default()).collect(),
            seen: (0..domains).map(|_| SeenIds::default()).collect(),
            time_caps: vec![i64::MAX; domains],
            live: (0..domains).map(|_| HashMap::new()).collect(),
            clocks: LocalClocks::default(),
            used: (0..domains).map(|d| start.get(d).copied().unwrap_or(crate::types::WM_START)).collect(),
            closed: (0..domains).map(|d| start.get(d).copied().unwrap_or(crate::types::WM_START)).collect(),
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

    /// The wall clock as of this poll: no partition's clock passes it by more
    /// than its domain's `max_future` (a second line behind the record checks).
    pub fn set_wall_clock(&mut self, now_ms: i64) {
        for (cap, d) in self.time_caps.iter_mut().zip(&self.spec.domains) {
            *cap = pulse_model::TimeBounds::of(d).watermark_cap(now_ms);
        }
    }

    /// Offers one decoded event read at (partition, offset). The partition's
    /// clock advances to the event time, but never past its domain's time cap
    /// (see [`IngestState::set_wall_clock`]).
    pub fn offer(&mut self, domain: usize, partition: i32, offset: i64, ev: Event, now: Instant, out: &mut impl Updates) -> Accepted {
        self.advance_offset(domain, partition, offset + 1);
        let mutable = self.spec.domains[domain].mutable;
        if ev.op == Op::Upsert {
            self.clocks.observe(domain, partition, ev.time.min(self.time_caps[domain]), now);
        }
        // A domain no metric reads has no windows: nothing of it is late.
        let late = ev.op == Op::Upsert
            && !self.plan.by_domain[domain].is_empty()
            && self.plan.by_domain[domain].iter().all(|&m| {
                let m = &self.plan.metrics[m];
                m.windows.is_late(ev.time, self.metric_closed(m))
            });
        if !mutable {
            if late {
                return Accepted::Late;
            }
            let release = self.release(domain, ev.time);
            if let Some(id) = &ev.event_id
                && !self.seen[domain].insert(id, release)
            {
                return Accepted::Duplicate;
            }
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

    /// The group an event counts in for metric `m`: its own, or the overflow
    /// group when the metric is at `max_groups` open groups. `release` is when
    /// the event's last window of `m` closes.
    fn group_id(&mut self, m: usize, ev: &Event, release: i64, out: &mut impl Updates) -> u64 {
        let gid = self.own_group_id(m, ev);
        if let Some(g) = self.open_groups[m].get_mut(&gid) {
            g.release = g.release.max(release);
            if !g.overflow {
                return gid;
            }
            self.overflowed[m] += 1;
            return self.overflow_gid(m, out);
        }
        let overflow = self.admitted[m] >= self.spec.metrics[m].max_groups;
        let names = if overflow {
            None
        } else {
            self.admitted[m] += 1;
            let values: Vec<NamedValue> = self.plan.metrics[m].group_values(ev).iter().map(NamedValue::from).collect();
            out.names(gid, m as u16, values.clone());
            Some(values)
        };
        self.open_groups[m].insert(gid, OpenGroup { release, overflow, names });
        if !overflow {
            return gid;
        }
        self.overflowed[m] += 1;
        self.overflow_gid(m, out)
    }

    /// The overflow group of metric `m` (its names are sent once and kept).
    fn overflow_gid(&mut self, m: usize, out: &mut impl Updates) -> u64 {
        if let Some(gid) = self.overflow_gids[m] {
            return gid;
        }
        let plan = &self.plan.metrics[m];
        let values: Vec<GroupValue> = plan
            .group_by
            .iter()
            .map(|&g| match self.spec.domains[plan.domain].fields[g].ty {
                pulse_model::FieldType::String | pulse_model::FieldType::Enum(_) => GroupValue::Str(OVERFLOW_GROUP.into()),
                _ => GroupValue::Null,
            })
            .collect();
        let gid = plan.group_id(&values);
        out.names(gid, m as u16, values.iter().map(NamedValue::from).collect());
        self.overflow_gids[m] = Some(gid);
        gid
    }

    /// An event's own group id for metric `m` (cached per group key).
    fn own_group_id(&mut self, m: usize, ev: &Event) -> u64 {
        let plan = &self.plan.metrics[m];
        // The common case, one interned or small group value, is looked up without allocating.
        let fast = match plan.group_by.as_slice() {
            [g] => match &ev.values[*g] {
                Value::Str(s) => Some((1u8, xxhash_rust::xxh3::xxh3_64(s.as_bytes()))),
                Value::Enum(i) => Some((2, u64::from(*i))),
                Value::Int(i) => Some((3, *i as u64)),
                Value::Bool(b) => Some((4, u64::from(*b))),
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
        gid
    }

    /// Adds (`sign` = 1) or retracts (-1) an event's contributions to every metric of its domain.
    fn contribute(&mut self, domain: usize, ev: &Event, sign: i32, out: &mut impl Updates) {
        let plan = Arc::clone(&self.plan);
        for &m in &plan.by_domain[domain] {
            let mp = &plan.metrics[m];
            // An event is added only to windows open at the watermark this worker
            // drops late events by; a retraction reaches every window its addition
            // did until the job closes them (the pane's owner decides: the job's
            // closed watermark may lag this worker's).
            let limit = if sign > 0 { self.metric_closed(mp) } else { self.closed[mp.domain].saturating_sub(mp.lateness) };
            if mp.windows.is_late(ev.time, limit) {
                continue;
            }
            let pane = mp.windows.pane(ev.time);
            let release = mp.windows.last_end(ev.time) + mp.lateness;
            let gid = self.group_id(m, ev, release, out);
            mp.add_contrib(ev, &mut self.scratch);
            let delta = self.epoch.entry((m as u16, gid, pane)).or_insert_with(|| PaneDelta { gid, metric: m as u16, pane, ..PaneDelta::default() });
            delta.events += i64::from(sign);
            if self.scratch.iter().any(|c| c.0 != 0) {
                if delta.add.is_empty() {
                    delta.add = vec![Acc::ZERO; mp.add.len()];
                }
                for (acc, &(n, s)) in delta.add.iter_mut().zip(&self.scratch) {
                    acc.n += n * i64::from(sign);
                    acc.sum += Fixed::from_f64(s).times(i64::from(sign));
                }
            }
            for slot in 0..mp.distinct.len() {
                if let Some(v) = mp.distinct_value(slot, ev) {
                    delta.distinct.push((slot as u16, v, sign));
                }
            }
            for slot in 0..mp.multisets.len() {
                if let Some(x) = mp.multiset_value(slot, ev) {
                    delta.multiset.push((slot as u16, x, sign));
                }
            }
        }
    }

    /// Ends an epoch: sends its changes, one per pane.
    pub fn flush_epoch(&mut self, out: &mut impl Updates) {
        for (_, delta) in self.epoch.drain() {
            if !delta.is_empty() {
                out.pane(delta);
            }
        }
    }

    /// Forgets what no longer matters once `closed[domain]` is the closed
    /// watermark: live events, seen ids, and groups whose windows all closed.
    pub fn expire(&mut self, closed: &[i64], out: &mut impl Updates) {
        for (c, &now) in self.closed.iter_mut().zip(closed) {
            *c = (*c).max(now);
        }
        for (d, live) in self.live.iter_mut().enumerate() {
            let c = closed.get(d).copied().unwrap_or(i64::MIN);
            live.retain(|_, l| l.release > c);
            self.seen[d].expire(c);
        }
        self.close_groups(closed, out);
    }

    /// Forgets the groups whose last window closed: their names are retracted
    /// and their cache entries dropped, so memory follows the open groups.
    fn close_groups(&mut self, closed: &[i64], out: &mut impl Updates) {
        for m in 0..self.plan.metrics.len() {
            let c = closed.get(self.plan.metrics[m].domain).copied().unwrap_or(i64::MIN);
            let before = self.open_groups[m].len();
            let mut admitted_closed = 0;
            self.open_groups[m].retain(|&gid, g| {
                if g.release > c {
                    return true;
                }
                if !g.overflow {
                    admitted_closed += 1;
                }
                if let Some(values) = g.names.take() {
                    out.forget_names(gid, m as u16, values);
                }
                false
            });
            if self.open_groups[m].len() == before {
                continue;
            }
            self.admitted[m] -= admitted_closed;
            let open = &self.open_groups[m];
            self.gid_cache[m].retain(|_, gid| open.contains_key(gid));
            self.gid_fast[m].retain(|_, gid| open.contains_key(gid));
        }
    }

    /// Groups with an open window per metric (admitted ones, and all).
    pub fn open_groups(&self) -> Vec<(usize, usize)> {
        self.open_groups.iter().zip(&self.admitted).map(|(g, &a)| (a, g.len())).collect()
    }

    /// This worker's watermark report per domain.
    pub fn report(&self, now: Instant, idle: Option<std::time::Duration>) -> Vec<DomainWm> {
        (0..self.spec.domains.len()).map(|d| self.clocks.domain_wm(d, self.used[d], now, idle)).collect()
    }

    /// Number of live events of mutable domains kept (for memory metrics).
    pub fn live_events(&self) -> usize {
        self.live.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WM_START;
    use pulse_model::Decoder;

    /// Records what ingestion sends: events per (metric, group, pane), live names.
    #[derive(Default)]
    struct Recorder {
        events: FxHashMap<(u16, u64, i64), i64>,
        names: FxHashMap<u64, (isize, Vec<NamedValue>)>,
    }

    impl Updates for Recorder {
        fn pane(&mut self, delta: PaneDelta) {
            *self.events.entry((delta.metric, delta.gid, delta.pane)).or_default() += delta.events;
        }
        fn names(&mut self, gid: u64, _metric: u16, values: Vec<NamedValue>) {
            let e = self.names.entry(gid).or_insert((0, values));
            e.0 += 1;
        }
        fn forget_names(&mut self, gid: u64, _metric: u16, _values: Vec<NamedValue>) {
            if let Some(e) = self.names.get_mut(&gid) {
                e.0 -= 1;
                if e.0 == 0 {
                    self.names.remove(&gid);
                }
            }
        }
    }

    impl Recorder {
        /// Events counted per group name in metric 0's 5-minute window starting at `win`.
        fn counted(&self, win: i64) -> Vec<(String, i64)> {
            let mut by_group: BTreeMap<String, i64> = BTreeMap::new();
            for (&(m, gid, pane), &n) in &self.events {
                if m != 0 || !(win..win + 5 * 60_000).contains(&pane) {
                    continue;
                }
                let name = match self.names.get(&gid).map(|n| &n.1[..]) {
                    Some([NamedValue::Str(s)]) => s.clone(),
                    other => format!("{other:?}"),
                };
                *by_group.entry(name).or_default() += n;
            }
            by_group.into_iter().filter(|(_, n)| *n != 0).collect()
        }
    }

    const T0: i64 = 1_795_515_300_000 / 60_000 * 60_000;

    fn setup(max_groups: usize) -> (Arc<Spec>, IngestState, Decoder) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pulse.toml");
        let text = std::fs::read_to_string(&path).expect("spec").replace("max_groups = 10000", &format!("max_groups = {max_groups}"));
        let spec = Arc::new(Spec::parse(&path, &text).expect("spec"));
        let plan = Arc::new(JobPlan::new(&spec));
        let decoder = Decoder::new(spec.domain("rides").expect("rides"));
        (Arc::clone(&spec), IngestState::new(spec, plan, &[]), decoder)
    }

    fn ride(decoder: &Decoder, id: &str, city: &str, time: i64) -> Event {
        let json =
            format!(r#"{{"event_id":"{id}","event_type":"requested","ride_id":"{id}","city":"{city}","estimated_fare":10,"user_id":"u","timestamp":{time}}}"#);
        decoder.decode(json.as_bytes()).expect("valid ride")
    }

    #[test]
    fn an_immutable_event_id_counts_once_while_its_windows_are_open() {
        let (_, mut state, dec) = setup(100);
        let mut out = Recorder::default();
        let now = Instant::now();
        assert_eq!(state.offer(0, 0, 0, ride(&dec, "a", "Lima", T0 + 10), now, &mut out), Accepted::Counted);
        assert_eq!(state.offer(0, 0, 1, ride(&dec, "a", "Lima", T0 + 10), now, &mut out), Accepted::Duplicate);
        assert_eq!(state.offer(0, 1, 0, ride(&dec, "b", "Lima", T0 + 20), now, &mut out), Accepted::Counted);
        state.flush_epoch(&mut out);
        assert_eq!(out.counted(T0), vec![("Lima".to_string(), 2)]);
        // Once every window of the id closed, the id is forgotten (its pane is gone too).
        state.expire(&[T0 + 10 * 60_000, WM_START, WM_START], &mut out);
        assert!(state.seen[0].ids.is_empty());
    }

    #[test]
    fn groups_beyond_max_groups_count_in_the_overflow_group_and_closed_groups_are_released() {
        let (_, mut state, dec) = setup(2);
        let mut out = Recorder::default();
        let now = Instant::now();
        for (i, city) in ["Lima", "Oslo", "Pune", "Quito", "Lima", "Pune"].iter().enumerate() {
            assert_eq!(state.offer(0, 0, i as i64, ride(&dec, &format!("r{i}"), city, T0 + i as i64), now, &mut out), Accepted::Counted);
        }
        state.flush_epoch(&mut out);
        assert_eq!(
            out.counted(T0),
            vec![("Lima".to_string(), 2), ("Oslo".to_string(), 1), (OVERFLOW_GROUP.to_string(), 3)],
            "Pune and Quito (and Pune again, sticky) overflow"
        );
        assert_eq!(state.open_groups()[0], (2, 4));
        assert_eq!(state.overflowed[0], 3);
        // Every window closes: groups, caches and names are released; the overflow group's names stay.
        state.expire(&[T0 + 10 * 60_000, WM_START, WM_START], &mut out);
        assert_eq!(state.open_groups()[0], (0, 0));
        assert!(state.gid_cache[0].is_empty() && state.gid_fast[0].is_empty());
        assert_eq!(out.names.len(), 1, "{:?}", out.names);
        // A new city is admitted again.
        let later = T0 + 20 * 60_000;
        state.offer(0, 0, 9, ride(&dec, "r9", "Quito", later), now, &mut out);
        state.flush_epoch(&mut out);
        assert_eq!(out.counted(later / 60_000 * 60_000), vec![("Quito".to_string(), 1)]);
    }

    #[test]
    fn the_partition_clock_never_passes_the_cap() {
        let (spec, mut state, dec) = setup(100);
        let mut out = Recorder::default();
        let now = Instant::now();
        state.set_wall_clock(T0 - 5 * 60_000);
        state.offer(0, 0, 0, ride(&dec, "far", "Lima", 4_070_908_800_000), now, &mut out);
        let wm = state.report(now, None)[spec.domain_index("rides").expect("rides")];
        assert_eq!(wm.max_seen, Some(T0));
    }
}
