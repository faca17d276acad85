//! API keys shared by the HTTP services: parsing of the key lists (with optional
//! scopes), bearer tokens compared in constant time, short-lived signed tokens
//! (for clients that can only put a credential in a URL, like EventSource), and
//! per-key rate limits (token buckets).
//!
//! Key list syntax (`PULSE_INGEST_API_KEYS`, `PULSE_API_KEYS`): comma-separated
//! entries, each `KEY` (every domain or metric) or `KEY:SCOPE|SCOPE...` (only
//! those domains or metrics), e.g. `k1,k2:rides|app_events`. A key is 16 to 256
//! characters of `A-Z a-z 0-9 - _ . ~ + / =`. Key text is never logged or printed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Shortest key the services accept.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key.
pub const MAX_KEY_LEN: usize = 256;
/// Prefix of signed tokens (a token is never mistaken for a key: keys cannot contain `!`).
const TOKEN_PREFIX: &str = "pt1!";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("API key #{index} is {len} characters long; keys must have {MIN_KEY_LEN} to {MAX_KEY_LEN} (generate one with `openssl rand -hex 32`)")]
    Length { index: usize, len: usize },
    #[error("API key #{index} contains a character outside A-Z a-z 0-9 - _ . ~ + / =")]
    Charset { index: usize },
    #[error("API key #{index} has an empty scope (write `KEY:name|name`)")]
    EmptyScope { index: usize },
    #[error("API key #{index} is scoped to `{scope}`, which is not one of: {known}")]
    UnknownScope { index: usize, scope: String, known: String },
    #[error("API key #{index} is listed twice")]
    Duplicate { index: usize },
}

/// Why a request is not authenticated (401) or not allowed (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("invalid API key")]
    Invalid,
    #[error("invalid or expired token: get a new one")]
    BadToken,
    #[error("this API key is not allowed to access `{0}`")]
    Forbidden(&'static str),
}

impl AuthError {
    /// The HTTP status: 403 for a valid key outside its scope, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }
}

struct Key {
    secret: Vec<u8>,
    /// `None`: every scope.
    scopes: Option<Vec<String>>,
    /// First 8 bytes of SHA-256 of the secret, hex: names the key in tokens (not secret).
    id: String,
}

/// The configured API keys. Their text is never printed (`Debug` shows the count).
#[derive(Clone, Default)]
pub struct ApiKeys(std::sync::Arc<Vec<Key>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.0.len())
    }
}

/// Which key a request authenticated with (its index), or `Anonymous` when no keys are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Key(usize),
}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~+/=".contains(c)
}

fn key_id(secret: &[u8]) -> String {
    Sha256::digest(secret)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiKeys {
    /// Parses a key list (see the module documentation). Blank entries are ignored.
    pub fn parse(list: &str) -> Result<ApiKeys, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, entry) in list.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (secret, scopes) = match entry.split_once(':') {
                None => (entry, None),
                Some((k, s)) => {
                    let scopes: Vec<String> = s.split('|').map(|s| s.trim().to_string()).collect();
                    if scopes.iter().any(String::is_empty) {
                        return Err(KeyError::EmptyScope { index });
                    }
                    (k.trim(), Some(scopes))
                }
            };
            let len = secret.chars().count();
            if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) {
                return Err(KeyError::Length { index, len });
            }
            if !secret.chars().all(key_char) {
                return Err(KeyError::Charset { index });
            }
            if keys.iter().any(|k| k.secret == secret.as_bytes()) {
                return Err(KeyError::Duplicate { index });
            }
            keys.push(Key { secret: secret.as_bytes().to_vec(), scopes, id: key_id(secret.as_bytes()) });
        }
        Ok(ApiKeys(std::sync::Arc::new(keys)))
    }

    /// Unscoped keys as given, without the length and character checks (tests, embedding).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> ApiKeys {
        let keys = keys
            .into_iter()
            .map(|k| k.as_ref().trim().as_bytes().to_vec())
            .filter(|k| !k.is_empty())
            .map(|secret| Key { id: key_id(&secret), secret, scopes: None })
            .collect();
        ApiKeys(std::sync::Arc::new(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// How many keys are limited to some scopes.
    pub fn scoped(&self) -> usize {
        self.0.iter().filter(|k| k.scopes.is_some()).count()
    }

    /// Checks that every scope names one of `known` (a domain or metric of the spec).
    pub fn check_scopes(&self, known: &[&str]) -> Result<(), KeyError> {
        for (index, k) in self.0.iter().enumerate() {
            for s in k.scopes.iter().flatten() {
                if s != "*" && !known.contains(&s.as_str()) {
                    return Err(KeyError::UnknownScope { index, scope: s.clone(), known: known.join(", ") });
                }
            }
        }
        Ok(())
    }

    /// Which key `token` is. Every configured key is compared, each in time
    /// independent of where the bytes differ.
    pub fn find(&self, token: &[u8]) -> Option<usize> {
        let mut found = usize::MAX;
        for (i, key) in self.0.iter().enumerate() {
            // No early exit: the loop's duration does not depend on which key matched.
            let hit = constant_time_eq(token, &key.secret);
            found = if hit && found == usize::MAX { i } else { found };
        }
        (found != usize::MAX).then_some(found)
    }

    /// Checks an `Authorization` header value: `Anonymous` when no keys are
    /// configured, else the key it carries.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        if self.0.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let token = bearer(authorization.ok_or(AuthError::Missing)?).ok_or(AuthError::Invalid)?;
        self.find(token).map(Caller::Key).ok_or(AuthError::Invalid)
    }

    /// Whether `caller` may access `scope` (a domain or metric name).
    pub fn allows(&self, caller: Caller, scope: &str) -> bool {
        match caller {
            Caller::Anonymous => true,
            Caller::Key(i) => self.0.get(i).is_some_and(|k| k.scopes.as_ref().is_none_or(|s| s.iter().any(|s| s == "*" || s == scope))),
        }
    }

    /// Whether `caller` may access every scope (routes that span domains).
    pub fn unrestricted(&self, caller: Caller) -> bool {
        match caller {
            Caller::Anonymous => true,
            Caller::Key(i) => self.0.get(i).is_some_and(|k| k.scopes.as_ref().is_none_or(|s| s.iter().any(|s| s == "*"))),
        }
    }

    /// A token for `scope` valid until `expires_ms` (epoch ms), signed with the
    /// caller's key (HMAC-SHA-256 over the expiry, the scope and the key's id):
    /// every server with the same keys accepts it, and removing the key revokes it.
    /// `None` for `Anonymous` (no keys: no token needed).
    pub fn sign_token(&self, caller: Caller, scope: &str, expires_ms: i64) -> Option<String> {
        let Caller::Key(i) = caller else { return None };
        let key = self.0.get(i)?;
        let scope_hex: String = scope.bytes().map(|b| format!("{b:02x}")).collect();
        let payload = format!("{expires_ms}.{scope_hex}.{}", key.id);
        let mac = mac(&key.secret, &payload)?;
        Some(format!("{TOKEN_PREFIX}{payload}.{mac}"))
    }

    /// Checks a token from [`ApiKeys::sign_token`] for `scope` at `now_ms`.
    pub fn verify_token(&self, token: &str, scope: &str, now_ms: i64) -> Result<Caller, AuthError> {
        if self.0.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let body = token.strip_prefix(TOKEN_PREFIX).ok_or(AuthError::BadToken)?;
        let (payload, mac_hex) = body.rsplit_once('.').ok_or(AuthError::BadToken)?;
        let mut parts = payload.split('.');
        let (Some(exp), Some(scope_hex), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::BadToken);
        };
        let exp: i64 = exp.parse().map_err(|_| AuthError::BadToken)?;
        let want_scope: String = scope.bytes().map(|b| format!("{b:02x}")).collect();
        if exp < now_ms || scope_hex != want_scope {
            return Err(AuthError::BadToken);
        }
        let i = self.0.iter().position(|k| k.id == id).ok_or(AuthError::BadToken)?;
        let want = mac(&self.0[i].secret, payload).ok_or(AuthError::BadToken)?;
        if !constant_time_eq(want.as_bytes(), mac_hex.as_bytes()) {
            return Err(AuthError::BadToken);
        }
        let caller = Caller::Key(i);
        if !self.allows(caller, scope) {
            return Err(AuthError::Forbidden("this metric"));
        }
        Ok(caller)
    }
}

fn mac(secret: &[u8], payload: &str) -> Option<String> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(b"pulse-token:");
    m.update(payload.as_bytes());
    Some(m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect())
}

/// The token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
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

/// A fresh key: 32 bytes from the operating system's random source, hex (64 characters).
pub fn generate_key() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Token buckets, one per API key (one shared bucket without keys), refilled
/// at `rate` units per second up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Vec<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Limits for `keys` API keys (0 = one shared bucket).
    pub fn new(rate: f64, burst: Option<f64>, keys: usize) -> RateLimiter {
        let rate = rate.max(0.001);
        let burst = burst.unwrap_or(rate).max(1.0);
        let now = Instant::now();
        RateLimiter { rate, burst, buckets: (0..keys.max(1)).map(|_| Mutex::new(Bucket { tokens: burst, at: now })).collect() }
    }

    /// Takes `n` units from the caller's bucket, or says how long to wait.
    /// A request larger than the bucket passes when the bucket is full and
    /// leaves it in debt, so big batches are slowed down, not refused forever.
    pub fn take(&self, caller: Caller, n: usize) -> Result<(), Duration> {
        let i = match caller {
            Caller::Anonymous => 0,
            Caller::Key(i) => i.min(self.buckets.len() - 1),
        };
        let mut b = self.buckets[i].lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        let need = (n as f64).min(self.burst);
        if b.tokens >= need {
            b.tokens -= n as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "alpha-0123456789abcdef";
    const B: &str = "beta-0123456789abcdef";

    #[test]
    fn keys_and_bearer_tokens() {
        let keys = ApiKeys::parse(&format!("{A}, {B} ,,")).expect("keys");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.authenticate(Some(format!("Bearer {B}").as_bytes())), Ok(Caller::Key(1)));
        assert_eq!(keys.authenticate(Some(format!("bearer   {A} ").as_bytes())), Ok(Caller::Key(0)));
        assert_eq!(keys.authenticate(Some(b"Bearer alpha-0123456789abcde")), Err(AuthError::Invalid));
        assert_eq!(keys.authenticate(Some(format!("Basic {A}").as_bytes())), Err(AuthError::Invalid));
        assert_eq!(keys.authenticate(Some(b"Bearer ")), Err(AuthError::Invalid));
        assert_eq!(keys.authenticate(None), Err(AuthError::Missing));
        assert_eq!(ApiKeys::default().authenticate(None), Ok(Caller::Anonymous));
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn key_syntax_and_scopes() {
        let keys = ApiKeys::parse(&format!("{A}:rides|app_events,{B}")).expect("keys");
        assert_eq!(keys.scoped(), 1);
        assert!(keys.allows(Caller::Key(0), "rides"));
        assert!(!keys.allows(Caller::Key(0), "driver_locations"));
        assert!(!keys.unrestricted(Caller::Key(0)));
        assert!(keys.allows(Caller::Key(1), "driver_locations") && keys.unrestricted(Caller::Key(1)));
        assert!(keys.check_scopes(&["rides", "app_events"]).is_ok());
        assert!(matches!(keys.check_scopes(&["rides"]), Err(KeyError::UnknownScope { index: 0, .. })));
        assert_eq!(ApiKeys::parse("short").err(), Some(KeyError::Length { index: 0, len: 5 }));
        assert_eq!(ApiKeys::parse(&format!("{A}:")).err(), Some(KeyError::EmptyScope { index: 0 }));
        assert_eq!(ApiKeys::parse("has space in the key!!").err(), Some(KeyError::Charset { index: 0 }));
        assert_eq!(ApiKeys::parse(&format!("{A},{A}")).err(), Some(KeyError::Duplicate { index: 1 }));
        assert!(ApiKeys::parse(" , ").expect("empty").is_empty());
    }

    #[test]
    fn signed_tokens() {
        let keys = ApiKeys::parse(&format!("{A}:city_metrics,{B}")).expect("keys");
        let t = keys.sign_token(Caller::Key(0), "city_metrics", 10_000).expect("token");
        assert!(!t.contains(A));
        assert_eq!(keys.verify_token(&t, "city_metrics", 9_999), Ok(Caller::Key(0)));
        assert_eq!(keys.verify_token(&t, "city_metrics", 10_001), Err(AuthError::BadToken), "expired");
        assert_eq!(keys.verify_token(&t, "city_supply", 9_999), Err(AuthError::BadToken), "other scope");
        let forged = t.replace("10000.", "99999.");
        assert_eq!(keys.verify_token(&forged, "city_metrics", 9_999), Err(AuthError::BadToken));
        assert_eq!(keys.verify_token(A, "city_metrics", 0), Err(AuthError::BadToken), "a key is not a token");
        // Removing the key revokes its tokens; another server with the same keys accepts them.
        assert_eq!(ApiKeys::parse(B).expect("keys").verify_token(&t, "city_metrics", 0), Err(AuthError::BadToken));
        assert!(ApiKeys::parse(&format!("{B},{A}:city_metrics")).expect("keys").verify_token(&t, "city_metrics", 0).is_ok());
        assert!(ApiKeys::default().sign_token(Caller::Anonymous, "x", 0).is_none());
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn generated_keys_parse() {
        let k = generate_key().expect("random");
        assert_eq!(k.len(), 64);
        assert_ne!(k, generate_key().expect("random"));
        assert_eq!(ApiKeys::parse(&k).expect("valid").len(), 1);
    }

    #[test]
    fn token_buckets() {
        let rl = RateLimiter::new(100.0, None, 2);
        assert!(rl.take(Caller::Key(0), 60).is_ok());
        assert!(rl.take(Caller::Key(0), 30).is_ok());
        let wait = rl.take(Caller::Key(0), 50).expect_err("bucket empty");
        assert!(wait > Duration::from_millis(350) && wait <= Duration::from_millis(410), "{wait:?}");
        assert!(rl.take(Caller::Key(1), 100).is_ok());
        let rl = RateLimiter::new(10.0, Some(10.0), 0);
        assert!(rl.take(Caller::Anonymous, 25).is_ok());
        let wait = rl.take(Caller::Anonymous, 1).expect_err("in debt");
        assert!(wait > Duration::from_secs(1), "{wait:?}");
    }
}
