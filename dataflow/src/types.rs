//! The records that flow through the dataflow.

use std::cmp::Ordering;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use pulse_model::metric_row::GroupValue;
use serde::{Deserialize, Serialize};

/// One aggregate slot of one window of one group: the unit differential keys by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WinKey {
    /// Stable id of (metric, group values).
    pub gid: u64,
    pub win: i64,
    pub metric: u16,
    pub slot: u16,
}

/// An additive accumulator as a differential difference: a count and a sum
/// that add up across events and cancel exactly on retraction. The sum is
/// fixed-point (see [`Fixed`]), so that an update changing only a number
/// (count +1 -1 = 0, sum changed) is a difference that is not zero, and a
/// window whose events were all retracted sums to exactly zero.
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

impl PartialEq for Acc {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Acc {}
impl PartialOrd for Acc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Acc {
    fn cmp(&self, other: &Self) -> Ordering {
        self.n.cmp(&other.n).then(self.sum.cmp(&other.sum))
    }
}
impl IsZero for Acc {
    fn is_zero(&self) -> bool {
        self.n == 0 && self.sum.0 == 0
    }
}
impl Semigroup for Acc {
    fn plus_equals(&mut self, rhs: &Self) {
        self.n += rhs.n;
        self.sum += rhs.sum;
    }
}
impl Monoid for Acc {
    fn zero() -> Self {
        Acc::ZERO
    }
}
impl Abelian for Acc {
    fn negate(&mut self) {
        self.n = -self.n;
        self.sum = -self.sum;
    }
}

/// A totally ordered f64 (by `total_cmp`) for multisets of numbers.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct OrdF64(pub f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for OrdF64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// What reaches the emitter: the current value of a slot, or a group's names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EmitIn {
    /// Accumulated (count, sum) of an additive slot.
    Add(WinKey, Acc),
    /// Number of distinct values of a distinct slot.
    Distinct(WinKey, i64),
    /// A statistic (by its position in the multiset's stats) of a multiset slot.
    Stat(WinKey, u16, Option<OrdF64>),
    /// The group values behind a group id.
    Names(u64, u16, Vec<NamedValue>),
}

impl EmitIn {
    pub fn gid(&self) -> u64 {
        match self {
            EmitIn::Add(k, _) | EmitIn::Distinct(k, _) | EmitIn::Stat(k, ..) => k.gid,
            EmitIn::Names(g, ..) => *g,
        }
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

/// A multiset delta as a differential difference: sorted values with non-zero
/// counts. Adding two bags merges them; a bag is zero when empty. One update
/// per window and epoch carries every value change of that window, so the
/// dataflow moves a few large updates instead of one update per value.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bag<T>(pub Vec<(T, i64)>);

impl<T: Ord + Clone> Bag<T> {
    /// A bag from unsorted (value, count) pairs.
    pub fn from_unsorted(mut items: Vec<(T, i64)>) -> Bag<T> {
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(T, i64)> = Vec::with_capacity(items.len());
        for (v, c) in items {
            match out.last_mut() {
                Some(last) if last.0 == v => last.1 += c,
                _ => out.push((v, c)),
            }
        }
        out.retain(|(_, c)| *c != 0);
        Bag(out)
    }

    /// Number of values with a positive count.
    pub fn distinct(&self) -> usize {
        self.0.iter().filter(|(_, c)| *c > 0).count()
    }
}

impl<T> IsZero for Bag<T> {
    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Ord + Clone> Semigroup for Bag<T> {
    fn plus_equals(&mut self, rhs: &Self) {
        if rhs.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&rhs.0);
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + rhs.0.len());
        let (mut a, mut b) = (std::mem::take(&mut self.0).into_iter().peekable(), rhs.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.0.cmp(&y.0) {
                    Ordering::Less => out.extend(a.next()),
                    Ordering::Greater => out.extend(b.next().cloned()),
                    Ordering::Equal => {
                        if let (Some((v, c1)), Some((_, c2))) = (a.next(), b.next())
                            && c1 + c2 != 0
                        {
                            out.push((v, c1 + c2));
                        }
                    }
                },
                (Some(_), None) => {
                    out.extend(a);
                    break;
                }
                (None, Some(_)) => {
                    out.extend(b.cloned());
                    break;
                }
                (None, None) => break,
            }
        }
        self.0 = out;
    }
}

impl<T: Ord + Clone> Monoid for Bag<T> {
    fn zero() -> Self {
        Bag(Vec::new())
    }
}

impl<T: Ord + Clone> Abelian for Bag<T> {
    fn negate(&mut self) {
        for (_, c) in &mut self.0 {
            *c = -*c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bags_add_and_cancel() {
        let mut a = Bag::from_unsorted(vec![(3u64, 1), (1, 2), (3, 1)]);
        assert_eq!(a.0, vec![(1, 2), (3, 2)]);
        a.plus_equals(&Bag(vec![(1, -2), (2, 1)]));
        assert_eq!(a.0, vec![(2, 1), (3, 2)]);
        assert_eq!(a.distinct(), 2);
        let mut neg = a.clone();
        neg.negate();
        a.plus_equals(&neg);
        assert!(a.is_zero());
    }
}
