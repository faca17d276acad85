//! The live page in headless Chromium, driven over the DevTools protocol: the
//! city table fills from the API, and a new revision produced to the aggregated
//! topic changes a value and highlights the city (cancellation rate > 30%).
//! Needs the local stack (ClickHouse) and Chromium (`scripts/setup.sh` installs it).

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Server, now_ms};
use pulse_api::ApiConfig;
use pulse_api::config::StreamConfig;
use pulse_clickhouse::schema::metric_table;
use pulse_clickhouse::{Writer, WriterMetrics};
use pulse_kafka::{KafkaConfig, plan_topics, topics::create_on_mock};
use pulse_model::Spec;
use pulse_model::metric_row::{AggValue, GroupValue, MetricRow, RowShape};
use pulse_ops::prometheus::Registry;
use pulse_testkit::stack_clickhouse;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PULSE_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// Chromium, stopped (by its own pid) when dropped.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn launch(bin: &Path, url: &str) -> (Browser, u16) {
    let profile = std::env::temp_dir().join(pulse_testkit::unique_name("pulse-chromium"));
    std::fs::create_dir_all(&profile).expect("profile dir");
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ])
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1400,900")
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let browser = Browser { child, profile: profile.clone() };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort"))
            && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
        {
            return (browser, port);
        }
        assert!(Instant::now() < deadline, "chromium did not open its DevTools port");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /json/list` on the DevTools port: the page target's websocket URL.
fn page_socket(port: u16, page_url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut body = String::new();
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
            // The answer is complete when Content-Length bytes of body arrived.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, rest)) = text.split_once("\r\n\r\n")
                    && let Some(len) =
                        head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                    && rest.len() >= len
                {
                    break;
                }
            }
            body = String::from_utf8_lossy(&buf).into_owned();
        }
        if let Some(json) = body.split("\r\n\r\n").nth(1)
            && let Ok(Value::Array(targets)) = serde_json::from_str::<Value>(json)
            && let Some(ws) = targets
                .iter()
                .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(page_url)))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        {
            return ws.to_string();
        }
        assert!(Instant::now() < deadline, "no page target on the DevTools port: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Cdp {
    ws: WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).expect("send");
        loop {
            match self.ws.read().expect("devtools message") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["id"] == id {
                        assert!(v.get("error").is_none(), "{method}: {v}");
                        return v["result"].clone();
                    }
                }
                Message::Close(_) => panic!("devtools closed"),
                _ => {}
            }
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true}));
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true.
    fn wait_for(&mut self, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(expr) != json!(true) {
            let table = self.eval("document.getElementById('cities').innerText + ' | ' + document.getElementById('status').innerText");
            assert!(Instant::now() < deadline, "timed out waiting for {what}; page shows: {table}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn row(spec: &Spec, metric: &str, city: &str, ws: i64, values: Vec<AggValue>, is_final: bool, revision: u64) -> MetricRow {
    MetricRow {
        metric: spec.metrics.iter().position(|m| m.name == metric).expect("metric"),
        group: vec![GroupValue::Str(city.into())],
        window_start: ws,
        window_end: ws + 300_000,
        values,
        is_final,
        revision,
        emitted_at: now_ms(),
        deleted: false,
    }
}

fn city_values(requests: u64, cancellations: u64, fare: f64) -> Vec<AggValue> {
    let rate = if requests == 0 { None } else { Some(cancellations as f64 / requests as f64) };
    vec![
        AggValue::Count(requests * 3),
        AggValue::Count(requests),
        AggValue::Count(requests - cancellations),
        AggValue::Count(cancellations),
        AggValue::Float(Some(fare)),
        AggValue::Count(requests),
        AggValue::Float(rate),
    ]
}

#[test]
fn live_page_fills_and_updates_from_the_stream() {
    let Some(ch) = stack_clickhouse("pulse_api_page") else {
        return;
    };
    let Some(bin) = chromium() else {
        eprintln!("skipped: no Chromium (scripts/setup.sh installs it; or set PULSE_CHROMIUM)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mock = MockCluster::new(1).expect("mock cluster");
    let spec = pulse_testkit::unique_spec();
    create_on_mock(&mock, &plan_topics(&spec)).expect("topics");
    let kafka = KafkaConfig { brokers: mock.bootstrap_servers(), properties: Vec::new() };
    rt.block_on(pulse_clickhouse::migrate(&ch, &spec)).expect("migrate");

    // Three windows of three cities, as the dataflow would have stored them.
    let base = (now_ms() / 60_000 - 10) * 60_000;
    let writer = Writer::new(&ch, WriterMetrics::new(&Registry::new()).expect("metrics"));
    let mut rows = Vec::new();
    for (i, city) in ["Berlin", "Lima", "Paris"].iter().enumerate() {
        for w in 0..3 {
            rows.push(row(&spec, "city_metrics", city, base + w * 60_000, city_values(20 + i as u64 + w as u64, 2 + w as u64, 12.5), w < 2, 5));
        }
        let (requests, drivers) = (22.0 + i as f64, 7.0 + i as f64);
        let balance = vec![
            AggValue::Float(Some(requests)),
            AggValue::Float(Some(drivers)),
            AggValue::Float(Some(requests / drivers)),
            AggValue::Float(Some(requests - drivers)),
        ];
        rows.push(row(&spec, "city_balance", city, base + 120_000, balance, false, 3));
    }
    rt.block_on(async {
        for name in ["city_metrics", "city_balance"] {
            let t = metric_table(&spec, spec.metric(name).expect("metric"));
            let mut buf = BytesMut::new();
            for r in rows.iter().filter(|r| spec.metrics[r.metric].name == name) {
                t.encode(r, &mut buf);
            }
            writer.insert_once(&t.table.insert_sql(&ch.database), buf.freeze()).await.expect("insert");
        }
    });

    let stream = StreamConfig { keep_alive: Duration::from_secs(1), ..StreamConfig::new(kafka.clone()) };
    // With a read key: the page sends it in headers only, and streams with short-lived tokens.
    const KEY: &str = "page-key-0123456789abcdef";
    let cfg = ApiConfig { stream: Some(stream), keys: pulse_api::auth::ApiKeys::new([KEY]), ..ApiConfig::default() };
    let server = rt.block_on(Server::start(Arc::clone(&spec), &ch, cfg));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.api.stream_ready() {
        assert!(Instant::now() < deadline, "stream consumer not assigned");
        std::thread::sleep(Duration::from_millis(50));
    }

    let page_url = format!("{}/", server.url);
    let (_browser, port) = launch(&bin, &format!("{page_url}#key={KEY}"));
    let (ws, _) = tungstenite::connect(page_socket(port, &page_url)).expect("devtools websocket");
    let mut cdp = Cdp { ws, next: 0 };
    let cell = |city: &str, col: &str| format!("(document.querySelector('tr[data-city=\"{city}\"] td[data-col=\"{col}\"]') || {{}}).textContent");

    // The table fills from the snapshot: three cities, newest window each.
    cdp.wait_for("document.querySelectorAll('tr[data-city]').length === 3", "three city rows");
    assert_eq!(cdp.eval(&cell("Lima", "requests")), json!("23"));
    assert_eq!(cdp.eval(&cell("Lima", "cancellation_rate")), json!("17.4%"));
    assert_eq!(cdp.eval(&cell("Lima", "active_drivers")), json!("8"));
    assert_eq!(cdp.eval(&cell("Lima", "requests_per_driver")), json!("2.88"));
    assert_eq!(cdp.eval("document.querySelector('tr[data-city=\"Lima\"]').classList.contains('alert')"), json!(false));
    assert_eq!(cdp.eval("document.querySelector('tr[data-city=\"Lima\"] svg').dataset.points"), json!("3"));
    cdp.wait_for("document.getElementById('status').className === 'live'", "the stream to connect");

    // A new revision of Lima's newest window arrives on the aggregated topic: 50% cancelled.
    let producer: FutureProducer = kafka.reliable_producer().create().expect("producer");
    let send = |r: MetricRow| {
        let shape = RowShape::new(&spec, &spec.metrics[r.metric]);
        let (key, payload) = (r.key(&shape), r.to_json(&shape));
        let topic = spec.pipeline.aggregated_topic.clone();
        let producer = producer.clone();
        async move { producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("ack") }
    };
    rt.block_on(send(row(&spec, "city_metrics", "Lima", base + 120_000, city_values(999, 500, 14.0), false, 6)));
    let balance = vec![AggValue::Float(Some(999.0)), AggValue::Float(Some(42.0)), AggValue::Float(Some(999.0 / 42.0)), AggValue::Float(Some(957.0))];
    rt.block_on(send(row(&spec, "city_balance", "Lima", base + 120_000, balance, false, 4)));
    cdp.wait_for(&format!("{} === '999'", cell("Lima", "requests")), "Lima's requests to change");
    cdp.wait_for(&format!("{} === '42'", cell("Lima", "active_drivers")), "Lima's active drivers to change");
    assert_eq!(cdp.eval(&cell("Lima", "requests_per_driver")), json!("23.79"));
    assert_eq!(cdp.eval(&cell("Lima", "cancellation_rate")), json!("50.1%"));
    assert_eq!(cdp.eval("document.querySelector('tr[data-city=\"Lima\"]').classList.contains('alert')"), json!(true));
    assert_eq!(cdp.eval("document.querySelector('tr[data-city=\"Paris\"]').classList.contains('alert')"), json!(false));

    // A newer window extends the sparkline and becomes the row.
    rt.block_on(send(row(&spec, "city_metrics", "Lima", base + 180_000, city_values(40, 4, 11.0), false, 1)));
    cdp.wait_for(&format!("{} === '40'", cell("Lima", "requests")), "Lima's newest window");
    assert_eq!(cdp.eval("document.querySelector('tr[data-city=\"Lima\"] svg').dataset.points"), json!("4"));
    assert_eq!(cdp.eval("document.querySelector('tr[data-city=\"Lima\"]').classList.contains('alert')"), json!(false));

    // Keep a picture of the page for people (target/tmp).
    rt.block_on(send(row(&spec, "city_metrics", "Paris", base + 180_000, city_values(30, 12, 13.0), false, 1)));
    cdp.wait_for(&format!("{} === '30'", cell("Paris", "requests")), "Paris's newest window");
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    if let Some(data) = shot["data"].as_str() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("pulse-live-page.png.b64"), data);
    }
    server.shutdown.trigger();
    rt.block_on(ch.server_client().query(&format!("DROP DATABASE `{}`", ch.database)).execute()).expect("drop");
    drop(mock);
}
