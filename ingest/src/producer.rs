//! The Kafka side of ingest: one idempotent producer (acks=all, lz4, short
//! linger) shared by every request, a bounded window of unacknowledged events,
//! and per-request acknowledgement tracking.
//!
//! A request enqueues all its records, then waits until Kafka acknowledged
//! every one of them. Acknowledgements are counted on one shared counter per
//! request (no per-record future), which wakes the request once when the last
//! one arrives. The request is answered 202 only when all succeeded.
//!
//! Guarantees: an event answered 202 is on the broker with acks=all. A request
//! answered 503 may have been partly written (some of its records may have been
//! acknowledged, or be acknowledged after the answer): a client that retries
//! gets at-least-once delivery for it. The idempotent producer never writes a
//! record twice by itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Registry};
use pulse_kafka::KafkaConfig;
use pulse_ops::{MetricsError, Registrar, prometheus};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::prepare::Batch;

/// Why a request's records were not all acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// Too many events already in flight for longer than the timeout.
    #[error("ingest is at capacity ({0} events awaiting Kafka); retry later")]
    Busy(usize),
    /// librdkafka's queue stayed full for longer than the timeout.
    #[error("the Kafka producer queue is full; retry later")]
    QueueFull,
    /// Kafka did not acknowledge every record within the timeout.
    #[error("Kafka did not acknowledge the events within {0:?}")]
    Timeout(Duration),
    /// Kafka refused a record or it timed out in the producer (e.g. broker unreachable).
    #[error("Kafka did not take the events: {0}")]
    Kafka(KafkaError),
}

impl ProduceError {
    /// Label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ProduceError::Busy(_) => "busy",
            ProduceError::QueueFull => "queue_full",
            ProduceError::Timeout(_) => "ack_timeout",
            ProduceError::Kafka(_) => "kafka",
        }
    }
}

/// Acknowledgement state of one request's records.
#[derive(Debug)]
pub struct Acks {
    /// Records awaiting their delivery report, plus one (the guard) while still enqueueing.
    pending: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl Acks {
    fn new() -> Acks {
        Acks { pending: AtomicUsize::new(1), failed: AtomicUsize::new(0), first_error: Mutex::new(None), done: Notify::new() }
    }

    fn settle_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }

    fn fail(&self, e: KafkaError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }

    /// Resolves when every enqueued record has its delivery report.
    async fn wait(&self) {
        loop {
            let notified = self.done.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn error(&self) -> Option<KafkaError> {
        if self.failed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        Some(first.clone().unwrap_or(KafkaError::MessageProduction(RDKafkaErrorCode::Fail)))
    }
}

/// Routes delivery reports to their request and librdkafka's logs to tracing.
pub struct AckContext {
    errors: IntCounterVec,
}

impl ClientContext for AckContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac}: {log_message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.with_label_values(&["client"]).inc();
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        if let Err((e, _)) = result {
            acks.fail(e.clone());
        }
        acks.settle_one();
    }
}

/// Why the producer could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Producer settings of ingest on top of the shared reliable-producer ones.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub linger: Duration,
}

/// The shared producer. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ThreadedProducer<AckContext>>,
    window: Arc<Semaphore>,
    window_size: usize,
    timeout: Duration,
    in_flight: IntGauge,
}

/// Extra time to wait for delivery reports past librdkafka's own message timeout.
const REPORT_GRACE: Duration = Duration::from_secs(2);

impl Producer {
    pub fn new(kafka: &KafkaConfig, cfg: &ProducerConfig, registry: &Registry) -> Result<Producer, ProducerError> {
        let r = Registrar::new(registry);
        let errors = r.int_counter_vec("pulse_ingest_producer_errors_total", "Kafka producer errors, by kind", &["kind"])?;
        let in_flight = r.int_gauge("pulse_ingest_in_flight_events", "Events handed to the producer and not yet acknowledged")?;
        let mut c = kafka.reliable_producer();
        let timeout_ms = cfg.timeout.as_millis().max(100);
        let linger_ms = (cfg.linger.as_secs_f64() * 1000.0).min(timeout_ms as f64 / 2.0);
        c.set("linger.ms", format!("{linger_ms}"));
        // A record not acknowledged within the request timeout fails in librdkafka too,
        // so a 503 answer is not followed by a silent late write of the same request.
        c.set("message.timeout.ms", timeout_ms.to_string());
        c.set("request.timeout.ms", timeout_ms.min(30_000).to_string());
        c.set("queue.buffering.max.messages", (cfg.max_in_flight * 2).clamp(100_000, 10_000_000).to_string());
        c.set("queue.buffering.max.kbytes", "1048576");
        c.set("batch.num.messages", "10000");
        c.set("socket.nagle.disable", "true");
        // Find a broker that is back quickly after an outage.
        c.set("reconnect.backoff.max.ms", "1000");
        // Re-apply the operator's passthrough properties: they win over Pulse's defaults.
        for (k, v) in &kafka.properties {
            c.set(k, v);
        }
        let inner: ThreadedProducer<AckContext> = c.create_with_context(AckContext { errors })?;
        let window_size = cfg.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Producer { inner: Arc::new(inner), window: Arc::new(Semaphore::new(window_size)), window_size, timeout: cfg.timeout, in_flight })
    }

    /// The librdkafka handle (metadata, flush, queue depth).
    pub fn client(&self) -> &ThreadedProducer<AckContext> {
        &self.inner
    }

    /// Messages waiting in librdkafka or in flight to the broker.
    pub fn queue_depth(&self) -> i32 {
        self.inner.in_flight_count()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// An unrecoverable producer error (the producer must be recreated).
    pub fn fatal_error(&self) -> Option<String> {
        self.inner.client().fatal_error().map(|(code, msg)| format!("{code}: {msg}"))
    }

    /// Produces every record of `batch` to `topic` and waits until all are
    /// acknowledged (or fails after the producer timeout).
    pub async fn send(&self, topic: &str, batch: &Batch) -> Result<(), ProduceError> {
        if batch.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        let want = batch.len().min(self.window_size) as u32;
        let permits = match tokio::time::timeout_at(deadline.into(), self.window.clone().acquire_many_owned(want)).await {
            Ok(Ok(p)) => p,
            // The semaphore is never closed; a timeout means the window stayed full.
            Ok(Err(_)) | Err(_) => return Err(ProduceError::Busy(self.window_size - self.window.available_permits())),
        };
        let acks = Arc::new(Acks::new());
        // The guard owns the enqueue guard count of `acks` until enqueueing is over.
        let mut guard = InFlight::new(acks.clone(), permits, &self.in_flight);
        let mut failure = None;
        'records: for (key, payload) in batch.records() {
            acks.pending.fetch_add(1, Ordering::AcqRel);
            guard.local += 1;
            let mut record: BaseRecord<'_, [u8], [u8], Arc<Acks>> = BaseRecord::with_opaque_to(topic, acks.clone()).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            loop {
                match self.inner.send(record) {
                    Ok(()) => {
                        // From here on the delivery report settles this record.
                        guard.local -= 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if Instant::now() < deadline => {
                        // librdkafka's queue is full: wait for room, up to the request's deadline.
                        record = r;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => {
                        guard.local -= 1;
                        acks.settle_one();
                        failure = Some(match e {
                            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
                            e => ProduceError::Kafka(e),
                        });
                        break 'records;
                    }
                }
            }
        }
        // Enqueueing is over: drop the guard count.
        guard.local -= 1;
        acks.settle_one();
        if let Some(e) = failure {
            return Err(e);
        }
        match tokio::time::timeout_at((deadline + REPORT_GRACE).into(), acks.wait()).await {
            Ok(()) => {
                guard.settled();
                match acks.error() {
                    None => Ok(()),
                    Some(e) => Err(ProduceError::Kafka(e)),
                }
            }
            Err(_) => Err(ProduceError::Timeout(self.timeout)),
        }
    }

    /// Waits until everything enqueued is delivered (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

/// A request's share of the in-flight window. Dropped before its records are
/// settled (an abandoned request or a failure), it hands the permits to a task
/// that keeps them until the delivery reports arrived, so that the window
/// counts every record librdkafka still holds.
struct InFlight {
    acks: Arc<Acks>,
    permits: Option<OwnedSemaphorePermit>,
    gauge: IntGauge,
    n: i64,
    /// Counts of `acks.pending` no delivery report will settle: the enqueue guard
    /// and a record waiting for room in librdkafka's queue. Released on drop when
    /// the request is abandoned while enqueueing.
    local: usize,
}

impl InFlight {
    fn new(acks: Arc<Acks>, permits: OwnedSemaphorePermit, gauge: &IntGauge) -> InFlight {
        let n = permits.num_permits() as i64;
        gauge.add(n);
        InFlight { acks, permits: Some(permits), gauge: gauge.clone(), n, local: 1 }
    }

    fn settled(&mut self) {
        self.permits = None;
        self.gauge.sub(self.n);
        self.n = 0;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for _ in 0..std::mem::take(&mut self.local) {
            self.acks.settle_one();
        }
        let Some(permits) = self.permits.take() else { return };
        if self.acks.pending.load(Ordering::Acquire) == 0 {
            self.gauge.sub(self.n);
            return;
        }
        let (acks, gauge, n) = (self.acks.clone(), self.gauge.clone(), self.n);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    acks.wait().await;
                    drop(permits);
                    gauge.sub(n);
                });
            }
            Err(_) => gauge.sub(n),
        }
    }
}
