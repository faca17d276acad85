//! API keys and per-key rate limits: the shared implementation in
//! [`pulse_ops::auth`] (write keys are scoped by domain).

pub use pulse_ops::auth::{ApiKeys, AuthError, Caller, KeyError, RateLimiter, constant_time_eq};
