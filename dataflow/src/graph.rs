//! The timely/differential dataflow of one worker.
//!
//! ```text
//! add      (WinKey) with Acc diffs ── count_total ───────────────┐
//! distinct (WinKey) with Bag diffs ── count_total ── size ────────┤
//! multiset (WinKey) with Bag diffs ── count_total ── statistics ──┼─ concat ─ exchange(group) ─ emitter ─ probe
//! names    (group id -> group values) ───────────────────────────┘              ▲
//! reports  (per-worker watermark reports) ── broadcast ─────────────────────────┘
//! durable  (empty input; its frontier says "my outputs are durable through t") ─ durable probe
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::count::CountTotal;
use pulse_model::metric_row::MetricRow;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Input as TimelyInput;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::broadcast::Broadcast;
use timely::worker::Worker;

use crate::emit::{Emitter, stats_of};
use crate::plan::JobPlan;
use crate::state::Updates;
use crate::types::{Acc, Bag, EmitIn, NamedValue, OrdF64, WinKey, WmReport};
use crate::watermark::GlobalClock;

/// What the emitter hands to the driver loop of the same worker.
pub struct Shared {
    /// Rows emitted, tagged with their epoch.
    pub rows: Vec<(u64, MetricRow)>,
    /// The job's watermarks, as of the last epoch the emitter completed.
    pub clock: GlobalClock,
    /// Last epoch the emitter completed.
    pub completed: Option<u64>,
    pub emitter_stats: (u64, u64, u64, usize),
}

pub type TimelyInputHandle<D> = InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<D>>>;

/// The input and probe handles of one worker's dataflow.
pub struct Graph {
    pub add: InputSession<u64, WinKey, Acc>,
    pub distinct: InputSession<u64, WinKey, Bag<u128>>,
    pub multiset: InputSession<u64, WinKey, Bag<OrdF64>>,
    pub names: InputSession<u64, EmitIn, isize>,
    pub reports: TimelyInputHandle<WmReport>,
    pub durable: TimelyInputHandle<()>,
    /// Passes an epoch once every worker's emitter has completed it.
    pub probe: ProbeHandle<u64>,
    /// Passes an epoch once every worker's outputs through it are durable.
    pub durable_probe: ProbeHandle<u64>,
    pub shared: Rc<RefCell<Shared>>,
}

impl Graph {
    /// Moves every input to `epoch` and flushes what was sent.
    pub fn advance_to(&mut self, epoch: u64) {
        self.add.advance_to(epoch);
        self.distinct.advance_to(epoch);
        self.multiset.advance_to(epoch);
        self.names.advance_to(epoch);
        self.reports.advance_to(epoch);
        self.add.flush();
        self.distinct.flush();
        self.multiset.flush();
        self.names.flush();
    }

    /// Closes every input: the dataflow drains and completes.
    pub fn close(self) -> (ProbeHandle<u64>, ProbeHandle<u64>, Rc<RefCell<Shared>>, TimelyInputHandle<()>) {
        let Graph { add, distinct, multiset, names, reports, durable, probe, durable_probe, shared } = self;
        drop((add, distinct, multiset, names, reports));
        (probe, durable_probe, shared, durable)
    }
}

impl Updates for Graph {
    fn add(&mut self, key: WinKey, acc: Acc) {
        self.add.update(key, acc);
    }
    fn distinct(&mut self, key: WinKey, delta: Bag<u128>) {
        self.distinct.update(key, delta);
    }
    fn multiset(&mut self, key: WinKey, delta: Bag<OrdF64>) {
        self.multiset.update(key, delta);
    }
    fn names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>) {
        self.names.update(EmitIn::Names(gid, metric, values), 1);
    }
    fn forget_names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>) {
        self.names.update(EmitIn::Names(gid, metric, values), -1);
    }
}

/// Builds the dataflow on a worker. `start` is the closed watermark per domain
/// the job resumes from; `domains` the number of domains.
pub fn build(worker: &mut Worker, plan: Arc<JobPlan>, domains: usize, start: &[i64]) -> Graph {
    let peers = worker.peers();
    let shared =
        Rc::new(RefCell::new(Shared { rows: Vec::new(), clock: GlobalClock::new(peers, domains, start), completed: None, emitter_stats: (0, 0, 0, 0) }));
    let probe = ProbeHandle::new();
    let durable_probe = ProbeHandle::new();
    let emitter_shared = Rc::clone(&shared);
    let emitter = Emitter::new(Arc::clone(&plan), start);
    let stat_plan = Arc::clone(&plan);

    let (add, distinct, multiset, names, reports, durable) = worker.dataflow::<u64, _, _>(|scope| {
        let (add_in, add) = scope.new_collection::<WinKey, Acc>();
        let (distinct_in, distinct) = scope.new_collection::<WinKey, Bag<u128>>();
        let (multiset_in, multiset) = scope.new_collection::<WinKey, Bag<OrdF64>>();
        let (names_in, names) = scope.new_collection::<EmitIn, isize>();
        let (reports_in, reports) = scope.new_input::<Vec<WmReport>>();
        let (durable_in, durable) = scope.new_input::<Vec<()>>();

        // Additive slots: the accumulated (count, sum) per key.
        let adds = add.count_total().map(|(k, acc)| EmitIn::Add(k, acc));
        // Distinct slots: each window's accumulated bag of value presences; its size.
        let distincts = distinct.count_total().map(|(k, bag)| EmitIn::Distinct(k, bag.distinct() as i64));
        // Order statistics over each window's accumulated multiset (sorted by value).
        let stats = multiset.count_total().flat_map(move |(key, bag): (WinKey, Bag<OrdF64>)| {
            let Some(ms) = stat_plan.metrics.get(key.metric as usize).and_then(|m| m.multisets.get(key.slot as usize)) else {
                return Vec::new();
            };
            let sorted: Vec<(f64, isize)> = bag.0.iter().map(|(v, c)| (v.0, *c as isize)).collect();
            let kinds: Vec<_> = ms.stats.iter().map(|(_, s)| *s).collect();
            let mut values = Vec::with_capacity(kinds.len());
            stats_of(&sorted, &kinds, &mut values);
            values.into_iter().enumerate().map(|(pos, v)| EmitIn::Stat(key, pos as u16, v.map(OrdF64))).collect()
        });

        let changes = adds.concat(distincts).concat(stats).concat(names).inner;
        let reports = reports.broadcast();

        let mut emitter = emitter;
        changes
            .binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
                reports,
                Exchange::new(|x: &(EmitIn, u64, isize)| x.0.gid()),
                Pipeline,
                "Emitter",
                move |_capability, _info| {
                    let mut pending: BTreeMap<u64, Vec<(EmitIn, isize)>> = BTreeMap::new();
                    let mut pending_reports: BTreeMap<u64, Vec<WmReport>> = BTreeMap::new();
                    // Held at the oldest pending epoch, so that the probe passes an epoch
                    // only after the emitter completed it.
                    let mut held: Option<timely::dataflow::operators::Capability<u64>> = None;
                    move |(changes, frontier1), (reports, frontier2), _output| {
                        changes.for_each(|cap, data| {
                            if held.as_ref().is_none_or(|h| cap.least().is_some_and(|t| t < h.time())) {
                                held = cap.retain_least(0);
                            }
                            for (change, time, diff) in data.drain(..) {
                                pending.entry(time).or_default().push((change, diff));
                            }
                        });
                        reports.for_each(|cap, data| {
                            if held.as_ref().is_none_or(|h| cap.least().is_some_and(|t| t < h.time())) {
                                held = cap.retain_least(0);
                            }
                            for r in data.drain(..) {
                                pending_reports.entry(r.epoch).or_default().push(r);
                            }
                        });
                        let ready = |t: &u64| !frontier1.less_equal(t) && !frontier2.less_equal(t);
                        let mut times: Vec<u64> = pending.keys().chain(pending_reports.keys()).copied().filter(|t| ready(t)).collect();
                        times.sort_unstable();
                        times.dedup();
                        if !times.is_empty() {
                            let now_ms = now_ms();
                            let mut shared = emitter_shared.borrow_mut();
                            for t in times {
                                if let Some(changes) = pending.remove(&t) {
                                    emitter.apply(changes);
                                }
                                let reports = pending_reports.remove(&t).unwrap_or_default();
                                shared.clock.complete_epoch(t, reports);
                                let closed = shared.clock.closed_all().to_vec();
                                let mut rows = Vec::new();
                                emitter.finish_epoch(&closed, now_ms, &mut rows);
                                shared.rows.extend(rows.into_iter().map(|r| (t, r)));
                                shared.completed = Some(t);
                            }
                            shared.emitter_stats = (emitter.finals, emitter.revisions, emitter.ignored, emitter.open_windows());
                        }
                        // Hold only what is still pending.
                        let oldest = pending.keys().chain(pending_reports.keys()).min().copied();
                        match (oldest, held.as_mut()) {
                            (Some(t), Some(h)) if *h.time() < t => h.downgrade(&t),
                            (None, _) => held = None,
                            _ => {}
                        }
                    }
                },
            )
            .probe_with(&probe);
        durable.probe_with(&durable_probe);
        (add_in, distinct_in, multiset_in, names_in, reports_in, durable_in)
    });

    Graph { add, distinct, multiset, names, reports, durable, probe, durable_probe, shared }
}

pub use pulse_model::now_ms;
