//! The HTTP surface: the route groups of [`crate::routes`], each behind its authentication, and
//! the front layer every request goes through.
//!
//! The front layer, in order: the request id (taken from `x-request-id` or made, echoed in the
//! response and in every log line of the request), the body limit, the handler (a panic turned
//! into a 500 JSON error), errors of the Messages paths reshaped as Anthropic's, then metrics and
//! the access log (labelled with the route template that matched). Then the group's
//! authentication: an API key for `/v1`, the master key for `/admin`. The concerns share one
//! layer because each layer of its own costs every request a boxed future and a clone of the
//! service beneath it.

use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use tracing::Instrument;

use crate::auth;
use crate::error::ApiError;
use crate::extract::limit_body;
use crate::handlers::messages::in_messages_shape;
use crate::handlers::ops;
pub use crate::handlers::ops::OPENAPI;
use crate::routes::{admin_routes, open_routes, tenant_routes};
pub use crate::state::AppState;

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(open_routes())
        .merge(tenant_routes().route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        )))
        .merge(admin_routes().route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_master,
        )))
        .fallback(ops::not_found_handler)
        .method_not_allowed_fallback(ops::method_not_allowed_handler)
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// A request's id: the client's `x-request-id` when it is a short visible string, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

/// Every request's way in and out (the module's header gives the order). The request runs in a
/// span that carries its id (every log line of the request, spawned work included, names it),
/// and in the OpenTelemetry span of the HTTP request; both end at the response head (streams
/// when they start).
async fn front(State(gw): State<AppState>, mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
        .cloned()
        .unwrap_or_else(next_request_id);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_span = tracing::info_span!("request", id = id.to_str().unwrap_or("-"));
    let http_span = request_span.in_scope(|| {
        tracing::info_span!(
            target: "otel",
            "HTTP request",
            "otel.name" = format!("{method} {route}"),
            "otel.kind" = "server",
            "http.request.method" = %method,
            "http.route" = %route,
            "http.response.status_code" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        )
    });
    if !http_span.is_disabled() {
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
            &http_span,
            crate::telemetry::remote_context(request.headers()),
        );
    }
    request.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let handled = async {
        let response = match limit_body(gw.config.server.max_body_bytes, &mut request) {
            Err(refused) => refused.into_response(),
            Ok(()) => caught(next.run(request)).await,
        };
        if path.starts_with("/v1/messages") {
            in_messages_shape(response).await
        } else {
            response
        }
    };
    let mut response = handled
        .instrument(http_span.clone())
        .instrument(request_span.clone())
        .await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    http_span.record("http.response.status_code", status);
    if status >= 500 {
        http_span.record("otel.status_code", "ERROR");
    }
    gw.metrics.request(route, status, took);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    request_span.in_scope(|| {
        tracing::info!(
            target: "tollgate::access",
            %method,
            path,
            status,
            ms = took.as_secs_f64() * 1e3,
            cache = header("x-tollgate-cache"),
            route = header("x-tollgate-route"),
            "request"
        )
    });
    response.headers_mut().insert("x-request-id", id);
    response
}

/// A new request id: this process's random 64 bits, then a counter, in hex (unique across
/// replicas without a system call per request).
fn next_request_id() -> HeaderValue {
    static BASE: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 32 hex digits, written by hand: `format!` costs every request more than the rest of this.
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        let word = if i < 16 { *BASE } else { n };
        *digit = b"0123456789abcdef"[((word >> (60 - 4 * (i % 16))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The handler's answer, or when it panicked a 500 JSON error (the panic is logged), and the
/// process goes on serving.
async fn caught(handler: impl Future<Output = Response>) -> Response {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            tracing::error!(panic = %what, "a handler panicked");
            ApiError::Internal(format!("handler panicked: {what}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use axum::body::Body;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use axum::routing::get;

    use super::*;

    #[test]
    fn request_ids_are_the_process_base_then_a_counter_in_hex() {
        let first = next_request_id();
        let second = next_request_id();
        let (first, second) = (first.to_str().unwrap(), second.to_str().unwrap());
        assert_eq!(first.len(), 32, "{first}");
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(first[..16], second[..16], "one base per process");
        let n = u64::from_str_radix(&first[16..], 16).unwrap();
        assert!(u64::from_str_radix(&second[16..], 16).unwrap() > n);
        assert_eq!(first, format!("{}{n:016x}", &first[..16]));
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_a_500_json_error_and_the_router_goes_on() {
        let router: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let none: Vec<String> = Vec::new();
                    none[0].clone()
                }),
            )
            .route("/fine", get(|| async { "fine" }))
            .layer(middleware::from_fn(|request: Request, next: Next| {
                caught(next.run(request))
            }));
        let response = router
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["type"], "internal_error");
        assert_eq!(body["error"]["message"], "internal error");
        let fine = router
            .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(fine.status(), StatusCode::OK);
    }
}
