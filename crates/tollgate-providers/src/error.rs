//! Provider errors know who failed and whether a retry can help.

use std::time::Duration;

/// What went wrong upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The upstream refused the request itself (4xx other than 429): retrying will not help.
    #[error("upstream rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The upstream's content filter refused the prompt (a 400 to the client, code
    /// `content_filter`); another attempt would be refused the same way.
    #[error("the upstream's content filter refused the request: {message}")]
    ContentFiltered { message: String },
    /// The upstream is rate limiting us.
    #[error("upstream rate limited the request")]
    RateLimited { retry_after: Option<Duration> },
    /// The upstream failed (5xx).
    #[error("upstream failed ({status})")]
    Upstream { status: u16, message: String },
    /// No answer in time (connect, first byte, or between chunks).
    #[error("upstream timed out")]
    Timeout,
    /// The upstream could not be reached.
    #[error("could not reach the upstream: {0}")]
    Connect(String),
    /// The upstream answered something that is not the protocol.
    #[error("malformed upstream response: {0}")]
    Protocol(String),
    /// No provider serves this model.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
}

impl ProviderError {
    /// True when another attempt (or another deployment) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Upstream { .. } | Self::Timeout | Self::Connect(_)
        )
    }

    /// A low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::ContentFiltered { .. } => "content_filter",
            Self::RateLimited { .. } => "rate_limited",
            Self::Upstream { .. } => "upstream_5xx",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Protocol(_) => "protocol",
            Self::UnknownModel(_) => "unknown_model",
        }
    }
}
