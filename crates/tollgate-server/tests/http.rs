//! The HTTP surface, called as a tower service (no socket), against a real redis-server.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tollgate_redis::{Redis, RedisConfig};
use tollgate_server::{AppState, app};
use tollgate_testkit::RedisServer;
use tower::ServiceExt;

async fn get(state: &AppState, path: &str) -> (StatusCode, Value) {
    let response = app(state.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn state(url: String) -> AppState {
    let redis = Redis::connect(&RedisConfig {
        url,
        command_timeout: Duration::from_millis(300),
    })
    .await
    .unwrap();
    AppState { redis }
}

#[tokio::test]
async fn health_and_readiness_answer_when_redis_is_up() {
    let server = RedisServer::start();
    let state = state(server.url()).await;
    assert_eq!(
        get(&state, "/healthz").await,
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let (status, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["redis"], "ok");
}

#[tokio::test]
async fn not_ready_but_alive_when_redis_is_down() {
    let mut server = RedisServer::start();
    let state = state(server.url()).await;
    server.kill();
    assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
    let (status, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["type"], "service_unavailable");
    // The 503 body says nothing about internals.
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
    // Redis comes back: ready again, no restart.
    server.restart();
    let mut ready = false;
    for _ in 0..100 {
        if get(&state, "/readyz").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again within 5 s of redis coming back");
}

#[tokio::test]
async fn unknown_paths_get_an_openai_shaped_404() {
    let server = RedisServer::start();
    let state = state(server.url()).await;
    let (status, body) = get(&state, "/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found_error");
    assert_eq!(body["error"]["message"], "unknown path /v1/nothing-here");
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
}
