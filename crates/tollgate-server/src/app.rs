//! The HTTP surface: paths only, and the layers every request goes through.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::embeddings::embeddings_handler;
use crate::error::ApiError;
use crate::handlers as h;
use crate::metrics::Route;
use crate::responses as r;
pub use crate::state::AppState;
use crate::vectors as v;

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(h::chat_completions_handler))
        .route("/v1/models", get(h::models_handler))
        .route("/v1/embeddings", post(embeddings_handler))
        .route(
            "/v1/vectors/{collection}",
            get(v::collection_info_handler).delete(v::drop_collection_handler),
        )
        .route(
            "/v1/vectors/{collection}/search",
            post(v::search_vectors_handler),
        )
        .route(
            "/v1/vectors/{collection}/{id}",
            axum::routing::put(v::put_vector_handler)
                .get(v::get_vector_handler)
                .delete(v::delete_vector_handler),
        )
        .route("/v1/responses", post(r::create_response_handler))
        .route(
            "/v1/responses/{id}",
            get(r::get_response_handler).delete(r::delete_response_handler),
        )
        .route("/v1/streams/{id}", get(h::stream_handler))
        .route("/v1/events/{stream}", post(h::publish_event_handler))
        .route("/v1/features/batch", post(h::features_batch_handler))
        .route(
            "/v1/features/{entity_type}/{entity_id}",
            get(h::get_features_handler),
        )
        .route(
            "/v1/features/{entity_type}/{entity_id}/{group}",
            axum::routing::put(h::put_features_handler),
        )
        .route("/v1/sessions", post(h::create_session_handler))
        .route(
            "/v1/sessions/{id}",
            get(h::get_session_handler).delete(h::delete_session_handler),
        )
        .route(
            "/v1/sessions/{id}/messages",
            get(h::session_messages_handler),
        )
        .route(
            "/admin/keys",
            post(h::create_key_handler).get(h::list_keys_handler),
        )
        .route(
            "/admin/keys/{id}",
            axum::routing::delete(h::revoke_key_handler),
        )
        .route("/admin/spend", get(h::spend_handler))
        .route("/admin/models", get(h::list_registry_handler))
        .route(
            "/admin/models/{name}",
            axum::routing::put(h::put_registry_handler).delete(h::delete_registry_handler),
        )
        .route("/admin/cache/stats", get(h::cache_stats_handler))
        .route("/admin/cache/invalidate", post(h::invalidate_handler))
        .route("/metrics", get(h::metrics_handler))
        .route("/openapi.json", get(openapi_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .fallback(not_found_handler)
        .layer(middleware::from_fn_with_state(state.clone(), measure))
        .with_state(state)
}

fn route_of(path: &str) -> Route {
    if path == "/v1/chat/completions" {
        Route::ChatCompletions
    } else if path.starts_with("/v1/streams/") {
        Route::Streams
    } else if path.starts_with("/v1/sessions") {
        Route::Sessions
    } else if path == "/v1/models" {
        Route::Models
    } else if path.starts_with("/v1/events/") {
        Route::Events
    } else if path.starts_with("/v1/features/") {
        Route::Features
    } else if path == "/v1/embeddings" {
        Route::Embeddings
    } else if path.starts_with("/v1/vectors/") {
        Route::Vectors
    } else if path.starts_with("/admin/") {
        Route::Admin
    } else {
        Route::Other
    }
}

/// Counts, times and logs every request (to its response head: streams when they start).
async fn measure(State(gw): State<AppState>, request: Request, next: Next) -> Response {
    let route = route_of(request.uri().path());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    gw.metrics.request(route, status, took);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    tracing::info!(
        target: "tollgate::access",
        %method,
        path,
        status,
        ms = took.as_secs_f64() * 1e3,
        cache = header("x-tollgate-cache"),
        route = header("x-tollgate-route"),
        "request"
    );
    response
}

/// Liveness: the process answers.
/// The OpenAPI document of this HTTP surface (`crates/tollgate-server/openapi.json`).
async fn openapi_handler() -> Response {
    let mut response = Response::new(axum::body::Body::from(OPENAPI));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The OpenAPI document, kept beside the routes it describes.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn healthz_handler() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: Redis answers a PING within its timeout.
async fn readyz_handler(State(gw): State<AppState>) -> Result<Json<Value>, ApiError> {
    gw.redis
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("redis: {e}")))?;
    Ok(Json(json!({"status": "ready", "redis": "ok"})))
}

async fn not_found_handler(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("unknown path {}", uri.path()))
}
