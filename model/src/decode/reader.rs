//! A strict JSON scanner over one input: strings (borrowed unless escaped),
//! numbers, literals, and the syntax errors that name a byte offset.

use super::DecodeError;

/// A strict, allocation-light reader of one flat JSON object (RFC 8259), typed
/// by the domain's schema as it goes. Strings without escapes are borrowed from
/// the input; only the strings an event keeps are copied.
pub(super) struct Reader<'a> {
    /// The whole input, validated as UTF-8 once; string values are slices of it.
    pub(super) text: &'a str,
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
    pub(super) scratch: String,
    /// Producers send fields in a stable order: the slot after the last key is tried first.
    pub(super) hint: usize,
}

/// What a JSON value starts with, for "expected X, got Y" messages.
fn kind_of(c: Option<u8>) -> &'static str {
    match c {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "something that is not JSON",
    }
}

pub(super) enum Num {
    Int(i64),
    Float(f64),
}

impl<'a> Reader<'a> {
    pub(super) fn syntax(&self, what: &str) -> Box<DecodeError> {
        if self.pos >= self.b.len() {
            DecodeError::body(format!("truncated JSON: expected {what} at byte {}", self.pos))
        } else {
            DecodeError::body(format!("malformed JSON: expected {what} at byte {}", self.pos))
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub(super) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.pos).copied()
    }

    #[inline]
    pub(super) fn expect(&mut self, c: u8, what: &str) -> Result<(), Box<DecodeError>> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    /// Reads a string (the opening quote is next). Borrowed unless it has escapes.
    pub(super) fn string(&mut self) -> Result<StrRef<'a>, Box<DecodeError>> {
        self.expect(b'"', "a string")?;
        let start = self.pos;
        let b = self.b;
        let mut i = start + special_byte_offset(&b[start..]);
        while i < b.len() {
            match b[i] {
                b'"' => {
                    self.pos = i + 1;
                    // Quotes are ASCII, so both ends are char boundaries of the validated text.
                    return self.text.get(start..i).map(StrRef::Borrowed).ok_or_else(|| DecodeError::body(format!("invalid UTF-8 in string at byte {start}")));
                }
                b'\\' => return self.escaped(start, i),
                0..=0x1f => {
                    self.pos = i;
                    return Err(self.syntax("no control characters inside a string"));
                }
                _ => i += 1,
            }
        }
        self.pos = b.len();
        Err(self.syntax("a closing quote"))
    }

    fn escaped(&mut self, start: usize, first_escape: usize) -> Result<StrRef<'a>, Box<DecodeError>> {
        let b = self.b;
        let text = self.text;
        let utf8 = |range: std::ops::Range<usize>| text.get(range).ok_or_else(|| DecodeError::body(format!("invalid UTF-8 in string at byte {start}")));
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.push_str(utf8(start..first_escape)?);
        let mut i = first_escape;
        let mut run = i;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    out.push_str(utf8(run..i)?);
                    self.pos = i + 1;
                    return Ok(StrRef::Owned(out));
                }
                b'\\' => {
                    out.push_str(utf8(run..i)?);
                    let Some(&e) = b.get(i + 1) else { break };
                    i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            self.pos = i;
                            let hi = self.hex4()?;
                            i = self.pos;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                                    return Err(DecodeError::body(format!("malformed JSON: lone surrogate at byte {i}")));
                                }
                                self.pos = i + 2;
                                let lo = self.hex4()?;
                                i = self.pos;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(DecodeError::body(format!("malformed JSON: bad surrogate pair at byte {i}")));
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                char::from_u32(hi)
                            };
                            match c {
                                Some(c) => out.push(c),
                                None => return Err(DecodeError::body(format!("malformed JSON: lone surrogate at byte {i}"))),
                            }
                        }
                        _ => {
                            self.pos = i - 1;
                            return Err(self.syntax("a valid escape"));
                        }
                    }
                    run = i;
                }
                0..=0x1f => {
                    self.pos = i;
                    return Err(self.syntax("no control characters inside a string"));
                }
                _ => i += 1,
            }
        }
        self.pos = b.len();
        Err(self.syntax("a closing quote"))
    }

    fn hex4(&mut self) -> Result<u32, Box<DecodeError>> {
        let digits = self.b.get(self.pos..self.pos + 4).ok_or_else(|| self.syntax("4 hex digits"))?;
        let mut v = 0u32;
        for &d in digits {
            let x = (d as char).to_digit(16).ok_or_else(|| self.syntax("4 hex digits"))?;
            v = v * 16 + x;
        }
        self.pos += 4;
        Ok(v)
    }

    pub(super) fn number(&mut self) -> Result<Num, Box<DecodeError>> {
        self.ws();
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int_digits = i - int_start;
        if int_digits == 0 || (int_digits > 1 && b[int_start] == b'0') {
            self.pos = i;
            return Err(self.syntax("a number"));
        }
        let mut float = false;
        if b.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            let frac = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == frac {
                self.pos = i;
                return Err(self.syntax("digits after the decimal point"));
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            float = true;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == exp {
                self.pos = i;
                return Err(self.syntax("exponent digits"));
            }
        }
        self.pos = i;
        let text = self.text.get(start..i).unwrap_or("0");
        let negative = int_start > start;
        if float && !matches!(b.get(i - 1), Some(b'e' | b'E')) && !text.contains(['e', 'E']) {
            // Clinger's fast path: with at most 15 significant digits the mantissa and
            // the power of ten are exact doubles, so one division rounds correctly.
            let digits = i - int_start - 1;
            if digits <= 15 {
                let (mut m, mut frac) = (0u64, 0usize);
                let mut after_point = false;
                for &d in &b[int_start..i] {
                    if d == b'.' {
                        after_point = true;
                    } else {
                        m = m * 10 + u64::from(d - b'0');
                        frac += usize::from(after_point);
                    }
                }
                const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
                let f = m as f64 / POW10[frac];
                return Ok(Num::Float(if negative { -f } else { f }));
            }
        }
        if !float {
            if int_digits <= 18 {
                let mut v: i64 = 0;
                for &d in &b[int_start..i] {
                    v = v * 10 + i64::from(d - b'0');
                }
                return Ok(Num::Int(if negative { -v } else { v }));
            }
            if let Ok(v) = text.parse::<i64>() {
                return Ok(Num::Int(v));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Num::Float(f)),
            _ => Err(DecodeError::body(format!("number out of range at byte {start}"))),
        }
    }

    pub(super) fn literal(&mut self, word: &[u8]) -> Result<(), Box<DecodeError>> {
        self.ws();
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("a JSON value"))
        }
    }

    /// Skips any JSON value (used only to report a well-formed-but-wrong value).
    pub(super) fn value_kind(&mut self) -> &'static str {
        kind_of(self.peek())
    }

    pub(super) fn recycle(&mut self, s: StrRef<'a>) {
        if let StrRef::Owned(buf) = s {
            self.scratch = buf;
        }
    }
}

/// Offset of the first byte in `b` that ends a plain run inside a JSON string
/// (a quote, a backslash or a control character), or `b.len()`. Scans eight
/// bytes at a time (SWAR): the first flagged byte of each word is exact.
#[inline]
fn special_byte_offset(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let hits = (zero_in(quote) | zero_in(slash) | control) & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

pub(super) enum StrRef<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl StrRef<'_> {
    pub(super) fn as_str(&self) -> &str {
        match self {
            StrRef::Borrowed(s) => s,
            StrRef::Owned(s) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::decode::Decoder;
    use crate::decode::testing::spec;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let spec = spec();
            for dom in &spec.domains {
                let _ = Decoder::new(dom).decode(&bytes);
            }
        }
    }
}
