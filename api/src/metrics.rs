//! Prometheus metrics of the read API, and the middleware that records requests.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use pulse_ops::prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use pulse_ops::{MetricsError, Registrar, latency_buckets};

use crate::Api;

#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub query_seconds: HistogramVec,
    pub engine_seconds: HistogramVec,
    pub query_errors: IntCounterVec,
    pub sse_subscribers: IntGauge,
    pub sse_rows: IntCounter,
    pub sse_skipped: IntCounter,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> Result<ApiMetrics, MetricsError> {
        let r = Registrar::new(registry);
        let rs = &["route", "status"];
        Ok(ApiMetrics {
            requests: r.int_counter_vec("pulse_api_requests_total", "HTTP requests by route and status", rs)?,
            request_seconds: r.histogram_vec(
                "pulse_api_request_seconds",
                "HTTP request latency (to the response head) by route and status",
                latency_buckets(),
                rs,
            )?,
            query_seconds: r.histogram_vec(
                "pulse_api_clickhouse_query_seconds",
                "ClickHouse query latency seen by the API, by query",
                latency_buckets(),
                &["query"],
            )?,
            engine_seconds: r.histogram_vec(
                "pulse_api_clickhouse_elapsed_seconds",
                "Query time ClickHouse itself reports (X-ClickHouse-Summary elapsed_ns), by query",
                latency_buckets(),
                &["query"],
            )?,
            query_errors: r.int_counter_vec(
                "pulse_api_clickhouse_errors_total",
                "Failed ClickHouse queries by query and kind (unavailable, timeout, error)",
                &["query", "kind"],
            )?,
            sse_subscribers: r.int_gauge("pulse_api_sse_subscribers", "Open Server-Sent Events connections")?,
            sse_rows: r.int_counter("pulse_api_sse_rows_total", "Metric rows read from the aggregated topic")?,
            sse_skipped: r.int_counter("pulse_api_sse_skipped_total", "Rows lagging SSE subscribers skipped")?,
        })
    }
}

/// Records every request's route (the matched pattern, never the raw path or
/// query, which may hold an API key), status and latency.
pub async fn track(State(api): State<Api>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let m = &api.inner.metrics;
    m.requests.with_label_values(&[&route, &status]).inc();
    m.request_seconds.with_label_values(&[&route, &status]).observe(started.elapsed().as_secs_f64());
    resp
}
