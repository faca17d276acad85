//! Settings of the ingest service. The binary fills them from flags and
//! `PULSE_INGEST_*` variables; `pulse demo` and the tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::ApiKeys;

pub const DEFAULT_ADDR: &str = "0.0.0.0:8081";
pub const DEFAULT_MAX_BODY: usize = 5 * 1024 * 1024;
pub const DEFAULT_MAX_BATCH: usize = 10_000;

/// The variable holding the write API keys (`KEY` or `KEY:domain|domain`, comma-separated).
pub const INGEST_KEYS_ENV: &str = "PULSE_INGEST_API_KEYS";
/// Default per-key rate limit of `pulse ingest`, events per second.
pub const DEFAULT_RATE_LIMIT: f64 = 20_000.0;

#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub addr: SocketAddr,
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
    /// Most events in one request (413 above).
    pub max_batch: usize,
    /// Largest encoded event Kafka takes (librdkafka's `message.max.bytes`); a
    /// bigger event is rejected as invalid before anything is produced.
    pub max_event_bytes: usize,
    /// Write API keys, optionally scoped by domain; empty = no authentication
    /// (`pulse ingest` refuses to start so unless `--insecure`).
    pub keys: ApiKeys,
    /// Events per second per API key (token bucket); `None` = unlimited
    /// (`pulse ingest` defaults to [`DEFAULT_RATE_LIMIT`]).
    pub rate_limit: Option<f64>,
    /// Bucket size in events (defaults to one second's worth).
    pub rate_burst: Option<f64>,
    /// How long a request may wait for room in the producer and for Kafka's
    /// acknowledgements before it is answered 503. Also librdkafka's `message.timeout.ms`.
    pub produce_timeout: Duration,
    /// Events produced but not yet acknowledged, over all requests; a request
    /// waits (up to `produce_timeout`) for room.
    pub max_in_flight: usize,
    /// librdkafka `linger.ms`: how long the producer gathers a batch.
    pub linger: Duration,
    /// `Retry-After` seconds on 503 answers.
    pub retry_after_secs: u64,
    /// How often the broker's reachability (and so `/ready`) is checked.
    pub ready_interval: Duration,
    /// Header and body read timeouts, connection cap.
    pub http: pulse_ops::http::HttpLimits,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            max_body: DEFAULT_MAX_BODY,
            max_batch: DEFAULT_MAX_BATCH,
            max_event_bytes: 1_000_000,
            keys: ApiKeys::default(),
            rate_limit: None,
            rate_burst: None,
            produce_timeout: Duration::from_secs(5),
            max_in_flight: 200_000,
            linger: Duration::from_millis(1),
            retry_after_secs: 1,
            ready_interval: Duration::from_secs(2),
            http: pulse_ops::http::HttpLimits::default(),
        }
    }
}
