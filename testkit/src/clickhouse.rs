//! Helpers for tests against the local stack's ClickHouse.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;

use crate::stack::{stack_brokers, unique_name};

/// A config pointing at the local stack's ClickHouse with a fresh database name,
/// when the tests run with the stack (`PULSE_TEST_STACK=1`); `None` means skip.
pub fn stack_clickhouse(prefix: &str) -> Option<ClickHouseConfig> {
    stack_brokers()?;
    let url = std::env::var("PULSE_CLICKHOUSE_URL").unwrap_or_else(|_| pulse_clickhouse::config::DEFAULT_URL.into());
    Some(ClickHouseConfig { url, database: unique_name(prefix), ..ClickHouseConfig::default() })
}

/// The rows of a query as JSON objects (`JSONEachRow`, 64-bit integers as
/// numbers), with `{name:Type}` parameters bound from `params`. Panics on error.
pub async fn json_rows(ch: &ClickHouseConfig, sql: &str, params: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut q = ch.client().query_raw(sql).with_setting("output_format_json_quote_64bit_integers", "0");
    for (name, value) in params {
        q = q.param(name, *value);
    }
    let bytes = q.fetch_bytes("JSONEachRow").unwrap_or_else(|e| panic!("{sql}: {e}")).collect().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap_or_else(|e| panic!("{sql}: row: {e}"))).collect()
}

/// A private ClickHouse (the chDB front-end) that the test can stop and start.
pub struct PrivateClickHouse {
    pub port: u16,
    data: PathBuf,
    child: Option<Child>,
}

impl PrivateClickHouse {
    /// A server on `port` with a fresh data directory (not started).
    pub fn new(port: u16) -> PrivateClickHouse {
        PrivateClickHouse { port, data: std::env::temp_dir().join(unique_name("pulse-chdb")), child: None }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn python() -> PathBuf {
        std::env::var("PULSE_CHDB_PYTHON").map(PathBuf::from).unwrap_or_else(|_| {
            let cache = std::env::var("PULSE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/pulse"));
            cache.join("venv/bin/python")
        })
    }

    /// Starts (or restarts, on the same data) and waits until it accepts connections.
    pub fn start(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chdb_server.py");
        let child = Command::new(Self::python())
            .arg(script)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--data"])
            .arg(&self.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chDB front-end");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private ClickHouse did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it hard (SIGKILL); the data stays for the next start.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
