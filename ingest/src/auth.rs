//! API keys (bearer tokens compared in constant time) and per-key rate limits
//! (token buckets counted in events).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The configured API keys. Their text is never printed (`Debug` shows the count).
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<Vec<u8>>);

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

impl ApiKeys {
    /// Comma-separated keys; surrounding blanks and empty entries are ignored.
    pub fn parse(list: &str) -> ApiKeys {
        ApiKeys(list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| k.as_bytes().to_vec()).collect())
    }

    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> ApiKeys {
        ApiKeys(keys.into_iter().map(|k| k.as_ref().trim().as_bytes().to_vec()).filter(|k| !k.is_empty()).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Checks an `Authorization` header value. Every configured key is compared,
    /// each in time independent of where the bytes differ.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Option<Caller> {
        if self.0.is_empty() {
            return Some(Caller::Anonymous);
        }
        let token = bearer(authorization?)?;
        let mut found = usize::MAX;
        for (i, key) in self.0.iter().enumerate() {
            // No early exit: the loop's duration does not depend on which key matched.
            let hit = constant_time_eq(token, key);
            found = if hit && found == usize::MAX { i } else { found };
        }
        (found != usize::MAX).then_some(Caller::Key(found))
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

/// Token buckets, one per API key (one shared bucket without keys), refilled
/// at `rate` events per second up to `burst`.
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

    /// Takes `n` events from the caller's bucket, or says how long to wait.
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

    #[test]
    fn keys_and_bearer_tokens() {
        let keys = ApiKeys::parse("alpha, beta ,,");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.authenticate(Some(b"Bearer beta")), Some(Caller::Key(1)));
        assert_eq!(keys.authenticate(Some(b"bearer   alpha ")), Some(Caller::Key(0)));
        assert_eq!(keys.authenticate(Some(b"Bearer alph")), None);
        assert_eq!(keys.authenticate(Some(b"Bearer alphaa")), None);
        assert_eq!(keys.authenticate(Some(b"Basic alpha")), None);
        assert_eq!(keys.authenticate(Some(b"Bearer ")), None);
        assert_eq!(keys.authenticate(None), None);
        assert_eq!(ApiKeys::default().authenticate(None), Some(Caller::Anonymous));
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn token_buckets() {
        let rl = RateLimiter::new(100.0, None, 2);
        assert!(rl.take(Caller::Key(0), 60).is_ok());
        assert!(rl.take(Caller::Key(0), 30).is_ok());
        let wait = rl.take(Caller::Key(0), 50).expect_err("bucket empty");
        assert!(wait > Duration::from_millis(350) && wait <= Duration::from_millis(410), "{wait:?}");
        // Keys have their own buckets.
        assert!(rl.take(Caller::Key(1), 100).is_ok());
        // A batch bigger than the bucket passes when the bucket is full and leaves a debt.
        let rl = RateLimiter::new(10.0, Some(10.0), 0);
        assert!(rl.take(Caller::Anonymous, 25).is_ok());
        let wait = rl.take(Caller::Anonymous, 1).expect_err("in debt");
        assert!(wait > Duration::from_secs(1), "{wait:?}");
    }
}
