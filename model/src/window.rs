//! Sliding-window math. Windows of `size` advance by `slide` and are aligned to
//! the Unix epoch: window `[start, start + size)` exists for every `start` that
//! is a multiple of `slide`. A window is closed once the watermark reaches its
//! end (`end <= watermark`): no event older than the watermark is expected.

/// Window geometry of one metric, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub size: i64,
    pub slide: i64,
}

impl Windows {
    /// `size` must be a positive multiple of the positive `slide` (the spec checks this).
    pub fn new(size: i64, slide: i64) -> Windows {
        debug_assert!(slide > 0 && size > 0 && size % slide == 0);
        Windows { size, slide }
    }

    /// Number of windows that contain any one instant.
    pub fn per_event(self) -> i64 {
        self.size / self.slide
    }

    /// Start of the slide-sized pane holding `t`; also the start of the latest window containing `t`.
    pub fn pane(self, t: i64) -> i64 {
        t.div_euclid(self.slide) * self.slide
    }

    /// Start of the earliest window containing `t`.
    pub fn first_start(self, t: i64) -> i64 {
        self.pane(t) - self.size + self.slide
    }

    /// Starts of every window containing `t`, oldest first.
    pub fn starts(self, t: i64) -> impl Iterator<Item = i64> {
        let last = self.pane(t);
        let slide = self.slide;
        (0..self.per_event()).map(move |i| last - (self.per_event() - 1 - i) * slide)
    }

    pub fn end(self, start: i64) -> i64 {
        start + self.size
    }

    pub fn is_closed(self, start: i64, watermark: i64) -> bool {
        self.end(start) <= watermark
    }

    /// Starts of the windows containing `t` that are still open at `watermark`.
    pub fn open_starts(self, t: i64, watermark: i64) -> impl Iterator<Item = i64> {
        self.starts(t).filter(move |&s| !self.is_closed(s, watermark))
    }

    /// Whether every window containing `t` is closed at `watermark` (the event is late).
    pub fn is_late(self, t: i64, watermark: i64) -> bool {
        self.is_closed(self.pane(t), watermark)
    }

    /// The end of the last window that contains `t`: until the watermark reaches
    /// it, an event at `t` still contributes to some open window.
    pub fn last_end(self, t: i64) -> i64 {
        self.end(self.pane(t))
    }

    /// Starts of the windows a watermark advance from `from` to `to` closes, oldest first.
    pub fn closed_between(self, from: i64, to: i64) -> impl Iterator<Item = i64> {
        // Windows whose end e satisfies from < e <= to, with e - size a multiple of slide.
        let first_end = (from - self.size).div_euclid(self.slide) * self.slide + self.slide + self.size;
        let size = self.size;
        let slide = self.slide;
        let count = if to < first_end { 0 } else { (to - first_end) / slide + 1 };
        (0..count).map(move |i| first_end + i * slide - size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Brute force: scan every multiple of `slide` near `t`.
    fn brute_starts(w: Windows, t: i64) -> Vec<i64> {
        let lo = (t - w.size).div_euclid(w.slide) - 2;
        let hi = t.div_euclid(w.slide) + 2;
        (lo..=hi).map(|k| k * w.slide).filter(|&s| s <= t && t < s + w.size).collect()
    }

    fn geometry() -> impl Strategy<Value = Windows> {
        (1i64..2_000, 1i64..12).prop_map(|(slide, n)| Windows::new(slide * n, slide))
    }

    #[test]
    fn five_minute_windows_sliding_each_minute() {
        let w = Windows::new(300_000, 60_000);
        let t = 10 * 60_000 + 30_000; // 00:10:30
        let starts: Vec<_> = w.starts(t).collect();
        assert_eq!(starts, [360_000, 420_000, 480_000, 540_000, 600_000]);
        assert_eq!(w.end(600_000), 900_000);
        assert!(!w.is_late(t, 899_999));
        assert!(w.is_late(t, 900_000));
        assert_eq!(w.open_starts(t, 800_000).collect::<Vec<_>>(), [540_000, 600_000]);
        assert_eq!(w.closed_between(600_000, 720_000).collect::<Vec<_>>(), [360_000, 420_000]);
    }

    proptest! {
        #[test]
        fn starts_match_brute_force(w in geometry(), t in -1_000_000i64..1_000_000) {
            prop_assert_eq!(w.starts(t).collect::<Vec<_>>(), brute_starts(w, t));
        }

        #[test]
        fn open_and_late_match_brute_force(w in geometry(), t in -100_000i64..100_000, wm in -100_000i64..100_000) {
            let open: Vec<_> = brute_starts(w, t).into_iter().filter(|&s| s + w.size > wm).collect();
            prop_assert_eq!(w.open_starts(t, wm).collect::<Vec<_>>(), open.clone());
            prop_assert_eq!(w.is_late(t, wm), open.is_empty());
            prop_assert_eq!(w.last_end(t), brute_starts(w, t).last().copied().unwrap_or(0) + w.size);
        }

        #[test]
        fn closed_between_matches_brute_force(w in geometry(), a in -50_000i64..50_000, d in 0i64..50_000) {
            let b = a + d;
            let lo = (a - 2 * w.size).div_euclid(w.slide);
            let hi = b.div_euclid(w.slide) + 1;
            let brute: Vec<_> = (lo..=hi).map(|k| k * w.slide).filter(|&s| a < s + w.size && s + w.size <= b).collect();
            prop_assert_eq!(w.closed_between(a, b).collect::<Vec<_>>(), brute);
        }
    }
}
