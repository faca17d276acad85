//! Alerts end to end on the local broker (Tansu) and ClickHouse: a surge of
//! cancellations in six cities fires the shipped rule once per city after
//! `for`, a real HTTP receiver gets Alertmanager-format notifications, the
//! surge ends and the alerts resolve; the job restarts in between and the
//! receiver gets each notification exactly once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use common::start_job;
use pulse_clickhouse::migrate;
use pulse_kafka::{KafkaConfig, plan_topics};
use pulse_testkit::stack_clickhouse;
use pulse_testkit::{stack_brokers, unique_name, with_unique_topics};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Cities whose cancellations surge (one notification each way per city).
const SURGING: [&str; 6] = ["Paris", "Lima", "Seoul", "Cairo", "Delhi", "Lagos"];

/// (received at, ms since the epoch; body)
type Received = Arc<Mutex<Vec<(i64, serde_json::Value)>>>;

async fn receiver() -> (String, Received) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let app = Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let g = Arc::clone(&g);
            async move {
                let at = pulse_model::now_ms();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                g.lock().expect("lock").push((at, v));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

/// Rides of one minute of event time in one city: `requests` requested, a share of them cancelled.
fn minute(city: &str, t0: i64, requests: usize, cancel_share: f64, seq: &mut u64, out: &mut Vec<(String, String)>) {
    let cancels = (requests as f64 * cancel_share).round() as usize;
    for i in 0..requests {
        *seq += 1;
        let ride = format!("{city}-{seq}");
        let ts = t0 + (i as i64 * 60_000) / requests as i64;
        let ev = |kind: &str, ts: i64| {
            format!(r#"{{"event_type":"{kind}","ride_id":"{ride}","city":"{city}","estimated_fare":12.5,"user_id":"u-{seq}","timestamp":{ts}}}"#)
        };
        out.push((ride.clone(), ev("requested", ts)));
        if i < cancels {
            out.push((ride.clone(), ev("cancelled", ts + 500)));
        }
    }
}

fn produce(kafka: &KafkaConfig, topic: &str, records: &[(String, String)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka.reliable_producer().create().expect("producer");
    for (key, json) in records {
        producer.send(BaseRecord::to(topic).key(key).payload(json)).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

fn notifications(got: &Received) -> Vec<(i64, String, String, String, String)> {
    // (received at, status, city, startsAt, fingerprint)
    let mut out = Vec::new();
    for (at, v) in got.lock().expect("lock").iter() {
        for a in v["alerts"].as_array().into_iter().flatten() {
            out.push((
                *at,
                a["status"].as_str().unwrap_or_default().to_string(),
                a["labels"]["city"].as_str().unwrap_or_default().to_string(),
                a["startsAt"].as_str().unwrap_or_default().to_string(),
                a["fingerprint"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

fn wait_for(got: &Received, status: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while notifications(got).iter().filter(|x| x.1 == status).count() < n {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {n} `{status}` notifications, got {:#?}", notifications(got));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_surge_fires_once_per_city_survives_a_restart_and_resolves() {
    let Some(brokers) = stack_brokers() else { return };
    let Some(ch) = stack_clickhouse("pulse_df_alerts") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (url, got) = rt.block_on(receiver());

    // The shipped spec and rule, with `for` shortened to 2 minutes and our receiver.
    let text = with_unique_topics(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../pulse.toml")).expect("spec"));
    assert!(text.contains("for = \"5m\""), "the shipped rule changed");
    let text = text.replacen("for = \"5m\"", &format!("for = \"2m\"\nwebhook = \"{url}\""), 1);
    let spec = Arc::new(pulse_model::Spec::parse(std::path::Path::new("pulse.toml"), &text).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(spec.alerts.len(), 1);
    let kafka = KafkaConfig { brokers, properties: Vec::new() };
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = kafka.client().create().expect("admin");
        pulse_kafka::ensure_topics(&admin, &plan_topics(&spec)).await.expect("topics");
    });
    rt.block_on(migrate(&ch, &spec)).expect("migrate");
    let group = unique_name("df-alerts");
    let topic = spec.domain("rides").expect("rides").topic.clone();

    // 24 minutes of event time ending now: the surging cities cancel 50% of their rides
    // in minutes 3..13, 5% otherwise; Oslo always 5%. 40 requests per city-minute.
    let t0 = (pulse_model::now_ms() - 24 * 60_000) / 60_000 * 60_000;
    let mut seq = 0;
    let mut part = |from: i64, to: i64| {
        let mut out = Vec::new();
        for m in from..to {
            for city in SURGING.iter().chain(["Oslo"].iter()) {
                let surge = *city != "Oslo" && (3..13).contains(&m);
                minute(city, t0 + m * 60_000, 40, if surge { 0.5 } else { 0.05 }, &mut seq, &mut out);
            }
        }
        out
    };
    let first = part(0, 12);
    let second = part(12, 24);

    produce(&kafka, &topic, &first);
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), &group);
    wait_for(&got, "firing", SURGING.len(), Duration::from_secs(120));
    // Let the job go on a little (more revisions and finals of firing windows), then stop it.
    std::thread::sleep(Duration::from_secs(4));
    stop.trigger();
    job.join().expect("job thread");
    let before = notifications(&got);
    let firing: Vec<_> = before.iter().filter(|n| n.1 == "firing").collect();
    let mut cities: Vec<_> = firing.iter().map(|n| n.2.as_str()).collect();
    cities.sort();
    let mut want = SURGING.to_vec();
    want.sort();
    assert_eq!(cities, want, "{before:#?}");
    assert!(before.iter().all(|n| n.1 == "firing"), "nothing resolves during the surge: {before:#?}");

    // Restart: the same group resumes; the surge ends in the second part.
    let (stop, job) = start_job(Arc::clone(&spec), kafka.clone(), ch.clone(), rt.handle().clone(), &group);
    produce(&kafka, &topic, &second);
    wait_for(&got, "resolved", SURGING.len(), Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(4));
    stop.trigger();
    job.join().expect("job thread");

    let all = notifications(&got);
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for n in &all {
        *per.entry((n.2.clone(), n.1.clone())).or_default() += 1;
    }
    for city in SURGING {
        assert_eq!(per.get(&(city.to_string(), "firing".to_string())), Some(&1), "{city} fires exactly once: {all:#?}");
        assert_eq!(per.get(&(city.to_string(), "resolved".to_string())), Some(&1), "{city} resolves exactly once: {all:#?}");
        let f = all.iter().find(|n| n.2 == city && n.1 == "firing").expect("firing");
        let r = all.iter().find(|n| n.2 == city && n.1 == "resolved").expect("resolved");
        assert_eq!((&f.3, &f.4), (&r.3, &r.4), "resolved carries the firing's startsAt and fingerprint");
    }
    assert!(!all.iter().any(|n| n.2 == "Oslo"), "Oslo never fires: {all:#?}");
    // Fired after `for`: the run of windows starts no earlier than the surge.
    for (_, status, city, starts_at, _) in &all {
        if status == "firing" {
            let at = chrono_ms(starts_at);
            assert!(at >= t0 + (3 + 2) * 60_000, "{city} fired at {starts_at}, before the surge had lasted `for`");
        }
    }

    // The history in ClickHouse: firing and resolved per city, with the decision's row time.
    let sql = format!(
        "SELECT group_key, toString(event) AS e, toUnixTimestamp64Milli(row_emitted_at) AS emitted, toString(fingerprint) AS fp \
         FROM {}.pulse_alerts WHERE consumer_group = ? AND event IN ('firing', 'resolved') ORDER BY seq",
        ch.database
    );
    let rows: Vec<(String, String, i64, String)> = rt.block_on(ch.client().query(&sql).bind(&group).fetch_all()).expect("alerts history");
    assert_eq!(rows.iter().filter(|r| r.1 == "firing").count(), SURGING.len(), "{rows:#?}");
    assert_eq!(rows.iter().filter(|r| r.1 == "resolved").count(), SURGING.len(), "{rows:#?}");
    // The topic: the same notifications, keyed rule/group.
    let on_topic = common::topic_rows(&kafka, &spec.pipeline.alerts_topic);
    let mut topic: Vec<(String, String)> = on_topic.iter().map(|(k, _, _, v)| (k.clone(), v["status"].as_str().unwrap_or_default().to_string())).collect();
    topic.sort();
    let key = |city: &str| format!("city_cancellation_rate_high/city={city}");
    let mut want: Vec<(String, String)> = SURGING.iter().flat_map(|c| [(key(c), "firing".to_string()), (key(c), "resolved".to_string())]).collect();
    want.sort();
    assert_eq!(topic, want, "{on_topic:#?}");
    // Time from the row that completed `for` (or ended the alert) to the receiver.
    let mut latencies: Vec<i64> = Vec::new();
    for (_, status, _, _, fp) in &all {
        if let (Some(row), Some(recv)) = (rows.iter().find(|r| &r.3 == fp && &r.1 == status), all.iter().find(|n| &n.4 == fp && &n.1 == status)) {
            latencies.push(recv.0 - row.2);
        }
    }
    latencies.sort();
    let pct = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    eprintln!("alert delivery latency (row emitted -> webhook received), ms: p50 {} p99 {} of {latencies:?}", pct(0.5), pct(0.99));
    assert_eq!(latencies.len(), 2 * SURGING.len(), "every notification timed");
    assert!(latencies.iter().all(|&l| l < 1_000), "every notification within a second of its row: {latencies:?}");
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE {}", ch.database)).execute()).expect("drop");
}

fn chrono_ms(rfc3339: &str) -> i64 {
    // 2026-12-02T07:00:00.000Z
    let parse = |s: &str| -> Option<i64> {
        let (date, time) = s.trim_end_matches('Z').split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
        let (hms, ms) = time.split_once('.').unwrap_or((time, "0"));
        let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
        let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
        // Days from the civil date (Howard Hinnant's algorithm).
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + dd - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) + ms.parse::<i64>().ok()?)
    };
    parse(rfc3339).unwrap_or(0)
}
