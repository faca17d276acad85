//! Query-string parsing and input validation. Every value that reaches SQL goes
//! through here first and then only as a server-side parameter; a bad value is
//! a 400 naming the parameter.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::ApiError;

/// Longest accepted text parameter (ids, keys, group values), in characters
/// (what JSON Schema's `maxLength` counts).
pub const MAX_TEXT_CHARS: usize = 1024;
/// Latest accepted time: 9999-12-31T23:59:59.999Z.
const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// `a=1&b=x%20y` → pairs, percent- and `+`-decoded; `Err` on malformed escapes or non-UTF-8.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent escape")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad percent escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent escape")?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not valid UTF-8".to_string())
}

/// The query parameters of one request, checked against what the endpoint accepts.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `query`; a parameter that is not in `allowed`, or given twice, is a 400.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs = parse_query(query.unwrap_or("")).map_err(|e| ApiError::bad("query", format!("malformed query string: {e}")))?;
        for (i, (k, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                let name = if k.len() > 64 || k.chars().any(char::is_control) { "(unprintable)".to_string() } else { k.clone() };
                let msg = if allowed.is_empty() {
                    format!("unknown parameter `{name}`: this endpoint takes no parameters")
                } else {
                    format!("unknown parameter `{name}` (accepted: {})", allowed.join(", "))
                };
                return Err(ApiError::bad(name, msg));
            }
            if pairs[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(ApiError::bad(k.clone(), format!("parameter `{k}` is given more than once")));
            }
        }
        Ok(Params { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A text value: at most `MAX_TEXT_CHARS`, no control characters.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.get(name).map(|v| text(name, v)).transpose()
    }

    pub fn required_text(&self, name: &str) -> Result<String, ApiError> {
        self.text(name)?.ok_or_else(|| ApiError::bad(name, format!("parameter `{name}` is required")))
    }

    /// A positive count, lowered to `max`; `default` when absent.
    pub fn limit(&self, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default.min(max)),
            Some(v) => {
                let n = positive(name, v)?;
                Ok(n.min(max))
            }
        }
    }

    /// A positive count that must not exceed `max` (no silent capping).
    pub fn bounded(&self, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => {
                let n = positive(name, v)?;
                if n > max {
                    return Err(ApiError::bad(name, format!("`{name}` must be at most {max}")));
                }
                Ok(n)
            }
        }
    }

    /// A time: RFC 3339 (`2026-11-24T00:05:00Z`) or epoch milliseconds.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name).map(|v| time(name, v)).transpose()
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.get(name)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ApiError::bad(name, format!("`{name}` must be true or false"))),
            })
            .transpose()
    }
}

/// Checks a text value (path segment or parameter).
pub fn text(name: &str, v: &str) -> Result<String, ApiError> {
    if v.is_empty() {
        return Err(ApiError::bad(name, format!("`{name}` must not be empty")));
    }
    if v.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad(name, format!("`{name}` is longer than {MAX_TEXT_CHARS} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad(name, format!("`{name}` contains control characters")));
    }
    Ok(v.to_string())
}

fn positive(name: &str, v: &str) -> Result<u64, ApiError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad(name, format!("`{name}` must be a positive integer")));
    }
    // Digits only: a parse error is an overflow, which every cap is below.
    let n = v.parse::<u64>().unwrap_or(u64::MAX);
    if n == 0 {
        return Err(ApiError::bad(name, format!("`{name}` must be at least 1")));
    }
    Ok(n)
}

/// Parses a time parameter: RFC 3339 or epoch milliseconds, year 1970 to 9999.
pub fn time(name: &str, v: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::bad(name, format!("`{name}` must be an RFC 3339 time (2026-11-24T00:05:00Z) or epoch milliseconds"));
    // Digits only: a parse error is an overflow, beyond every time.
    let ms = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<i64>().unwrap_or(i64::MAX)
    } else {
        DateTime::parse_from_rfc3339(v).map_err(|_| bad())?.timestamp_millis()
    };
    // Times outside what ClickHouse stores mean "from the beginning" / "to the end".
    Ok(ms.clamp(0, MAX_TIME_MS))
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// An opaque timeline cursor: the (time, event id) of the last row returned.
pub fn encode_cursor(time_ms: i64, event_id: &str) -> String {
    let raw = format!("{time_ms}:{event_id}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_cursor(v: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad("cursor", "`cursor` is not a cursor this API returned");
    if !v.len().is_multiple_of(2) || v.len() > 2 * (MAX_TEXT_CHARS + 24) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> =
        (0..v.len()).step_by(2).map(|i| v.get(i..i + 2).ok_or(()).and_then(|h| u8::from_str_radix(h, 16).map_err(|_| ()))).collect();
    let raw = String::from_utf8(bytes.map_err(|()| bad())?).map_err(|_| bad())?;
    let (t, id) = raw.split_once(':').ok_or_else(bad)?;
    let t: i64 = t.parse().map_err(|_| bad())?;
    if !(0..=MAX_TIME_MS).contains(&t) || id.is_empty() || id.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok((t, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        assert_eq!(parse_query("a=1&b=x%20y+z&c").expect("ok"), [("a".into(), "1".into()), ("b".into(), "x y z".into()), ("c".into(), String::new())]);
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%ff").is_err());
        assert!(parse_query("a=%4").is_err());
        assert!(Params::parse(Some("limit=1&limit=2"), &["limit"]).is_err());
        assert!(Params::parse(Some("lim=1"), &["limit"]).is_err());
    }

    #[test]
    fn limits_and_times() {
        let p = Params::parse(Some("limit=5000&days=0&n=-3&big=99999999999999999999999"), &["limit", "days", "n", "big"]).expect("parse");
        assert_eq!(p.limit("limit", 100, 1000).expect("capped"), 1000);
        assert_eq!(p.limit("other", 100, 1000).expect("default"), 100);
        assert!(p.limit("days", 7, 366).is_err());
        assert!(p.limit("n", 7, 366).is_err());
        assert_eq!(p.limit("big", 7, 366).expect("capped"), 366);
        assert_eq!(time("from", "2026-11-24T00:05:00Z").expect("rfc"), 1_795_478_700_000);
        assert_eq!(time("from", "1795478700000").expect("ms"), 1_795_478_700_000);
        assert!(time("from", "yesterday").is_err());
        assert!(time("from", "-5").is_err());
        assert_eq!(time("from", "99999999999999999999").expect("clamped"), MAX_TIME_MS);
        assert_eq!(time("from", "1900-01-01T00:00:00Z").expect("clamped"), 0);
        assert_eq!(rfc3339(1_795_478_700_123).as_deref(), Some("2026-11-24T00:05:00.123Z"));
    }

    #[test]
    fn cursors_round_trip() {
        let c = encode_cursor(1_795_478_700_000, "r-1:ü");
        assert_eq!(decode_cursor(&c).expect("decodes"), (1_795_478_700_000, "r-1:ü".to_string()));
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor("' OR 1=1 --").is_err());
        assert!(decode_cursor("").is_err());
    }

    #[test]
    fn text_values() {
        assert!(text("id", "").is_err());
        assert!(text("id", "a\u{0}b").is_err());
        assert!(text("id", &"x".repeat(2000)).is_err());
        assert_eq!(text("id", "' OR 1=1 --").expect("harmless"), "' OR 1=1 --");
    }
}
