//! The client's retry policy against a stub server on a real socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use pulse_client::{Client, ClientConfig, Error};

/// Serves `/v1/events/{domain}`: the first `fail` requests answer `status`, then 202.
async fn stub(fail: usize, status: StatusCode, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/v1/events/{domain}",
        post(move |headers: HeaderMap, body: String| {
            let h = h.clone();
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                assert_eq!(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()), Some("Bearer k"));
                assert!(body.contains("ride_id"));
                if n < fail {
                    (status, [(header::RETRY_AFTER, "0")], r#"{"error":"busy"}"#).into_response()
                } else {
                    (StatusCode::ACCEPTED, r#"{"accepted":1,"ids":["id-1"]}"#).into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

fn config(max_retries: u32) -> ClientConfig {
    ClientConfig {
        max_retries,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

const RIDE: &str = r#"{"ride_id":"r-1"}"#;

#[tokio::test]
async fn overload_answers_are_retried_with_backoff() {
    let (url, hits) = stub(2, StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let client = Client::with_config(&url, None, Some("k"), config(3)).expect("client");
    let a = client.track_json("rides", RIDE).await.expect("accepted after retries");
    assert_eq!((a.accepted, a.ids), (1, vec!["id-1".to_string()]));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn gives_up_after_max_retries_with_a_typed_error() {
    let (url, hits) = stub(10, StatusCode::TOO_MANY_REQUESTS, Duration::ZERO).await;
    let client = Client::with_config(&url, None, Some("k"), config(2)).expect("client");
    match client.track_json("rides", RIDE).await {
        Err(Error::Overloaded { status: 429, retry_after: Some(d), message }) => {
            assert_eq!((d, message.as_str()), (Duration::ZERO, "busy"));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_not_resent() {
    let (url, hits) = stub(0, StatusCode::ACCEPTED, Duration::from_secs(2)).await;
    let client = Client::with_config(&url, None, Some("k"), config(3)).expect("client");
    let t0 = Instant::now();
    assert!(matches!(client.track_json("rides", RIDE).await, Err(Error::Timeout(_))));
    assert!(t0.elapsed() < Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the write may be in progress: not sent again");
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let client = Client::with_config(&format!("http://127.0.0.1:{port}"), None, None, config(2)).expect("client");
    let t0 = Instant::now();
    let e = client.track_json("rides", RIDE).await.expect_err("nobody listens");
    assert!(matches!(e, Error::Transport(_)) && e.is_retryable(), "{e:?}");
    assert!(t0.elapsed() >= Duration::from_millis(20), "two backoffs happened");
    assert!(client.wait_until_ready(Duration::from_millis(300)).await.is_err());
}
