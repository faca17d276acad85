//! Read API keys: bearer tokens (or `?api_key=` on the SSE endpoints, since
//! EventSource cannot send headers), compared in constant time. The keys' text
//! is never logged or printed.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Api;
use crate::error::ApiError;

#[derive(Clone, Default)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.0.len())
    }
}

impl ApiKeys {
    /// Comma-separated keys; surrounding blanks and empty entries are ignored.
    pub fn parse(list: &str) -> ApiKeys {
        ApiKeys(list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `token` is one of the keys. Every key is compared, each in time
    /// independent of where the bytes differ.
    pub fn matches(&self, token: &[u8]) -> bool {
        let mut hit = false;
        for key in &self.0 {
            hit |= constant_time_eq(token, key);
        }
        hit
    }

    /// Checks an `Authorization: Bearer <key>` header value.
    pub fn check_bearer(&self, authorization: Option<&[u8]>) -> bool {
        authorization.and_then(bearer).is_some_and(|t| self.matches(t))
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The `api_key` query parameter, percent-decoded (SSE only).
fn query_key(query: Option<&str>) -> Option<Vec<u8>> {
    let query = query?;
    crate::params::parse_query(query).ok()?.into_iter().find(|(k, _)| k == "api_key").map(|(_, v)| v.into_bytes())
}

/// Middleware of the `/v1` routes: 401 without a valid key when keys are configured.
pub async fn require_key(State(api): State<Api>, req: Request, next: Next) -> Response {
    let keys = &api.inner.cfg.keys;
    if keys.is_empty() {
        return next.run(req).await;
    }
    let header_ok = keys.check_bearer(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    let query_ok = !header_ok && req.uri().path().starts_with("/v1/stream/") && query_key(req.uri().query()).is_some_and(|k| keys.matches(&k));
    if header_ok || query_ok {
        return next.run(req).await;
    }
    let mut resp = ApiError::Unauthorized.into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let keys = ApiKeys::parse("alpha, beta,,");
        assert_eq!(keys.len(), 2);
        assert!(keys.check_bearer(Some(b"Bearer beta")));
        assert!(keys.check_bearer(Some(b"bearer   alpha ")));
        assert!(!keys.check_bearer(Some(b"Bearer alph")));
        assert!(!keys.check_bearer(Some(b"Bearer alphaa")));
        assert!(!keys.check_bearer(Some(b"Basic alpha")));
        assert!(!keys.check_bearer(Some(b"Bearer ")));
        assert!(!keys.check_bearer(None));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 configured)");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn query_keys() {
        assert_eq!(query_key(Some("city=Lima&api_key=a%20b")), Some(b"a b".to_vec()));
        assert_eq!(query_key(Some("city=Lima")), None);
        assert_eq!(query_key(None), None);
    }
}
