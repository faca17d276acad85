//! Exact distinct counts over sliding windows without per-window copies.
//!
//! Per group and distinct slot, each value keeps the panes it is present in
//! (with how many events put it there). A window's count changes only when a
//! value appears in a pane while absent from the window's other panes, or
//! disappears from its last pane in the window: the owner of the windows
//! adjusts their counts on those transitions (see `store`), so the work per
//! event is a hash lookup and a look at the value's few panes.
//!
//! Most values sit in one pane (a user seen once): they cost one 24-byte
//! entry. Values in several panes move to a second map holding a small list.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A pane's index: its start divided by the slide, modulo 2^32. The open
/// panes of a metric span far fewer than 2^31 slides, so wrapping differences
/// order them.
pub type PaneIdx = u32;

/// `a - b` in panes (wrapping).
pub fn pane_diff(a: PaneIdx, b: PaneIdx) -> i32 {
    a.wrapping_sub(b) as i32
}

/// A value's 128-bit hash as stored (8-byte aligned, unlike `u128`). It is
/// already a hash: the table hashes it by taking its low half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

fn key(v: u128) -> Key {
    Key(v as u64, (v >> 64) as u64)
}

/// Passes a `Key`'s low half through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; a plain FNV-style fold keeps it correct for anything else.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// A value's presence changed in a pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Appeared,
    Disappeared,
}

/// The presence of values in panes, for one group and slot.
#[derive(Debug, Default)]
pub struct Presence {
    /// Values present in one pane: (pane, events that put it there).
    one: KeyMap<(PaneIdx, i32)>,
    /// Values present in several panes.
    many: KeyMap<Vec<(PaneIdx, i32)>>,
    /// Entries of `many`'s lists (kept up to date, so that sizing is O(1)).
    many_entries: usize,
}

impl Presence {
    /// Counts `diff` events of value `v` in pane `p`; reports a change of
    /// presence, and leaves in `others` the other panes `v` is present in.
    pub fn change(&mut self, v: u128, p: PaneIdx, diff: i32, others: &mut Vec<PaneIdx>) -> Option<Transition> {
        others.clear();
        if diff == 0 {
            return None;
        }
        let k = key(v);
        let (before, after);
        if let Some(list) = if self.many.is_empty() { None } else { self.many.get_mut(&k) } {
            let pos = list.iter().position(|(q, _)| *q == p);
            before = pos.map_or(0, |i| list[i].1);
            after = before.wrapping_add(diff);
            match pos {
                Some(i) if after == 0 => {
                    list.swap_remove(i);
                    self.many_entries -= 1;
                }
                Some(i) => list[i].1 = after,
                None => {
                    list.push((p, after));
                    self.many_entries += 1;
                }
            }
            others.extend(list.iter().filter(|&&(q, c)| q != p && c > 0).map(|&(q, _)| q));
            if list.len() == 1 {
                let only = list[0];
                self.many.remove(&k);
                self.many_entries -= 1;
                self.one.insert(k, only);
            }
        } else {
            match self.one.entry(k) {
                Entry::Vacant(e) => {
                    before = 0;
                    after = diff;
                    e.insert((p, diff));
                }
                Entry::Occupied(mut e) => {
                    let (q, c) = *e.get();
                    if q == p {
                        before = c;
                        after = c.wrapping_add(diff);
                        if after == 0 {
                            e.remove();
                        } else {
                            e.get_mut().1 = after;
                        }
                    } else {
                        before = 0;
                        after = diff;
                        if c > 0 {
                            others.push(q);
                        }
                        e.remove();
                        self.many.insert(k, vec![(q, c), (p, diff)]);
                        self.many_entries += 2;
                    }
                }
            }
        }
        match (before > 0, after > 0) {
            (false, true) => Some(Transition::Appeared),
            (true, false) => Some(Transition::Disappeared),
            _ => None,
        }
    }

    /// Whether `v` is present in a pane of `[first, first + panes)` other than `except`.
    pub fn present_elsewhere(&self, v: u128, first: PaneIdx, panes: i32, except: PaneIdx) -> bool {
        let inside = |q: PaneIdx, c: i32| c > 0 && q != except && (0..panes).contains(&pane_diff(q, first));
        let k = key(v);
        if let Some(&(q, c)) = self.one.get(&k) {
            return inside(q, c);
        }
        !self.many.is_empty() && self.many.get(&k).is_some_and(|list| list.iter().any(|&(q, c)| inside(q, c)))
    }

    /// Forgets every pane before `first` (all windows holding them closed).
    pub fn expire(&mut self, first: PaneIdx) {
        let live = |q: PaneIdx| pane_diff(q, first) >= 0;
        self.one.retain(|_, (q, _)| live(*q));
        let mut demoted = Vec::new();
        let mut entries = 0;
        self.many.retain(|k, list| {
            list.retain(|(q, _)| live(*q));
            if list.len() == 1 {
                demoted.push((*k, list[0]));
                return false;
            }
            entries += list.len();
            !list.is_empty()
        });
        self.many_entries = entries;
        self.one.extend(demoted);
        if self.one.capacity() > 64 && self.one.capacity() > 4 * self.one.len() {
            self.one.shrink_to_fit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.one.is_empty() && self.many.is_empty()
    }

    /// Bytes held (tables at their capacity; lists at their length).
    pub fn bytes(&self) -> usize {
        let one = self.one.capacity() * (std::mem::size_of::<(Key, (PaneIdx, i32))>() + 1);
        let many = self.many.capacity() * (std::mem::size_of::<(Key, Vec<(PaneIdx, i32)>)>() + 1) + self.many_entries * std::mem::size_of::<(PaneIdx, i32)>();
        one + many
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Transitions and presence queries equal a brute-force count per (value, pane).
        #[test]
        fn equals_brute_force(changes in prop::collection::vec((0u128..6, 0u32..5, prop_oneof![Just(1), Just(-1), Just(2)]), 0..300)) {
            let mut p = Presence::default();
            let mut truth: BTreeMap<(u128, u32), i32> = BTreeMap::new();
            for (v, pane, diff) in changes {
                let base = 1_000_000u32.wrapping_sub(2); // panes straddle a wrap of u32 indices too
                let pane = base.wrapping_add(pane);
                let before = truth.get(&(v, pane)).copied().unwrap_or(0);
                let after = before + diff;
                truth.insert((v, pane), after);
                let want = match (before > 0, after > 0) {
                    (false, true) => Some(Transition::Appeared),
                    (true, false) => Some(Transition::Disappeared),
                    _ => None,
                };
                let mut others = Vec::new();
                prop_assert_eq!(p.change(v, pane, diff, &mut others), want);
                others.sort_unstable();
                let mut brute_others: Vec<u32> = truth.iter().filter(|&(&(tv, tp), &c)| tv == v && tp != pane && c > 0).map(|(&(_, tp), _)| tp).collect();
                brute_others.sort_unstable();
                prop_assert_eq!(others, brute_others);
                prop_assert_eq!(p.many_entries, p.many.values().map(Vec::len).sum::<usize>());
                for first in 0..5u32 {
                    let first = base.wrapping_add(first);
                    let brute = truth.iter().any(|(&(tv, tp), &c)| tv == v && c > 0 && tp != pane && (0..3).contains(&pane_diff(tp, first)));
                    prop_assert_eq!(p.present_elsewhere(v, first, 3, pane), brute);
                }
            }
        }
    }

    #[test]
    fn expiry_forgets_old_panes_and_demotes() {
        let mut p = Presence::default();
        let mut others = Vec::new();
        p.change(7, u32::MAX, 1, &mut others);
        p.change(7, 0, 1, &mut others); // the next pane, across the wrap
        assert_eq!(others, [u32::MAX]);
        p.change(8, u32::MAX, 1, &mut others);
        p.expire(0);
        assert!(p.present_elsewhere(7, 0, 1, 5));
        assert!(!p.present_elsewhere(8, u32::MAX, 2, 5));
        assert_eq!(p.change(7, 0, -1, &mut others), Some(Transition::Disappeared));
        assert!(p.is_empty());
    }
}
