//! Errors of the read API and their HTTP answers: always a JSON body
//! `{"error": "...", "parameter": "..."}` (`parameter` when one input is at fault).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input: 400 naming the parameter.
    #[error("{message}")]
    BadRequest { parameter: String, message: String },
    /// Unknown domain, metric, event or route: 404.
    #[error("{message}")]
    NotFound { parameter: Option<String>, message: String },
    /// No valid key or token: 401.
    #[error("{0}: send `Authorization: Bearer <key>` with a read API key")]
    Unauthorized(pulse_ops::auth::AuthError),
    /// A valid key outside its scope: 403.
    #[error("this API key may not read this {0}")]
    Forbidden(&'static str),
    /// The key's rate limit: 429 with Retry-After.
    #[error("rate limit exceeded; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// ClickHouse (or Kafka) unreachable or too slow: 503 with Retry-After.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    /// A query failed for another reason: 500 (the cause is logged, not returned).
    #[error("internal error")]
    Internal,
    /// A metric of the API could not be registered (at start-up, never in an answer).
    #[error(transparent)]
    Metrics(#[from] pulse_ops::MetricsError),
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The request parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

impl ApiError {
    pub fn bad(parameter: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { parameter: parameter.into(), message: message.into() }
    }

    pub fn not_found(parameter: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError::NotFound { parameter: parameter.map(String::from), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal | ApiError::Metrics(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let parameter = match &self {
            ApiError::BadRequest { parameter, .. } => Some(parameter.clone()),
            ApiError::NotFound { parameter, .. } => parameter.clone(),
            _ => None,
        };
        let status = self.status();
        let mut resp = (status, Json(ErrorBody { error: self.to_string(), parameter })).into_response();
        match self {
            ApiError::Unavailable { retry_after, .. } | ApiError::RateLimited { retry_after } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}
