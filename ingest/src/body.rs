//! Request bodies: the accepted content types, and splitting a body into its
//! events without parsing them twice. A JSON body is one object or an array of
//! objects; an NDJSON body has one object per line. The splitter only finds
//! where each event starts and ends (tracking strings and nesting); each event
//! is then read by the domain's strict decoder, so anything the splitter lets
//! through that is not a valid object is still rejected there.

use std::ops::Range;

use memchr::{memchr, memchr2};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one object or an array of objects.
    Json,
    /// `application/x-ndjson` (also `application/ndjson`, `application/jsonl`, `application/x-jsonlines`).
    Ndjson,
}

/// The format of a `Content-Type`, or why it is not accepted.
pub fn format_of(content_type: Option<&[u8]>) -> Result<Format, String> {
    let Some(raw) = content_type else {
        return Err("missing Content-Type: send application/json (an object or an array) or application/x-ndjson".into());
    };
    let text = std::str::from_utf8(raw).map_err(|_| "unreadable Content-Type".to_string())?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    for param in parts {
        if let Some((k, v)) = param.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
            && !matches!(v.trim().trim_matches('"').to_ascii_lowercase().as_str(), "utf-8" | "utf8")
        {
            return Err(format!("charset {} is not supported: send UTF-8", v.trim()));
        }
    }
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines" | "application/jsonlines" => Ok(Format::Ndjson),
        other => Err(format!("Content-Type {other} is not accepted: send application/json (an object or an array) or application/x-ndjson")),
    }
}

/// Where one event is in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub range: Range<usize>,
    /// 1-based line (NDJSON bodies).
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// The body is not a JSON object, an array of values, or NDJSON.
    Malformed(String),
    /// More events than allowed in one request.
    TooMany { limit: usize },
}

/// Splits `body` into events, at most `max` of them.
pub fn split(format: Format, body: &[u8], max: usize, out: &mut Vec<Item>) -> Result<(), SplitError> {
    out.clear();
    match format {
        Format::Json => split_json(body, max, out),
        Format::Ndjson => split_ndjson(body, max, out),
    }
}

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_ws(c)) {
        i += 1;
    }
    i
}

fn trim_end(b: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && is_ws(b[end - 1]) {
        end -= 1;
    }
    end
}

fn malformed(b: &[u8], i: usize, what: &str) -> SplitError {
    if i >= b.len() {
        SplitError::Malformed(format!("truncated JSON: expected {what} at byte {i}"))
    } else {
        SplitError::Malformed(format!("malformed JSON: expected {what} at byte {i}"))
    }
}

fn split_json(b: &[u8], max: usize, out: &mut Vec<Item>) -> Result<(), SplitError> {
    // A UTF-8 byte order mark is tolerated.
    let start = if b.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    let i = skip_ws(b, start);
    match b.get(i) {
        Some(b'{') => {
            if max == 0 {
                return Err(SplitError::TooMany { limit: max });
            }
            out.push(Item { range: i..trim_end(b, i, b.len()), line: None });
            Ok(())
        }
        Some(b'[') => split_array(b, i + 1, max, out),
        _ => Err(malformed(b, i, "a JSON object or an array of objects")),
    }
}

/// Index just after the closing quote of the string whose content starts at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Result<usize, SplitError> {
    loop {
        match memchr2(b'"', b'\\', &b[i.min(b.len())..]) {
            None => return Err(malformed(b, b.len(), "a closing quote")),
            Some(off) => {
                let at = i + off;
                if b[at] == b'"' {
                    return Ok(at + 1);
                }
                i = at + 2;
            }
        }
    }
}

fn split_array(b: &[u8], mut i: usize, max: usize, out: &mut Vec<Item>) -> Result<(), SplitError> {
    i = skip_ws(b, i);
    if b.get(i) == Some(&b']') {
        return end_of_body(b, i + 1);
    }
    loop {
        i = skip_ws(b, i);
        let start = i;
        let mut depth = 0usize;
        // Find the ',' or ']' that ends this element.
        let closing = loop {
            let Some(&c) = b.get(i) else {
                return Err(malformed(b, i, "',' or ']'"));
            };
            match c {
                b'"' => {
                    i = skip_string(b, i + 1)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' => break b']',
                b'}' => return Err(malformed(b, i, "',' or ']'")),
                b',' if depth == 0 => break b',',
                _ => {}
            }
            i += 1;
        };
        let end = trim_end(b, start, i);
        if end == start {
            return Err(malformed(b, start, "a value"));
        }
        if out.len() >= max {
            return Err(SplitError::TooMany { limit: max });
        }
        out.push(Item { range: start..end, line: None });
        i += 1;
        if closing == b']' {
            return end_of_body(b, i);
        }
    }
}

fn end_of_body(b: &[u8], i: usize) -> Result<(), SplitError> {
    let j = skip_ws(b, i);
    if j < b.len() {
        return Err(SplitError::Malformed(format!("malformed JSON: trailing characters at byte {j}")));
    }
    Ok(())
}

fn split_ndjson(b: &[u8], max: usize, out: &mut Vec<Item>) -> Result<(), SplitError> {
    let mut pos = if b.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
    let mut line = 0usize;
    while pos < b.len() {
        line += 1;
        let end = memchr(b'\n', &b[pos..]).map_or(b.len(), |o| pos + o);
        let start = skip_ws(b, pos).min(end);
        let stop = trim_end(b, start, end);
        if stop > start {
            if out.len() >= max {
                return Err(SplitError::TooMany { limit: max });
            }
            out.push(Item { range: start..stop, line: Some(line) });
        }
        pos = end + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parts(format: Format, body: &str) -> Result<Vec<&str>, SplitError> {
        let mut out = Vec::new();
        split(format, body.as_bytes(), 100, &mut out)?;
        Ok(out.iter().map(|it| &body[it.range.clone()]).collect())
    }

    #[test]
    fn content_types() {
        assert_eq!(format_of(Some(b"application/json")), Ok(Format::Json));
        assert_eq!(format_of(Some(b"Application/JSON; charset=UTF-8")), Ok(Format::Json));
        assert_eq!(format_of(Some(b"application/x-ndjson")), Ok(Format::Ndjson));
        assert!(format_of(Some(b"application/json; charset=latin1")).is_err());
        assert!(format_of(Some(b"text/plain")).is_err());
        assert!(format_of(Some(b"application/x-www-form-urlencoded")).is_err());
        assert!(format_of(None).is_err());
    }

    #[test]
    fn splits_arrays_and_objects() {
        assert_eq!(parts(Format::Json, r#" {"a":1} "#), Ok(vec![r#"{"a":1}"#]));
        assert_eq!(parts(Format::Json, r#"[{"a":"x,]}"} , {"b":[1,{"c":2}]}]"#), Ok(vec![r#"{"a":"x,]}"}"#, r#"{"b":[1,{"c":2}]}"#]));
        assert_eq!(parts(Format::Json, r#"[{"a":"q\"],"}]"#), Ok(vec![r#"{"a":"q\"],"}"#]));
        assert_eq!(parts(Format::Json, "[ ]"), Ok(vec![]));
        assert_eq!(parts(Format::Json, "[1, 2]"), Ok(vec!["1", "2"]));
        for bad in ["", "  ", "[", "[{}", "[{},]", "[,{}]", "[{}] x", "[{}}", "nope", r#"[{"a":"unterminated}]"#, "[{}]]"] {
            assert!(matches!(parts(Format::Json, bad), Err(SplitError::Malformed(_))), "{bad:?}: {:?}", parts(Format::Json, bad));
        }
    }

    #[test]
    fn splits_ndjson_lines() {
        let mut out = Vec::new();
        split(Format::Ndjson, b"{\"a\":1}\r\n\n  \n{\"b\":2}", 10, &mut out).expect("ndjson");
        assert_eq!(out, vec![Item { range: 0..7, line: Some(1) }, Item { range: 13..20, line: Some(4) }]);
        assert_eq!(parts(Format::Ndjson, ""), Ok(vec![]));
    }

    #[test]
    fn enforces_the_batch_limit() {
        let mut out = Vec::new();
        assert_eq!(split(Format::Json, b"[{},{},{}]", 2, &mut out), Err(SplitError::TooMany { limit: 2 }));
        assert_eq!(split(Format::Ndjson, b"{}\n{}\n{}\n", 2, &mut out), Err(SplitError::TooMany { limit: 2 }));
        assert!(split(Format::Json, b"[{},{}]", 2, &mut out).is_ok());
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\,\\[\\]{}\\n ]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\\],]{1,4}", inner, 0..4).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn array_elements_match_serde(items in prop::collection::vec(arb_json(), 0..6), pretty in any::<bool>()) {
            let arr = serde_json::Value::Array(items.clone());
            let text = if pretty { serde_json::to_string_pretty(&arr) } else { serde_json::to_string(&arr) }.expect("json");
            let mut out = Vec::new();
            split(Format::Json, text.as_bytes(), 100, &mut out).expect("valid arrays split");
            prop_assert_eq!(out.len(), items.len());
            for (it, want) in out.iter().zip(&items) {
                let got: serde_json::Value = serde_json::from_slice(&text.as_bytes()[it.range.clone()]).expect("element is JSON");
                prop_assert_eq!(&got, want);
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), ndjson in any::<bool>()) {
            let mut out = Vec::new();
            let format = if ndjson { Format::Ndjson } else { Format::Json };
            if split(format, &bytes, 10, &mut out).is_ok() {
                for it in &out {
                    prop_assert!(it.range.start < it.range.end && it.range.end <= bytes.len());
                }
            }
        }
    }
}
