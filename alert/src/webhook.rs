//! Webhook delivery in the Alertmanager format, off the caller's path: the
//! caller hands notifications to a bounded queue ([`WebhookSender::try_send`]
//! never waits); a dispatcher task drops duplicates (same fingerprint, status
//! and `startsAt`) and passes each message to a task per receiver URL, which
//! POSTs it in order with retries and capped exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::payload::{AlertMessage, WebhookMessage};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook queue is full ({0} notifications waiting)")]
    Full(usize),
    #[error("the webhook task has stopped")]
    Closed,
    #[error("invalid webhook URL `{0}`")]
    Url(String),
    #[error("webhook answered {0}")]
    Status(StatusCode),
    #[error("webhook request failed: {0}")]
    Transport(String),
    #[error("webhook request timed out")]
    Timeout,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Attempts per notification before it is given up (logged).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Notifications waiting at most (further ones are refused and counted).
    pub queue: usize,
    /// Notifications remembered for de-duplication.
    pub dedup: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            max_attempts: 12,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            queue: 4096,
            dedup: 10_000,
        }
    }
}

/// Counters of the sender.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub given_up: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
}

type Http = HyperClient<HttpConnector, Full<Bytes>>;

/// Handle to the delivery tasks (cheap to clone).
#[derive(Clone)]
pub struct WebhookSender {
    tx: mpsc::Sender<(String, AlertMessage)>,
    pub stats: Arc<WebhookStats>,
    queue: usize,
}

impl WebhookSender {
    /// Starts the dispatcher on the current tokio runtime.
    pub fn spawn(cfg: WebhookConfig) -> WebhookSender {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let stats = Arc::new(WebhookStats::default());
        let queue = cfg.queue;
        tokio::spawn(dispatch(cfg, rx, Arc::clone(&stats)));
        WebhookSender { tx, stats, queue }
    }

    /// Queues a notification for `url`; never waits.
    pub fn try_send(&self, url: &str, message: AlertMessage) -> Result<(), WebhookError> {
        match self.tx.try_send((url.to_string(), message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(WebhookError::Full(self.queue))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(WebhookError::Closed),
        }
    }
}

async fn dispatch(cfg: WebhookConfig, mut rx: mpsc::Receiver<(String, AlertMessage)>, stats: Arc<WebhookStats>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(3)));
    let http: Http = HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
    let mut seen: HashSet<(String, String, String, String)> = HashSet::new();
    let mut order: VecDeque<(String, String, String, String)> = VecDeque::new();
    let mut workers: HashMap<String, mpsc::UnboundedSender<AlertMessage>> = HashMap::new();
    while let Some((url, message)) = rx.recv().await {
        let key = (url.clone(), message.fingerprint.clone(), message.status.clone(), message.starts_at.clone());
        if !seen.insert(key.clone()) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(fingerprint = %message.fingerprint, status = %message.status, "duplicate notification not sent again");
            continue;
        }
        order.push_back(key);
        while order.len() > cfg.dedup {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        let worker = workers.entry(url.clone()).or_insert_with(|| {
            let (wtx, wrx) = mpsc::unbounded_channel();
            tokio::spawn(receiver_task(cfg.clone(), http.clone(), url.clone(), wrx, Arc::clone(&stats)));
            wtx
        });
        if worker.send(message).is_err() {
            tracing::error!(url = %url, "webhook worker stopped; notification dropped");
        }
    }
}

async fn receiver_task(cfg: WebhookConfig, http: Http, url: String, mut rx: mpsc::UnboundedReceiver<AlertMessage>, stats: Arc<WebhookStats>) {
    while let Some(message) = rx.recv().await {
        let body = match serde_json::to_vec(&WebhookMessage::from_alert(&message)) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!("webhook message not encoded: {e}");
                continue;
            }
        };
        let mut delay = cfg.initial_backoff;
        for attempt in 1..=cfg.max_attempts.max(1) {
            match post(&http, &url, body.clone(), message.row_emitted_at, cfg.timeout).await {
                Ok(()) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(rule = %message.rule, group = %message.group, status = %message.status, url = %url, "alert delivered");
                    break;
                }
                Err(e) => {
                    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let permanent = matches!(&e, WebhookError::Url(_))
                        || matches!(&e, WebhookError::Status(s) if s.is_client_error() && *s != StatusCode::REQUEST_TIMEOUT && *s != StatusCode::TOO_MANY_REQUESTS);
                    if permanent || attempt == cfg.max_attempts.max(1) {
                        stats.given_up.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(rule = %message.rule, group = %message.group, status = %message.status, url = %url, attempt, "alert not delivered, giving up: {e}");
                        break;
                    }
                    tracing::warn!(rule = %message.rule, url = %url, attempt, ?delay, "alert delivery failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(cfg.max_backoff);
                }
            }
        }
    }
}

/// Header carrying when the job emitted the row that led to the notification
/// (ms since the epoch), for receivers that measure delivery latency.
pub const ROW_EMITTED_HEADER: &str = "x-pulse-row-emitted-at";

async fn post(http: &Http, url: &str, body: Bytes, row_emitted_at: i64, timeout: Duration) -> Result<(), WebhookError> {
    let uri: Uri = url.parse().map_err(|_| WebhookError::Url(url.to_string()))?;
    let req = Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "pulse-alerts")
        .header(ROW_EMITTED_HEADER, row_emitted_at.to_string())
        .body(Full::new(body))
        .map_err(|_| WebhookError::Url(url.to_string()))?;
    let answer = tokio::time::timeout(timeout, async {
        let res = http.request(req).await.map_err(|e| WebhookError::Transport(e.to_string()))?;
        let status = res.status();
        // Drain the body so the connection can be reused.
        let _ = res.into_body().collect().await;
        if status.is_success() { Ok(()) } else { Err(WebhookError::Status(status)) }
    })
    .await;
    answer.unwrap_or(Err(WebhookError::Timeout))
}
