//! DDSketch quantiles (`quantile` with `method = "ddsketch"`).
//!
//! With `gamma = (1 + a) / (1 - a)` for a relative accuracy `a`, a number `x`
//! with `|x| >= MIN_MAGNITUDE` falls in bucket `ceil(ln |x| / ln gamma)` of the
//! store of its sign; smaller magnitudes (zero, subnormals) are counted apart.
//! Bucket `i` covers `(gamma^(i-1), gamma^i]`; its representative
//! `2 gamma^i / (gamma + 1)` is within `a` of every number in it (relative).
//!
//! Counts are signed: retracting a number (an update or a delete on a mutable
//! domain) takes one off its bucket, and a bucket reaching zero disappears.
//! Sketches merge by adding counts: a pane keeps one, a window's quantile
//! walks the sum of its panes' buckets.
//!
//! The rank is the exact quantile's (ClickHouse's `quantileExact`): the
//! element at index `floor(q * n)` (clamped to `n - 1`) of the sorted values.
//! Buckets are walked in value order to the one holding that rank, and its
//! representative is returned: within `a` of the exact element, relatively.
//!
//! Memory: 8 bytes per non-empty bucket. The number of buckets grows with the
//! spread of magnitudes, not with the count: about `ln(max / min) / (2a)` per
//! sign (latencies from 1 ms to 1 h at a = 1%: about 756 buckets, 6 KiB at most).
//! Bucket indexes are 32-bit: below `a` of about 2e-7, magnitudes near the ends
//! of the f64 range share the extreme buckets.

use crate::plan::Stat;

/// Magnitudes below this (the smallest normal f64) count as zero.
pub const MIN_MAGNITUDE: f64 = f64::MIN_POSITIVE;

/// The bucket mapping of one relative accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mapping {
    /// 1 / ln(gamma).
    inv_ln_gamma: f64,
    ln_gamma: f64,
    /// ln(2 / (gamma + 1)): the representative of bucket i is exp(i ln gamma + this).
    ln_rep: f64,
}

impl Mapping {
    /// The mapping of relative accuracy `a` (0 < a < 1, as the spec accepts).
    pub fn new(a: f64) -> Mapping {
        let a = if a > 0.0 && a < 1.0 { a } else { 0.01 };
        let gamma = (1.0 + a) / (1.0 - a);
        let ln_gamma = gamma.ln();
        Mapping { inv_ln_gamma: 1.0 / ln_gamma, ln_gamma, ln_rep: (2.0 / (gamma + 1.0)).ln() }
    }

    /// The bucket of a magnitude at least `MIN_MAGNITUDE`.
    pub fn index(&self, magnitude: f64) -> i32 {
        let i = (magnitude.ln() * self.inv_ln_gamma).ceil();
        // `as` saturates: indexes beyond i32 share the extreme bucket.
        i as i32
    }

    /// The representative magnitude of bucket `i`.
    pub fn value(&self, i: i32) -> f64 {
        (f64::from(i) * self.ln_gamma + self.ln_rep).exp().min(f64::MAX)
    }
}

/// Buckets of one sign: sorted by index, counts never zero.
type Store = Vec<(i32, i32)>;

fn change_store(store: &mut Store, i: i32, count: i32) {
    match store.binary_search_by_key(&i, |&(k, _)| k) {
        Ok(pos) => {
            let c = store[pos].1.wrapping_add(count);
            if c == 0 {
                store.remove(pos);
            } else {
                store[pos].1 = c;
            }
        }
        Err(pos) => store.insert(pos, (i, count)),
    }
}

/// A DDSketch of numbers (signed counts).
#[derive(Debug, Clone, PartialEq)]
pub struct DdSketch {
    mapping: Mapping,
    positive: Store,
    negative: Store,
    zero: i64,
}

impl DdSketch {
    pub fn new(mapping: Mapping) -> DdSketch {
        DdSketch { mapping, positive: Vec::new(), negative: Vec::new(), zero: 0 }
    }

    /// Adds (`count` > 0) or retracts (`count` < 0) occurrences of `x` (finite).
    pub fn change(&mut self, x: f64, count: i32) {
        if count == 0 || !x.is_finite() {
            return;
        }
        let magnitude = x.abs();
        if magnitude < MIN_MAGNITUDE {
            self.zero += i64::from(count);
        } else if x > 0.0 {
            change_store(&mut self.positive, self.mapping.index(magnitude), count);
        } else {
            change_store(&mut self.negative, self.mapping.index(magnitude), count);
        }
    }

    /// Adds every count of `other` (of the same mapping).
    pub fn merge(&mut self, other: &DdSketch) {
        for &(i, c) in &other.positive {
            change_store(&mut self.positive, i, c);
        }
        for &(i, c) in &other.negative {
            change_store(&mut self.negative, i, c);
        }
        self.zero += other.zero;
    }

    /// Numbers held (additions minus retractions).
    pub fn count(&self) -> i64 {
        self.zero + self.positive.iter().chain(&self.negative).map(|&(_, c)| i64::from(c)).sum::<i64>()
    }

    pub fn is_empty(&self) -> bool {
        self.zero == 0 && self.positive.is_empty() && self.negative.is_empty()
    }

    /// The quantile `q` of this sketch alone.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut out = Vec::new();
        stats(&[self], &[Stat::Quantile(q)], &mut out, &mut Scratch::default());
        out.first().copied().flatten()
    }

    /// Bytes held beyond the struct itself.
    pub fn heap_bytes(&self) -> usize {
        (self.positive.capacity() + self.negative.capacity()) * std::mem::size_of::<(i32, i32)>()
    }

    /// Gives back spare capacity once buckets went away (after deletions).
    pub fn shrink(&mut self) {
        for s in [&mut self.positive, &mut self.negative] {
            if s.capacity() > 2 * s.len() + 8 {
                s.shrink_to_fit();
            }
        }
    }
}

/// Reusable buffers for [`stats`].
#[derive(Debug, Default)]
pub struct Scratch {
    positive: Vec<(i32, i64)>,
    negative: Vec<(i32, i64)>,
}

/// Sums the buckets of several stores: sorted by index, one entry per index
/// with a positive total (a total at or below zero holds nothing).
fn sum_stores<'a>(stores: impl Iterator<Item = &'a Store>, out: &mut Vec<(i32, i64)>) {
    out.clear();
    for s in stores {
        out.extend(s.iter().map(|&(i, c)| (i, i64::from(c))));
    }
    out.sort_unstable_by_key(|&(i, _)| i);
    let mut w = 0;
    for r in 0..out.len() {
        if w > 0 && out[w - 1].0 == out[r].0 {
            out[w - 1].1 += out[r].1;
        } else {
            out[w] = out[r];
            w += 1;
        }
    }
    out.truncate(w);
    out.retain(|&(_, c)| c > 0);
}

/// The statistics of the union of `sketches` (one mapping): quantiles at the
/// exact quantile's rank (see the module); min and max are the extreme
/// buckets' representatives. `None` for every statistic when empty.
pub fn stats(sketches: &[&DdSketch], wanted: &[Stat], out: &mut Vec<Option<f64>>, scratch: &mut Scratch) {
    out.clear();
    let Some(first) = sketches.first() else {
        out.extend(wanted.iter().map(|_| None));
        return;
    };
    let mapping = first.mapping;
    sum_stores(sketches.iter().map(|s| &s.positive), &mut scratch.positive);
    sum_stores(sketches.iter().map(|s| &s.negative), &mut scratch.negative);
    let zero = sketches.iter().map(|s| s.zero).sum::<i64>().max(0);
    let (pos, neg) = (&scratch.positive, &scratch.negative);
    let n = pos.iter().chain(neg.iter()).map(|&(_, c)| c).sum::<i64>() + zero;
    // Value order: negatives from the largest magnitude down, zero, positives up.
    let nth = |rank: i64| -> f64 {
        let mut seen = 0i64;
        for &(i, c) in neg.iter().rev() {
            seen += c;
            if rank < seen {
                return -mapping.value(i);
            }
        }
        seen += zero;
        if rank < seen {
            return 0.0;
        }
        for &(i, c) in pos {
            seen += c;
            if rank < seen {
                return mapping.value(i);
            }
        }
        pos.last().map_or(0.0, |&(i, _)| mapping.value(i))
    };
    for stat in wanted {
        if n <= 0 {
            out.push(None);
            continue;
        }
        let rank = match *stat {
            Stat::Min => 0,
            Stat::Max => n - 1,
            Stat::Quantile(q) => {
                if q < 1.0 {
                    ((q * n as f64) as i64).min(n - 1)
                } else {
                    n - 1
                }
            }
        };
        out.push(Some(nth(rank)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// The exact quantile: the element at floor(q n), clamped.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        let n = sorted.len();
        sorted[if q < 1.0 { ((q * n as f64) as usize).min(n - 1) } else { n - 1 }]
    }

    /// Within relative accuracy `a` of `want` (plus the rounding of ln and exp).
    fn within(got: f64, want: f64, a: f64) -> bool {
        if want.abs() < MIN_MAGNITUDE {
            return got == 0.0;
        }
        (got - want).abs() <= want.abs() * (a * (1.0 + 1e-9) + 1e-12)
    }

    const QS: [f64; 9] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0];

    fn check(values: &[f64], sketch: &DdSketch, a: f64) -> Result<(), String> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return if sketch.quantile(0.5).is_none() { Ok(()) } else { Err("empty sketch answered".into()) };
        }
        for q in QS {
            let (got, want) = (sketch.quantile(q).ok_or("no answer")?, exact(&sorted, q));
            if !within(got, want, a) {
                return Err(format!("q={q}: got {got}, exact {want}, a={a}, n={}", sorted.len()));
            }
        }
        Ok(())
    }

    /// Numbers over many magnitudes and both signs, with zeros, tiny and huge ones.
    fn wild(rng: &mut SmallRng) -> f64 {
        match rng.random_range(0..10) {
            0 => 0.0,
            1 => rng.random_range(-1e-300..1e-300),
            2 => rng.random_range(-1.0..1.0) * 1e300,
            3 => f64::MAX * rng.random_range(-1.0..1.0),
            4 => -rng.random_range(0.0..1000.0),
            _ => rng.random_range(0.0..1.0f64).powi(3) * 900.0 + 5.0,
        }
    }

    #[test]
    fn buckets_bound_the_relative_error() {
        let m = Mapping::new(0.01);
        for x in [MIN_MAGNITUDE, 1e-300, 0.5, 1.0, 1.0202, 3.0, 1e10, 1e300, f64::MAX] {
            let v = m.value(m.index(x));
            assert!(within(v, x, 0.01), "{x}: representative {v}");
        }
        let mut s = DdSketch::new(m);
        s.change(-2.0, 1);
        s.change(0.0, 1);
        s.change(1e-320, 1); // subnormal: zero
        s.change(5.0, 1);
        assert_eq!(s.count(), 4);
        assert!(within(s.quantile(0.0).unwrap_or(f64::NAN), -2.0, 0.01));
        assert_eq!(s.quantile(0.25), Some(0.0));
        assert_eq!(s.quantile(0.5), Some(0.0));
        assert!(within(s.quantile(0.99).unwrap_or(f64::NAN), 5.0, 0.01));
        s.change(5.0, -1);
        s.change(-2.0, -1);
        assert!(s.positive.is_empty() && s.negative.is_empty(), "a bucket reaching zero disappears");
    }

    /// Large random inputs: every quantile within the accuracy of the exact element.
    #[test]
    fn large_random_inputs_are_within_the_accuracy() {
        let mut rng = SmallRng::seed_from_u64(3);
        for a in [0.001, 0.01, 0.05] {
            let values: Vec<f64> = (0..200_000).map(|_| wild(&mut rng)).collect();
            let mut s = DdSketch::new(Mapping::new(a));
            values.iter().for_each(|&x| s.change(x, 1));
            check(&values, &s, a).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Insert N, delete a random half: the quantiles are those of the rest.
    #[test]
    fn deletions_leave_the_quantiles_of_the_rest() {
        let mut rng = SmallRng::seed_from_u64(11);
        let a = 0.01;
        let mut values: Vec<f64> = (0..100_000).map(|_| wild(&mut rng)).collect();
        let mut s = DdSketch::new(Mapping::new(a));
        values.iter().for_each(|&x| s.change(x, 1));
        values.shuffle(&mut rng);
        let (gone, kept) = values.split_at(values.len() / 2);
        gone.iter().for_each(|&x| s.change(x, -1));
        assert_eq!(s.count(), kept.len() as i64);
        check(kept, &s, a).unwrap_or_else(|e| panic!("{e}"));
        kept.iter().for_each(|&x| s.change(x, -1));
        assert!(s.is_empty(), "every count back to zero: {s:?}");
        assert_eq!(s.quantile(0.5), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Panes with additions and deletions, merged: the quantiles of the
        /// window's remaining values, and the same as one sketch of them.
        #[test]
        fn panes_with_deletions_merge_to_the_rest(
            seed in any::<u64>(),
            n in 1usize..5_000,
            panes in 1usize..6,
            a in prop_oneof![Just(0.005), Just(0.01), Just(0.02), 0.0001f64..0.5],
        ) {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mapping = Mapping::new(a);
            let mut sketches = vec![DdSketch::new(mapping); panes];
            let mut kept = Vec::new();
            let mut one = DdSketch::new(mapping);
            for _ in 0..n {
                let (x, p) = (wild(&mut rng), rng.random_range(0..panes));
                sketches[p].change(x, 1);
                if rng.random_bool(0.5) {
                    sketches[p].change(x, -1);
                } else {
                    kept.push(x);
                    one.change(x, 1);
                }
            }
            let refs: Vec<&DdSketch> = sketches.iter().collect();
            let mut merged = Vec::new();
            let wanted: Vec<Stat> = QS.iter().map(|&q| Stat::Quantile(q)).collect();
            stats(&refs, &wanted, &mut merged, &mut Scratch::default());
            let mut sorted = kept.clone();
            sorted.sort_by(f64::total_cmp);
            for (q, got) in QS.iter().zip(&merged) {
                if sorted.is_empty() {
                    prop_assert_eq!(*got, None);
                } else {
                    let want = exact(&sorted, *q);
                    let got = got.unwrap_or(f64::NAN);
                    prop_assert!(within(got, want, a), "q={} got {} want {} a={}", q, got, want, a);
                }
                prop_assert_eq!(got.map(f64::to_bits), one.quantile(*q).map(f64::to_bits));
            }
            let mut m = DdSketch::new(mapping);
            sketches.iter().for_each(|s| m.merge(s));
            prop_assert_eq!(m, one);
        }
    }
}
