//! Webhook delivery against a real HTTP receiver: a failing receiver is retried
//! with backoff until it accepts, a repeated notification is sent once, and a
//! refused one (4xx) is not retried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use pulse_alert::{AlertMessage, WebhookConfig, WebhookSender};

fn message(status: &str, fingerprint: &str) -> AlertMessage {
    AlertMessage {
        rule: "r".into(),
        metric: "m".into(),
        status: status.into(),
        group: "city=Paris".into(),
        severity: "warning".into(),
        labels: [("alertname".to_string(), "r".to_string()), ("city".to_string(), "Paris".to_string())].into_iter().collect(),
        annotations: Default::default(),
        fingerprint: fingerprint.into(),
        since: "2026-12-02T07:00:00.000Z".into(),
        starts_at: "2026-12-02T07:05:00.000Z".into(),
        ends_at: (status == "resolved").then(|| "2026-12-02T07:09:00.000Z".to_string()),
        value: Some(0.4),
        guard_value: Some(30.0),
        row_emitted_at: 1,
        decided_at: 1,
    }
}

/// A receiver answering `fail_first` times with `status`, then 200; it keeps what it got.
async fn receiver(fail_first: usize, status: StatusCode) -> (String, Arc<Mutex<Vec<serde_json::Value>>>, Arc<AtomicUsize>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (Arc::clone(&got), Arc::clone(&calls));
    let app = Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let (g, c) = (Arc::clone(&g), Arc::clone(&c));
            async move {
                if c.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return status;
                }
                g.lock().expect("lock").push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, calls)
}

async fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast() -> WebhookConfig {
    WebhookConfig { initial_backoff: Duration::from_millis(20), max_backoff: Duration::from_millis(100), ..WebhookConfig::default() }
}

#[tokio::test]
async fn retries_until_the_receiver_accepts_and_sends_each_notification_once() {
    let (url, got, calls) = receiver(3, StatusCode::SERVICE_UNAVAILABLE).await;
    let sender = WebhookSender::spawn(fast());
    sender.try_send(&url, message("firing", "fp1")).expect("queued");
    sender.try_send(&url, message("firing", "fp1")).expect("queued");
    sender.try_send(&url, message("resolved", "fp1")).expect("queued");
    until("two deliveries", Duration::from_secs(10), || got.lock().expect("lock").len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "the repeated firing is not sent again: {got:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 5, "3 refused attempts, then 2 deliveries");
    assert_eq!((got[0]["status"].as_str(), got[1]["status"].as_str()), (Some("firing"), Some("resolved")), "in order");
    assert_eq!(got[0]["version"], "4");
    assert_eq!(got[0]["alerts"][0]["fingerprint"], "fp1");
    assert_eq!(got[1]["alerts"][0]["endsAt"], "2026-12-02T07:09:00.000Z");
    assert_eq!(sender.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(sender.stats.delivered.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_refusing_receiver_is_not_retried_and_a_dead_one_does_not_hold_others_up() {
    let (url, got, calls) = receiver(usize::MAX, StatusCode::BAD_REQUEST).await;
    let (good, good_got, _) = receiver(0, StatusCode::OK).await;
    let sender = WebhookSender::spawn(fast());
    // A receiver nobody listens on: retried with backoff, in its own task.
    sender.try_send("http://127.0.0.1:9/hook", message("firing", "fp0")).expect("queued");
    sender.try_send(&url, message("firing", "fp2")).expect("queued");
    sender.try_send(&good, message("firing", "fp3")).expect("queued");
    until("the good receiver", Duration::from_secs(5), || good_got.lock().expect("lock").len() == 1).await;
    until("the refusal", Duration::from_secs(5), || sender.stats.given_up.load(Ordering::Relaxed) >= 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 400 is final");
    assert!(got.lock().expect("lock").is_empty());
}
