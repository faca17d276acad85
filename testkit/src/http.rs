//! Plain HTTP/1 requests in tests: any method, headers and body against a
//! base URL, with an optional bearer key; the answer whole. From async tests
//! or, with a runtime of its own per call, from synchronous ones.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a request may take, answer body included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status, headers, the body, as text and (when it is JSON) parsed.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body as (lossy) UTF-8.
    pub text: String,
    /// The body parsed as JSON; `Null` when it is not JSON.
    pub json: serde_json::Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Requests to `base` (`http://host:port`; paths are appended to it, so an
/// empty base takes whole URLs), with `key` as a bearer token when set and
/// the request carries no `authorization` of its own.
#[derive(Clone)]
pub struct Http {
    client: HyperClient<HttpConnector, Full<Bytes>>,
    pub base: String,
    pub key: Option<String>,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http { client: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()), base: base.to_string(), key: None }
    }

    pub fn with_key(mut self, key: &str) -> Http {
        self.key = Some(key.to_string());
        self
    }

    /// The request; `Err` when no whole answer came within 30 s (nothing listening, a broken connection).
    pub async fn try_request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let mut req = hyper::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(k) = self.key.as_ref().filter(|_| !headers.iter().any(|(h, _)| h.eq_ignore_ascii_case("authorization"))) {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(body.into())).map_err(|e| format!("{method} {url}: {e}"))?;
        let answer = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{method} {url}: {e}"))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.map_err(|e| format!("{method} {url}: body: {e}"))?.to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            Ok(Answer { status, headers, body, text, json })
        };
        tokio::time::timeout(TIMEOUT, answer).await.map_err(|_| format!("{method} {url}: no answer within {TIMEOUT:?}"))?
    }

    /// The request; panics without an answer.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        self.try_request(method, path, headers, body).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request with a body of `content_type` (none when `None`).
    pub async fn send(&self, method: &str, path: &str, content_type: Option<&str>, body: impl Into<Bytes>) -> Answer {
        let headers: Vec<(&str, &str)> = content_type.map(|ct| ("content-type", ct)).into_iter().collect();
        self.request(method, path, &headers, body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", path, headers, Bytes::new()).await
    }

    /// [`Http::try_request`] from synchronous code (not inside a runtime): on
    /// a runtime and with a connection of its own.
    pub fn blocking(&self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Result<Answer, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
        // Pooled connections live on the runtime that opened them: a fresh client per call.
        let http = Http { key: self.key.clone(), ..Http::new(&self.base) };
        rt.block_on(http.try_request(method, path, headers, body))
    }

    pub fn blocking_get(&self, path: &str) -> Result<Answer, String> {
        self.blocking("GET", path, &[], Bytes::new())
    }
}
