//! The HTTP providers against fake upstreams on loopback (the real APIs are paid and out of
//! reach): what they send, and how they read streams and errors.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_core::{Aggregator, ChatRequest};
use tollgate_providers::anthropic::Anthropic;
use tollgate_providers::openai_compat::{OpenAiCompat, Timeouts};
use tollgate_providers::{Provider, ProviderError};

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn sse(events: &[(&str, Value)]) -> Response {
    let body: String = events
        .iter()
        .map(|(e, d)| format!("event: {e}\ndata: {d}\n\n"))
        .collect();
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn fold(
    p: &dyn Provider,
    req: ChatRequest,
) -> Result<tollgate_core::ChatCompletion, ProviderError> {
    let mut stream = p.chat_stream(req).await?;
    let mut agg = Aggregator::default();
    while let Some(chunk) = stream.next().await {
        agg.push(&chunk?);
    }
    Ok(agg.finish())
}

#[tokio::test]
async fn anthropic_requests_and_streams_are_translated_both_ways() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/messages",
            axum::routing::post(|State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| async move {
                seen.lock().unwrap().push((headers, body));
                sse(&[
                    ("message_start", json!({"type": "message_start", "message": {"id": "msg_7", "usage": {"input_tokens": 21}}})),
                    ("content_block_start", json!({"type": "content_block_start", "index": 0})),
                    ("ping", json!({"type": "ping"})),
                    ("content_block_delta", json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Bonjour"}})),
                    ("content_block_delta", json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": " !"}})),
                    ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})),
                    ("message_stop", json!({"type": "message_stop"})),
                ])
            }),
        )
        .with_state(seen.clone());
    let base = serve(app).await;
    let provider = Anthropic::new(&base, "sk-ant-test".into(), Timeouts::default()).unwrap();
    let req = request(json!({
        "model": "claude-test", "temperature": 0.2,
        "messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}]
    }));
    let done = fold(&provider, req).await.unwrap();
    assert_eq!(done.choices[0].message.text_content(), "Bonjour !");
    assert_eq!(done.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = done.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (21, 3, 24)
    );
    let (headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["x-api-key"], "sk-ant-test");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "Answer in French.");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Hello"}])
    );
    assert_eq!(
        (
            body["stream"].clone(),
            body["max_tokens"].clone(),
            body["model"].clone()
        ),
        (json!(true), json!(1024), json!("claude-test"))
    );
}

/// A tool-using turn over HTTP: the fake Messages API gets Messages tools and tool turns, and
/// its streamed `tool_use` comes back as chat `tool_calls`.
#[tokio::test]
async fn anthropic_tool_use_goes_out_as_tools_and_comes_back_as_tool_calls() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/messages",
            axum::routing::post(|State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| async move {
                seen.lock().unwrap().push((headers, body));
                sse(&[
                    ("message_start", json!({"type": "message_start", "message": {"id": "msg_t", "usage": {"input_tokens": 40, "cache_read_input_tokens": 60}}})),
                    ("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {}}})),
                    ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":"}})),
                    ("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": " \"tea\"}"}})),
                    ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                    ("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}})),
                    ("message_stop", json!({"type": "message_stop"})),
                ])
            }),
        )
        .with_state(seen.clone());
    let base = serve(app).await;
    let provider = Anthropic::new(&base, "sk-ant-test".into(), Timeouts::default()).unwrap();
    let req = request(json!({
        "model": "claude-test", "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "user", "content": "find tea"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"coffee\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "no coffee"}
        ]
    }));
    let done = fold(&provider, req).await.unwrap();
    let choice = &done.choices[0];
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        choice.message.extra["tool_calls"],
        json!([{"id": "toolu_9", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"tea\"}"}}])
    );
    assert_eq!(done.usage.unwrap().prompt_tokens, 100);
    let (_, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        body["tools"],
        json!([{"name": "lookup", "input_schema": {"type": "object"}}])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "lookup"})
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "find tea"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "coffee"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "no coffee"}]}
        ])
    );
}

#[tokio::test]
async fn upstream_errors_become_errors_the_router_can_act_on() {
    let app = axum::Router::new()
        .route(
            "/a/chat/completions",
            axum::routing::post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "3")],
                    "slow down",
                )
            }),
        )
        .route(
            "/b/chat/completions",
            axum::routing::post(|| async {
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": {"message": "bad model"}})),
                )
            }),
        )
        .route(
            "/c/chat/completions",
            axum::routing::post(|| async { (StatusCode::BAD_GATEWAY, "oops") }),
        )
        .route(
            "/d/chat/completions",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/f/chat/completions",
            axum::routing::post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after-ms", "1500"), ("retry-after", "2")],
                    "slow down",
                )
            }),
        )
        .route(
            "/g/chat/completions",
            axum::routing::post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                        "message": "Quota exceeded", "details": [
                            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}})),
                )
            }),
        )
        .route(
            "/e/chat/completions",
            axum::routing::post(|| async {
                (
                    [("content-type", "text/event-stream")],
                    "data: {not json}\n\n",
                )
            }),
        );
    let base = serve(app).await;
    let req = || request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    let quick = Timeouts {
        first_byte: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let call = |path: &str| {
        let p = OpenAiCompat::new(&format!("{base}/{path}"), Some("k".into()), quick).unwrap();
        async move { fold(&p, req()).await }
    };
    assert!(
        matches!(call("a").await, Err(ProviderError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(3))
    );
    // Azure's finer `retry-after-ms` wins over `retry-after`.
    assert!(
        matches!(call("f").await, Err(ProviderError::RateLimited { retry_after: Some(d) }) if d == Duration::from_millis(1500))
    );
    // Google's wait is in the body.
    assert!(
        matches!(call("g").await, Err(ProviderError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(7))
    );
    match call("b").await {
        Err(ProviderError::Rejected {
            status: 400,
            message,
        }) => assert_eq!(message, "bad model"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        call("c").await,
        Err(ProviderError::Upstream { status: 502, .. })
    ));
    assert!(matches!(call("d").await, Err(ProviderError::Timeout)));
    assert!(matches!(call("e").await, Err(ProviderError::Protocol(_))));
    let unreachable = OpenAiCompat::new("http://127.0.0.1:9/v1", None, quick).unwrap();
    assert!(matches!(
        fold(&unreachable, req()).await,
        Err(ProviderError::Connect(_))
    ));
}

#[tokio::test]
async fn openai_embeddings_are_sent_as_one_batch_and_read_back_in_input_order() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/embeddings",
            axum::routing::post(|State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| async move {
                let inputs = body["input"].as_array().cloned().unwrap_or_default();
                seen.lock().unwrap().push((headers, body));
                if inputs.iter().any(|i| i == "fail") {
                    return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {"message": "busy"}}))).into_response();
                }
                if inputs.iter().any(|i| i == "short") {
                    return Json(json!({"data": [{"index": 0, "embedding": [1.0]}]})).into_response();
                }
                // Out of order, as the API allows: `index` says which input each belongs to.
                let data: Vec<Value> = (0..inputs.len())
                    .rev()
                    .map(|i| json!({"object": "embedding", "index": i, "embedding": [i as f32, 1.0]}))
                    .collect();
                Json(json!({"object": "list", "data": data, "usage": {"prompt_tokens": 7, "total_tokens": 7}})).into_response()
            }),
        )
        .with_state(seen.clone());
    let base = serve(app).await;
    let p = OpenAiCompat::new(
        &format!("{base}/v1"),
        Some("sk-test".into()),
        Timeouts::default(),
    )
    .unwrap();
    let got = p
        .embed(
            "text-embedding-3-small".into(),
            vec!["a".into(), "b".into(), "c".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        got.vectors,
        vec![vec![0.0, 1.0], vec![1.0, 1.0], vec![2.0, 1.0]]
    );
    assert_eq!(got.prompt_tokens, 7);
    {
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(headers["authorization"], "Bearer sk-test");
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(body["input"], json!(["a", "b", "c"]));
    }
    let busy = p.embed("m".into(), vec!["fail".into()]).await.unwrap_err();
    assert!(busy.is_retryable(), "{busy:?}");
    let short = p
        .embed("m".into(), vec!["short".into(), "x".into()])
        .await
        .unwrap_err();
    assert!(matches!(short, ProviderError::Protocol(_)), "{short:?}");
    // A provider without embeddings refuses, and that is final.
    let anthropic = Anthropic::new(&base, "k".into(), Timeouts::default()).unwrap();
    let refused = anthropic
        .embed("claude".into(), vec!["a".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ProviderError::Rejected { status: 400, .. }) && !refused.is_retryable()
    );
}
