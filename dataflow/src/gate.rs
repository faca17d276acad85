//! The epoch gate of the dataflow's operators: an operator with a data input
//! and the broadcast watermark reports works on an epoch only once both
//! inputs are complete for it, and holds a capability at its oldest pending
//! epoch, so that what follows it (and the driver's probe) passes an epoch
//! only after the operator completed it.
//!
//! ```text
//! data    ── buffered by its epoch ──────┐
//!                                        ├─ ready(t) once both frontiers passed t, oldest first
//! reports ── buffered by the report's epoch ┘
//! ```

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

use crate::types::WmReport;

/// One epoch both inputs completed: its data and every worker's report for it.
pub struct ReadyEpoch<D> {
    pub epoch: u64,
    pub data: Vec<D>,
    pub reports: Vec<WmReport>,
}

/// Buffers an operator's data and reports by epoch (see the module docs).
pub struct EpochGate<D> {
    data: BTreeMap<u64, Vec<D>>,
    reports: BTreeMap<u64, Vec<WmReport>>,
    /// Held at the oldest pending epoch (output port 0).
    held: Option<Capability<u64>>,
}

impl<D> Default for EpochGate<D> {
    fn default() -> Self {
        EpochGate { data: BTreeMap::new(), reports: BTreeMap::new(), held: None }
    }
}

impl<D> EpochGate<D> {
    fn hold(&mut self, cap: &InputCapability<u64>) {
        if self.held.as_ref().is_none_or(|h| cap.least().is_some_and(|t| t < h.time())) {
            self.held = cap.retain_least(0);
        }
    }

    /// Takes a batch of the data input, at its capability's epoch.
    pub fn data(&mut self, cap: InputCapability<u64>, data: &mut Vec<D>) {
        self.hold(&cap);
        if let Some(t) = cap.least() {
            self.data.entry(*t).or_default().append(data);
        }
    }

    /// Takes a batch of reports, each at the epoch it reports on.
    pub fn reports(&mut self, cap: InputCapability<u64>, reports: &mut Vec<WmReport>) {
        self.hold(&cap);
        for r in reports.drain(..) {
            self.reports.entry(r.epoch).or_default().push(r);
        }
    }

    /// The pending epochs that both inputs' frontiers have passed, oldest first.
    pub fn ready(&mut self, data: &MutableAntichain<u64>, reports: &MutableAntichain<u64>) -> Vec<ReadyEpoch<D>> {
        let ready = |t: &u64| !data.less_equal(t) && !reports.less_equal(t);
        let mut times: Vec<u64> = self.data.keys().chain(self.reports.keys()).copied().filter(|t| ready(t)).collect();
        times.sort_unstable();
        times.dedup();
        times
            .into_iter()
            .map(|epoch| ReadyEpoch { epoch, data: self.data.remove(&epoch).unwrap_or_default(), reports: self.reports.remove(&epoch).unwrap_or_default() })
            .collect()
    }

    /// A capability to emit at `epoch` (an epoch still held: one `ready` returned).
    pub fn output_at(&self, epoch: u64) -> Option<Capability<u64>> {
        self.held.as_ref().map(|h| h.delayed(&epoch))
    }

    /// Holds only what is still pending: the capability moves to the oldest
    /// pending epoch, or is dropped when nothing is pending.
    pub fn release(&mut self) {
        let oldest = self.data.keys().chain(self.reports.keys()).min().copied();
        match (oldest, self.held.as_mut()) {
            (Some(t), Some(h)) if *h.time() < t => h.downgrade(&t),
            (None, _) => self.held = None,
            _ => {}
        }
    }
}
