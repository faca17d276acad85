//! Human durations in the spec: `200ms`, `30s`, `5m`, `1h`, `7d`, `2w`.

use std::fmt;

/// A non-negative duration with millisecond resolution, as written in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    pub const fn ms(self) -> i64 {
        self.0
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }

    pub const fn secs(self) -> i64 {
        self.0 / 1000
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(i64, &str); 5] = [(7 * 86_400_000, "w"), (86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")];
        for (size, unit) in UNITS {
            if self.0 != 0 && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

/// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("duration `{text}` has no unit (use ms, s, m, h, d or w)"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("duration `{text}` must start with a number, e.g. `30s`"));
    }
    let n: i64 = digits.parse().map_err(|_| format!("duration `{text}` is too large"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => {
            return Err(format!("duration `{text}` has unknown unit `{other}` (use ms, s, m, h, d or w)"));
        }
    };
    n.checked_mul(scale).map(Millis).ok_or_else(|| format!("duration `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("200ms"), Ok(Millis(200)));
        assert_eq!(parse_duration("30s"), Ok(Millis(30_000)));
        assert_eq!(parse_duration("5m"), Ok(Millis(300_000)));
        assert_eq!(parse_duration("1h"), Ok(Millis(3_600_000)));
        assert_eq!(parse_duration("7d"), Ok(Millis(604_800_000)));
        assert_eq!(parse_duration("0s"), Ok(Millis(0)));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "5", "m", "5 minutes", "-5m", "1.5s", "5x", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn displays_in_largest_unit() {
        assert_eq!(Millis(300_000).to_string(), "5m");
        assert_eq!(Millis(1500).to_string(), "1500ms");
        assert_eq!(Millis(604_800_000).to_string(), "1w");
    }
}
