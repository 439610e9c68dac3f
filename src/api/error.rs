//! API errors: what the caller did wrong, as `{"error": "...", "detail": ...}` with a status that
//! says whose fault it is. Internal failures are logged and answered with a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed request: a query parameter, a table name.
    #[error("{error}")]
    BadRequest { error: &'static str, detail: Value },
    #[error("not found")]
    NotFound { detail: Value },
    /// The request cannot be served in the resource's current state (a table without a key).
    #[error("{error}")]
    Conflict { error: &'static str, detail: Value },
    /// The changes after a pull's position are no longer retained.
    #[error("gone")]
    Gone { detail: Value },
    /// A request body over the limit, in bytes.
    #[error("the request body is too large")]
    TooLarge { limit: usize },
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// The feed database cannot be reached: worth a retry.
    #[error("the feed database is unavailable")]
    Unavailable(#[source] tokio_postgres::Error),
    /// No connection to the feed database could be opened (logged where it failed).
    #[error("the feed database is down")]
    Down,
    /// A query failed for another reason.
    #[error("the feed query failed")]
    Internal(#[source] tokio_postgres::Error),
    /// No bearer token, or (`invalid`) one that is not ours.
    #[error("unauthorized")]
    Unauthorized { invalid: bool },
    /// The read token on a method that writes.
    #[error("forbidden")]
    Forbidden,
    /// The client's rate limit is spent; it may try again after `retry_after` seconds.
    #[error("too many requests")]
    TooManyRequests { retry_after: u64 },
}

impl ApiError {
    pub fn bad_request(error: &'static str, detail: impl Into<Value>) -> ApiError {
        ApiError::BadRequest { error, detail: detail.into() }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> ApiError {
        if error.is_closed() || error.as_db_error().is_none() {
            ApiError::Unavailable(error)
        } else {
            ApiError::Internal(error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, detail) = match &self {
            ApiError::BadRequest { error, detail } => (StatusCode::BAD_REQUEST, *error, detail.clone()),
            ApiError::NotFound { detail } => (StatusCode::NOT_FOUND, "not found", detail.clone()),
            ApiError::Conflict { error, detail } => (StatusCode::CONFLICT, *error, detail.clone()),
            ApiError::Gone { detail } => (
                StatusCode::GONE,
                "the feed no longer holds the changes after this position (retention)",
                detail.clone(),
            ),
            ApiError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
                json!({ "limit_bytes": limit }),
            ),
            ApiError::MethodNotAllowed { allow } => {
                let mut response = (
                    StatusCode::METHOD_NOT_ALLOWED,
                    json_body("method not allowed", json!({ "allow": allow })),
                )
                    .into_response();
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                return response;
            }
            ApiError::Unavailable(source) => {
                tracing::warn!(error = %source, "feed database unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "the feed is unavailable, retry later", Value::Null)
            }
            ApiError::Down => {
                (StatusCode::SERVICE_UNAVAILABLE, "the feed is unavailable, retry later", Value::Null)
            }
            ApiError::Internal(source) => {
                tracing::error!(error = %source, "feed query failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error", Value::Null)
            }
            ApiError::Unauthorized { invalid } => {
                let (error, challenge) = if *invalid {
                    ("invalid token", "Bearer realm=\"pubsubpull\", error=\"invalid_token\"")
                } else {
                    ("missing token", "Bearer realm=\"pubsubpull\"")
                };
                let detail = json!({ "expected": "Authorization: Bearer TOKEN" });
                let mut response = (StatusCode::UNAUTHORIZED, json_body(error, detail)).into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                return response;
            }
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "the read token allows GET only",
                json!({ "expected": "the API token" }),
            ),
            ApiError::TooManyRequests { retry_after } => {
                let detail = json!({ "retry_after": retry_after });
                let mut response =
                    (StatusCode::TOO_MANY_REQUESTS, json_body("too many requests", detail)).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
                return response;
            }
        };
        (status, json_body(error, detail)).into_response()
    }
}

/// A JSON error body.
pub(super) fn json_body(error: &str, detail: Value) -> Response {
    let body = json!({ "error": error, "detail": detail }).to_string();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}
