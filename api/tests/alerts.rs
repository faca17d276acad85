//! `GET /v1/alerts` over the `pulse_alerts` table the dataflow writes: the
//! newest state per rule and group decides what is active; the history is the
//! firing/resolved notifications within `from`..`to`.

mod common;

use std::sync::Arc;

use bytes::BytesMut;
use common::Server;
use pulse_api::ApiConfig;
use pulse_clickhouse::schema::{AlertRow, alerts_table, encode_alert};
use pulse_clickhouse::{Writer, WriterMetrics, migrate};
use pulse_ops::Shutdown;
use pulse_testkit::{stack_clickhouse, unique_spec};

fn row(city: &str, event: &str, status: &str, starts_at: i64, recorded_at: i64, seq: u64) -> AlertRow {
    AlertRow {
        consumer_group: "g".into(),
        rule: "city_cancellation_rate_high".into(),
        metric: "city_metrics".into(),
        group_key: format!("city={city}"),
        event: event.into(),
        status: status.into(),
        severity: "warning".into(),
        fingerprint: format!("fp-{city}"),
        labels: format!(r#"{{"alertname":"city_cancellation_rate_high","city":"{city}","metric":"city_metrics","severity":"warning"}}"#),
        annotations: format!(r#"{{"summary":"{city} cancellation rate 0.45"}}"#),
        since: starts_at - 300_000,
        starts_at,
        ends_at: (event == "resolved").then_some(starts_at + 600_000),
        value: Some(0.45),
        guard_value: Some(120.0),
        notified_since: 0,
        notified_fired_at: 0,
        decided_end: None,
        ck_status: "inactive".into(),
        ck_since: 0,
        ck_fired_at: 0,
        ck_last_end: None,
        ck_last_hold: None,
        ck_changed_at: 0,
        ck_value: None,
        ck_guard_value: None,
        row_emitted_at: recorded_at,
        recorded_at,
        seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_alerts_and_history() {
    let Some(ch) = stack_clickhouse("pulse_api_alerts") else { return };
    let spec = unique_spec();
    migrate(&ch, &spec).await.expect("migrate");
    let now = pulse_model::now_ms();
    let rows = [
        row("Paris", "pending", "pending", now - 900_000, now - 60_000, 3),
        row("Paris", "firing", "firing", now - 600_000, now - 50_000, 4),
        row("Paris", "checkpoint", "firing", now - 600_000, now - 40_000, 5),
        row("Lima", "firing", "firing", now - 700_000, now - 45_000, 6),
        row("Lima", "resolved", "inactive", now - 700_000, now - 30_000, 7),
        // Two days ago: outside the default history (24 h).
        row("Oslo", "firing", "firing", now - 2 * 86_400_000, now - 2 * 86_400_000, 1),
        row("Oslo", "resolved", "inactive", now - 2 * 86_400_000, now - 2 * 86_400_000 + 1, 2),
    ];
    let mut body = BytesMut::new();
    for r in &rows {
        encode_alert(r, &mut body);
    }
    let writer = Writer::new(&ch, WriterMetrics::new(&pulse_ops::prometheus::Registry::new()).expect("metrics"));
    let t = alerts_table();
    writer.insert(&t.name, &t.insert_sql(&ch.database), body.freeze(), rows.len(), &Shutdown::new()).await.expect("insert");

    let server = Server::start(Arc::clone(&spec), &ch, ApiConfig::default()).await;
    let c = server.http();
    let r = c.get("/v1/alerts").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let active = r.json["active"].as_array().expect("active");
    assert_eq!(active.len(), 1, "{}", r.text);
    assert_eq!(active[0]["group"]["city"], "Paris");
    assert_eq!(active[0]["status"], "firing");
    assert_eq!(active[0]["annotations"]["summary"], "Paris cancellation rate 0.45");
    let history: Vec<(String, String)> = r.json["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| (h["group"]["city"].as_str().unwrap_or_default().to_string(), h["status"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(history, [("Lima".to_string(), "resolved".to_string()), ("Lima".into(), "firing".into()), ("Paris".into(), "firing".into())]);
    assert_eq!(r.json["history"][0]["ends_at"].as_str().map(str::len), Some(24));

    // A range covering two days ago finds Oslo's notifications; limit keeps the newest.
    let from = now - 3 * 86_400_000;
    let r = c.get(&format!("/v1/alerts?from={from}&to={}&limit=2", now - 86_400_000)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let hist = r.json["history"].as_array().expect("history");
    assert_eq!(hist.len(), 2, "{}", r.text);
    assert!(hist.iter().all(|h| h["group"]["city"] == "Oslo"), "{}", r.text);
    let r = c.get("/v1/alerts?rule=nope").await;
    assert_eq!((r.status, r.json["active"].as_array().map(Vec::len)), (200, Some(0)));
    let r = c.get("/v1/alerts?from=5&to=4").await;
    assert_eq!((r.status, r.json["history"].as_array().map(Vec::len)), (200, Some(0)));
    let r = c.get("/v1/alerts?from=yesterday").await;
    assert_eq!(r.status, 400);
    let r = c.get("/v1/alerts?colour=red").await;
    assert_eq!(r.status, 400);

    // The SSE stream: only notifications recorded after it opened, as they are recorded.
    let rows_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sse = common::spawn_sse(format!("{}/v1/stream/alerts", server.url), Vec::new(), Arc::clone(&rows_seen), Arc::clone(&subscribed));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !subscribed.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(std::time::Instant::now() < deadline, "not subscribed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut body = BytesMut::new();
    encode_alert(&row("Seoul", "firing", "firing", now - 60_000, pulse_model::now_ms(), 8), &mut body);
    encode_alert(&row("Seoul", "checkpoint", "firing", now - 60_000, pulse_model::now_ms(), 9), &mut body);
    writer.insert(&t.name, &t.insert_sql(&ch.database), body.freeze(), 2, &Shutdown::new()).await.expect("insert");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows_seen.lock().expect("rows").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no alert on the stream");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = rows_seen.lock().expect("rows").clone();
    assert_eq!(seen.len(), 1, "one notification (the checkpoint is not one): {seen:?}");
    assert_eq!((seen[0]["group"]["city"].as_str(), seen[0]["status"].as_str()), (Some("Seoul"), Some("firing")));
    sse.abort();
    server.shutdown.trigger();

    // With keys: unscoped keys only; the stream takes a token from POST /v1/stream/alerts/token.
    let all = "s3cret-two-0123456789";
    let keys = pulse_api::auth::ApiKeys::parse(&format!("s3cret-one-0123456789:city_metrics, {all}")).expect("keys");
    let server = Server::start(Arc::clone(&spec), &ch, ApiConfig { keys, ..ApiConfig::default() }).await;
    let c = server.http();
    assert_eq!(c.get("/v1/alerts").await.status, 401);
    let scoped = c.get_with("/v1/alerts", &[("authorization", "Bearer s3cret-one-0123456789")]).await;
    assert_eq!(scoped.status, 403, "{}", scoped.text);
    assert_eq!(c.get_with("/v1/alerts", &[("authorization", &format!("Bearer {all}"))]).await.status, 200);
    let token = c.with_key(all).request("POST", "/v1/stream/alerts/token", &[], "").await;
    assert_eq!(token.status, 200, "{}", token.text);
    let token = token.json["token"].as_str().expect("token").to_string();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sse =
        common::spawn_sse(format!("{}/v1/stream/alerts?token={}", server.url, pulse_client::encode_segment(&token)), Vec::new(), seen, Arc::clone(&subscribed));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !subscribed.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(std::time::Instant::now() < deadline, "not subscribed with a token");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sse.abort();
    server.shutdown.trigger();
    let _ = ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute().await;
}
