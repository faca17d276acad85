//! Prometheus metrics of the ingest service.

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use pulse_ops::{MetricsError, Registrar, latency_buckets, prometheus, size_buckets};

#[derive(Clone)]
pub struct IngestMetrics {
    /// Events by domain and outcome.
    pub events: IntCounterVec,
    /// Requests by method and status.
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    /// Events per accepted request.
    pub batch: Histogram,
    /// Messages in librdkafka's queue or in flight to the broker.
    pub queue_depth: IntGauge,
    /// Requests that failed, by kind.
    pub errors: IntCounterVec,
    /// 1 while the broker is reachable and every domain topic exists.
    pub ready: IntGauge,
}

/// Counters of one domain, resolved once.
#[derive(Clone)]
pub struct DomainCounters {
    pub accepted: IntCounter,
    pub invalid: IntCounter,
    pub rate_limited: IntCounter,
    pub unavailable: IntCounter,
}

impl IngestMetrics {
    pub fn new(registry: &Registry) -> Result<IngestMetrics, MetricsError> {
        let r = Registrar::new(registry);
        Ok(IngestMetrics {
            events: r.int_counter_vec(
                "pulse_ingest_events_total",
                "Events received, by domain and outcome: accepted (acknowledged by Kafka), invalid (in a request rejected with 400), rate_limited (429), unavailable (503)",
                &["domain", "outcome"],
            )?,
            requests: r.int_counter_vec("pulse_ingest_requests_total", "HTTP requests of the write API, by method and status", &["method", "status"])?,
            latency: r.histogram_vec(
                "pulse_ingest_request_duration_seconds",
                "Time from request to answer (including Kafka's acknowledgement), by method",
                latency_buckets(),
                &["method"],
            )?,
            batch: r.histogram("pulse_ingest_request_events", "Events per accepted request", size_buckets())?,
            queue_depth: r.int_gauge("pulse_ingest_producer_queue_depth", "Messages waiting in the Kafka producer or in flight to the broker")?,
            errors: r.int_counter_vec(
                "pulse_ingest_errors_total",
                "Requests that failed, by kind (unauthorized, not_found, bad_request, invalid, too_large, unsupported_media_type, rate_limited, not_ready, busy, queue_full, ack_timeout, kafka)",
                &["kind"],
            )?,
            ready: r.int_gauge("pulse_ingest_ready", "1 while Kafka is reachable and every domain topic exists")?,
        })
    }

    pub fn domain(&self, name: &str) -> DomainCounters {
        DomainCounters {
            accepted: self.events.with_label_values(&[name, "accepted"]),
            invalid: self.events.with_label_values(&[name, "invalid"]),
            rate_limited: self.events.with_label_values(&[name, "rate_limited"]),
            unavailable: self.events.with_label_values(&[name, "unavailable"]),
        }
    }
}
