//! ClickHouse connection settings (`PULSE_CLICKHOUSE_*`) and the client built from them.

use std::time::Duration;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8123";
pub const DEFAULT_DATABASE: &str = "pulse";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// LZ4-compress INSERT bodies (ClickHouse's native block compression).
    pub compress: bool,
    /// Upper bound for one query or insert.
    pub timeout: Duration,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: DEFAULT_URL.into(),
            database: DEFAULT_DATABASE.into(),
            user: None,
            password: None,
            compress: true,
            timeout: Duration::from_secs(30),
        }
    }
}

impl ClickHouseConfig {
    /// A client bound to the configured database.
    pub fn client(&self) -> clickhouse::Client {
        self.client_for(Some(&self.database))
    }

    /// A client with no default database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> clickhouse::Client {
        self.client_for(None)
    }

    fn client_for(&self, database: Option<&str>) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_compression(if self.compress { clickhouse::Compression::Lz4 } else { clickhouse::Compression::None })
            // Rows are encoded from the spec-derived schema; the schema is checked by migrate.
            .with_validation(false);
        if let Some(db) = database {
            c = c.with_database(db);
        }
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }

    /// Same settings, another database (tests use one database each).
    pub fn with_database(&self, database: impl Into<String>) -> ClickHouseConfig {
        ClickHouseConfig { database: database.into(), ..self.clone() }
    }
}
