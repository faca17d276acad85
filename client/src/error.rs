//! Typed errors of the client: one variant per kind of answer a caller handles
//! differently (fix the data, fix the credentials, slow down, retry later).

use std::time::Duration;

use serde::Deserialize;

use crate::Accepted;

/// One rejected event of a request: its position in the request, the field at
/// fault (when there is one) and why.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    /// Position of the event in the request (for `track_batch`: in the whole slice).
    pub index: usize,
    pub field: Option<String>,
    pub reason: String,
    /// 1-based line of the event in an NDJSON body.
    #[serde(default)]
    pub line: Option<usize>,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "event {}: field `{field}`: {}", self.index, self.reason),
            None => write!(f, "event {}: {}", self.index, self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request was rejected as a whole (nothing was stored); `details`
    /// lists every bad event (empty when the body itself was malformed).
    #[error("invalid request: {message}{}", first_detail(details))]
    Validation { message: String, details: Vec<FieldError> },
    /// 404: unknown domain (or path).
    #[error("not found: {0}")]
    NotFound(String),
    /// 401/403: missing or invalid API key.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 405: e.g. an update or delete on an immutable domain.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// 413: body or batch over the server's limit.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// 415: the server does not accept the content type.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// 429/503 still after `max_retries` retries: the server is rate limiting or
    /// cannot reach Kafka. Nothing of the request was acknowledged.
    #[error("overloaded (HTTP {status}, retry after {retry_after:?}): {message}")]
    Overloaded { status: u16, retry_after: Option<Duration>, message: String },
    /// Any other non-success answer.
    #[error("server error (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// The server could not be reached or the connection broke.
    #[error("transport: {0}")]
    Transport(String),
    /// No answer within the configured timeout. The request may or may not have been applied.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer could not be understood.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// Bad client settings (e.g. an unparsable URL).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The event could not be serialized to JSON.
    #[error("cannot serialize the event: {0}")]
    Serialize(String),
    /// A chunked batch failed part-way: the first `accepted.accepted` events
    /// were stored, the rest was not.
    #[error("{} events accepted before the batch failed: {source}", accepted.accepted)]
    Partial { accepted: Accepted, source: Box<Error> },
}

fn first_detail(details: &[FieldError]) -> String {
    match details.first() {
        None => String::new(),
        Some(d) if details.len() == 1 => format!(" ({d})"),
        Some(d) => format!(" ({d}; and {} more)", details.len() - 1),
    }
}

impl Error {
    /// HTTP status of the answer that caused the error, if there was one.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Error::Validation { .. } => 400,
            Error::NotFound(_) => 404,
            Error::Unauthorized(_) => 401,
            Error::MethodNotAllowed(_) => 405,
            Error::PayloadTooLarge(_) => 413,
            Error::UnsupportedMediaType(_) => 415,
            Error::Overloaded { status, .. } | Error::Server { status, .. } => *status,
            Error::Partial { source, .. } => return source.status(),
            _ => return None,
        })
    }

    /// Whether sending the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Overloaded { .. } | Error::Transport(_) | Error::Timeout(_) => true,
            Error::Server { status, .. } => *status >= 500,
            Error::Partial { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// The per-event details of a validation error (empty otherwise).
    pub fn details(&self) -> &[FieldError] {
        match self {
            Error::Validation { details, .. } => details,
            Error::Partial { source, .. } => source.details(),
            _ => &[],
        }
    }
}

/// The JSON error body every Pulse service answers with.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub details: Vec<FieldError>,
}

impl ErrorBody {
    pub fn parse(status: u16, body: &[u8]) -> ErrorBody {
        serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
            error: if body.is_empty() { format!("HTTP {status}") } else { String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned() },
            details: Vec::new(),
        })
    }
}

/// Maps a non-success answer to its error.
pub(crate) fn from_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Error {
    let ErrorBody { error: message, details } = ErrorBody::parse(status, body);
    match status {
        400 | 422 => Error::Validation { message, details },
        401 | 403 => Error::Unauthorized(message),
        404 => Error::NotFound(message),
        405 => Error::MethodNotAllowed(message),
        413 => Error::PayloadTooLarge(message),
        415 => Error::UnsupportedMediaType(message),
        429 | 503 => Error::Overloaded { status, retry_after, message },
        _ => Error::Server { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_statuses() {
        let e = from_status(400, None, br#"{"error":"1 of 2 events are invalid","details":[{"index":1,"field":"city","reason":"missing required field"}]}"#);
        assert_eq!(e.details().len(), 1);
        assert_eq!(e.details()[0].field.as_deref(), Some("city"));
        assert!(e.to_string().contains("event 1: field `city`"), "{e}");
        assert!(matches!(from_status(404, None, b"{\"error\":\"no domain\"}"), Error::NotFound(m) if m == "no domain"));
        let e = from_status(503, Some(Duration::from_secs(2)), b"not json");
        assert!(e.is_retryable());
        assert!(matches!(e, Error::Overloaded { status: 503, retry_after: Some(_), ref message } if message == "not json"));
        assert_eq!(from_status(401, None, b"").to_string(), "unauthorized: HTTP 401");
        assert!(!from_status(413, None, b"").is_retryable());
    }
}
