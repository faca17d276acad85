//! Running read queries: server-side parameters only, a timeout on every query
//! (ClickHouse's `max_execution_time` and a client-side deadline), errors mapped
//! to HTTP answers (unreachable or too slow → 503, anything else → 500, logged).

use std::time::{Duration, Instant};

use pulse_clickhouse::ClickHouseConfig;
use serde_json::Value;

use crate::error::ApiError;
use crate::metrics::ApiMetrics;

/// A parameter value bound on the server (`{name:Type}` in the SQL text).
#[derive(Debug, Clone)]
pub enum Param {
    Str(String),
    I64(i64),
    U64(u64),
    Bool(bool),
}

/// SQL text (identifiers from the spec only) plus its parameters.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub params: Vec<(String, Param)>,
    /// Settings of this query only (names and values from the code, never from input).
    pub settings: Vec<(&'static str, &'static str)>,
}

impl Sql {
    pub fn new(text: impl Into<String>) -> Sql {
        Sql { text: text.into(), params: Vec::new(), settings: Vec::new() }
    }

    /// Adds a ClickHouse setting to this query's `SETTINGS` clause.
    pub fn setting(&mut self, name: &'static str, value: &'static str) -> &mut Sql {
        self.settings.push((name, value));
        self
    }

    pub fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Binds `name` and returns its placeholder, e.g. `{p0:String}`.
    pub fn bind(&mut self, ty: &str, value: Param) -> String {
        let name = format!("p{}", self.params.len());
        let placeholder = format!("{{{name}:{ty}}}");
        self.params.push((name, value));
        placeholder
    }
}

#[derive(Clone)]
pub struct Db {
    client: clickhouse::Client,
    timeout: Duration,
    retry_after: u64,
    metrics: ApiMetrics,
}

impl Db {
    pub fn new(cfg: &ClickHouseConfig, metrics: ApiMetrics) -> Db {
        // readonly=2: reads only, while the query may still set its own limits.
        let client = cfg.client().with_setting("readonly", "2");
        Db { client, timeout: cfg.timeout, retry_after: 2, metrics }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `sql` and returns its rows as JSON arrays (`JSONCompactEachRow`).
    pub async fn rows(&self, label: &'static str, sql: Sql) -> Result<Vec<Vec<Value>>, ApiError> {
        let secs = self.timeout.as_secs_f64().max(0.001);
        let extra: String = sql.settings.iter().map(|(name, value)| format!(", {name} = {value}")).collect();
        let text = format!(
            "{}\nSETTINGS max_execution_time = {secs}, output_format_json_quote_64bit_integers = 0, output_format_json_quote_denormals = 0{extra}",
            sql.text
        );
        let mut q = self.client.query_raw(&text);
        for (name, value) in &sql.params {
            q = match value {
                Param::Str(s) => q.param(name, s.as_str()),
                Param::I64(i) => q.param(name, *i),
                Param::U64(u) => q.param(name, *u),
                Param::Bool(b) => q.param(name, *b),
            };
        }
        let started = Instant::now();
        let fetch = async {
            let mut cursor = q.fetch_bytes("JSONCompactEachRow")?;
            let body = cursor.collect().await?;
            let elapsed = cursor.summary().and_then(|s| s.elapsed_ns());
            Ok::<_, clickhouse::error::Error>((body, elapsed))
        };
        let result = tokio::time::timeout(self.timeout, fetch).await;
        self.metrics.query_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        let (body, elapsed) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.fail(label, &e)),
            Err(_) => {
                self.metrics.query_errors.with_label_values(&[label, "timeout"]).inc();
                tracing::warn!(query = label, timeout = ?self.timeout, "ClickHouse query timed out");
                return Err(ApiError::Unavailable { message: "ClickHouse did not answer in time".into(), retry_after: self.retry_after });
            }
        };
        if let Some(ns) = elapsed {
            self.metrics.engine_seconds.with_label_values(&[label]).observe(ns as f64 / 1e9);
        }
        let mut rows = Vec::new();
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Vec<Value>>(line) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    self.metrics.query_errors.with_label_values(&[label, "error"]).inc();
                    tracing::error!(query = label, "unreadable ClickHouse answer: {e}");
                    return Err(ApiError::Internal);
                }
            }
        }
        Ok(rows)
    }

    fn fail(&self, label: &'static str, e: &clickhouse::error::Error) -> ApiError {
        use clickhouse::error::Error as E;
        let unavailable = |kind: &str, message: &str| {
            self.metrics.query_errors.with_label_values(&[label, kind]).inc();
            tracing::warn!(query = label, "ClickHouse unavailable: {e}");
            ApiError::Unavailable { message: message.into(), retry_after: self.retry_after }
        };
        match e {
            E::Network(_) => unavailable("unavailable", "ClickHouse is unreachable"),
            E::TimedOut => unavailable("timeout", "ClickHouse did not answer in time"),
            E::BadResponse(text) if is_transient(text) => unavailable("timeout", "ClickHouse is overloaded or the query took too long; retry later"),
            E::BadResponse(text) if text.contains("UNKNOWN_TABLE") || text.contains("UNKNOWN_DATABASE") => {
                unavailable("unavailable", "ClickHouse does not have Pulse's tables yet (run `pulse migrate`)")
            }
            other => {
                self.metrics.query_errors.with_label_values(&[label, "error"]).inc();
                tracing::error!(query = label, "ClickHouse query failed: {other}");
                ApiError::Internal
            }
        }
    }

    /// Whether ClickHouse answers a trivial query within 3 s.
    pub async fn ping(&self) -> bool {
        let q = self.client.query_raw("SELECT 1");
        matches!(tokio::time::timeout(Duration::from_secs(3), q.fetch_one::<u8>()).await, Ok(Ok(1)))
    }
}

fn is_transient(text: &str) -> bool {
    ["TIMEOUT_EXCEEDED", "TOO_MANY_SIMULTANEOUS_QUERIES", "MEMORY_LIMIT_EXCEEDED", "SOCKET_TIMEOUT", "NETWORK_ERROR"].iter().any(|n| text.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_numbered_placeholders() {
        let mut sql = Sql::new("SELECT 1 WHERE a = ");
        let p = sql.bind("String", Param::Str("x' OR 1=1 --".into()));
        sql.push(&p).push(" AND b = ");
        let p = sql.bind("Int64", Param::I64(5));
        sql.push(&p);
        assert_eq!(sql.text, "SELECT 1 WHERE a = {p0:String} AND b = {p1:Int64}");
        assert_eq!(sql.params.len(), 2);
    }
}
