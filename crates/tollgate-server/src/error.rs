//! `ApiError`: every failure the HTTP layer reports, mapped to a status and an OpenAI-shaped body
//! `{"error": {"message", "type", "param", "code"}}` by one exhaustive match. 5xx bodies carry no
//! internals; the detail goes to the log.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tollgate_providers::ProviderError;

/// A failure of an HTTP request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or invalid.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    /// The body is larger than the configured limit.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// No or an unknown API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The key may not do this (admin routes).
    #[error("{0}")]
    Forbidden(String),
    /// No route, session, stream or key by that name (or not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// The path is served, but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No provider serves the model.
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    /// A rate limit refused the request; `headers` are its `x-ratelimit-*` headers.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A key's spending budget for the period is used up (429 until the period ends).
    #[error("{message}")]
    BudgetExceeded {
        message: String,
        retry_after: Duration,
    },
    /// An upstream failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A dependency (Redis) is not reachable and the policy is to refuse.
    #[error("{0}")]
    Unavailable(String),
    /// An error another instance met and stored in a shared token stream, replayed as it was.
    #[error("relayed error ({status})")]
    Relayed {
        status: u16,
        body: serde_json::Value,
    },
    /// Anything else; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the bad parameter.
    pub fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    /// A token stream whose producer stopped before its end (its gateway died): a 502 the
    /// client can act on (send the request again).
    pub fn stream_interrupted() -> Self {
        ApiError::Relayed {
            status: 502,
            body: json!({"error": {
                "message": "the generation was interrupted: the gateway running it stopped; send the request again",
                "type": "upstream_error", "param": null, "code": "stream_interrupted"}}),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. } | ApiError::BudgetExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Provider(p) => match p {
                ProviderError::Rejected { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
                }
                ProviderError::ContentFiltered { .. } => StatusCode::BAD_REQUEST,
                ProviderError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                ProviderError::Upstream { .. }
                | ProviderError::Connect(_)
                | ProviderError::Protocol(_) => StatusCode::BAD_GATEWAY,
                ProviderError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ProviderError::UnknownModel(_) => StatusCode::NOT_FOUND,
            },
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Relayed { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body's `type` (OpenAI's names where OpenAI has one); also a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::TooLarge { .. }
            | ApiError::MethodNotAllowed(_) => "invalid_request_error",
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::NotFound(_) | ApiError::UnknownModel(_) => "not_found_error",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::BudgetExceeded { .. } => "insufficient_quota",
            ApiError::Provider(ProviderError::RateLimited { .. }) => "rate_limit_error",
            ApiError::Provider(
                ProviderError::Rejected { .. } | ProviderError::ContentFiltered { .. },
            ) => "invalid_request_error",
            ApiError::Provider(ProviderError::UnknownModel(_)) => "not_found_error",
            ApiError::Provider(_) => "upstream_error",
            ApiError::Unavailable(_) => "service_unavailable",
            ApiError::Relayed { .. } => "upstream_error",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The error's `code` in its body, when it has one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::UnknownModel(_) | ApiError::Provider(ProviderError::UnknownModel(_)) => {
                Some("model_not_found")
            }
            ApiError::TooLarge { .. } => Some("request_too_large"),
            ApiError::RateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::BudgetExceeded { .. } => Some("budget_exceeded"),
            ApiError::Unauthorized(_) => Some("invalid_api_key"),
            ApiError::Provider(ProviderError::ContentFiltered { .. }) => Some("content_filter"),
            _ => None,
        }
    }

    /// The message a client may see: the error for 4xx, a fixed sentence for 5xx.
    pub fn public_message(&self) -> String {
        let status = self.status();
        if !status.is_server_error() {
            return self.to_string();
        }
        match self {
            ApiError::Provider(ProviderError::Timeout) => "the upstream provider timed out".into(),
            ApiError::Provider(_) => "the upstream provider failed".into(),
            ApiError::Unavailable(_) => "the service is temporarily unavailable".into(),
            _ => "internal error".into(),
        }
    }

    /// The JSON body (also the payload of an SSE error event).
    pub fn body(&self) -> serde_json::Value {
        if let ApiError::Relayed { body, .. } = self {
            return body.clone();
        }
        let param = match self {
            ApiError::BadRequest { param, .. } => param.clone(),
            ApiError::UnknownModel(_) => Some("model".to_owned()),
            ApiError::Provider(ProviderError::ContentFiltered { .. }) => {
                Some("messages".to_owned())
            }
            _ => None,
        };
        json!({"error": {"message": self.public_message(), "type": self.kind(), "param": param, "code": self.code()}})
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::BudgetExceeded { retry_after, .. } => Some(*retry_after),
            ApiError::Provider(ProviderError::RateLimited { retry_after }) => *retry_after,
            _ => None,
        }
    }
}

/// A request the core crate's checks or translations refused: a 400 naming the parameter.
impl From<tollgate_core::InvalidRequest> for ApiError {
    fn from(e: tollgate_core::InvalidRequest) -> Self {
        ApiError::BadRequest {
            message: e.message,
            param: e.param,
        }
    }
}

/// The Redis patterns' errors, each once: what the caller can do decides the status. Handlers
/// that know better (a session's "not found" names the session) match those cases first.
impl From<tollgate_redis::Error> for ApiError {
    fn from(e: tollgate_redis::Error) -> Self {
        use tollgate_redis::Error as E;
        match e {
            E::InvalidArgument(m) | E::Conflict(m) => ApiError::bad(m, None),
            E::NotFound => ApiError::NotFound("not found".into()),
            E::Trimmed { .. } => ApiError::NotFound(e.to_string()),
            E::Abandoned => ApiError::stream_interrupted(),
            E::Unavailable(_) | E::Command(_) | E::Timeout(_) => {
                ApiError::Unavailable(format!("redis: {e}"))
            }
            E::Reply { .. } | E::Decode(_) => ApiError::Internal(format!("redis: {e}")),
        }
    }
}

/// The database's errors: it is a dependency that may be away, or refuse what it was sent.
impl From<tollgate_db::Error> for ApiError {
    fn from(e: tollgate_db::Error) -> Self {
        match e {
            tollgate_db::Error::Redis(e) => e.into(),
            tollgate_db::Error::Db(_) | tollgate_db::Error::Config(_) => {
                ApiError::Unavailable(format!("database: {e}"))
            }
        }
    }
}

/// `retry-after` in whole seconds, at least 1.
pub fn retry_after_value(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, status = status.as_u16(), "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if let Some(d) = self.retry_after() {
            response
                .headers_mut()
                .insert("retry-after", retry_after_value(d));
        }
        if let ApiError::RateLimited { headers, .. } = &self {
            for (name, value) in headers {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }
}
