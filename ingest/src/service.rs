//! The HTTP write API:
//!
//! - `POST /v1/events/{domain}`: one JSON object, a JSON array of objects, or
//!   NDJSON (`application/x-ndjson`); answers 202 `{"accepted": n, "ids": [...]}`
//!   once Kafka acknowledged every event.
//! - `PUT /v1/events/{domain}/{id}`, `DELETE /v1/events/{domain}/{id}`: replace
//!   or delete an event of a mutable domain (405 on immutable domains).
//! - `/health`, `/ready`, `/metrics`.
//!
//! Errors answer JSON `{"error": "..."}` (400 adds `details`: every invalid event
//! with its index, field and reason); 429 and 503 carry `Retry-After`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use http_body_util::BodyExt;
use prometheus::Registry;
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_ops::{Readiness, ServiceContext, Shutdown, prometheus};
use rdkafka::producer::Producer as _;
use tokio::net::TcpListener;

use crate::auth::{ApiKeys, AuthError, Caller, RateLimiter};
use crate::body::{Format, Item, SplitError, format_of, split};
use crate::config::IngestConfig;
use crate::metrics::{DomainCounters, IngestMetrics};
use crate::prepare::{Batch, Detail, DomainWriter, Stamp, VersionClock};
use crate::producer::{ProduceError, Producer, ProducerConfig, ProducerError};

/// Errors that stop the service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] pulse_ops::MetricsError),
}

impl From<ProducerError> for IngestError {
    fn from(e: ProducerError) -> IngestError {
        match e {
            ProducerError::Kafka(e) => IngestError::Kafka(e),
            ProducerError::Metrics(e) => IngestError::Metrics(e),
        }
    }
}

/// The ingest service: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    spec: Arc<Spec>,
    domains: Vec<DomainState>,
    by_name: HashMap<String, usize>,
    producer: Producer,
    keys: ApiKeys,
    limiter: Option<RateLimiter>,
    cfg: IngestConfig,
    metrics: IngestMetrics,
    registry: Registry,
    ready: Readiness,
    not_ready_reason: Mutex<String>,
    clock: VersionClock,
    /// The context's shutdown: ends [`serve`].
    shutdown: Shutdown,
}

struct DomainState {
    writer: DomainWriter,
    counters: DomainCounters,
}

impl Ingest {
    /// Builds the service and its Kafka producer, with metrics on `ctx.registry`.
    /// `ctx.ready` is set by the readiness monitor (`serve` starts it; see
    /// [`Ingest::refresh_readiness`]). `ctx.metrics_addr` is unused: `/health`,
    /// `/ready` and `/metrics` are served by ingest's own HTTP server ([`Ingest::router`]).
    pub fn new(spec: Arc<Spec>, kafka: &KafkaConfig, cfg: IngestConfig, ctx: ServiceContext) -> Result<Ingest, IngestError> {
        let ServiceContext { registry, ready, shutdown, .. } = ctx;
        let metrics = IngestMetrics::new(&registry)?;
        let producer = Producer::new(kafka, &ProducerConfig { timeout: cfg.produce_timeout, max_in_flight: cfg.max_in_flight, linger: cfg.linger }, &registry)?;
        let domains: Vec<DomainState> = spec.domains.iter().map(|d| DomainState { writer: DomainWriter::new(d), counters: metrics.domain(&d.name) }).collect();
        let by_name = spec.domains.iter().enumerate().map(|(i, d)| (d.name.clone(), i)).collect();
        let limiter = cfg.rate_limit.filter(|r| *r > 0.0).map(|r| RateLimiter::new(r, cfg.rate_burst, cfg.keys.len()));
        ready.set(false);
        Ok(Ingest {
            inner: Arc::new(Inner {
                spec,
                domains,
                by_name,
                producer,
                keys: cfg.keys.clone(),
                limiter,
                cfg,
                metrics,
                registry,
                ready,
                not_ready_reason: Mutex::new("starting: Kafka not checked yet".into()),
                clock: VersionClock::default(),
                shutdown,
            }),
        })
    }

    pub fn config(&self) -> &IngestConfig {
        &self.inner.cfg
    }

    pub fn spec(&self) -> &Arc<Spec> {
        &self.inner.spec
    }

    pub fn producer(&self) -> &Producer {
        &self.inner.producer
    }

    /// The write API routes only (`/v1/...`), for embedding next to other services.
    pub fn api_router(&self) -> Router {
        Router::new()
            .route("/v1/events/{domain}", post(post_events).fallback(|m: Method| async move { method_not_allowed(m, "POST") }))
            .route("/v1/events/{domain}/{id}", delete(delete_event).put(put_event).fallback(|m: Method| async move { method_not_allowed(m, "PUT, DELETE") }))
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// The write API plus `/health`, `/ready` and `/metrics`.
    pub fn router(&self) -> Router {
        let doc = crate::openapi::document(&self.inner.spec, &self.inner.cfg).to_string();
        let openapi = axum::routing::get(move || async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], doc.clone()) });
        self.api_router().merge(pulse_ops::ops_router("ingest", self.inner.registry.clone(), self.inner.ready.clone())).route("/openapi.json", openapi)
    }

    /// Checks that the broker answers and every domain topic exists; sets readiness.
    pub async fn refresh_readiness(&self) -> bool {
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.probe()).await.unwrap_or_else(|e| Err(format!("readiness probe panicked: {e}")));
        let was = self.inner.ready.get();
        match result {
            Ok(()) => {
                if !was {
                    tracing::info!("ingest ready: Kafka reachable, every domain topic exists");
                }
                self.inner.ready.set(true);
                self.inner.metrics.ready.set(1);
                true
            }
            Err(reason) => {
                let mut last = self.inner.not_ready_reason.lock().unwrap_or_else(|p| p.into_inner());
                if was || *last != reason {
                    tracing::warn!("ingest not ready: {reason}");
                }
                *last = reason;
                self.inner.ready.set(false);
                self.inner.metrics.ready.set(0);
                false
            }
        }
    }

    fn probe(&self) -> Result<(), String> {
        if let Some(fatal) = self.inner.producer.fatal_error() {
            return Err(format!("the Kafka producer failed fatally ({fatal}); restart the service"));
        }
        let timeout = self.inner.cfg.ready_interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
        let md = self.inner.producer.client().client().fetch_metadata(None, timeout).map_err(|e| format!("Kafka unreachable: {e}"))?;
        let missing: Vec<&str> = self
            .inner
            .spec
            .domains
            .iter()
            .map(|d| d.topic.as_str())
            .filter(|t| !md.topics().iter().any(|m| m.name() == *t && m.error().is_none() && !m.partitions().is_empty()))
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("topics missing on the broker: {} (run `pulse topics`)", missing.join(", "))) }
    }

    /// Keeps readiness and the producer-queue gauge current until shutdown.
    pub fn spawn_monitor(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let tick = this.inner.cfg.ready_interval.min(Duration::from_secs(1)).max(Duration::from_millis(50));
            let mut next_probe = Instant::now();
            while !shutdown.is_triggered() {
                this.inner.metrics.queue_depth.set(i64::from(this.inner.producer.queue_depth()));
                if Instant::now() >= next_probe {
                    this.refresh_readiness().await;
                    next_probe = Instant::now() + this.inner.cfg.ready_interval;
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.wait() => {}
                }
            }
        })
    }

    /// Waits until librdkafka delivered everything it holds (at shutdown).
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.inner.producer.clone();
        match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
            Ok(Ok(())) => tracing::info!("ingest: producer flushed"),
            Ok(Err(e)) => tracing::error!("ingest: producer flush incomplete: {e} ({} messages left)", self.inner.producer.queue_depth()),
            Err(e) => tracing::error!("ingest: flush task failed: {e}"),
        }
    }

    // ------------------------------------------------------------ handlers

    /// The caller of a request to `domain` (the raw path segment): 401 without a
    /// valid key, 403 when the key is scoped to other domains.
    fn authenticate(&self, headers: &HeaderMap, domain: Result<&str, &PathRejection>) -> Result<Caller, ApiError> {
        let caller = self.inner.keys.authenticate(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)).map_err(ApiError::Unauthorized)?;
        let allowed = match domain {
            Ok(name) => self.inner.keys.allows(caller, name),
            Err(_) => self.inner.keys.unrestricted(caller),
        };
        if !allowed {
            return Err(ApiError::Forbidden);
        }
        Ok(caller)
    }

    fn domain(&self, path: Result<&str, &PathRejection>) -> Result<&DomainState, ApiError> {
        let name = path.map_err(|e| ApiError::NotFound(format!("invalid path: {e}")))?;
        match self.inner.by_name.get(name) {
            Some(&i) => Ok(&self.inner.domains[i]),
            None => {
                let known: Vec<&str> = self.inner.spec.domains.iter().map(|d| d.name.as_str()).collect();
                Err(ApiError::NotFound(format!("unknown domain `{name}` (the spec has: {})", known.join(", "))))
            }
        }
    }

    fn require_mutable(&self, d: &DomainState) -> Result<(), ApiError> {
        if d.writer.mutable() {
            return Ok(());
        }
        let mutable: Vec<&str> = self.inner.spec.domains.iter().filter(|d| d.mutable).map(|d| d.name.as_str()).collect();
        Err(ApiError::MethodNotAllowed(format!(
            "domain `{}` is immutable: its events are facts that cannot be replaced or deleted (only POST). Mutable domains: {}",
            d.writer.name(),
            if mutable.is_empty() { "none".to_string() } else { mutable.join(", ") }
        )))
    }

    fn rate_limit(&self, caller: Caller, events: usize, d: &DomainState) -> Result<(), ApiError> {
        let Some(limiter) = &self.inner.limiter else { return Ok(()) };
        limiter.take(caller, events).map_err(|wait| {
            d.counters.rate_limited.inc_by(events as u64);
            ApiError::RateLimited(wait)
        })
    }

    async fn produce(&self, d: &DomainState, batch: &Batch) -> Result<(), ApiError> {
        if !self.inner.ready.get() {
            let reason = self.inner.not_ready_reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
            d.counters.unavailable.inc_by(batch.len() as u64);
            return Err(ApiError::NotReady(reason));
        }
        match self.inner.producer.send(d.writer.topic(), batch).await {
            Ok(()) => {
                d.counters.accepted.inc_by(batch.len() as u64);
                self.inner.metrics.batch.observe(batch.len() as f64);
                Ok(())
            }
            Err(e) => {
                d.counters.unavailable.inc_by(batch.len() as u64);
                tracing::warn!(domain = d.writer.name(), events = batch.len(), "answering 503: {e}");
                Err(ApiError::Unavailable(e))
            }
        }
    }

    async fn post(&self, path: Result<Path<String>, PathRejection>, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
        let caller = self.authenticate(headers, path.as_ref().map(|p| p.0.as_str()))?;
        let d = self.domain(path.as_ref().map(|p| p.0.as_str()))?;
        let format = format_of(headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes)).map_err(ApiError::UnsupportedMediaType)?;
        let body = read_body(body, headers, self.inner.cfg.max_body).await?;
        let mut items: Vec<Item> = Vec::new();
        split(format, &body, self.inner.cfg.max_batch, &mut items).map_err(|e| match e {
            SplitError::Malformed(m) => ApiError::Malformed(m),
            SplitError::TooMany { limit } => ApiError::TooLarge(format!("more than {limit} events in one request; split the batch")),
        })?;
        self.rate_limit(caller, items.len(), d)?;
        let stamp = Stamp::new(&self.inner.clock, items.len());
        let mut batch = Batch::default();
        if let Err(details) = d.writer.prepare_inserts(&body, &items, stamp, self.inner.cfg.max_event_bytes, &mut batch) {
            d.counters.invalid.inc_by(items.len() as u64);
            let what = if format == Format::Ndjson || body.trim_ascii_start().first() == Some(&b'[') { "events" } else { "event" };
            return Err(ApiError::Invalid { message: format!("{} of {} {what} invalid; nothing was stored", details.len(), items.len()), details });
        }
        self.produce(d, &batch).await?;
        Ok(batch.accepted_json())
    }

    async fn put(&self, path: Result<Path<(String, String)>, PathRejection>, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
        let (name, id) = match &path {
            Ok(Path((name, id))) => (Ok(name.as_str()), id.as_str()),
            Err(e) => (Err(e), ""),
        };
        let caller = self.authenticate(headers, name)?;
        let d = self.domain(name)?;
        self.require_mutable(d)?;
        match format_of(headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes)) {
            Ok(Format::Json) => {}
            Ok(Format::Ndjson) => return Err(ApiError::UnsupportedMediaType("PUT replaces one event: send one JSON object as application/json".into())),
            Err(m) => return Err(ApiError::UnsupportedMediaType(m)),
        }
        let body = read_body(body, headers, self.inner.cfg.max_body).await?;
        self.rate_limit(caller, 1, d)?;
        let mut batch = Batch::default();
        if let Err(details) = d.writer.prepare_replace(&body, id, Stamp::new(&self.inner.clock, 1), self.inner.cfg.max_event_bytes, &mut batch) {
            d.counters.invalid.inc();
            return Err(ApiError::Invalid { message: "the event is invalid; nothing was stored".into(), details });
        }
        self.produce(d, &batch).await?;
        Ok(batch.accepted_json())
    }

    async fn delete(&self, path: Result<Path<(String, String)>, PathRejection>, headers: &HeaderMap) -> Result<Vec<u8>, ApiError> {
        let (name, id) = match &path {
            Ok(Path((name, id))) => (Ok(name.as_str()), id.as_str()),
            Err(e) => (Err(e), ""),
        };
        let caller = self.authenticate(headers, name)?;
        let d = self.domain(name)?;
        self.require_mutable(d)?;
        self.rate_limit(caller, 1, d)?;
        let mut batch = Batch::default();
        if let Err(details) = d.writer.prepare_delete(id, Stamp::new(&self.inner.clock, 1), &mut batch) {
            d.counters.invalid.inc();
            return Err(ApiError::Invalid { message: "invalid delete; nothing was stored".into(), details });
        }
        self.produce(d, &batch).await?;
        Ok(batch.accepted_json())
    }

    /// Turns a handler's result into the answer and records it.
    fn answer(&self, method: &'static str, started: Instant, result: Result<Vec<u8>, ApiError>) -> Response {
        let m = &self.inner.metrics;
        let response = match result {
            Ok(body) => (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
            Err(e) => {
                m.errors.with_label_values(&[e.kind()]).inc();
                e.into_response_with(self.inner.cfg.retry_after_secs)
            }
        };
        m.requests.with_label_values(&[method, response.status().as_str()]).inc();
        m.latency.with_label_values(&[method]).observe(started.elapsed().as_secs_f64());
        response
    }
}

async fn post_events(State(s): State<Ingest>, path: Result<Path<String>, PathRejection>, headers: HeaderMap, body: Body) -> Response {
    let t0 = Instant::now();
    let result = s.post(path, &headers, body).await;
    s.answer("POST", t0, result)
}

async fn put_event(State(s): State<Ingest>, path: Result<Path<(String, String)>, PathRejection>, headers: HeaderMap, body: Body) -> Response {
    let t0 = Instant::now();
    let result = s.put(path, &headers, body).await;
    s.answer("PUT", t0, result)
}

async fn delete_event(State(s): State<Ingest>, path: Result<Path<(String, String)>, PathRejection>, headers: HeaderMap) -> Response {
    let t0 = Instant::now();
    let result = s.delete(path, &headers).await;
    s.answer("DELETE", t0, result)
}

async fn not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "no such endpoint: POST /v1/events/{domain}, PUT|DELETE /v1/events/{domain}/{id}, GET /health, /ready, /metrics, /openapi.json",
    )
}

/// 405 naming the methods of this path (`allow`).
fn method_not_allowed(method: Method, allow: &'static str) -> Response {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed here: POST /v1/events/{{domain}}, PUT|DELETE /v1/events/{{domain}}/{{id}}"),
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

/// How much of an oversize body is still read (and dropped) before the 413 is
/// sent: a client that is still writing then reliably gets the answer instead
/// of a reset connection. Beyond this the connection is closed.
const DRAIN_CAP: u64 = 64 << 20;

/// Reads the body up to `max` bytes (413 beyond, decided from Content-Length when given).
async fn read_body(mut body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("the body is larger than {max} bytes; split it into smaller requests"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > DRAIN_CAP) {
        return Err(too_large());
    }
    let mut over = declared.is_some_and(|len| len > max as u64);
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Malformed(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len() as u64;
        if over || buf.len() + data.len() > max {
            over = true;
            buf.clear();
            if seen > DRAIN_CAP {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over { Err(too_large()) } else { Ok(buf.freeze()) }
}

/// A failed request, as answered.
#[derive(Debug)]
enum ApiError {
    Unauthorized(AuthError),
    Forbidden,
    NotFound(String),
    MethodNotAllowed(String),
    UnsupportedMediaType(String),
    TooLarge(String),
    Malformed(String),
    Invalid { message: String, details: Vec<Detail> },
    RateLimited(Duration),
    NotReady(String),
    Unavailable(ProduceError),
}

impl ApiError {
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Malformed(_) => "bad_request",
            ApiError::Invalid { .. } => "invalid",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Unavailable(e) => e.kind(),
        }
    }

    fn into_response_with(self, retry_after_secs: u64) -> Response {
        let retry = |secs: u64| HeaderValue::from(secs.max(1));
        let (status, body, extra): (StatusCode, serde_json::Value, Option<(header::HeaderName, HeaderValue)>) = match self {
            ApiError::Unauthorized(e) => (
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": format!("{e}: send `Authorization: Bearer <key>` with a write API key") }),
                Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, serde_json::json!({ "error": "this API key may not write to this domain" }), None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, serde_json::json!({ "error": m }), None),
            ApiError::MethodNotAllowed(m) => {
                (StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({ "error": m }), Some((header::ALLOW, HeaderValue::from_static("POST"))))
            }
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, serde_json::json!({ "error": m }), None),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({ "error": m }), None),
            ApiError::Malformed(m) => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": m, "details": [] }), None),
            ApiError::Invalid { message, details } => (StatusCode::BAD_REQUEST, serde_json::json!({ "error": message, "details": details }), None),
            ApiError::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({ "error": format!("rate limit exceeded; retry in {:.1} s", wait.as_secs_f64()) }),
                Some((header::RETRY_AFTER, retry(wait.as_secs_f64().ceil() as u64))),
            ),
            ApiError::NotReady(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": format!("ingest cannot write to Kafka now ({reason}); nothing was stored, retry later") }),
                Some((header::RETRY_AFTER, retry(retry_after_secs))),
            ),
            ApiError::Unavailable(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": format!("{e}; the events are not acknowledged, retry later (events of this request may be stored twice by a retry)") }),
                Some((header::RETRY_AFTER, retry(retry_after_secs))),
            ),
        };
        let mut r = (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response();
        if let Some((k, v)) = extra {
            r.headers_mut().insert(k, v);
        }
        r
    }
}

/// Serves the write API and the operations endpoints on `listener` until the
/// shutdown of the service's context fires; then finishes the requests in
/// flight and flushes the producer.
pub async fn serve(ingest: Ingest, listener: TcpListener) -> Result<(), IngestError> {
    let shutdown = ingest.inner.shutdown.clone();
    let addr = listener.local_addr()?;
    ingest.refresh_readiness().await;
    let monitor = ingest.spawn_monitor(shutdown.clone());
    tracing::info!(%addr, domains = ingest.inner.domains.len(), keys = ingest.inner.keys.len(), scoped_keys = ingest.inner.keys.scoped(), rate_limit = ?ingest.inner.cfg.rate_limit, "ingest: write API listening");
    pulse_ops::http::serve(listener, ingest.router(), ingest.inner.cfg.http, shutdown.clone()).await?;
    shutdown.trigger();
    let _ = monitor.await;
    ingest.flush(ingest.inner.cfg.produce_timeout + Duration::from_secs(5)).await;
    Ok(())
}

/// Binds `cfg.addr` and serves until `ctx.shutdown` (the `pulse ingest` entry
/// point; see [`Ingest::new`] for what it takes from `ctx`).
pub async fn run(spec: Arc<Spec>, kafka: &KafkaConfig, cfg: IngestConfig, ctx: ServiceContext) -> Result<(), IngestError> {
    let addr = cfg.addr;
    let listener = TcpListener::bind(addr).await.map_err(|source| IngestError::Bind { addr, source })?;
    let ingest = Ingest::new(spec, kafka, cfg, ctx)?;
    serve(ingest, listener).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_json_with_retry_after() {
        let r = ApiError::RateLimited(Duration::from_millis(1500)).into_response_with(1);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"));
        let r = ApiError::NotReady("down".into()).into_response_with(3);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("3"));
        let r = ApiError::Unauthorized(AuthError::Missing).into_response_with(1);
        assert_eq!(r.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()), Some("Bearer"));
    }
}
