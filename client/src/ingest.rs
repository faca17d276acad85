//! The write API of `pulse ingest`: `POST/PUT/DELETE /v1/events/{domain}[/{id}]`,
//! `/health` and `/ready`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;

use crate::transport::Answer;
use crate::{Accepted, Client, Error, Health, encode_segment};

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

impl Client {
    /// Sends one event (any `Serialize` that serializes to a JSON object).
    pub async fn track<E: Serialize + ?Sized>(&self, domain: &str, event: &E) -> Result<Accepted, Error> {
        let body = serde_json::to_vec(event).map_err(|e| Error::Serialize(e.to_string()))?;
        self.track_json(domain, body).await
    }

    /// Sends already encoded JSON: one object or an array of objects (one request).
    pub async fn track_json(&self, domain: &str, json: impl Into<Bytes>) -> Result<Accepted, Error> {
        let uri = self.inner.ingest.uri(&format!("/v1/events/{}", encode_segment(domain)))?;
        accepted(self.send(Method::POST, uri, Some(JSON), json.into()).await?)
    }

    /// Sends events as NDJSON, `batch_size` events per request (see
    /// [`crate::ClientConfig::batch_size`]). Each request is all-or-nothing; when a
    /// later request fails, the error is [`Error::Partial`] with what the earlier
    /// ones stored, and validation details index the whole slice.
    pub async fn track_batch<E: Serialize>(&self, domain: &str, events: &[E]) -> Result<Accepted, Error> {
        let mut total = Accepted::default();
        let mut body = Vec::new();
        for (chunk_no, chunk) in events.chunks(self.inner.cfg.batch_size).enumerate() {
            body.clear();
            for e in chunk {
                serde_json::to_writer(&mut body, e).map_err(|e| Error::Serialize(e.to_string()))?;
                body.push(b'\n');
            }
            let offset = chunk_no * self.inner.cfg.batch_size;
            match self.track_ndjson(domain, Bytes::copy_from_slice(&body)).await {
                Ok(a) => {
                    total.accepted += a.accepted;
                    total.ids.extend(a.ids);
                }
                Err(e) => return Err(partial(total, shift(e, offset))),
            }
        }
        Ok(total)
    }

    /// Sends an NDJSON body (one JSON object per line) as one request.
    pub async fn track_ndjson(&self, domain: &str, ndjson: impl Into<Bytes>) -> Result<Accepted, Error> {
        let uri = self.inner.ingest.uri(&format!("/v1/events/{}", encode_segment(domain)))?;
        accepted(self.send(Method::POST, uri, Some(NDJSON), ndjson.into()).await?)
    }

    /// Replaces event `id` of a mutable domain. The event's `event_id` must be absent or `id`.
    pub async fn update<E: Serialize + ?Sized>(&self, domain: &str, id: &str, event: &E) -> Result<Accepted, Error> {
        let body = serde_json::to_vec(event).map_err(|e| Error::Serialize(e.to_string()))?;
        self.update_json(domain, id, body).await
    }

    /// [`Client::update`] with an already encoded JSON object.
    pub async fn update_json(&self, domain: &str, id: &str, json: impl Into<Bytes>) -> Result<Accepted, Error> {
        let uri = self.inner.ingest.uri(&format!("/v1/events/{}/{}", encode_segment(domain), encode_segment(id)))?;
        accepted(self.send(Method::PUT, uri, Some(JSON), json.into()).await?)
    }

    /// Deletes event `id` of a mutable domain.
    pub async fn delete(&self, domain: &str, id: &str) -> Result<Accepted, Error> {
        let uri = self.inner.ingest.uri(&format!("/v1/events/{}/{}", encode_segment(domain), encode_segment(id)))?;
        accepted(self.send(Method::DELETE, uri, None, Bytes::new()).await?)
    }

    /// `/health` of the ingest service.
    pub async fn health(&self) -> Result<Health, Error> {
        let uri = self.inner.ingest.uri("/health")?;
        let answer = self.send(Method::GET, uri, None, Bytes::new()).await?;
        serde_json::from_slice(&answer.body).map_err(|e| Error::InvalidResponse(format!("/health: {e}")))
    }

    /// Whether the ingest service can reach Kafka (`/ready` answers 200). One attempt, no retries.
    pub async fn ready(&self) -> Result<bool, Error> {
        let uri = self.inner.ingest.uri("/ready")?;
        match self.send_once(Method::GET, uri).await {
            Ok(_) => Ok(true),
            Err(Error::Overloaded { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Polls `/ready` until it answers 200 or `timeout` passes. Connection
    /// failures count as not ready yet; auth and other errors end the wait.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.ready().await {
                Ok(true) => return Ok(()),
                Ok(false) => last = "not ready (503)".into(),
                Err(e @ (Error::Transport(_) | Error::Timeout(_))) => last = e.to_string(),
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(Error::Transport(format!("not ready after {timeout:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send_once(&self, method: Method, uri: hyper::Uri) -> Result<Answer, Error> {
        let saved = self.inner.cfg.max_retries;
        if saved == 0 {
            return self.send(method, uri, None, Bytes::new()).await;
        }
        // One attempt: a private copy of the client settings without retries, sharing the pool.
        let inner = crate::Inner {
            http: self.inner.http.clone(),
            ingest: self.inner.ingest.clone(),
            api: self.inner.api.clone(),
            auth: self.inner.auth.clone(),
            cfg: crate::ClientConfig { max_retries: 0, ..self.inner.cfg.clone() },
        };
        Client { inner: std::sync::Arc::new(inner) }.send(method, uri, None, Bytes::new()).await
    }
}

fn accepted(answer: Answer) -> Result<Accepted, Error> {
    serde_json::from_slice(&answer.body).map_err(|e| Error::InvalidResponse(format!("HTTP {}: {e}", answer.status)))
}

/// Moves validation details of one chunk to their index in the whole batch.
fn shift(e: Error, offset: usize) -> Error {
    match e {
        Error::Validation { message, mut details } => {
            for d in &mut details {
                d.index += offset;
            }
            Error::Validation { message, details }
        }
        other => other,
    }
}

fn partial(done: Accepted, e: Error) -> Error {
    if done.accepted == 0 { e } else { Error::Partial { accepted: done, source: Box::new(e) } }
}
