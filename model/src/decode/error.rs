//! Why an event was rejected.

use std::fmt;

/// Why an event was rejected; `field` names the offending field when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct DecodeError {
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field `{field}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl DecodeError {
    // Boxed: the reader's results stay small on the hot path.
    pub(super) fn field(field: &str, reason: impl Into<String>) -> Box<Self> {
        Box::new(DecodeError { field: Some(field.to_string()), reason: reason.into() })
    }

    pub(super) fn body(reason: impl Into<String>) -> Box<Self> {
        Box::new(DecodeError { field: None, reason: reason.into() })
    }
}
