//! What a field's values must satisfy besides their type: lengths, ranges,
//! no control or bidirectional characters in identifiers, NFC dimensions.

use compact_str::CompactString;

use super::DecodeError;
use crate::spec::{DEFAULT_ID_LENGTH, Field, OVERFLOW_GROUP};

/// What a field's values must satisfy besides their type.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    max_len: usize,
    /// Identifiers and dimensions: no control or bidi characters.
    strict: bool,
    /// Dimensions: stored in Unicode NFC, so that one city has one spelling.
    nfc: bool,
    min: Option<f64>,
    max: Option<f64>,
}

impl Limits {
    pub(super) const NONE: Limits = Limits { max_len: usize::MAX, strict: false, nfc: false, min: None, max: None };
    pub(super) const ID: Limits = Limits { max_len: DEFAULT_ID_LENGTH, strict: true, nfc: false, min: None, max: None };

    pub(super) fn of(f: &Field, identity: bool) -> Limits {
        Limits { max_len: f.max_length, strict: f.dimension || identity, nfc: f.dimension, min: f.min, max: f.max }
    }

    pub(super) fn number(&self, name: &str, v: f64) -> Result<(), Box<DecodeError>> {
        if let Some(min) = self.min
            && v < min
        {
            return Err(DecodeError::field(name, format!("{v} is below the minimum {min}")));
        }
        if let Some(max) = self.max
            && v > max
        {
            return Err(DecodeError::field(name, format!("{v} is above the maximum {max}")));
        }
        Ok(())
    }
}

/// Characters refused in identifiers and dimensions: controls (C0, DEL, C1)
/// and the bidirectional formatting characters that make text display as
/// something else than it is.
pub fn is_forbidden_in_identifier(c: char) -> bool {
    c.is_control() || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks an identifier or a dimension value: at most `max_len` bytes, no
/// control or bidirectional character. Ingest applies it to ids in paths too.
pub fn check_identifier(name: &str, s: &str, max_len: usize) -> Result<(), DecodeError> {
    check_strict(name, s, max_len).map_err(|e| *e)
}

fn check_strict(name: &str, s: &str, max_len: usize) -> Result<(), Box<DecodeError>> {
    if s.len() > max_len {
        return Err(DecodeError::field(name, format!("is {} bytes long; at most {max_len} are accepted (`max_length`)", s.len())));
    }
    if let Some(c) = s.chars().find(|&c| is_forbidden_in_identifier(c)) {
        return Err(DecodeError::field(name, format!("contains the control or bidirectional character U+{:04X}", u32::from(c))));
    }
    Ok(())
}

/// Checks a string value against its field's limits; dimensions come back in NFC.
pub(super) fn checked_string(s: &str, name: &str, limits: &Limits) -> Result<CompactString, Box<DecodeError>> {
    if s == OVERFLOW_GROUP {
        return Err(DecodeError::field(name, format!("`{OVERFLOW_GROUP}` is reserved for metrics' overflow groups")));
    }
    if limits.strict {
        check_strict(name, s, limits.max_len)?;
    } else if s.len() > limits.max_len {
        return Err(DecodeError::field(name, format!("is {} bytes long; at most {} are accepted (`max_length`)", s.len(), limits.max_len)));
    }
    if limits.nfc && !s.is_ascii() && unicode_normalization::is_nfc_quick(s.chars()) != unicode_normalization::IsNormalized::Yes {
        use unicode_normalization::UnicodeNormalization as _;
        let normalized: CompactString = s.nfc().collect();
        if normalized.len() > limits.max_len {
            return Err(DecodeError::field(name, format!("is {} bytes long in NFC; at most {} are accepted (`max_length`)", normalized.len(), limits.max_len)));
        }
        return Ok(normalized);
    }
    Ok(CompactString::new(s))
}
