//! Exact order statistics over sliding windows without per-window copies.
//!
//! Each pane keeps the numbers its events carry as one sorted vector (one
//! entry per event: 8 bytes), with the changes of the current epoch buffered
//! and merged in once, when a window holding the pane is next evaluated. A
//! window's quantile is then a selection over the sorted vectors of its
//! panes: for the rank wanted, a binary search inside each pane's vector,
//! counting ranks across the panes, costs O(k² log² n) for k panes of n
//! values, whatever the window's size.

use std::cmp::Ordering;

use crate::plan::Stat;

/// The numbers of one pane: sorted, plus the epoch's unmerged changes.
#[derive(Debug, Default, Clone)]
pub struct PaneValues {
    sorted: Vec<f64>,
    added: Vec<f64>,
    removed: Vec<f64>,
}

fn cmp(a: &f64, b: &f64) -> Ordering {
    a.total_cmp(b)
}

impl PaneValues {
    /// Adds (`count` > 0) or removes (`count` < 0) occurrences of `v`.
    pub fn change(&mut self, v: f64, count: i32) {
        let into = if count > 0 { &mut self.added } else { &mut self.removed };
        into.extend(std::iter::repeat_n(v, count.unsigned_abs() as usize));
    }

    /// Merges the buffered changes into the sorted values.
    pub fn settle(&mut self) {
        if self.added.is_empty() && self.removed.is_empty() {
            return;
        }
        self.added.sort_unstable_by(cmp);
        self.removed.sort_unstable_by(cmp);
        let mut out = Vec::with_capacity(self.sorted.len() + self.added.len());
        let (mut a, mut b) = (self.sorted.iter().peekable(), self.added.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if cmp(x, y) != Ordering::Greater => out.extend(a.next()),
                (_, Some(_)) => out.extend(b.next()),
                (Some(_), None) => out.extend(a.next()),
                (None, None) => break,
            }
        }
        if !self.removed.is_empty() {
            // Multiset difference: each removal takes one equal value out.
            let mut kept = Vec::with_capacity(out.len());
            let mut r = self.removed.iter().peekable();
            for v in out {
                while r.peek().is_some_and(|x| cmp(x, &v) == Ordering::Less) {
                    r.next();
                }
                if r.peek().is_some_and(|x| cmp(x, &v) == Ordering::Equal) {
                    r.next();
                    continue;
                }
                kept.push(v);
            }
            out = kept;
        }
        self.added.clear();
        self.removed.clear();
        if out.capacity() > 2 * out.len() + 16 {
            out.shrink_to_fit();
        }
        self.sorted = out;
        if self.added.capacity() > 64 {
            self.added = Vec::new();
        }
        if self.removed.capacity() > 64 {
            self.removed = Vec::new();
        }
    }

    /// The settled values, sorted (call [`PaneValues::settle`] first).
    pub fn sorted(&self) -> &[f64] {
        &self.sorted
    }

    pub fn bytes(&self) -> usize {
        (self.sorted.capacity() + self.added.capacity() + self.removed.capacity()) * std::mem::size_of::<f64>()
    }
}

/// Values below `x` and values up to `x`, over every pane.
fn ranks(panes: &[&[f64]], x: f64) -> (usize, usize) {
    panes.iter().fold((0, 0), |(below, upto), p| {
        (below + p.partition_point(|v| cmp(v, &x) == Ordering::Less), upto + p.partition_point(|v| cmp(v, &x) != Ordering::Greater))
    })
}

/// The element of rank `idx` (0-based) of the union of sorted `panes`.
pub fn select(panes: &[&[f64]], idx: usize) -> Option<f64> {
    for p in panes {
        // Ranks grow with the position in `p`: find the value whose ranks span `idx`.
        let (mut lo, mut hi) = (0, p.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (below, upto) = ranks(panes, p[mid]);
            if upto <= idx {
                lo = mid + 1;
            } else if below > idx {
                hi = mid;
            } else {
                return Some(p[mid]);
            }
        }
    }
    None
}

/// The statistics of a window made of the sorted `panes`, as ClickHouse
/// computes them (`quantileExact`: the element at floor(q * n), n - 1 for q >= 1).
pub fn stats(panes: &[&[f64]], wanted: &[Stat], out: &mut Vec<Option<f64>>) {
    out.clear();
    let n: usize = panes.iter().map(|p| p.len()).sum();
    for stat in wanted {
        if n == 0 {
            out.push(None);
            continue;
        }
        let v = match *stat {
            Stat::Min => panes.iter().filter_map(|p| p.first()).copied().min_by(cmp),
            Stat::Max => panes.iter().filter_map(|p| p.last()).copied().max_by(cmp),
            Stat::Quantile(q) => {
                let idx = if q < 1.0 { ((q * n as f64) as usize).min(n - 1) } else { n - 1 };
                select(panes, idx)
            }
        };
        out.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_follow_clickhouse_quantile_exact() {
        let (a, b) = ([1.0, 2.0, 9.0], [2.0, 5.0]); // 1 2 2 5 9
        let mut out = Vec::new();
        stats(&[&a, &b], &[Stat::Quantile(0.5), Stat::Quantile(0.95), Stat::Quantile(0.0), Stat::Quantile(1.0), Stat::Min, Stat::Max], &mut out);
        // n = 5: q=0.5 -> index 2 -> 2; q=0.95 -> index 4 -> 9; q=0 -> 1; q=1 -> 9.
        assert_eq!(out, [Some(2.0), Some(9.0), Some(1.0), Some(9.0), Some(1.0), Some(9.0)]);
        stats(&[], &[Stat::Min], &mut out);
        assert_eq!(out, [None]);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![(-5i32..5).prop_map(f64::from), any::<f64>(), Just(f64::INFINITY), Just(-0.0), Just(0.0)]
    }

    proptest! {
        /// Changes applied to panes and settled equal a sorted multiset kept by
        /// brute force; every rank selects what sorting the union gives.
        #[test]
        fn panes_and_selection_equal_sorting(
            changes in prop::collection::vec((0usize..4, value(), any::<bool>()), 0..200),
            settle_every in 1usize..50,
        ) {
            let mut panes = vec![PaneValues::default(); 4];
            let mut truth: Vec<Vec<f64>> = vec![Vec::new(); 4];
            for (i, (p, v, remove)) in changes.into_iter().enumerate() {
                if remove {
                    // Remove only what is there (a retraction follows its addition).
                    if let Some(pos) = truth[p].iter().position(|x| x.total_cmp(&v) == Ordering::Equal) {
                        truth[p].remove(pos);
                        panes[p].change(v, -1);
                    }
                } else {
                    truth[p].push(v);
                    panes[p].change(v, 1);
                }
                if i % settle_every == 0 {
                    panes.iter_mut().for_each(PaneValues::settle);
                }
            }
            panes.iter_mut().for_each(PaneValues::settle);
            let mut all: Vec<f64> = truth.iter().flatten().copied().collect();
            all.sort_by(f64::total_cmp);
            for (p, t) in panes.iter().zip(&mut truth) {
                t.sort_by(f64::total_cmp);
                prop_assert_eq!(p.sorted().iter().map(|x| x.to_bits()).collect::<Vec<_>>(), t.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            }
            let slices: Vec<&[f64]> = panes.iter().map(PaneValues::sorted).collect();
            for (idx, want) in all.iter().enumerate() {
                let got = select(&slices, idx);
                prop_assert_eq!(got.map(f64::to_bits), Some(want.to_bits()));
            }
            prop_assert_eq!(select(&slices, all.len()), None);
        }
    }
}
