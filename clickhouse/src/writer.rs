//! Batched RowBinary inserts with retries: the one way Pulse writes to ClickHouse.
//! A batch is retried with capped exponential backoff while ClickHouse fails for
//! reasons that pass (network, timeouts, memory, load). Errors ClickHouse would
//! repeat for the same rows forever (bad data, violated constraints, too many
//! partitions) are told apart by the server's error code ([`WriteError::is_permanent`]):
//! [`Writer::insert_or_refuse`] hands them back so that the caller can split the
//! batch and set the offending rows aside; [`Writer::insert`] retries everything.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_ops::prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};
use pulse_ops::{MetricsError, Registrar, Shutdown, latency_buckets, size_buckets};

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// ClickHouse answered with an exception: its error code and message.
    #[error("clickhouse error {code}: {message}")]
    Server { code: u32, message: String },
    /// Anything else the client reports (network, protocol...).
    #[error("clickhouse: {0}")]
    ClickHouse(clickhouse::error::Error),
    #[error("clickhouse did not answer within {0:?}")]
    Timeout(Duration),
    #[error("shutting down with an unacknowledged batch for {0}")]
    ShuttingDown(String),
}

/// What an error says about the rows of the insert that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The same insert may succeed later: retry it.
    Transient,
    /// Some rows of the insert are refused and always will be (type, parse,
    /// constraint errors): the other rows can be stored without them.
    RowsRefused,
    /// The insert touches more partitions than ClickHouse accepts in one block;
    /// smaller inserts will do. (TOO_MANY_PARTS also means "too many active parts
    /// in a partition, merges are behind", which passes: an insert into a single
    /// partition that gets it is retried.)
    TooManyPartitions,
}

/// ClickHouse error codes (ErrorCodes.cpp) that refuse the rows themselves. Other
/// codes (unknown table or column, memory limit, too many simultaneous queries,
/// timeouts, network...) are transient: rows are never set aside for them.
const ROW_ERRORS: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    25,  // CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (throwIf in a column default)
    469, // VIOLATED_CONSTRAINT
];

/// TOO_MANY_PARTS: too many partitions in one insert block (or too many active parts).
pub const TOO_MANY_PARTS: u32 = 252;

/// How an error of ClickHouse with this code is handled.
pub fn kind_of_code(code: u32) -> ErrorKind {
    if code == TOO_MANY_PARTS {
        ErrorKind::TooManyPartitions
    } else if ROW_ERRORS.contains(&code) {
        ErrorKind::RowsRefused
    } else {
        ErrorKind::Transient
    }
}

impl WriteError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WriteError::Server { code, .. } => kind_of_code(*code),
            _ => ErrorKind::Transient,
        }
    }

    /// Whether ClickHouse will refuse the same insert again, however often it is retried.
    pub fn is_permanent(&self) -> bool {
        self.kind() != ErrorKind::Transient
    }
}

impl From<clickhouse::error::Error> for WriteError {
    /// The protocol's exception text (`Code: 252. DB::Exception: ...`, or the bare
    /// `X-ClickHouse-Exception-Code` when the body was empty) becomes a typed
    /// [`WriteError::Server`] here, once; nothing else reads error text.
    fn from(e: clickhouse::error::Error) -> WriteError {
        if let clickhouse::error::Error::BadResponse(text) = &e
            && let Some((code, message)) = parse_exception(text)
        {
            return WriteError::Server { code, message };
        }
        WriteError::ClickHouse(e)
    }
}

/// `Code: <n>. DB::Exception: <message>` (or just `<n>`) -> (n, message).
fn parse_exception(text: &str) -> Option<(u32, String)> {
    let text = text.trim();
    if let Ok(code) = text.parse::<u32>() {
        return Some((code, format!("(no message; exception code {code})")));
    }
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let code = rest[..digits].parse().ok()?;
    let message = rest[digits..].strip_prefix('.').unwrap_or(&rest[digits..]).trim();
    Some((code, message.to_string()))
}

/// Prometheus metrics of ClickHouse writes, labelled by table.
#[derive(Clone)]
pub struct WriterMetrics {
    pub rows: IntCounterVec,
    pub batches: IntCounterVec,
    pub batch_rows: HistogramVec,
    pub insert_seconds: HistogramVec,
    pub retries: IntCounterVec,
    pub errors: IntCounterVec,
    pub failing: IntGaugeVec,
}

impl WriterMetrics {
    pub fn new(registry: &Registry) -> Result<WriterMetrics, MetricsError> {
        let r = Registrar::new(registry);
        let by_table = &["table"];
        Ok(WriterMetrics {
            rows: r.int_counter_vec("pulse_clickhouse_rows_inserted_total", "Rows ClickHouse acknowledged", by_table)?,
            batches: r.int_counter_vec("pulse_clickhouse_batches_total", "Batches ClickHouse acknowledged", by_table)?,
            batch_rows: r.histogram_vec("pulse_clickhouse_batch_rows", "Rows per inserted batch", size_buckets(), by_table)?,
            insert_seconds: r.histogram_vec("pulse_clickhouse_insert_seconds", "Latency of acknowledged inserts", latency_buckets(), by_table)?,
            retries: r.int_counter_vec("pulse_clickhouse_insert_retries_total", "Insert attempts that failed and were retried", by_table)?,
            errors: r.int_counter_vec("pulse_clickhouse_errors_total", "ClickHouse errors by table", by_table)?,
            failing: r.int_gauge_vec("pulse_clickhouse_insert_failing", "1 while inserts into the table are failing and being retried", by_table)?,
        })
    }
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[derive(Clone)]
pub struct Writer {
    client: clickhouse::Client,
    timeout: Duration,
    pub metrics: WriterMetrics,
    pub backoff: Backoff,
}

impl Writer {
    pub fn new(cfg: &ClickHouseConfig, metrics: WriterMetrics) -> Writer {
        Writer { client: cfg.client(), timeout: cfg.timeout, metrics, backoff: Backoff::default() }
    }

    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    /// One insert attempt of pre-encoded RowBinary rows.
    pub async fn insert_once(&self, sql: &str, body: Bytes) -> Result<(), WriteError> {
        let attempt = async {
            let mut insert = self.client.insert_formatted_with(sql.to_string());
            insert.send(body).await?;
            insert.end().await?;
            Ok::<(), clickhouse::error::Error>(())
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r.map_err(WriteError::from),
            Err(_) => Err(WriteError::Timeout(self.timeout)),
        }
    }

    /// Inserts `rows` rows until ClickHouse acknowledges them. Returns an error
    /// only when shutdown is requested while the batch is still unacknowledged.
    pub async fn insert(&self, table: &str, sql: &str, body: Bytes, rows: usize, shutdown: &Shutdown) -> Result<(), WriteError> {
        self.insert_retrying(table, sql, body, rows, shutdown, |_| false).await
    }

    /// Inserts `rows` rows falling into `partitions` partitions, retrying while the
    /// errors are transient. Returns a permanent error ([`WriteError::is_permanent`])
    /// at once, for the caller to split the insert; except TOO_MANY_PARTS for an
    /// insert into at most one partition, which cannot be the insert's fault and is
    /// retried. Also returns [`WriteError::ShuttingDown`] as [`insert`](Self::insert) does.
    pub async fn insert_or_refuse(&self, table: &str, sql: &str, body: Bytes, rows: usize, partitions: usize, shutdown: &Shutdown) -> Result<(), WriteError> {
        self.insert_retrying(table, sql, body, rows, shutdown, |e| match e.kind() {
            ErrorKind::Transient => false,
            ErrorKind::RowsRefused => true,
            ErrorKind::TooManyPartitions => partitions > 1,
        })
        .await
    }

    /// Runs a statement (a mutation, not an insert) until ClickHouse
    /// acknowledges it, retrying transient errors with the same backoff as
    /// inserts; a permanent error, or shutdown, ends it.
    pub async fn execute(&self, table: &str, sql: &str, shutdown: &Shutdown) -> Result<(), WriteError> {
        let mut attempt = 0u32;
        loop {
            let run = self.client.query(sql).execute();
            let e = match tokio::time::timeout(self.timeout, run).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => WriteError::from(e),
                Err(_) => WriteError::Timeout(self.timeout),
            };
            self.metrics.errors.with_label_values(&[table]).inc();
            if e.is_permanent() {
                return Err(e);
            }
            let delay = self.backoff.delay(attempt);
            tracing::warn!(table, attempt, ?delay, "statement failed, retrying: {e}");
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return Err(WriteError::ShuttingDown(table.to_string())),
            }
        }
    }

    async fn insert_retrying(
        &self,
        table: &str,
        sql: &str,
        body: Bytes,
        rows: usize,
        shutdown: &Shutdown,
        give_up: impl Fn(&WriteError) -> bool,
    ) -> Result<(), WriteError> {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            match self.insert_once(sql, body.clone()).await {
                Ok(()) => {
                    self.metrics.insert_seconds.with_label_values(&[table]).observe(started.elapsed().as_secs_f64());
                    self.metrics.rows.with_label_values(&[table]).inc_by(rows as u64);
                    self.metrics.batches.with_label_values(&[table]).inc();
                    self.metrics.batch_rows.with_label_values(&[table]).observe(rows as f64);
                    if attempt > 0 {
                        self.metrics.failing.with_label_values(&[table]).set(0);
                        tracing::info!(table, attempts = attempt + 1, "insert succeeded after retries");
                    }
                    return Ok(());
                }
                Err(e) if give_up(&e) => {
                    self.metrics.errors.with_label_values(&[table]).inc();
                    if attempt > 0 {
                        self.metrics.failing.with_label_values(&[table]).set(0);
                    }
                    tracing::debug!(table, rows, "insert refused: {e}");
                    return Err(e);
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&[table]).inc();
                    self.metrics.retries.with_label_values(&[table]).inc();
                    self.metrics.failing.with_label_values(&[table]).set(1);
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(table, rows, attempt, ?delay, "insert failed, retrying: {e}");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => {
                            // One last try so that a clean shutdown during a blip loses nothing.
                            return match self.insert_once(sql, body).await {
                                Ok(()) => Ok(()),
                                Err(e) if give_up(&e) => Err(e),
                                Err(_) => Err(WriteError::ShuttingDown(table.to_string())),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Whether ClickHouse answers a trivial query.
    pub async fn ping(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(3), self.client.query("SELECT 1").fetch_one::<u8>()).await, Ok(Ok(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_exponential() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(30), Duration::from_secs(10));
    }

    fn bad_response(text: &str) -> WriteError {
        WriteError::from(clickhouse::error::Error::BadResponse(text.into()))
    }

    #[test]
    fn server_errors_are_parsed_once_into_codes() {
        let e = bad_response("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS) (version 25.8.1.1)");
        match &e {
            WriteError::Server { code, message } => {
                assert_eq!(*code, 252);
                assert!(message.starts_with("DB::Exception: Too many partitions"), "{message}");
            }
            other => panic!("not a server error: {other:?}"),
        }
        assert!(e.to_string().starts_with("clickhouse error 252: DB::Exception: Too many partitions"), "{e}");
        // An empty error body: the crate reports the X-ClickHouse-Exception-Code header.
        assert!(matches!(bad_response("469"), WriteError::Server { code: 469, .. }));
        // Exceptions after data (the crate cuts the text from the "Code:" on).
        assert!(matches!(bad_response("\nCode: 27. DB::Exception: Cannot parse input"), WriteError::Server { code: 27, .. }));
        // Neither: the client's own error, transient.
        let e = bad_response("500 Internal Server Error");
        assert!(matches!(e, WriteError::ClickHouse(_)) && !e.is_permanent());
        assert!(!WriteError::from(clickhouse::error::Error::TimedOut).is_permanent());
        assert!(!WriteError::Timeout(Duration::from_secs(1)).is_permanent());
    }

    #[test]
    fn permanent_and_transient_codes() {
        let kind = |code| WriteError::Server { code, message: String::new() }.kind();
        for code in [6, 27, 33, 53, 70, 72, 117, 321, 469] {
            assert_eq!(kind(code), ErrorKind::RowsRefused, "code {code}");
        }
        assert_eq!(kind(252), ErrorKind::TooManyPartitions);
        // Network, timeouts, memory, load, schema (fixed by an operator), unknown codes.
        for code in [60, 81, 16, 159, 164, 202, 209, 210, 241, 242, 1001, 99_999] {
            assert_eq!(kind(code), ErrorKind::Transient, "code {code}");
        }
        assert!(WriteError::Server { code: 469, message: String::new() }.is_permanent());
        assert!(!WriteError::ShuttingDown("t".into()).is_permanent());
    }
}
