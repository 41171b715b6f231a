//! Every route, in three groups by who may call it; `app.rs` puts each group behind its
//! authentication.

use axum::Router;
use axum::routing::{delete, get, post, put};

use crate::handlers::{
    cache, chat, conversations, embeddings, events, features, keys, messages, models, ops,
    responses, results, sessions, streams, ui, vectors,
};
use crate::state::AppState;

/// The routes open by design, and only these: what load balancers and orchestrators poll, the
/// API's description, and the dashboard's files (which hold no data: the page reads the admin
/// API with the master key).
pub(crate) fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(ops::healthz_handler))
        .route("/readyz", get(ops::readyz_handler))
        .route("/openapi.json", get(ops::openapi_handler))
        .route("/ui", get(ui::index_handler))
        .route("/ui/{file}", get(ui::asset_handler))
}

/// The API, for an API key (any key; what it reaches is its own tenant's).
pub(crate) fn tenant_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions_handler))
        .route("/v1/models", get(models::models_handler))
        .route("/v1/embeddings", post(embeddings::embeddings_handler))
        .route("/v1/responses", post(responses::create_response_handler))
        .route("/v1/messages", post(messages::messages_handler))
        .route(
            "/v1/messages/count_tokens",
            post(messages::count_tokens_handler),
        )
        .route(
            "/v1/responses/{id}",
            get(responses::get_response_handler).delete(responses::delete_response_handler),
        )
        .route("/v1/streams/{id}", get(streams::stream_handler))
        .route("/v1/sessions", post(sessions::create_session_handler))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session_handler).delete(sessions::delete_session_handler),
        )
        .route(
            "/v1/sessions/{id}/messages",
            get(sessions::session_messages_handler),
        )
        .route("/v1/events/{stream}", post(events::publish_event_handler))
        .route(
            "/v1/events/{stream}/groups",
            post(events::create_group_handler),
        )
        .route(
            "/v1/events/{stream}/groups/{group}/read",
            post(events::read_group_handler),
        )
        .route(
            "/v1/events/{stream}/groups/{group}/ack",
            post(events::ack_handler),
        )
        .route(
            "/v1/events/{stream}/dead",
            get(events::dead_letters_handler),
        )
        .route("/v1/features/batch", post(features::features_batch_handler))
        .route(
            "/v1/results/{cache}/lookup",
            post(results::lookup_results_handler),
        )
        .route(
            "/v1/results/{cache}/{key}",
            put(results::put_result_handler).delete(results::delete_result_handler),
        )
        .route(
            "/v1/features/{entity_type}/{entity_id}",
            get(features::get_features_handler),
        )
        .route(
            "/v1/features/{entity_type}/{entity_id}/{group}",
            put(features::put_features_handler),
        )
        .route(
            "/v1/vectors/{collection}",
            get(vectors::collection_info_handler).delete(vectors::drop_collection_handler),
        )
        .route(
            "/v1/vectors/{collection}/search",
            post(vectors::search_vectors_handler),
        )
        .route(
            "/v1/vectors/{collection}/{id}",
            put(vectors::put_vector_handler)
                .get(vectors::get_vector_handler)
                .delete(vectors::delete_vector_handler),
        )
}

/// The operator's routes, for the master key; `/metrics` among them (it shows traffic, spend and
/// savings: Prometheus scrapes it with the master key as its bearer token).
pub(crate) fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(ops::metrics_handler))
        .route(
            "/admin/keys",
            post(keys::create_key_handler).get(keys::list_keys_handler),
        )
        .route("/admin/keys/{id}", delete(keys::revoke_key_handler))
        .route("/admin/spend", get(keys::spend_handler))
        .route(
            "/admin/requests",
            get(conversations::recent_requests_handler),
        )
        .route("/admin/timeline", get(conversations::timeline_handler))
        .route("/admin/sessions", get(conversations::sessions_handler))
        .route(
            "/admin/sessions/{id}/messages",
            get(conversations::session_messages_handler),
        )
        .route("/admin/responses", get(conversations::responses_handler))
        .route("/admin/streams", get(conversations::live_streams_handler))
        .route("/admin/models", get(models::list_registry_handler))
        .route(
            "/admin/models/{name}",
            put(models::put_registry_handler).delete(models::delete_registry_handler),
        )
        .route("/admin/cache/stats", get(cache::cache_stats_handler))
        .route("/admin/cache/invalidate", post(cache::invalidate_handler))
}
