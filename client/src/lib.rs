//! Rust client of Pulse's HTTP APIs.
//!
//! ```no_run
//! # async fn example() -> Result<(), pulse_client::Error> {
//! use pulse_client::Client;
//! let client = Client::new("http://127.0.0.1:8081", Some("http://127.0.0.1:8080"), Some("secret-key"))?;
//! client.wait_until_ready(std::time::Duration::from_secs(30)).await?;
//! let ride = serde_json::json!({
//!     "event_type": "requested", "ride_id": "r-1", "city": "Berlin",
//!     "estimated_fare": 12.5, "user_id": "u-7", "timestamp": "2026-11-24T10:15:00Z"
//! });
//! let accepted = client.track("rides", &ride).await?;
//! println!("stored as {}", accepted.ids[0]);
//! # Ok(()) }
//! ```
//!
//! The write API (`track`, `track_batch`, `update`, `delete`) talks to
//! `pulse ingest`; read methods of `pulse api` live next to it and use the API
//! URL. Every call retries overload answers (429/503, honouring `Retry-After`)
//! and failed connection attempts up to [`ClientConfig::max_retries`] times
//! with exponential backoff; answers that say the request is wrong are never
//! retried. Plain HTTP only: terminate TLS in front of Pulse.

mod error;
mod ingest;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use hyper::header::HeaderValue;
use serde::Deserialize;

pub use error::{Error, FieldError};

/// What a write answered: how many events were stored and their ids, in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Accepted {
    pub accepted: usize,
    #[serde(default)]
    pub ids: Vec<String>,
}

/// `/health` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub service: String,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Upper bound for one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Bound for establishing a connection.
    pub connect_timeout: Duration,
    /// Retries of overload answers (429/503) and failed connection attempts.
    pub max_retries: u32,
    /// First retry delay when the server gave no `Retry-After`; doubles each retry.
    pub backoff: Duration,
    /// Cap of the computed backoff (a longer `Retry-After` is still honoured).
    pub max_backoff: Duration,
    /// Events per NDJSON request of `track_batch`.
    pub batch_size: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            batch_size: 1000,
        }
    }
}

/// A Pulse client; cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: transport::Http,
    ingest: Base,
    api: Option<Base>,
    auth: Option<HeaderValue>,
    cfg: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Client")
            .field("ingest", &self.inner.ingest.0)
            .field("api", &self.inner.api.as_ref().map(|b| &b.0))
            .field("authenticated", &self.inner.auth.is_some())
            .finish()
    }
}

/// A base URL (`http://host:port[/prefix]`) without a trailing slash.
#[derive(Debug, Clone)]
struct Base(String);

impl Base {
    fn parse(url: &str) -> Result<Base, Error> {
        let trimmed = url.trim().trim_end_matches('/');
        let uri: Uri = trimmed.parse().map_err(|e| Error::Config(format!("invalid URL `{url}`: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(Error::Config(format!("`{url}`: scheme {other} is not supported (plain http; terminate TLS in front of Pulse)"))),
            None => return Err(Error::Config(format!("`{url}`: expected http://host:port"))),
        }
        if uri.authority().is_none() {
            return Err(Error::Config(format!("`{url}`: no host")));
        }
        if uri.query().is_some() {
            return Err(Error::Config(format!("`{url}`: a base URL has no query")));
        }
        Ok(Base(trimmed.to_string()))
    }

    /// The URI of `path` (which starts with `/`) under this base.
    fn uri(&self, path: &str) -> Result<Uri, Error> {
        format!("{}{path}", self.0).parse().map_err(|e| Error::Config(format!("invalid request URI: {e}")))
    }
}

impl Client {
    /// A client of the ingest service at `ingest_url` (e.g. `http://127.0.0.1:8081`)
    /// and the read API at `api_url` (e.g. `http://127.0.0.1:8080`; `None` when only
    /// writing), sending `api_key` as a bearer token when given.
    pub fn new(ingest_url: &str, api_url: Option<&str>, api_key: Option<&str>) -> Result<Client, Error> {
        Client::with_config(ingest_url, api_url, api_key, ClientConfig::default())
    }

    pub fn with_config(ingest_url: &str, api_url: Option<&str>, api_key: Option<&str>, cfg: ClientConfig) -> Result<Client, Error> {
        let auth = match api_key.map(str::trim).filter(|k| !k.is_empty()) {
            None => None,
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| Error::Config("the API key holds characters not allowed in a header".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let cfg = ClientConfig { batch_size: cfg.batch_size.max(1), ..cfg };
        Ok(Client {
            inner: Arc::new(Inner {
                http: transport::Http::new(&cfg),
                ingest: Base::parse(ingest_url)?,
                api: api_url.map(Base::parse).transpose()?,
                auth,
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Base URL of the ingest service.
    pub fn ingest_url(&self) -> &str {
        &self.inner.ingest.0
    }

    /// Base URL of the read API, when configured.
    pub fn api_url(&self) -> Option<&str> {
        self.inner.api.as_ref().map(|b| b.0.as_str())
    }
}

/// Percent-encodes one path segment or query value (everything but RFC 3986
/// unreserved characters), as the client does for ids and domains.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        assert_eq!(Base::parse("http://127.0.0.1:8081/").map(|b| b.0).ok().as_deref(), Some("http://127.0.0.1:8081"));
        assert_eq!(Base::parse("http://h/pulse").map(|b| b.0).ok().as_deref(), Some("http://h/pulse"));
        assert!(matches!(Base::parse("https://h"), Err(Error::Config(_))));
        assert!(matches!(Base::parse("127.0.0.1:8081"), Err(Error::Config(_))));
        assert!(matches!(Base::parse("not a url"), Err(Error::Config(_))));
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_segment("app-1_x.y~"), "app-1_x.y~");
        assert_eq!(encode_segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }

    #[tokio::test]
    async fn debug_hides_the_key() {
        let c = Client::new("http://127.0.0.1:1", None, Some("s3cret")).expect("client");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret") && dbg.contains("authenticated: true"), "{dbg}");
    }
}
