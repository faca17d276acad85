//! The records that flow through the dataflow.

use pulse_model::metric_row::GroupValue;
use serde::{Deserialize, Serialize};

/// What ingestion tells a pane's owner at the end of an epoch: every change
/// one worker made to one pane of one group of one metric during the epoch.
/// Workers exchange these by group id; the owner keeps the pane (see `store`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PaneDelta {
    /// Stable id of (metric, group values).
    pub gid: u64,
    pub metric: u16,
    /// Start of the slide-sized pane.
    pub pane: i64,
    /// Events added minus events retracted (every event, filtered or not).
    pub events: i64,
    /// Per additive slot (empty: no additive change).
    pub add: Vec<Acc>,
    /// (distinct slot, value hash, +1 / -1 per event).
    pub distinct: Vec<(u16, u128, i32)>,
    /// (multiset slot, value, +1 / -1 per event).
    pub multiset: Vec<(u16, f64, i32)>,
}

impl PaneDelta {
    pub fn is_empty(&self) -> bool {
        self.events == 0 && self.add.iter().all(Acc::is_zero) && self.distinct.is_empty() && self.multiset.is_empty()
    }
}

/// What flows from ingestion to the window owners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Delta {
    Pane(PaneDelta),
    /// A worker opened (+1) or closed (-1) a group: its values, for the rows.
    Names {
        gid: u64,
        metric: u16,
        values: Vec<NamedValue>,
        diff: i32,
    },
    /// An input window of a derived metric handed in directly (a restart's seed:
    /// finals of windows the input closed before the derived metric did).
    Input(crate::derived::InputRow),
}

impl Delta {
    /// The group id, by which deltas are exchanged between workers.
    pub fn gid(&self) -> u64 {
        match self {
            Delta::Pane(p) => p.gid,
            Delta::Names { gid, .. } => *gid,
            Delta::Input(r) => r.key,
        }
    }
}

/// An additive accumulator: a count and a sum that add up across events and
/// cancel exactly on retraction. The sum is fixed-point (see [`Fixed`]), so
/// that an update changing only a number (count +1 -1 = 0, sum changed) is a
/// change that is not zero, and a window whose events were all retracted
/// sums to exactly zero.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Acc {
    pub n: i64,
    pub sum: Fixed,
}

impl Acc {
    pub const ZERO: Acc = Acc { n: 0, sum: Fixed(0) };
}

/// A sum of f64 values kept exactly: each value is rounded once to a multiple
/// of 2^-32 (about 2.3e-10) and the sum is an integer count of those, so
/// additions and retractions cancel exactly in any order. Values up to about
/// 4e28 in magnitude are represented (a larger value saturates, a larger
/// total wraps; bound such fields with `max` in the spec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fixed(pub i128);

impl Fixed {
    const SCALE: f64 = 4_294_967_296.0; // 2^32

    pub fn from_f64(x: f64) -> Fixed {
        // `as` saturates at the bounds of i128 (and maps NaN to 0).
        Fixed((x * Self::SCALE).round() as i128)
    }

    pub fn to_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }

    pub fn times(self, sign: i64) -> Fixed {
        Fixed(self.0.wrapping_mul(i128::from(sign)))
    }
}

impl std::ops::AddAssign for Fixed {
    fn add_assign(&mut self, rhs: Fixed) {
        // Wrapping, not saturating: the sums stay a group (every addition is
        // undone exactly by its retraction), as differential requires.
        self.0 = self.0.wrapping_add(rhs.0);
    }
}

impl std::ops::Neg for Fixed {
    type Output = Fixed;
    fn neg(self) -> Fixed {
        Fixed(self.0.wrapping_neg())
    }
}

impl Acc {
    pub fn is_zero(&self) -> bool {
        self.n == 0 && self.sum.0 == 0
    }

    pub fn plus(&mut self, rhs: &Acc) {
        self.n = self.n.wrapping_add(rhs.n);
        self.sum += rhs.sum;
    }
}

impl PartialEq for Acc {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n && self.sum == other.sum
    }
}

/// A group value that can cross process boundaries (and be ordered).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NamedValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl From<&GroupValue> for NamedValue {
    fn from(v: &GroupValue) -> Self {
        match v {
            GroupValue::Str(s) => NamedValue::Str(s.to_string()),
            GroupValue::Int(i) => NamedValue::Int(*i),
            GroupValue::Bool(b) => NamedValue::Bool(*b),
            GroupValue::Null => NamedValue::Null,
        }
    }
}

impl From<&NamedValue> for GroupValue {
    fn from(v: &NamedValue) -> Self {
        match v {
            NamedValue::Str(s) => GroupValue::Str(s.as_str().into()),
            NamedValue::Int(i) => GroupValue::Int(*i),
            NamedValue::Bool(b) => GroupValue::Bool(*b),
            NamedValue::Null => GroupValue::Null,
        }
    }
}

/// A worker's watermark report for one epoch, per domain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WmReport {
    pub worker: usize,
    pub epoch: u64,
    pub domains: Vec<DomainWm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainWm {
    /// Smallest "largest event time" over this worker's active partitions.
    pub min_active: Option<i64>,
    /// Largest event time seen by this worker on any partition.
    pub max_seen: Option<i64>,
    /// The event-time watermark this worker used during the epoch to drop late data.
    pub used: i64,
}

/// Event-time watermark meaning "nothing is known yet".
pub const WM_START: i64 = i64::MIN / 4;
/// Event-time watermark meaning "the input has ended": closes every window.
pub const WM_END: i64 = i64::MAX / 4;
