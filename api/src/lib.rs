//! `pulse api`: the read side of Pulse over HTTP.
//!
//! - events by id and timelines of one key, from the raw tables;
//! - windowed metric rows (latest revision per window) and the newest window per group;
//! - the analytics of the Go system Pulse replaces (errors per day, p95 latency per
//!   event name and session, sessions by error rate) and per-city ride figures;
//! - Server-Sent Events of live window revisions read from the aggregated topic;
//! - `/health`, `/ready`, `/metrics`, `/openapi.json` and the live page at `/`.
//!
//! Every query is parameterized on the server (`{name:Type}` placeholders); table
//! and column names come only from the validated spec. Times in responses are
//! RFC 3339 strings in UTC with milliseconds (`2026-11-24T00:05:00.000Z`).

pub mod auth;
pub mod catalog;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod routes;
pub mod sql;
pub mod stream;

use std::sync::Arc;

use pulse_clickhouse::ClickHouseConfig;
use pulse_model::Spec;
use pulse_ops::prometheus::Registry;
use pulse_ops::{Readiness, ServiceContext, Shutdown};

pub use config::ApiConfig;
pub use error::ApiError;

use crate::catalog::Catalog;
use crate::metrics::ApiMetrics;
use crate::sql::Db;
use crate::stream::StreamHub;

/// Shared state of every handler.
#[derive(Clone)]
pub struct Api {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub spec: Arc<Spec>,
    pub catalog: Catalog,
    pub db: Db,
    pub cfg: ApiConfig,
    pub metrics: ApiMetrics,
    pub registry: Registry,
    pub ready: Readiness,
    pub hub: Option<StreamHub>,
    pub shutdown: Shutdown,
    /// Per-key request rate (None: unlimited).
    pub limiter: Option<auth::RateLimiter>,
    /// Open SSE streams (capped at `cfg.max_streams`).
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Api {
    /// Builds the API over `clickhouse` and starts its background tasks (the
    /// readiness probe, on `ctx.rt`, and, when `cfg.stream` is set, the
    /// aggregated-topic consumer of the SSE endpoints). Must be called inside a
    /// tokio runtime. `ctx.metrics_addr` is unused: `/health`, `/ready` and
    /// `/metrics` are served by the API's own HTTP server ([`router`]).
    pub fn new(spec: Arc<Spec>, clickhouse: &ClickHouseConfig, cfg: ApiConfig, ctx: ServiceContext) -> Result<Api, ApiError> {
        let metrics = ApiMetrics::new(&ctx.registry)?;
        let db = Db::new(clickhouse, metrics.clone());
        let catalog = Catalog::new(&spec, &clickhouse.database);
        let hub = match &cfg.stream {
            Some(s) => Some(StreamHub::start(Arc::clone(&spec), &catalog, s, metrics.clone(), ctx.shutdown.clone())?),
            None => None,
        };
        let limiter = cfg.rate_limit.filter(|r| *r > 0.0).map(|r| auth::RateLimiter::new(r, Some(cfg.rate_burst.unwrap_or(2.0 * r)), cfg.keys.len()));
        let streams = Arc::default();
        let (probe_db, was_ready) = (db.clone(), ctx.ready.clone());
        ctx.spawn_readiness(cfg.ready_interval, move || {
            let (db, was_ready) = (probe_db.clone(), was_ready.clone());
            async move {
                let ok = db.ping().await;
                if ok != was_ready.get() {
                    tracing::info!(reachable = ok, "ClickHouse reachability changed");
                }
                ok
            }
        });
        let ServiceContext { registry, ready, shutdown, .. } = ctx;
        Ok(Api { inner: Arc::new(Inner { spec, catalog, db, cfg, metrics, registry, ready, hub, shutdown, limiter, streams }) })
    }

    pub fn spec(&self) -> &Spec {
        &self.inner.spec
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.cfg
    }

    /// Whether the SSE consumer has its partitions assigned (tests wait for it).
    pub fn stream_ready(&self) -> bool {
        self.inner.hub.as_ref().is_some_and(StreamHub::is_assigned)
    }
}

/// The HTTP routes of the API (`/v1/...`, the operations endpoints, the page).
pub fn router(api: &Api) -> axum::Router {
    routes::router(api.clone())
}

/// Serves the API on `listener` until the shutdown of the service's context
/// fires; open SSE streams end then.
pub async fn serve(api: Api, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let shutdown = api.inner.shutdown.clone();
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api: serving /v1, /health, /ready, /metrics, /openapi.json and the live page");
    let app = router(&api);
    pulse_ops::http::serve(listener, app, api.inner.cfg.http, shutdown).await
}
