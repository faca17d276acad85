//! Settings of the read API. The binary fills them from flags and `PULSE_*`
//! variables; `pulse demo` and the tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

use pulse_kafka::KafkaConfig;

use crate::auth::ApiKeys;

pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";
/// Variables holding the read API keys, in order of precedence.
pub const READ_KEYS_ENV: &str = "PULSE_READ_API_KEYS";
pub const SHARED_KEYS_ENV: &str = "PULSE_API_KEYS";

/// Caps of the `limit` parameters (larger values are lowered to these).
pub const MAX_TIMELINE_LIMIT: u64 = 1_000;
pub const MAX_METRIC_LIMIT: u64 = 10_000;
pub const MAX_ANALYTICS_LIMIT: u64 = 1_000;
pub const MAX_DAYS: u64 = 366;

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub addr: SocketAddr,
    /// Origins allowed by CORS (`*` = any); empty = no CORS headers.
    pub cors_origins: Vec<String>,
    /// Read API keys; empty = no authentication.
    pub keys: ApiKeys,
    /// `Retry-After` seconds on 503 answers.
    pub retry_after_secs: u64,
    /// How often ClickHouse's reachability (and so `/ready`) is checked.
    pub ready_interval: Duration,
    /// The SSE endpoints' Kafka consumer; `None` = `/v1/stream` answers 503.
    pub stream: Option<StreamConfig>,
    /// Header and body read timeouts, connection cap.
    pub http: pulse_ops::http::HttpLimits,
}

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub kafka: KafkaConfig,
    /// Comment lines sent this often keep idle connections (and proxies) open.
    pub keep_alive: Duration,
    /// Rows buffered per subscriber; a subscriber further behind skips rows.
    pub buffer: usize,
}

impl StreamConfig {
    pub fn new(kafka: KafkaConfig) -> StreamConfig {
        StreamConfig { kafka, keep_alive: Duration::from_secs(15), buffer: 4096 }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            cors_origins: Vec::new(),
            keys: ApiKeys::default(),
            retry_after_secs: 2,
            ready_interval: Duration::from_secs(2),
            http: pulse_ops::http::HttpLimits::default(),
            stream: None,
        }
    }
}

/// The read API keys from the environment: `PULSE_READ_API_KEYS`, else
/// `PULSE_API_KEYS` (comma-separated; blanks ignored).
pub fn keys_from_env() -> ApiKeys {
    keys_from(std::env::var(READ_KEYS_ENV).ok(), std::env::var(SHARED_KEYS_ENV).ok())
}

pub fn keys_from(read: Option<String>, shared: Option<String>) -> ApiKeys {
    let list = read.filter(|s| !s.trim().is_empty()).or(shared).unwrap_or_default();
    ApiKeys::parse(&list)
}

/// `a, b ,c` → `["a", "b", "c"]`.
pub fn parse_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_keys_take_precedence() {
        assert_eq!(keys_from(Some("a, b".into()), Some("c".into())).len(), 2);
        assert_eq!(keys_from(None, Some("c".into())).len(), 1);
        assert_eq!(keys_from(Some(" ".into()), Some("c,d,,".into())).len(), 2);
        assert!(keys_from(None, None).is_empty());
        assert_eq!(parse_list(" http://a , ,http://b"), ["http://a", "http://b"]);
    }
}
