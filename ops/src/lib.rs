//! What every Pulse service has: a Prometheus registry, an operations HTTP
//! server (`/health`, `/ready`, `/metrics`), tracing set-up, and a shutdown
//! signal (SIGTERM / Ctrl-C) that services turn into flush-and-commit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::watch;

pub use prometheus;

pub mod auth;
pub mod http;
pub mod metrics;
pub mod service;

pub use metrics::{MetricsError, Registrar};
pub use service::ServiceContext;

/// Why a service that is running is not alive (e.g. its work has stalled).
pub type LivenessProbe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Readiness of a service: set once its dependencies are reachable; cleared
/// when they are lost. A service may also install a liveness probe: `/health`
/// fails while the probe does (an orchestrator then restarts the process).
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    live: Arc<std::sync::OnceLock<LivenessProbe>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Installs the liveness probe (once; later calls are ignored).
    pub fn set_liveness(&self, probe: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        let _ = self.live.set(Box::new(probe));
    }

    /// Whether the service is alive: `Err` says why not.
    pub fn alive(&self) -> Result<(), String> {
        self.live.get().map_or(Ok(()), |probe| probe())
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    ready: Readiness,
    service: &'static str,
}

/// Routes `/health` (the process is alive), `/ready` (its dependencies are
/// reachable) and `/metrics` (Prometheus text format).
pub fn ops_router<S: Clone + Send + Sync + 'static>(service: &'static str, registry: Registry, ready: Readiness) -> Router<S> {
    let state = OpsState { registry, ready, service };
    Router::new().route("/health", get(health)).route("/ready", get(readiness)).route("/metrics", get(metrics)).with_state(state)
}

async fn health(State(s): State<OpsState>) -> Response {
    match s.ready.alive() {
        Ok(()) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], format!("{{\"status\":\"ok\",\"service\":\"{}\"}}", s.service)).into_response()
        }
        Err(why) => {
            let body = serde_json::json!({"status": "stalled", "service": s.service, "reason": why}).to_string();
            (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

async fn readiness(State(s): State<OpsState>) -> Response {
    if s.ready.get() {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"ready\":true}").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json"), (header::RETRY_AFTER, "1")], "{\"ready\":false}").into_response()
    }
}

async fn metrics(State(s): State<OpsState>) -> Response {
    let mut buf = Vec::new();
    let families = s.registry.gather();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves the operations endpoints on their own address until `shutdown` fires.
pub async fn serve_ops(service: &'static str, addr: SocketAddr, registry: Registry, ready: Readiness, shutdown: Shutdown) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "{service}: /health /ready /metrics");
    let app: Router = ops_router(service, registry, ready);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await
}

/// A shutdown signal shared by every task of a service.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown { rx, tx: Arc::new(tx) }
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown was triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Triggers on SIGTERM or Ctrl-C (SIGINT).
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("cannot listen for SIGTERM: {e}");
                        let _ = ctrl_c.await;
                        this.trigger();
                        return;
                    }
                };
                tokio::select! {
                    _ = ctrl_c => tracing::info!("interrupt: shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
            this.trigger();
        });
    }
}

/// Histogram buckets for latencies in seconds, 100 µs to 30 s.
pub fn latency_buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
}

/// Histogram buckets for sizes (rows, events), 1 to 1 M.
pub fn size_buckets() -> Vec<f64> {
    vec![1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0, 500_000.0, 1_000_000.0]
}

pub fn init_tracing(filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: logs written to files and collectors stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn health_follows_the_liveness_probe() {
        let ready = Readiness::default();
        let beat = Arc::new(AtomicI64::new(0));
        let b = Arc::clone(&beat);
        ready.set_liveness(move || if b.load(Ordering::Relaxed) > 0 { Err("no epoch for 90 s".into()) } else { Ok(()) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app: Router = ops_router("t", Registry::new(), ready.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        beat.store(1, Ordering::Relaxed);
        let stalled = get(addr, "/health").await;
        assert!(stalled.starts_with("HTTP/1.1 503") && stalled.contains("no epoch for 90 s"), "{stalled}");
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 503"), "readiness is separate");
    }
}
