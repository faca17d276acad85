//! Settings of the read API. The binary fills them from flags and `PULSE_*`
//! variables; `pulse demo` and the tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

use pulse_kafka::KafkaConfig;

use crate::auth::{ApiKeys, KeyError};

pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";
/// Variables holding the read API keys (`KEY` or `KEY:metric|domain`, comma-separated), in order of precedence.
pub const READ_KEYS_ENV: &str = "PULSE_READ_API_KEYS";
pub const KEYS_ENV: &str = "PULSE_API_KEYS";
/// Defaults of `pulse api`: requests per second per key, and open SSE streams.
pub const DEFAULT_RATE_LIMIT: f64 = 50.0;
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Lifetime of a stream token (`POST /v1/stream/{metric}/token`).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);

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
    /// Read API keys, optionally scoped by metric or domain; empty = no
    /// authentication (`pulse api` refuses to start so unless `--insecure`).
    pub keys: ApiKeys,
    /// Requests per second per key (token bucket; 429 beyond); `None` = unlimited
    /// (`pulse api` defaults to [`DEFAULT_RATE_LIMIT`]).
    pub rate_limit: Option<f64>,
    /// Bucket size in requests (default: two seconds' worth).
    pub rate_burst: Option<f64>,
    /// Open SSE streams at most; the next ones get 503 with Retry-After.
    pub max_streams: usize,
    /// Lifetime of stream tokens.
    pub token_ttl: Duration,
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
            rate_limit: None,
            rate_burst: None,
            max_streams: DEFAULT_MAX_STREAMS,
            token_ttl: DEFAULT_TOKEN_TTL,
            retry_after_secs: 2,
            ready_interval: Duration::from_secs(2),
            http: pulse_ops::http::HttpLimits::default(),
            stream: None,
        }
    }
}

/// The read API keys from the environment: `PULSE_API_KEYS` (or its older name
/// `PULSE_READ_API_KEYS`, which wins when both are set).
pub fn keys_from_env() -> Result<ApiKeys, KeyError> {
    keys_from(std::env::var(READ_KEYS_ENV).ok(), std::env::var(KEYS_ENV).ok())
}

pub fn keys_from(read: Option<String>, keys: Option<String>) -> Result<ApiKeys, KeyError> {
    let list = read.filter(|s| !s.trim().is_empty()).or(keys).unwrap_or_default();
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
        let (a, b, c, d) = ("a".repeat(16), "b".repeat(16), "c".repeat(16), "d".repeat(16));
        assert_eq!(keys_from(Some(format!("{a}, {b}")), Some(c.clone())).map(|k| k.len()), Ok(2));
        assert_eq!(keys_from(None, Some(c.clone())).map(|k| k.len()), Ok(1));
        assert_eq!(keys_from(Some(" ".into()), Some(format!("{c},{d},,"))).map(|k| k.len()), Ok(2));
        assert!(keys_from(None, None).is_ok_and(|k| k.is_empty()));
        assert!(keys_from(None, Some("short".into())).is_err());
        assert_eq!(parse_list(" http://a , ,http://b"), ["http://a", "http://b"]);
    }
}
