//! What a long-running service gets from the command that starts it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tokio::runtime::Handle;

use crate::metrics::Registrar;
use crate::{Readiness, Shutdown, serve_ops};

/// The shared plumbing of a service: its metrics registry, readiness, shutdown
/// signal, the async runtime running its tasks, and where its operations
/// server listens. Each service takes this and a config of its own.
#[derive(Clone)]
pub struct ServiceContext {
    pub registry: Registry,
    pub ready: Readiness,
    pub shutdown: Shutdown,
    /// Runs the service's background tasks (operations server, readiness probe, outputs).
    pub rt: Handle,
    /// Address of `/health`, `/ready` and `/metrics` (None: no operations server).
    pub metrics_addr: Option<SocketAddr>,
}

impl ServiceContext {
    /// A fresh registry and readiness, no operations server.
    pub fn new(rt: Handle, shutdown: Shutdown) -> ServiceContext {
        ServiceContext { registry: Registry::new(), ready: Readiness::default(), shutdown, rt, metrics_addr: None }
    }

    /// Metrics registered on `registry` (e.g. one the caller reads).
    pub fn with_registry(mut self, registry: Registry) -> ServiceContext {
        self.registry = registry;
        self
    }

    pub fn with_ready(mut self, ready: Readiness) -> ServiceContext {
        self.ready = ready;
        self
    }

    pub fn with_metrics_addr(mut self, addr: Option<SocketAddr>) -> ServiceContext {
        self.metrics_addr = addr;
        self
    }

    /// Registers metrics on the service's registry.
    pub fn registrar(&self) -> Registrar<'_> {
        Registrar::new(&self.registry)
    }

    /// Serves the operations endpoints of `service` on `metrics_addr` (when set)
    /// until shutdown; a failure to serve is logged.
    pub fn spawn_ops_server(&self, service: &'static str) {
        let Some(addr) = self.metrics_addr else { return };
        let (registry, ready, shutdown) = (self.registry.clone(), self.ready.clone(), self.shutdown.clone());
        self.rt.spawn(async move {
            if let Err(e) = serve_ops(service, addr, registry, ready, shutdown).await {
                tracing::error!("{service} ops server: {e}");
            }
        });
    }

    /// Sets readiness to what `probe` answers, every `every`, until shutdown.
    pub fn spawn_readiness<F, Fut>(&self, every: Duration, mut probe: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let (ready, shutdown) = (self.ready.clone(), self.shutdown.clone());
        self.rt.spawn(async move {
            while !shutdown.is_triggered() {
                ready.set(probe().await);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait() => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_follows_the_probe_until_shutdown() {
        let ctx = ServiceContext::new(Handle::current(), Shutdown::new());
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe_up = std::sync::Arc::clone(&up);
        ctx.spawn_readiness(Duration::from_millis(10), move || {
            let up = probe_up.load(std::sync::atomic::Ordering::Relaxed);
            async move { up }
        });
        let wait_for = |want: bool| {
            let ready = ctx.ready.clone();
            async move {
                for _ in 0..500 {
                    if ready.get() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                false
            }
        };
        assert!(wait_for(true).await);
        up.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(wait_for(false).await);
        ctx.shutdown.trigger();
    }
}
