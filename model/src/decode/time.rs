//! RFC 3339 timestamps to and from epoch milliseconds, within the range
//! ClickHouse can store.

/// Earliest and latest timestamps ClickHouse's `DateTime64(3)` can hold.
pub const MIN_TIME_MS: i64 = -2_208_988_800_000; // 1900-01-01
pub const MAX_TIME_MS: i64 = 10_413_791_999_999; // 2299-12-31T23:59:59.999

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into epoch milliseconds.
/// A hand-written fast path for the common shape, chrono for the rest.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    fn digits(b: &[u8]) -> Option<i64> {
        let mut n = 0i64;
        for &c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Some(n)
    }
    let b = s.as_bytes();
    if b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b't' || b[10] == b' ') && b[13] == b':' && b[16] == b':' {
        let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
        let (hour, min, sec) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || min > 59 || sec > 60 {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return None;
            }
            for _ in n..3 {
                millis *= 10;
            }
        }
        let offset_ms = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let off = digits(&[*h1, *h2])? * 3_600_000 + digits(&[*m1, *m2])? * 60_000;
                if *sign == b'+' { off } else { -off }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let sec = sec.min(59); // a leap second collapses onto :59, as ClickHouse does
        return Some(((days * 24 + hour) * 60 + min) * 60_000 + sec * 1000 + millis - offset_ms);
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis())
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::Decoder;
    use crate::decode::testing::{RIDE, spec};

    #[test]
    fn epoch_millis_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("2024-02-29T12:00:00.5Z"), Some(1_709_208_000_500));
        assert_eq!(parse_rfc3339_ms("2023-02-29T12:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-01-01T00:00:00.123456789Z"), Some(1_704_067_200_123));
        assert_eq!(parse_rfc3339_ms("2024-13-01T00:00:00Z"), None);
        let spec = spec();
        let d = Decoder::new(spec.domain("rides").expect("rides"));
        let ev = d.decode(RIDE.replace("\"2026-11-24T10:15:00.250Z\"", "1795515300250").as_bytes()).expect("epoch ms");
        assert_eq!(ev.time, 1_795_515_300_250);
    }

    proptest! {
        #[test]
        fn fast_timestamp_path_agrees_with_chrono(secs in -2_000_000_000i64..10_000_000_000, ms in 0i64..1000, off in -14i64*60..=14*60) {
            let t = chrono::DateTime::from_timestamp(secs, (ms * 1_000_000) as u32).expect("in range");
            let tz = chrono::FixedOffset::east_opt((off * 60) as i32).expect("offset");
            let text = t.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
            prop_assert_eq!(parse_rfc3339_ms(&text), Some(secs * 1000 + ms));
        }
    }
}
