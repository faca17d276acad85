//! The timely dataflow of one worker.
//!
//! ```text
//! deltas  (pane changes, group names) ── exchange(group) ──┐
//!                                                          ├─ emitter (window store) ── exchange(join key) ──┐
//! reports (per-worker watermark reports) ── broadcast ─────┤                                                 ├─ derived (join) ─ probe
//!                                                          └─────────────────────────────────────────────────┘
//! durable (empty input; its frontier says "my outputs are durable through t") ─ durable probe
//! ```
//!
//! The operators are timely's: ingestion pre-aggregates an epoch's events per
//! pane on the worker that read them, the emitter keeps each pane once and
//! re-evaluates only the windows an epoch changed (see `store`), and the
//! derived stage joins the windows of derived metrics' inputs (see `derived`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pulse_model::metric_row::MetricRow;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Input as TimelyInput;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::broadcast::Broadcast;
use timely::worker::Worker;

use crate::derived::{DerivedStore, InputRow};
use crate::emit::{Emitter, EmitterStats, Revisions};
use crate::gate::{EpochGate, ReadyEpoch};
use crate::plan::JobPlan;
use crate::state::Updates;
use crate::types::{Delta, NamedValue, PaneDelta, WmReport};
use crate::watermark::GlobalClock;

/// What the emitter hands to the driver loop of the same worker.
pub struct Shared {
    /// Rows emitted, tagged with their epoch.
    pub rows: Vec<(u64, MetricRow)>,
    /// The job's watermarks, as of the last epoch the emitter completed.
    pub clock: GlobalClock,
    /// Last epoch the emitter completed.
    pub completed: Option<u64>,
    /// The closed watermarks as of each epoch the emitter completed and the
    /// driver has not taken yet: the probe passes an epoch only once the
    /// derived stage completed it too, by which time the emitter may be ahead.
    pub closed_at: std::collections::VecDeque<(u64, Vec<i64>)>,
    pub emitter_stats: EmitterStats,
}

pub type TimelyInputHandle<D> = InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<D>>>;

/// The input and probe handles of one worker's dataflow.
pub struct Graph {
    pub deltas: TimelyInputHandle<Delta>,
    pub reports: TimelyInputHandle<WmReport>,
    pub durable: TimelyInputHandle<()>,
    /// Passes an epoch once every worker's emitter has completed it.
    pub probe: ProbeHandle<u64>,
    /// Passes an epoch once every worker's outputs through it are durable.
    pub durable_probe: ProbeHandle<u64>,
    pub shared: Rc<RefCell<Shared>>,
}

impl Graph {
    /// Moves every input to `epoch`.
    pub fn advance_to(&mut self, epoch: u64) {
        self.deltas.advance_to(epoch);
        self.reports.advance_to(epoch);
    }

    /// Closes every input: the dataflow drains and completes.
    pub fn close(self) -> (ProbeHandle<u64>, ProbeHandle<u64>, Rc<RefCell<Shared>>, TimelyInputHandle<()>) {
        let Graph { deltas, reports, durable, probe, durable_probe, shared } = self;
        drop((deltas, reports));
        (probe, durable_probe, shared, durable)
    }
}

impl Updates for Graph {
    fn pane(&mut self, delta: PaneDelta) {
        self.deltas.send(Delta::Pane(delta));
    }
    fn names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>) {
        self.deltas.send(Delta::Names { gid, metric, values, diff: 1 });
    }
    fn forget_names(&mut self, gid: u64, metric: u16, values: Vec<NamedValue>) {
        self.deltas.send(Delta::Names { gid, metric, values, diff: -1 });
    }
}

/// Builds the dataflow on a worker. `start` is the closed watermark per domain
/// the job resumes from, `metric_floor` the window end below which each
/// metric's windows are final; `domains` the number of domains; revisions
/// continue above `revision_floor`.
pub fn build(worker: &mut Worker, plan: Arc<JobPlan>, domains: usize, start: &[i64], metric_floor: &[i64], revision_floor: u64) -> Graph {
    let peers = worker.peers();
    let shared = Rc::new(RefCell::new(Shared {
        rows: Vec::new(),
        clock: GlobalClock::new(peers, domains, start),
        completed: None,
        closed_at: std::collections::VecDeque::new(),
        emitter_stats: EmitterStats::default(),
    }));
    let probe = ProbeHandle::new();
    let durable_probe = ProbeHandle::new();
    let emitter_shared = Rc::clone(&shared);
    let emitter = Emitter::new(Arc::clone(&plan), start, metric_floor, revision_floor);

    let (deltas, reports, durable) = worker.dataflow::<u64, _, _>(|scope| {
        let (deltas_in, deltas) = scope.new_input::<Vec<Delta>>();
        let (reports_in, reports) = scope.new_input::<Vec<WmReport>>();
        let (durable_in, durable) = scope.new_input::<Vec<()>>();
        let reports = reports.broadcast();

        let mut emitter = emitter;
        let inputs = deltas.binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<InputRow>>, _, _, _, _>(
            reports.clone(),
            Exchange::new(|x: &Delta| x.gid()),
            Pipeline,
            "Emitter",
            move |_capability, _info| {
                let mut derived_out: Vec<InputRow> = Vec::new();
                let mut gate: EpochGate<Delta> = EpochGate::default();
                move |(changes, frontier1), (reports, frontier2), output| {
                    changes.for_each(|cap, data| gate.data(cap, data));
                    reports.for_each(|cap, data| gate.reports(cap, data));
                    let ready = gate.ready(frontier1, frontier2);
                    if !ready.is_empty() {
                        let now_ms = now_ms();
                        let mut shared = emitter_shared.borrow_mut();
                        for ReadyEpoch { epoch: t, data, reports } in ready {
                            emitter.apply(data);
                            shared.clock.complete_epoch(t, reports);
                            let closed = shared.clock.closed_all().to_vec();
                            let mut rows = Vec::new();
                            emitter.finish_epoch(&closed, now_ms, &mut rows, &mut derived_out);
                            shared.closed_at.push_back((t, closed));
                            shared.rows.extend(rows.into_iter().map(|r| (t, r)));
                            shared.completed = Some(t);
                            if !derived_out.is_empty()
                                && let Some(cap) = gate.output_at(t)
                            {
                                output.session(&cap).give_container(&mut derived_out);
                            }
                        }
                        emitter.measure();
                        shared.emitter_stats = emitter.stats.clone();
                    }
                    gate.release();
                }
            },
        );
        let derived_plan = Arc::clone(&plan);
        let derived_shared = Rc::clone(&shared);
        let mut clock = GlobalClock::new(peers, domains, start);
        // Each input metric's closed limit as its store computes it; a derived
        // metric's is the smallest of its inputs' (and never below its own floor).
        let floor = |m: usize| metric_floor.get(m).copied().unwrap_or(crate::types::WM_START);
        let input_floor: Vec<i64> = (0..plan.metrics.len()).map(floor).collect();
        let mut stores: Vec<DerivedStore> =
            plan.derived.iter().map(|d| DerivedStore::new(floor(d.metric).max(crate::derived::limit(d, |m| input_floor[m])))).collect();
        let mut revisions = Revisions::new(revision_floor);
        inputs
            .binary_frontier::<_, timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
                reports,
                Exchange::new(|r: &InputRow| r.key),
                Pipeline,
                "Derived",
                move |_capability, _info| {
                    let mut gate: EpochGate<InputRow> = EpochGate::default();
                    move |(rows, frontier1), (reports, frontier2), _output| {
                        rows.for_each(|cap, data| gate.data(cap, data));
                        reports.for_each(|cap, data| gate.reports(cap, data));
                        let now_ms = now_ms();
                        for ReadyEpoch { epoch: t, data, reports } in gate.ready(frontier1, frontier2) {
                            for r in data {
                                if let (Some(d), Some(store)) = (derived_plan.derived.get(usize::from(r.derived)), stores.get_mut(usize::from(r.derived))) {
                                    store.apply(d, r);
                                }
                            }
                            clock.complete_epoch(t, reports);
                            let closed = clock.closed_all();
                            let input_limit = |m: usize| {
                                let mp = &derived_plan.metrics[m];
                                closed.get(mp.domain).copied().unwrap_or(crate::types::WM_START).saturating_sub(mp.lateness).max(input_floor[m])
                            };
                            let mut rows = Vec::new();
                            for (d, store) in derived_plan.derived.iter().zip(&mut stores) {
                                store.finish_epoch(d, crate::derived::limit(d, input_limit), &mut revisions, now_ms, &mut rows);
                            }
                            if !rows.is_empty() {
                                derived_shared.borrow_mut().rows.extend(rows.into_iter().map(|r| (t, r)));
                            }
                        }
                        gate.release();
                    }
                },
            )
            .probe_with(&probe);
        durable.probe_with(&durable_probe);
        (deltas_in, reports_in, durable_in)
    });

    Graph { deltas, reports, durable, probe, durable_probe, shared }
}

pub use pulse_model::now_ms;
