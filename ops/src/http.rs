//! The one way Pulse's HTTP services serve: limits that hold under abuse.
//!
//! - A client has `header_timeout` to send its request head (a connection
//!   that sends half a header is closed), and `body_timeout` to send its body.
//! - At most `max_connections` connections at once; the next ones get an
//!   immediate `503` with `Retry-After` and are closed.
//! - On shutdown, open connections finish their current request (for up to
//!   `drain`) and are closed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::Shutdown;

/// Limits of one HTTP service.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// How long open connections may take to finish after shutdown.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(30), max_connections: 1024, drain: Duration::from_secs(10) }
    }
}

const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 48\r\nconnection: close\r\n\r\n{\"error\":\"too many connections; retry shortly\"}\n";

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits, shutdown: Shutdown) -> std::io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_timeout));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(FULL)).await;
            });
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(drain = ?limits.drain, "connections still open after the drain period; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::AsyncReadExt;

    async fn start(limits: HttpLimits) -> (std::net::SocketAddr, Shutdown) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", get(|| async { "ok" })).route("/echo", post(|body: String| async move { body }));
        let shutdown = Shutdown::new();
        tokio::spawn(serve(listener, app, limits, shutdown.clone()));
        (addr, shutdown)
    }

    async fn read_all(s: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
        let mut buf = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut buf)).await.ok()?.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    #[tokio::test]
    async fn a_half_sent_header_is_closed_within_the_timeout() {
        let (addr, _s) = start(HttpLimits { header_timeout: Duration::from_millis(500), ..HttpLimits::default() }).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        let started = std::time::Instant::now();
        let answer = read_all(&mut s, Duration::from_secs(5)).await.expect("closed by the server");
        assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
        assert!(!answer.contains("200 OK"), "{answer}");
        // A whole request is served as usual.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        assert!(read_all(&mut s, Duration::from_secs(5)).await.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    }

    #[tokio::test]
    async fn a_body_slower_than_the_timeout_is_refused() {
        let (addr, _s) = start(HttpLimits { body_timeout: Duration::from_millis(500), ..HttpLimits::default() }).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").await.expect("write");
        let answer = read_all(&mut s, Duration::from_secs(5)).await.expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_get_503_with_retry_after() {
        let (addr, _s) = start(HttpLimits { max_connections: 2, ..HttpLimits::default() }).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            held.push(s);
        }
        let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let answer = read_all(&mut third, Duration::from_secs(5)).await.expect("answered");
        assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("retry-after: 1"), "{answer}");
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut again = tokio::net::TcpStream::connect(addr).await.expect("connect");
        again.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        assert!(read_all(&mut again, Duration::from_secs(5)).await.is_some_and(|a| a.starts_with("HTTP/1.1 200")), "a freed slot serves again");
    }
}
