//! Batched RowBinary inserts with retries: the one way Pulse writes to ClickHouse.
//! A batch is retried with capped exponential backoff until ClickHouse
//! acknowledges it (or the service shuts down): nothing is dropped.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_ops::prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use pulse_ops::{Shutdown, latency_buckets, register, size_buckets};

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("clickhouse did not answer within {0:?}")]
    Timeout(Duration),
    #[error("shutting down with an unacknowledged batch for {0}")]
    ShuttingDown(String),
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
    pub fn new(registry: &Registry) -> WriterMetrics {
        let by_table = &["table"];
        WriterMetrics {
            rows: register(registry, IntCounterVec::new(Opts::new("pulse_clickhouse_rows_inserted_total", "Rows ClickHouse acknowledged"), by_table).expect("valid metric")),
            batches: register(registry, IntCounterVec::new(Opts::new("pulse_clickhouse_batches_total", "Batches ClickHouse acknowledged"), by_table).expect("valid metric")),
            batch_rows: register(registry, HistogramVec::new(HistogramOpts::new("pulse_clickhouse_batch_rows", "Rows per inserted batch").buckets(size_buckets()), by_table).expect("valid metric")),
            insert_seconds: register(registry, HistogramVec::new(HistogramOpts::new("pulse_clickhouse_insert_seconds", "Latency of acknowledged inserts").buckets(latency_buckets()), by_table).expect("valid metric")),
            retries: register(registry, IntCounterVec::new(Opts::new("pulse_clickhouse_insert_retries_total", "Insert attempts that failed and were retried"), by_table).expect("valid metric")),
            errors: register(registry, IntCounterVec::new(Opts::new("pulse_clickhouse_errors_total", "ClickHouse errors by table"), by_table).expect("valid metric")),
            failing: register(registry, IntGaugeVec::new(Opts::new("pulse_clickhouse_insert_failing", "1 while inserts into the table are failing and being retried"), by_table).expect("valid metric")),
        }
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
                            return self.insert_once(sql, body).await.map_err(|_| WriteError::ShuttingDown(table.to_string()));
                        }
                    }
                }
            }
        }
    }

    /// Whether ClickHouse answers a trivial query.
    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(3), self.client.query("SELECT 1").fetch_one::<u8>()).await,
            Ok(Ok(1))
        )
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
}
