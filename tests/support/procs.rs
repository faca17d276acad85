//! Pulse's services as separate processes for tests: start, wait for
//! readiness, speak HTTP (the test kit's `Http`), read ClickHouse.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use pulse_kafka::KafkaConfig;
use pulse_model::Spec;
use pulse_testkit::{Http, unique_name};

/// A running `pulse` process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Service {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn start(name: &'static str, env: &[(String, String)], args: &[&str], dir: &std::path::Path) -> Service {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Service { name, child, log }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.alive() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use pulse_testkit::free_port;

/// The deployment's write key (ingest) and read key (api): services refuse to start without keys.
pub const WRITE_KEY: &str = "test-write-key-0123456789abcdef";
pub const READ_KEY: &str = "test-read-key-0123456789abcdef";

pub fn wait_ready(url: &str, svc: &mut Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(svc.alive(), "{} exited: {}", svc.name, std::fs::read_to_string(&svc.log).unwrap_or_default());
        if Http::new(url).blocking_get("").is_ok_and(|a| a.status == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{} not ready: {}", svc.name, std::fs::read_to_string(&svc.log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Accepted events per domain, from ingest's Prometheus metrics.
pub fn accepted(metrics: &str) -> HashMap<String, u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("pulse_ingest_events_total{") && l.contains("outcome=\"accepted\""))
        .filter_map(|l| {
            let domain = l.split("domain=\"").nth(1)?.split('"').next()?.to_string();
            let value: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((domain, value as u64))
        })
        .collect()
}

pub fn rows(rt: &tokio::runtime::Runtime, ch: &ClickHouseConfig, sql: &str) -> Vec<serde_json::Value> {
    rt.block_on(pulse_testkit::json_rows(ch, sql, &[]))
}

/// The value of a Prometheus sample whose line starts with `prefix` (summed over matching lines).
pub fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A deployment of Pulse's services as separate processes on a fresh spec
/// (unique topics), database and ports, against the local stack.
pub struct Deployment {
    pub dir: PathBuf,
    pub spec: Spec,
    pub ch: ClickHouseConfig,
    pub kafka: KafkaConfig,
    /// The PULSE_* variables every process of it gets.
    pub env: Vec<(String, String)>,
    pub ingest_port: u16,
    pub api_port: u16,
    pub dataflow_metrics_port: u16,
}

impl Deployment {
    /// Writes the spec, then runs `pulse topics` and `pulse migrate`.
    pub fn new(prefix: &str, brokers: &str) -> Deployment {
        let url = std::env::var("PULSE_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("dir");
        let spec_path = dir.join("pulse.toml");
        std::fs::write(&spec_path, pulse_testkit::unique_spec_text()).expect("spec");
        let spec = Spec::load(&spec_path).expect("spec");
        let ch = ClickHouseConfig { url: url.clone(), database: unique_name(&prefix.replace('-', "_")), ..ClickHouseConfig::default() };
        let kafka = KafkaConfig { brokers: brokers.to_string(), properties: Vec::new() };
        let (ingest_port, api_port, dataflow_metrics_port) = (free_port(), free_port(), free_port());
        let env = [
            ("PULSE_SPEC", spec_path.display().to_string()),
            ("PULSE_KAFKA_BROKERS", brokers.to_string()),
            ("PULSE_CLICKHOUSE_URL", url),
            ("PULSE_CLICKHOUSE_DATABASE", ch.database.clone()),
            ("PULSE_LOG", "info".into()),
            ("PULSE_INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
            ("PULSE_API_ADDR", format!("127.0.0.1:{api_port}")),
            ("PULSE_SINK_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("PULSE_DATAFLOW_METRICS_ADDR", format!("127.0.0.1:{dataflow_metrics_port}")),
            ("PULSE_SINK_BATCH_MS", "300".into()),
            ("PULSE_INGEST_API_KEYS", WRITE_KEY.into()),
            ("PULSE_API_KEYS", READ_KEY.into()),
            // `pulse loadgen` sends this one.
            ("PULSE_API_KEY", WRITE_KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let d = Deployment { dir, spec, ch, kafka, env, ingest_port, api_port, dataflow_metrics_port };
        d.run(&["topics"]);
        d.run(&["migrate"]);
        d
    }

    /// Runs a `pulse` subcommand to completion; it must succeed.
    pub fn run(&self, args: &[&str]) {
        let out = Command::new(env!("CARGO_BIN_EXE_pulse")).args(args).envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).output().expect("run");
        assert!(out.status.success(), "pulse {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }

    /// Starts a long-running `pulse` subcommand (stopped when dropped).
    pub fn start(&self, name: &'static str, args: &[&str]) -> Service {
        Service::start(name, &self.env, args, &self.dir)
    }

    pub fn ingest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingest_port)
    }

    /// Requests to its ingest, with the write key.
    pub fn ingest(&self) -> Http {
        Http::new(&self.ingest_url()).with_key(WRITE_KEY)
    }

    /// Requests to its API, with the read key.
    pub fn api(&self) -> Http {
        Http::new(&format!("http://127.0.0.1:{}", self.api_port)).with_key(READ_KEY)
    }

    /// Requests to the dataflow's operations endpoint (metrics, health).
    pub fn dataflow_ops(&self) -> Http {
        Http::new(&format!("http://127.0.0.1:{}", self.dataflow_metrics_port))
    }

    /// Drops the database and the work directory.
    pub fn remove(self, rt: &tokio::runtime::Runtime) {
        let _ = rt.block_on(self.ch.server_client().query(&format!("DROP DATABASE IF EXISTS `{}`", self.ch.database)).execute());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
