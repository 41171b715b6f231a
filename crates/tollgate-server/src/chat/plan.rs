//! What a chat request is, once prepared: its switches from headers ([`ChatOptions`]) and
//! everything its stages need ([`Plan`]).

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use tollgate_core::ChatRequest;

use super::history::SessionWrite;
use crate::accounting::Payer;
use crate::error::ApiError;
use crate::state::Gateway;

/// Per-request switches from headers.
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// `Cache-Control: no-cache`: do not answer from the cache.
    pub no_cache: bool,
    /// `Cache-Control: no-store`: do not store the answer.
    pub no_store: bool,
    /// `x-tollgate-cache-ttl`.
    pub ttl: Option<Duration>,
    /// `x-tollgate-session-id`.
    pub session_id: Option<String>,
    /// `x-tollgate-user`: sticky experiment arms.
    pub user: Option<String>,
    /// `x-tollgate-resumable: true`: write the token stream (readable at `/v1/streams/{id}`)
    /// even when nothing else would read it (a non-streamed request nobody is waiting on).
    pub resumable: bool,
    /// `x-tollgate-queue-wait`: the longest this request waits for a concurrency slot (at most
    /// its tier's `queue_wait_seconds`).
    pub queue_wait: Option<Duration>,
    /// The caller reads the whole answer (the Messages and Responses APIs translate it): a hit
    /// is decoded once, here, rather than served as stored.
    pub decoded: bool,
}

impl ChatOptions {
    /// The switches of a request's headers; a 400 naming the header that is malformed.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut opts = ChatOptions::default();
        for value in headers.get_all("cache-control") {
            for directive in value.to_str().unwrap_or_default().split(',') {
                match directive.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => opts.no_cache = true,
                    "no-store" => opts.no_store = true,
                    _ => {}
                }
            }
        }
        if let Some(v) = headers.get("x-tollgate-cache-ttl") {
            let secs = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    ApiError::bad(
                        "x-tollgate-cache-ttl must be a whole number of seconds, at least 1",
                        Some("x-tollgate-cache-ttl"),
                    )
                })?;
            opts.ttl = Some(Duration::from_secs(secs));
        }
        if let Some(v) = headers.get("x-tollgate-resumable") {
            opts.resumable = match v.to_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
                Ok("true" | "1") => true,
                Ok("false" | "0") => false,
                _ => {
                    return Err(ApiError::bad(
                        "x-tollgate-resumable must be true or false",
                        Some("x-tollgate-resumable"),
                    ));
                }
            };
        }
        if let Some(v) = headers.get("x-tollgate-queue-wait") {
            let secs = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| (0.0..=3600.0).contains(s))
                .ok_or_else(|| {
                    ApiError::bad(
                        "x-tollgate-queue-wait must be a number of seconds from 0 to 3600",
                        Some("x-tollgate-queue-wait"),
                    )
                })?;
            opts.queue_wait = Some(Duration::from_secs_f64(secs));
        }
        opts.user = short_header(headers, "x-tollgate-user")?;
        opts.session_id = short_header(headers, "x-tollgate-session-id")?;
        Ok(opts)
    }
}

/// The longest id a header may carry (as a path's, see `extract::MAX_ID_LEN`).
const MAX_HEADER_ID_LEN: usize = 200;

/// A header holding an id: absent, or 1 to 200 visible characters (trimmed).
fn short_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let value = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= MAX_HEADER_ID_LEN);
    let value = value.ok_or_else(|| {
        ApiError::bad(
            format!("{name} must be 1 to {MAX_HEADER_ID_LEN} visible characters"),
            Some(name),
        )
    })?;
    Ok(Some(value.to_owned()))
}

/// Everything a request needs once routed.
pub(super) struct Plan {
    pub(super) gw: Arc<Gateway>,
    pub(super) owner: String,
    pub(super) payer: Payer,
    pub(super) req: ChatRequest,
    pub(super) include_usage: bool,
    pub(super) session: Option<SessionWrite>,
    pub(super) ttl: Option<Duration>,
    /// Deployments in order when an experiment pinned the route.
    pub(super) route: Option<Vec<tollgate_providers::Deployment>>,
    /// The token stream a generation of this request writes (and its single-flight token).
    pub(super) stream_id: String,
    /// Write the token stream even when no reader needs it (`x-tollgate-resumable`).
    pub(super) resumable: bool,
    /// The caller reads the whole answer ([`ChatOptions::decoded`]).
    pub(super) decoded: bool,
}
