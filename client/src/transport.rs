//! HTTP/1.1 over hyper-util's pooled client, with the retry policy: overload
//! answers (429/503) and failed connection attempts are retried with
//! exponential backoff and jitter, honouring `Retry-After`; anything else is
//! returned as it is (a request that may have reached the server is not resent
//! after a transport error, so a write is never duplicated by the client).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, from_status};
use crate::{Client, ClientConfig};

/// Largest answer body the client reads.
const MAX_ANSWER: usize = 64 << 20;

#[derive(Clone)]
pub(crate) struct Http {
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(cfg: &ClientConfig) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(50)).pool_max_idle_per_host(usize::MAX).build(connector);
        Http { client }
    }
}

/// A successful (2xx) answer.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// One outcome of one attempt.
enum Attempt {
    Done(Answer),
    /// 429/503 with the server's Retry-After.
    Overloaded {
        status: u16,
        retry_after: Option<Duration>,
        body: Bytes,
    },
    Failed(Error),
    /// The connection could not be established: the request never left.
    ConnectFailed(String),
}

impl Client {
    /// Sends a request with the retry policy; non-2xx answers become typed errors.
    pub(crate) async fn send(&self, method: Method, uri: Uri, content_type: Option<&'static str>, body: Bytes) -> Result<Answer, Error> {
        let cfg = &self.inner.cfg;
        let mut attempt = 0u32;
        loop {
            let outcome = match tokio::time::timeout(cfg.timeout, self.attempt(&method, &uri, content_type, body.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => Attempt::Failed(Error::Timeout(cfg.timeout)),
            };
            let (retry_after, last) = match outcome {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Failed(e) => return Err(e),
                Attempt::Overloaded { status, retry_after, body } => (retry_after, from_status(status, retry_after, &body)),
                Attempt::ConnectFailed(msg) => (None, Error::Transport(msg)),
            };
            if attempt >= cfg.max_retries {
                return Err(last);
            }
            let delay = backoff(cfg, attempt, retry_after);
            tracing::debug!(%uri, attempt, ?delay, "retrying: {last}");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, method: &Method, uri: &Uri, content_type: Option<&'static str>, body: Bytes) -> Attempt {
        let mut req = Request::builder().method(method.clone()).uri(uri.clone());
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(auth) = &self.inner.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(Error::Config(format!("cannot build the request: {e}"))),
        };
        let resp = match self.inner.http.client.request(req).await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Attempt::ConnectFailed(error_chain(&e)),
            Err(e) => return Attempt::Failed(Error::Transport(error_chain(&e))),
        };
        let status = resp.status();
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let body = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Attempt::Failed(Error::Transport(format!("reading the answer: {e}"))),
        };
        if status.is_success() {
            Attempt::Done(Answer { status, body })
        } else if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            Attempt::Overloaded { status: status.as_u16(), retry_after, body }
        } else {
            Attempt::Failed(from_status(status.as_u16(), retry_after, &body))
        }
    }
}

/// Delay before retry `attempt` (0-based): the server's Retry-After when given,
/// at least the exponential backoff (capped), plus up to 25 % jitter.
fn backoff(cfg: &ClientConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = cfg.backoff.saturating_mul(1u32 << attempt.min(16)).min(cfg.max_backoff);
    let base = retry_after.map_or(exp, |r| r.max(exp));
    let jitter_ms = (base.as_millis() as u64 / 4).max(1);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    base + Duration::from_millis(SmallRng::seed_from_u64(seed ^ u64::from(attempt)).random_range(0..jitter_ms))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let cfg = ClientConfig { backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1), ..ClientConfig::default() };
        let d0 = backoff(&cfg, 0, None);
        assert!(d0 >= Duration::from_millis(100) && d0 < Duration::from_millis(126), "{d0:?}");
        let d3 = backoff(&cfg, 3, None);
        assert!(d3 >= Duration::from_millis(800) && d3 < Duration::from_millis(1001), "{d3:?}");
        assert!(backoff(&cfg, 10, None) <= Duration::from_millis(1250));
        // A Retry-After longer than the cap is honoured.
        assert!(backoff(&cfg, 0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
