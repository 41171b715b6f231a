//! The HTTP surface, called as a tower service (no socket), against a real redis-server and the
//! built-in mock provider.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_server::{AppState, app};
use tollgate_testkit::{
    CommandCount, FakeUpstream, FakeUpstreamConfig, RedisServer, count_commands, letters,
    shared_redis, unique_prefix,
};
use tower::ServiceExt;

mod common;
use common::{Reply, call, gateway, gateway_at, gateway_on};

/// Creates one key per tenant (the gateway's master key must be `mk`); `Bearer KEY` each.
async fn tenant_keys(gw: &AppState, tenants: &[&str]) -> Vec<String> {
    let mut keys = Vec::new();
    for tenant in tenants {
        let body = json!({"name": tenant, "tenant": tenant});
        let created = call(
            gw,
            "POST",
            "/admin/keys",
            &[("authorization", "Bearer mk")],
            Some(body),
        )
        .await
        .json();
        keys.push(format!("Bearer {}", created["key"].as_str().unwrap()));
    }
    keys
}

fn chat(content: &str) -> Value {
    json!({"model": "mock/echo", "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn sse_text(text: &str) -> String {
    sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn the_dashboards_files_are_served_from_the_binary_and_allow_nothing_else() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    for (path, kind, part) in [
        ("/ui", "text/html", "<script src=\"/ui/app.js\">"),
        ("/ui/app.js", "text/javascript", "/admin/keys"),
        ("/ui/app.css", "text/css", ".chart"),
    ] {
        let r = call(&gw, "GET", path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(r.text.contains(part), "{path}");
        let policy = r.header("content-security-policy").unwrap();
        assert!(policy.starts_with("default-src 'self'"), "{policy}");
    }
    let missing = call(&gw, "GET", "/ui/../Cargo.toml", &[], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // The data the page shows stays behind the master key.
    let metrics = call(&gw, "GET", "/metrics", &[], None).await;
    assert_eq!(metrics.status, StatusCode::UNAUTHORIZED);
    // Listings read from the database say so on a gateway without one.
    let master = [("authorization", "Bearer mk")];
    for path in [
        "/admin/requests",
        "/admin/timeline",
        "/admin/sessions",
        "/admin/responses",
    ] {
        let r = call(&gw, "GET", path, &master, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(r.text.contains("keeps none"), "{path}: {}", r.text);
    }
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let gw = gateway("").await;
    assert_eq!(
        call(&gw, "GET", "/healthz", &[], None).await.json(),
        json!({"status": "ok"})
    );
    assert_eq!(
        call(&gw, "GET", "/readyz", &[], None).await.status,
        StatusCode::OK
    );
    let r = call(&gw, "GET", "/v1/nothing-here", &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn not_ready_but_alive_when_redis_is_down_and_ready_again_when_it_returns() {
    let mut server = RedisServer::start();
    let gw = gateway_on(&server.url(), "").await;
    server.kill();
    assert_eq!(
        call(&gw, "GET", "/healthz", &[], None).await.status,
        StatusCode::OK
    );
    let r = call(&gw, "GET", "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !r.text.contains("127.0.0.1"),
        "no internals in a 5xx body: {}",
        r.text
    );
    server.restart();
    let mut ready = false;
    for _ in 0..100 {
        if call(&gw, "GET", "/readyz", &[], None).await.status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again within 5 s of redis coming back");
}

#[tokio::test]
async fn a_repeated_deterministic_request_is_a_cache_hit() {
    let gw = gateway("").await;
    let first = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("hello there")),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(first.header("x-tollgate-route"), Some("mock/echo"));
    assert!(
        first
            .header("x-tollgate-stream-id")
            .is_some_and(|s| s.starts_with("st_"))
    );
    let body = first.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "This is a mock answer to: hello there"
    );
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let second = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("hello there")),
    )
    .await;
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(second.json(), body);
    // A streamed request for the same answer is a hit too, replayed as chunks.
    let mut streamed = chat("hello there");
    streamed["stream"] = json!(true);
    let third = call(&gw, "POST", "/v1/chat/completions", &[], Some(streamed)).await;
    assert_eq!(third.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(third.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        sse_text(&third.text),
        "This is a mock answer to: hello there"
    );
    assert_eq!(
        sse_data(&third.text).last().map(String::as_str),
        Some("[DONE]")
    );
    // Stats count it.
    let stats = call(&gw, "GET", "/admin/cache/stats", &[], None)
        .await
        .json();
    let row = &stats["data"][0];
    assert_eq!(
        (
            row["model"].as_str(),
            row["hits"].as_u64(),
            row["misses"].as_u64()
        ),
        (Some("mock/echo"), Some(2), Some(1))
    );
}

#[tokio::test]
async fn a_streamed_miss_is_cached_after_it_completes() {
    let gw = gateway("").await;
    let mut req = chat("stream me");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let first = call(&gw, "POST", "/v1/chat/completions", &[], Some(req.clone())).await;
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(sse_text(&first.text), "This is a mock answer to: stream me");
    let data = sse_data(&first.text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(
        usage["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "usage chunk when include_usage"
    );
    // Event ids are the token-stream positions.
    assert!(
        first.text.starts_with("id: 2\n"),
        "{}",
        &first.text[..40.min(first.text.len())]
    );
    let again = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("stream me")),
    )
    .await;
    assert_eq!(again.header("x-tollgate-cache"), Some("hit"));
}

#[tokio::test]
async fn cache_control_headers_are_honoured() {
    let gw = gateway("").await;
    let no_store = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("cache-control", "no-store")],
        Some(chat("secret")),
    )
    .await;
    assert_eq!(no_store.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(
        call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("secret"))
        )
        .await
        .header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("secret"))
        )
        .await
        .header("x-tollgate-cache"),
        Some("hit")
    );
    let fresh = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("cache-control", "no-cache")],
        Some(chat("secret")),
    )
    .await;
    assert_eq!(fresh.header("x-tollgate-cache"), Some("bypass"));
    // Non-deterministic requests bypass the cache unless configured otherwise.
    let mut warm = chat("warm");
    warm["temperature"] = json!(0.7);
    assert_eq!(
        call(&gw, "POST", "/v1/chat/completions", &[], Some(warm.clone()))
            .await
            .header("x-tollgate-cache"),
        Some("bypass")
    );
    assert_eq!(
        call(&gw, "POST", "/v1/chat/completions", &[], Some(warm))
            .await
            .header("x-tollgate-cache"),
        Some("bypass")
    );
    let bad_ttl = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("x-tollgate-cache-ttl", "soon")],
        Some(chat("x")),
    )
    .await;
    assert_eq!(bad_ttl.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_4xx_errors() {
    let gw = gateway("[server]\nmax_body_bytes = 4096\n").await;
    let cases: Vec<(Option<Value>, &str, StatusCode)> = vec![
        (None, "", StatusCode::BAD_REQUEST),
        (
            Some(json!({"model": "mock/echo"})),
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(json!({"model": "mock/echo", "messages": "hi"})),
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(json!({"model": 7, "messages": []})),
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(json!({"model": "mock/echo", "messages": []})),
            "messages",
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(
                json!({"model": "mock/echo", "temperature": 9, "messages": [{"role": "user", "content": "x"}]}),
            ),
            "temperature",
            StatusCode::BAD_REQUEST,
        ),
        (
            Some(json!({"model": "nobody/x", "messages": [{"role": "user", "content": "x"}]})),
            "model",
            StatusCode::NOT_FOUND,
        ),
        (
            Some(chat(&"x".repeat(5000))),
            "",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (body, param, status) in cases {
        let r = call(&gw, "POST", "/v1/chat/completions", &[], body.clone()).await;
        assert_eq!(r.status, status, "{body:?}: {}", r.text);
        let e = r.json();
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{e}"
        );
        assert!(e["error"]["type"].is_string());
        if !param.is_empty() {
            assert_eq!(e["error"]["param"], param, "{e}");
        }
    }
    let r = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let garbage = Request::post("/v1/chat/completions")
        .body(Body::from("{not json"))
        .unwrap();
    let response = app(gw.clone()).oneshot(garbage).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn keys_authenticate_and_limits_answer_429_with_retry_after() {
    let gw =
        gateway("[server]\nmaster_key = \"mk-test\"\n[tiers.small]\nrpm = 3\ntpm = 100000\n").await;
    let master = [("authorization", "Bearer mk-test")];
    assert_eq!(
        call(&gw, "POST", "/v1/chat/completions", &[], Some(chat("x")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer tg-nope")],
            Some(chat("x"))
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let created = call(
        &gw,
        "POST",
        "/admin/keys",
        &master,
        Some(json!({"name": "team-a", "tier": "small"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    // Admin routes need the master key.
    assert_eq!(
        call(&gw, "GET", "/admin/keys", &headers, None).await.status,
        StatusCode::FORBIDDEN
    );
    for i in 0..3 {
        let r = call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &headers,
            Some(chat(&format!("q{i}"))),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some(["2", "1", "0"][i])
        );
        // In OpenAI's spelling (`350ms`, `59s`, `1m0s`).
        let reset = r.header("x-ratelimit-reset-requests").unwrap();
        assert!(
            reset.ends_with('s')
                && reset
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == 'm' || c == 's'),
            "{reset}"
        );
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100000"));
        let left: u64 = r
            .header("x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(left < 100000, "{left}");
        assert!(r.header("x-ratelimit-reset-tokens").is_some());
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"requests\";q=3;w=60, \"tokens\";q=100000;w=60")
        );
    }
    let limited = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &headers,
        Some(chat("q4")),
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // A per-minute limit holds over any 60 seconds: the next request fits when the first of
    // the three leaves the window, not after a third of a minute.
    assert!(
        limited
            .header("retry-after")
            .is_some_and(|s| s.parse::<u64>().unwrap() >= 55),
        "{:?}",
        limited.header("retry-after")
    );
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"requests\";q=3;w=60, \"tokens\";q=100000;w=60")
    );
    assert_eq!(limited.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    let listed = call(&gw, "GET", "/admin/keys", &master, None).await.json();
    assert!(
        !listed.to_string().contains(&key),
        "keys are never shown again"
    );
    assert_eq!(
        call(&gw, "DELETE", &format!("/admin/keys/{id}"), &master, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &headers,
            Some(chat("x"))
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sessions_prepend_history_and_stay_with_their_key() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    let master = [("authorization", "Bearer mk")];
    let mut keys = Vec::new();
    for name in ["alice", "bob"] {
        let created = call(
            &gw,
            "POST",
            "/admin/keys",
            &master,
            Some(json!({"name": name})),
        )
        .await
        .json();
        keys.push(format!("Bearer {}", created["key"].as_str().unwrap()));
    }
    let alice = [
        ("authorization", keys[0].as_str()),
        ("x-tollgate-session-id", "trip"),
    ];
    let mut first = chat("My name is Ada.");
    first["messages"] = json!([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "My name is Ada."}]);
    assert_eq!(
        call(&gw, "POST", "/v1/chat/completions", &alice, Some(first))
            .await
            .status,
        StatusCode::OK
    );
    // The exchange is recorded in the background; wait for it.
    let mut messages = Value::Null;
    for _ in 0..50 {
        messages = call(&gw, "GET", "/v1/sessions/trip/messages", &alice[..1], None)
            .await
            .json();
        if messages["data"].as_array().is_some_and(|d| d.len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data = messages["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{messages}");
    assert_eq!(
        (
            data[0]["role"].as_str(),
            data[1]["role"].as_str(),
            data[2]["role"].as_str()
        ),
        (Some("system"), Some("user"), Some("assistant"))
    );
    // The next request sees the history: the cache key covers it, so this is a miss.
    let second = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &alice,
        Some(chat("What is my name?")),
    )
    .await;
    assert_eq!(second.header("x-tollgate-cache"), Some("miss"));
    let info = call(&gw, "GET", "/v1/sessions/trip", &alice[..1], None)
        .await
        .json();
    assert_eq!(info["system"], "Be kind.");
    // Bob cannot see, extend or delete Alice's session.
    let bob = [("authorization", keys[1].as_str())];
    assert_eq!(
        call(&gw, "GET", "/v1/sessions/trip", &bob, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&gw, "GET", "/v1/sessions/trip/messages", &bob, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&gw, "DELETE", "/v1/sessions/trip", &bob, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&gw, "DELETE", "/v1/sessions/trip", &alice[..1], None)
            .await
            .status,
        StatusCode::OK
    );
    let created = call(
        &gw,
        "POST",
        "/v1/sessions",
        &bob,
        Some(json!({"system": "Terse."})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(created.json()["id"].as_str().unwrap().starts_with("sess_"));
}

/// A non-streamed request nothing else can read writes no token stream (and names none); one
/// sent with `x-tollgate-resumable: true` does, readable from its id; a bad value is a 400.
#[tokio::test]
async fn a_token_stream_is_written_only_when_something_can_read_it() {
    let gw = gateway("").await;
    let mut plain = chat("nobody follows this");
    plain["temperature"] = json!(0.9);
    let r = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(plain.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("x-tollgate-stream-id"), None);
    let kept = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("x-tollgate-resumable", "true")],
        Some(plain.clone()),
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.text);
    let id = kept.header("x-tollgate-stream-id").unwrap().to_owned();
    let read = call(&gw, "GET", &format!("/v1/streams/{id}"), &[], None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(
        sse_text(&read.text),
        kept.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
    let bad = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("x-tollgate-resumable", "maybe")],
        Some(plain),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["param"], "x-tollgate-resumable");
}

#[tokio::test]
async fn a_generation_can_be_read_again_and_resumed_from_its_stream() {
    let gw = gateway("").await;
    let mut req = chat("replay me please");
    req["stream"] = json!(true);
    let first = call(&gw, "POST", "/v1/chat/completions", &[], Some(req)).await;
    let id = first.header("x-tollgate-stream-id").unwrap().to_owned();
    let whole = call(&gw, "GET", &format!("/v1/streams/{id}"), &[], None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(
        sse_text(&whole.text),
        "This is a mock answer to: replay me please"
    );
    let resumed = call(
        &gw,
        "GET",
        &format!("/v1/streams/{id}"),
        &[("last-event-id", "5")],
        None,
    )
    .await;
    let ids: Vec<u64> = resumed
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&6));
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(
        format!("{}{}", "This is a ", sse_text(&resumed.text).trim_start()),
        "This is a mock answer to: replay me please"
    );
    assert_eq!(
        call(&gw, "GET", "/v1/streams/st_nope", &[], None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &gw,
            "GET",
            &format!("/v1/streams/{id}"),
            &[("last-event-id", "x")],
            None
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn models_and_metrics_are_listed() {
    let gw =
        gateway("[aliases.smart]\ndeployments = [{ model = \"mock/echo\", weight = 1 }]\n").await;
    let models = call(&gw, "GET", "/v1/models", &[], None).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "smart",
            "local/smollm2-135m-instruct",
            "local/all-minilm-l6-v2",
            "mock/echo"
        ]
    );
    let r = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(json!({"model": "smart", "messages": [{"role": "user", "content": "x"}]})),
    )
    .await;
    assert_eq!(r.header("x-tollgate-route"), Some("mock/echo"));
    let metrics = call(&gw, "GET", "/metrics", &[], None).await.text;
    for name in [
        "tollgate_http_requests_total",
        "tollgate_cache_lookups_total",
        "tollgate_tokens_total",
        "tollgate_http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn requests_give_back_what_they_did_not_use_and_hits_cost_no_tokens() {
    // 500 tokens a minute, one request at a time. Each request reserves its prompt plus 200
    // output tokens; two reservations cannot be held at once, so only settling lets these pass.
    let gw = gateway("[tiers.default]\ntpm = 500\nmax_concurrency = 1\n").await;
    for i in 0..5 {
        let mut req = chat(&format!("distinct question {i}"));
        req["max_tokens"] = json!(200);
        let mut status = StatusCode::TOO_MANY_REQUESTS;
        // Settling runs just after the answer; give it a moment.
        for _ in 0..50 {
            status = call(&gw, "POST", "/v1/chat/completions", &[], Some(req.clone()))
                .await
                .status;
            if status == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} was not admitted: its predecessors kept their reservation or slot"
        );
    }
    // Hits of a cached answer are charged one request each, no tokens and no slot: twenty in a
    // row fit in a budget that holds two reservations at most.
    let mut cached = chat("distinct question 0");
    cached["max_tokens"] = json!(200);
    for _ in 0..20 {
        let r = call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(cached.clone()),
        )
        .await;
        assert_eq!(
            (r.status, r.header("x-tollgate-cache")),
            (StatusCode::OK, Some("hit"))
        );
    }
}

/// A concurrency slot is a lease in Redis one second long here; the request holding it runs
/// three and a half, so only its renewal keeps the slot from another replica meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_kept_while_its_request_outlives_the_lease() {
    let (url, prefix) = (shared_redis().url(), unique_prefix());
    let config = "[providers.slow]\nkind = \"mock\"\nmodels = [\"slow/echo\"]\n\
                  first_token_latency_ms = 3500\n\
                  [tiers.default]\nmax_concurrency = 1\n[limits]\nconcurrency_lease_seconds = 1\n";
    let (a, b) = (
        gateway_at(&url, &prefix, config).await,
        gateway_at(&url, &prefix, config).await,
    );
    let mut slow = chat("a long answer");
    slow["model"] = json!("slow/echo");
    let holder = tokio::spawn(async move {
        call(&a, "POST", "/v1/chat/completions", &[], Some(slow))
            .await
            .status
    });
    // Past two lease lengths: the slot is still held, so the other replica refuses (without
    // waiting in the queue for it).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let refused = call(
        &b,
        "POST",
        "/v1/chat/completions",
        &[("x-tollgate-queue-wait", "0")],
        Some(chat("meanwhile")),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the slot of a request still running was given away"
    );
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    // Once it ends, its slot is free again (settled just after the answer).
    let mut status = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..50 {
        status = call(&b, "POST", "/v1/chat/completions", &[], Some(chat("after")))
            .await
            .status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::OK, "the slot was not given back");
}

#[tokio::test]
async fn limiters_follow_their_policy_while_redis_is_down() {
    let mut server = RedisServer::start();
    let open = gateway_on(&server.url(), "[tiers.default]\nrpm = 3\n").await;
    let closed = gateway_on(
        &server.url(),
        "[tiers.default]\nrpm = 3\nmax_concurrency = 5\n[limits]\nconcurrency_on_redis_error = \"closed\"\n",
    )
    .await;
    server.kill();
    let req = |i: usize| {
        let mut r = chat(&format!("while redis is down {i}"));
        r["temperature"] = json!(0.8);
        r
    };
    // Fail open: answered, with this instance's share of the limit enforced in process.
    for i in 0..3 {
        let r = call(&open, "POST", "/v1/chat/completions", &[], Some(req(i))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let r = call(&open, "POST", "/v1/chat/completions", &[], Some(req(3))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some());
    // Fail closed (concurrency here): refused with 503, nothing sent upstream.
    let r = call(&closed, "POST", "/v1/chat/completions", &[], Some(req(4))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["type"], "service_unavailable");
}

#[tokio::test]
async fn per_model_limits_apply_to_their_model_only() {
    let gw = gateway("[aliases.other]\ndeployments = [{ model = \"mock/other\" }]\n[tiers.default.models.\"mock/echo\"]\nrpm = 2\n").await;
    let ask = |model: &str, i: usize| json!({"model": model, "temperature": 0.5, "messages": [{"role": "user", "content": format!("m{i}")}]});
    for i in 0..2 {
        assert_eq!(
            call(
                &gw,
                "POST",
                "/v1/chat/completions",
                &[],
                Some(ask("mock/echo", i))
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    let refused = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(ask("mock/echo", 2)),
    )
    .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-ratelimit-limit-requests"), Some("2"));
    // Another model is not limited by it.
    for i in 0..5 {
        assert_eq!(
            call(
                &gw,
                "POST",
                "/v1/chat/completions",
                &[],
                Some(ask("other", i))
            )
            .await
            .status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn invalidation_drops_a_models_answers_and_stats_count_dollars_saved() {
    let gw = gateway(
        "[prices.\"mock/echo\"]\ninput_per_million = 1000.0\noutput_per_million = 2000.0\n",
    )
    .await;
    let first = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("price me")),
    )
    .await
    .json();
    let usage = &first["usage"];
    assert_eq!(
        call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("price me"))
        )
        .await
        .header("x-tollgate-cache"),
        Some("hit")
    );
    let stats = call(&gw, "GET", "/admin/cache/stats", &[], None)
        .await
        .json();
    let row = &stats["data"][0];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 1000.0
        + usage["completion_tokens"].as_f64().unwrap() * 2000.0)
        / 1e6;
    assert!(
        (row["saved_dollars"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{row} vs {expected}"
    );
    assert_eq!(row["hit_rate"], 0.5);
    let r = call(
        &gw,
        "POST",
        "/admin/cache/invalidate",
        &[],
        Some(json!({"model": "mock/echo"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["generation"], 1);
    assert_eq!(
        call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("price me"))
        )
        .await
        .header("x-tollgate-cache"),
        Some("miss")
    );
    let bad = call(
        &gw,
        "POST",
        "/admin/cache/invalidate",
        &[],
        Some(json!({"model": ""})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn events_are_published_into_the_callers_tenant() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    let keys = tenant_keys(&gw, &["acme", "globex"]).await;
    let acme = [("authorization", keys[0].as_str())];
    let r = call(
        &gw,
        "POST",
        "/v1/events/orders",
        &acme,
        Some(json!({"order": "o-1", "amount": 12.5, "tags": ["a"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["stream"], "orders");
    let globex = [("authorization", keys[1].as_str())];
    call(
        &gw,
        "POST",
        "/v1/events/orders",
        &globex,
        Some(json!({"order": "g-9"})),
    )
    .await;
    let mut conn = gw.events.reader(Duration::from_millis(100)).await.unwrap();
    let seen = gw
        .events
        .read(
            &mut conn,
            "acme/orders",
            "0",
            10,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(seen.len(), 1, "only acme's event is in acme's stream");
    assert_eq!(seen[0].field("order"), Some(&b"o-1"[..]));
    assert_eq!(seen[0].field("amount"), Some(&b"12.5"[..]));
    assert_eq!(seen[0].field("tags"), Some(&br#"["a"]"#[..]));
    for bad in [json!([1, 2]), json!({}), json!("text")] {
        let r = call(&gw, "POST", "/v1/events/orders", &acme, Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        call(&gw, "POST", "/v1/events/orders", &[], Some(json!({"a": 1})))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

/// A group written without `ttl_seconds` lives `features.default_ttl_seconds`; `ttl_seconds: 0`
/// keeps it until it is replaced; a TTL of its own wins.
#[tokio::test]
async fn feature_groups_expire_by_default_unless_told_not_to() {
    let (url, prefix) = (shared_redis().url(), unique_prefix());
    let gw = gateway_at(
        &url,
        &prefix,
        "[server]\nmaster_key = \"mk\"\n[features]\ndefault_ttl_seconds = 100\n",
    )
    .await;
    let key = tenant_keys(&gw, &["acme"]).await.remove(0);
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (group, ttl, expected) in [
        ("plain", None, 90_000..=100_000),
        ("forever", Some(0), -1..=-1),
        ("own", Some(5), 1..=5_000),
    ] {
        let mut body = json!({"features": {"a": 1}});
        if let Some(ttl) = ttl {
            body["ttl_seconds"] = json!(ttl);
        }
        let path = format!("/v1/features/user/u1/{group}");
        let r = call(&gw, "PUT", &path, &[("authorization", &key)], Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}{{f:acme/user:u1}}:{group}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(expected.contains(&pttl), "{group}: {pttl}");
    }
}

/// Consumer groups over HTTP, on two replicas: each entry goes to one consumer of the group;
/// one a consumer holds too long without acknowledging it goes to the next consumer that reads,
/// and one delivered too often goes to the dead letters. Streams and groups are the tenant's.
#[tokio::test]
async fn consumer_groups_over_http_share_work_reclaim_and_dead_letter_across_replicas() {
    let (url, prefix) = (shared_redis().url(), unique_prefix());
    let config = "[server]\nmaster_key = \"mk\"\n[events]\nmax_deliveries = 2\nclaim_idle_seconds = 1\nmax_block_ms = 1000\n";
    let replicas = [
        gateway_at(&url, &prefix, config).await,
        gateway_at(&url, &prefix, config).await,
    ];
    let keys = tenant_keys(&replicas[0], &["acme", "globex"]).await;
    let (acme, globex) = (
        [("authorization", keys[0].as_str())],
        [("authorization", keys[1].as_str())],
    );
    for gw in &replicas {
        let r = call(
            gw,
            "POST",
            "/v1/events/jobs/groups",
            &acme,
            Some(json!({"group": "workers", "start": "beginning"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    for n in 0..20 {
        let r = call(
            &replicas[n % 2],
            "POST",
            "/v1/events/jobs",
            &acme,
            Some(json!({"n": n})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let read = |gw: usize, consumer: &str, count: usize, headers: [(&'static str, &str); 1]| {
        let gw = replicas[gw].clone();
        let body = json!({"consumer": consumer, "count": count, "block_ms": 0});
        let headers = headers.map(|(k, v)| (k, v.to_owned()));
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(
                &gw,
                "POST",
                "/v1/events/jobs/groups/workers/read",
                &h,
                Some(body),
            )
            .await
        }
    };
    let entries = |r: &Reply| -> Vec<(String, String, u64)> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_owned(),
                    e["fields"]["n"].as_str().unwrap_or_default().to_owned(),
                    e["deliveries"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // Two consumers on two replicas take turns; each acknowledges what it got.
    let mut seen: Vec<String> = Vec::new();
    for turn in 0.. {
        let (gw, consumer) = if turn % 2 == 0 { (0, "c1") } else { (1, "c2") };
        let got = entries(&read(gw, consumer, 3, acme).await);
        if got.is_empty() {
            break;
        }
        let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
        let r = call(
            &replicas[1 - gw],
            "POST",
            "/v1/events/jobs/groups/workers/ack",
            &acme,
            Some(json!({"ids": ids})),
        )
        .await;
        assert_eq!(r.json()["acknowledged"], ids.len(), "{}", r.text);
        seen.extend(got.into_iter().map(|(_, n, _)| n));
    }
    seen.sort_by_key(|n| n.parse::<u32>().unwrap());
    assert_eq!(seen, (0..20).map(|n| n.to_string()).collect::<Vec<_>>());
    // Held without an acknowledgement: nobody else gets it until it has been idle a second, then
    // the next reader does; past max_deliveries it goes to the dead letters instead.
    let r = call(
        &replicas[0],
        "POST",
        "/v1/events/jobs",
        &acme,
        Some(json!({"n": "stuck"})),
    )
    .await;
    let stuck = r.json()["id"].as_str().unwrap().to_owned();
    let first = entries(&read(0, "c1", 10, acme).await);
    assert_eq!(first, [(stuck.clone(), "stuck".to_owned(), 1)]);
    assert!(entries(&read(1, "c2", 10, acme).await).is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        entries(&read(1, "c2", 10, acme).await),
        [(stuck.clone(), "stuck".to_owned(), 2)]
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(entries(&read(0, "c1", 10, acme).await).is_empty());
    let dead = call(
        &replicas[1],
        "GET",
        "/v1/events/jobs/dead?count=10",
        &acme,
        None,
    )
    .await;
    assert_eq!(dead.status, StatusCode::OK, "{}", dead.text);
    let dead = dead.json();
    assert_eq!(dead["data"].as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead["data"][0]["fields"]["tg_origin_id"], stuck.as_str());
    assert_eq!(dead["data"][0]["fields"]["n"], "stuck");
    // Another tenant has no such group; bad reads are refused by name.
    assert_eq!(read(0, "c1", 1, globex).await.status, StatusCode::NOT_FOUND);
    let bad = |path: &'static str, body: Value, param: &'static str| {
        let gw = replicas[0].clone();
        let key = keys[0].clone();
        async move {
            let r = call(
                &gw,
                "POST",
                path,
                &[("authorization", key.as_str())],
                Some(body),
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
            assert_eq!(r.json()["error"]["param"], param, "{}", r.text);
        }
    };
    bad(
        "/v1/events/jobs/groups/workers/read",
        json!({"consumer": "c", "count": 0}),
        "count",
    )
    .await;
    bad(
        "/v1/events/jobs/groups/workers/read",
        json!({"consumer": "c", "block_ms": 60000}),
        "block_ms",
    )
    .await;
    bad(
        "/v1/events/jobs/groups/workers/read",
        json!({"consumer": ""}),
        "consumer",
    )
    .await;
    bad(
        "/v1/events/jobs/groups/workers/ack",
        json!({"ids": ["nope"]}),
        "ids",
    )
    .await;
    bad("/v1/events/jobs/groups", json!({"group": ""}), "group").await;
}

#[tokio::test]
async fn features_are_written_and_read_per_tenant() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    let keys = tenant_keys(&gw, &["acme", "globex"]).await;
    let acme = [("authorization", keys[0].as_str())];
    let put = call(
        &gw,
        "PUT",
        "/v1/features/user/u1/profile",
        &acme,
        Some(json!({"features": {"age": 31, "plan": "pro"}})),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    call(
        &gw,
        "PUT",
        "/v1/features/user/u1/activity",
        &acme,
        Some(json!({"features": {"clicks": 4}, "ttl_seconds": 60})),
    )
    .await;
    let got = call(
        &gw,
        "GET",
        "/v1/features/user/u1?groups=profile,activity,none",
        &acme,
        None,
    )
    .await
    .json();
    assert_eq!(
        got["groups"]["profile"]["features"],
        json!({"age": 31, "plan": "pro"})
    );
    assert!(got["groups"]["profile"]["updated_at_ms"].as_u64().unwrap() > 0);
    assert_eq!(got["groups"]["activity"]["features"]["clicks"], 4);
    assert_eq!(got["groups"]["none"], Value::Null);
    let batch = call(
        &gw,
        "POST",
        "/v1/features/batch",
        &acme,
        Some(json!({"entities": [{"entity_type": "user", "entity_id": "u1"}, {"entity_type": "user", "entity_id": "u2"}], "groups": ["profile"]})),
    )
    .await
    .json();
    assert_eq!(batch["data"][0]["groups"]["profile"]["features"]["age"], 31);
    assert_eq!(batch["data"][1]["groups"]["profile"], Value::Null);
    // Another tenant sees none of it.
    let globex = [("authorization", keys[1].as_str())];
    let theirs = call(
        &gw,
        "GET",
        "/v1/features/user/u1?groups=profile",
        &globex,
        None,
    )
    .await
    .json();
    assert_eq!(theirs["groups"]["profile"], Value::Null);
    for (method, path, body) in [
        ("GET", "/v1/features/user/u1", None),
        (
            "PUT",
            "/v1/features/user/u1/g",
            Some(json!({"features": {}})),
        ),
        (
            "PUT",
            "/v1/features/user/u1/g",
            Some(json!({"features": {"@ts": 1}})),
        ),
        (
            "PUT",
            "/v1/features/user/u1/g",
            Some(json!({"features": {"a": 1}, "ttl_seconds": -1})),
        ),
        ("PUT", "/v1/features/user/u1/g", Some(json!({"a": 1}))),
    ] {
        let r = call(&gw, method, path, &acme, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body:?}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn embeddings_are_computed_once_then_answered_from_the_cache() {
    let gw = gateway("").await;
    let embed = |input: Value, extra: Value| {
        let mut body = json!({"model": "mock/embed", "input": input});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        call(&gw, "POST", "/v1/embeddings", &[], Some(body))
    };
    let first = embed(json!(["hello world", "hello world again"]), json!({})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.header("x-tollgate-embeddings-cached"), Some("0"));
    let body = first.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    let v0: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(v0.len(), 384);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    // One input cached, one new; order kept; base64 carries the same floats.
    let second = embed(
        json!(["brand new", "hello world"]),
        json!({"encoding_format": "base64"}),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.header("x-tollgate-embeddings-cached"), Some("1"));
    let b64 = second.json()["data"][1]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, v0);
    let single = embed(json!("hello world"), json!({})).await;
    assert_eq!(single.header("x-tollgate-embeddings-cached"), Some("1"));

    for (input, extra, param) in [
        (json!([]), json!({}), "input"),
        (json!([1, 2, 3]), json!({}), "input"),
        (json!([""]), json!({}), "input"),
        (
            json!("x"),
            json!({"encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!("x"), json!({"dimensions": 12}), "dimensions"),
    ] {
        let bad = embed(input, extra).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
        assert_eq!(bad.json()["error"]["param"], param, "{}", bad.text);
    }
    let unknown = call(
        &gw,
        "POST",
        "/v1/embeddings",
        &[],
        Some(json!({"model": "nope/x", "input": "x"})),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
}

#[tokio::test]
async fn vector_collections_filter_before_ranking_and_stay_within_a_tenant() {
    let gw =
        gateway("[server]\nmaster_key = \"mk\"\n[vectors]\nembedding_model = \"mock/embed\"\n")
            .await;
    let keys = tenant_keys(&gw, &["acme", "globex"]).await;
    let (acme, globex) = (keys[0].as_str(), keys[1].as_str());
    for (id, v, lang, price) in [
        ("a", [1.0, 0.0, 0.0], "en", 5.0),
        ("b", [0.9, 0.1, 0.0], "fr", 15.0),
        ("c", [0.8, 0.2, 0.0], "en", 25.0),
        ("d", [0.0, 1.0, 0.0], "en", 15.0),
    ] {
        let r = as_key(
            &gw,
            "PUT",
            format!("/v1/vectors/items/{id}"),
            acme,
            Some(json!({"vector": v, "tags": {"lang": lang}, "numbers": {"price": price}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json()["dimensions"], 3);
    }
    let found = as_key(&gw, "POST", "/v1/vectors/items/search".into(), acme, Some(json!({"vector": [1.0, 0.0, 0.0], "k": 2, "filter": {"tags": {"lang": "en"}, "ranges": {"price": {"gte": 10}}}})))
    .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text);
    let body = found.json();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["c", "d"],
        "a fails the range, b the tag: the nearest passing come back"
    );
    assert_eq!(body["exact"], true);
    assert_eq!(body["data"][0]["numbers"]["price"], 25.0);

    // Another tenant has no such collection, and cannot read or delete the items.
    let other = as_key(
        &gw,
        "POST",
        "/v1/vectors/items/search".into(),
        globex,
        Some(json!({"vector": [1.0, 0.0, 0.0]})),
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{}", other.text);
    let get = call(
        &gw,
        "GET",
        "/v1/vectors/items/a",
        &[("authorization", globex)],
        None,
    )
    .await;
    assert_eq!(get.status, StatusCode::NOT_FOUND);
    let get = call(
        &gw,
        "GET",
        "/v1/vectors/items/a",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(get.json()["vector"], json!([1.0, 0.0, 0.0]));
    let del = call(
        &gw,
        "DELETE",
        "/v1/vectors/items/a",
        &[("authorization", globex)],
        None,
    )
    .await;
    assert_eq!(del.status, StatusCode::NOT_FOUND);
    let del = call(
        &gw,
        "DELETE",
        "/v1/vectors/items/a",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(del.status, StatusCode::OK);
    let info = call(
        &gw,
        "GET",
        "/v1/vectors/items",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(
        (
            info.json()["count"].clone(),
            info.json()["dimensions"].clone()
        ),
        (json!(3), json!(3))
    );

    // Text is embedded by the configured model and kept with the item.
    for (id, text) in [
        ("cat", "the cat sat on the mat"),
        ("stocks", "stock markets fell sharply today"),
    ] {
        let r = as_key(
            &gw,
            "PUT",
            format!("/v1/vectors/docs/{id}"),
            acme,
            Some(json!({"text": text})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let found = search_in(&gw, acme, "docs", json!({"text": "a cat on a mat", "k": 1})).await;
    assert_eq!(found["data"][0]["id"], "cat", "{found}");
    let get = call(
        &gw,
        "GET",
        "/v1/vectors/docs/cat",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(get.json()["text"], "the cat sat on the mat");

    // Bad input: one clear 400 each, nothing stored.
    for (path, body) in [
        (
            "/v1/vectors/items/z",
            json!({"vector": [1.0, 0.0], "tags": {}}),
        ),
        (
            "/v1/vectors/items/z",
            json!({"vector": [1.0, 0.0, 0.0], "text": "both"}),
        ),
        ("/v1/vectors/items/z", json!({})),
        ("/v1/vectors/items/z", json!({"vector": [0.0, 0.0, 0.0]})),
        (
            "/v1/vectors/items/z",
            json!({"vector": [1.0, 0.0, 0.0], "colour": "red"}),
        ),
        (
            "/v1/vectors/items/z",
            json!({"vector": [1.0, 0.0, 0.0], "tags": {"lang": 3}}),
        ),
    ] {
        let r = as_key(&gw, "PUT", path.to_owned(), acme, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    for body in [
        json!({"vector": [1.0, 0.0, 0.0], "k": 0}),
        json!({"vector": [1.0, 0.0, 0.0], "k": 100000}),
        json!({"vector": [1.0, 0.0]}),
        json!({"vector": [1.0, 0.0, 0.0], "filter": {"ranges": {"price": {"gt": 1}}}}),
        json!({"vector": [1.0, 0.0, 0.0], "filter": {"where": {}}}),
    ] {
        let r = as_key(
            &gw,
            "POST",
            "/v1/vectors/items/search".into(),
            acme,
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }
    let info = call(
        &gw,
        "GET",
        "/v1/vectors/items",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(info.json()["count"], 3);
    let dropped = call(
        &gw,
        "DELETE",
        "/v1/vectors/items",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(dropped.status, StatusCode::OK);
    let gone = call(
        &gw,
        "GET",
        "/v1/vectors/items",
        &[("authorization", acme)],
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

async fn as_key(
    gw: &AppState,
    method: &str,
    path: String,
    key: &str,
    body: Option<Value>,
) -> Reply {
    call(gw, method, &path, &[("authorization", key)], body).await
}

async fn search_in(gw: &AppState, key: &str, collection: &str, body: Value) -> Value {
    let path = format!("/v1/vectors/{collection}/search");
    let r = call(gw, "POST", &path, &[("authorization", key)], Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json()
}

#[tokio::test]
async fn text_without_an_embedding_model_is_a_clear_400() {
    let gw = gateway("[vectors]\nembedding_model = \"nobody/embed\"\n").await;
    let r = call(
        &gw,
        "PUT",
        "/v1/vectors/docs/1",
        &[],
        Some(json!({"text": "hello"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("vectors.embedding_model"), "{message}");
}

/// A gateway with the semantic cache on (the local embedding model, real weights).
async fn semantic_gateway() -> AppState {
    // A budget no debug build misses: these tests check what is served, not how fast.
    gateway("[server]\nmaster_key = \"mk\"\n[semantic_cache]\nenabled = true\nthreshold = 0.8\nlookup_budget_ms = 60000\n")
        .await
}

async fn ask(gw: &AppState, key: &str, body: Value, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("authorization", key)];
    headers.extend_from_slice(extra);
    let r = call(gw, "POST", "/v1/chat/completions", &headers, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r
}

fn question(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

/// The semantic lookup is a side path: a question not embedded within the budget goes on as a
/// miss (counted), and is still indexed once embedded, off the request path.
#[tokio::test]
async fn a_slow_embedding_makes_a_miss_not_a_wait_and_is_indexed_later() {
    let gw = gateway(
        "[server]\nmaster_key = \"mk\"\n[semantic_cache]\nenabled = true\nthreshold = 0.8\nlookup_budget_ms = 0\n",
    )
    .await;
    // The first lookup may wait for the model to load; the budget holds once it answered (as
    // if embeddings typically took 1 µs).
    gw.semantic_embed_us
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let key = tenant_keys(&gw, &["acme"]).await.remove(0);
    let first = ask(
        &gw,
        &key,
        question("mock/echo", "What is the capital of Peru?"),
        &[],
    )
    .await;
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let metrics = call(
        &gw,
        "GET",
        "/metrics",
        &[("authorization", "Bearer mk")],
        None,
    )
    .await
    .text;
    assert!(
        metrics.contains("tollgate_semantic_skipped_total{reason=\"slow\"} 1"),
        "{metrics}"
    );
    // Indexed once its embedding is done: the partition holds the question.
    let mut conn = redis::Client::open(shared_redis().url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pattern = format!("{}*:items", gw.config.redis.key_prefix);
    let mut indexed = false;
    for _ in 0..100 {
        let collections: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let [items] = collections.as_slice() {
            let n: usize = redis::cmd("HLEN")
                .arg(items)
                .query_async(&mut conn)
                .await
                .unwrap();
            if n == 1 {
                indexed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(indexed, "the question was never indexed");
}

#[tokio::test]
async fn a_paraphrase_is_a_semantic_hit_and_never_crosses_a_partition() {
    let gw = semantic_gateway().await;
    let keys = tenant_keys(&gw, &["acme", "globex"]).await;
    let (acme, globex) = (keys[0].as_str(), keys[1].as_str());
    let first = ask(
        &gw,
        acme,
        question("mock/echo", "What is the capital of France?"),
        &[],
    )
    .await;
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let again = ask(
        &gw,
        acme,
        question("mock/echo", "what's the capital of france"),
        &[],
    )
    .await;
    assert_eq!(
        again.header("x-tollgate-cache"),
        Some("semantic"),
        "{}",
        again.text
    );
    let similarity: f32 = again
        .header("x-tollgate-cache-similarity")
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.8..=1.0).contains(&similarity), "{similarity}");
    assert_eq!(
        again.json()["choices"][0]["message"]["content"],
        first.json()["choices"][0]["message"]["content"],
        "the cached answer is served"
    );
    // Streamed, a semantic hit is replayed as a stream.
    let mut streamed = question("mock/echo", "What's the capital city of France?");
    streamed["stream"] = json!(true);
    let r = ask(&gw, acme, streamed, &[]).await;
    assert_eq!(r.header("x-tollgate-cache"), Some("semantic"));
    assert!(
        sse_text(&r.text).contains("capital of France"),
        "{}",
        r.text
    );

    // Each of these differs in what the answer depends on: never a semantic hit.
    let paraphrase = "what's the capital of france";
    let mut with_system = question("mock/echo", paraphrase);
    with_system["messages"] = json!([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": paraphrase}]);
    let mut with_params = question("mock/echo", paraphrase);
    with_params["max_tokens"] = json!(5);
    let mut with_turns = question("mock/echo", paraphrase);
    with_turns["messages"] = json!([
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": paraphrase}
    ]);
    for (what, key, body) in [
        ("another model", acme, question("mock/other", paraphrase)),
        ("another tenant", globex, question("mock/echo", paraphrase)),
        ("a system prompt", acme, with_system),
        ("other parameters", acme, with_params),
        ("earlier turns", acme, with_turns),
        (
            "another question",
            acme,
            question("mock/echo", "How do I bake bread?"),
        ),
    ] {
        let r = ask(&gw, key, body, &[]).await;
        assert_eq!(
            r.header("x-tollgate-cache"),
            Some("miss"),
            "{what}: {}",
            r.text
        );
    }
    // no-cache skips it.
    let r = ask(
        &gw,
        acme,
        question("mock/echo", paraphrase),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("bypass"));
}

/// Near is not enough: a question whose numbers or negation differ from the cached one's is a
/// miss even when its embedding is well above the threshold, and is answered (and cached) as
/// its own question.
#[tokio::test]
async fn near_questions_with_other_numbers_or_a_negation_are_not_semantic_hits() {
    let gw = semantic_gateway().await;
    let key = tenant_keys(&gw, &["acme"]).await.remove(0);
    for (cached, near, reworded) in [
        (
            "How do I install Sublime Text 2?",
            "How do I install Sublime Text 3?",
            "how do i install sublime text 3",
        ),
        (
            "Why is my laptop fan loud?",
            "Why isn't my laptop fan loud?",
            "why isnt my laptop fan so loud",
        ),
    ] {
        let first = ask(&gw, &key, question("mock/echo", cached), &[]).await;
        assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
        let near_similarity = similarity(&gw, &key, "local/all-minilm-l6-v2", cached, near).await;
        assert!(
            near_similarity > 0.8,
            "{cached} / {near}: {near_similarity}"
        );
        let r = ask(&gw, &key, question("mock/echo", near), &[]).await;
        assert_eq!(
            r.header("x-tollgate-cache"),
            Some("miss"),
            "{near}: {}",
            r.text
        );
        // It was answered as its own question, and its rewording finds that answer.
        let again = ask(&gw, &key, question("mock/echo", reworded), &[]).await;
        assert_eq!(
            again.header("x-tollgate-cache"),
            Some("semantic"),
            "{reworded}"
        );
        assert_eq!(
            again.json()["choices"][0]["message"]["content"],
            r.json()["choices"][0]["message"]["content"]
        );
    }
}

/// With `max_error_rate` the operator chooses an error rate, not a threshold. Two replicas share
/// one Redis and a fake upstream whose answer names the topic a question asks about, so a
/// semantic hit is right exactly when it names the same topic. Questions about one topic are
/// the same words in another order (embedded alike); different topics differ in one word (near,
/// but wrong: above the configured threshold). Checks catch the wrong candidates and move the
/// threshold, shared by both replicas; the wrong answers served stay within the bound while
/// rewordings are still served.
#[tokio::test]
async fn with_an_error_rate_the_threshold_learns_from_checked_answers_on_two_replicas() {
    const TOPICS: usize = 60;
    const ASKED: usize = 6;
    const MAX_ERROR_RATE: f64 = 0.05;
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| format!("topic{}", letters(i)))
        .collect();
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        topics: topics.clone(),
        ..Default::default()
    })
    .await;
    let config = format!(
        "[server]\nmaster_key = \"mk\"\n[semantic_cache]\nenabled = true\nembedding_model = \"mock/embed\"\n\
         lookup_budget_ms = 60000\nthreshold = 0.9\nmax_error_rate = {MAX_ERROR_RATE}\ncheck_rate = 0.8\n\
         check_step = 0.2\nmin_threshold = 0.8\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"x\"\n",
        upstream.base_url()
    );
    let (url, prefix) = (shared_redis().url(), unique_prefix());
    let replicas = [
        gateway_at(&url, &prefix, &config).await,
        gateway_at(&url, &prefix, &config).await,
    ];
    let key = tenant_keys(&replicas[0], &["acme"]).await.remove(0);
    let text = |t: &str| format!("tell me everything you know about {t} please");
    let wrong_similarity = similarity(
        &replicas[0],
        &key,
        "mock/embed",
        &text(&topics[0]),
        &text(&topics[1]),
    )
    .await;
    assert!(wrong_similarity > 0.9, "{wrong_similarity}");
    let (mut served, mut served_wrong, mut upstream_answers) = (0, 0, 0);
    for round in 0..ASKED {
        for (t, topic) in topics.iter().enumerate() {
            // The same eight words in an order of this round's.
            let mut words = [
                "tell",
                "me",
                "everything",
                "you",
                "know",
                "about",
                topic.as_str(),
                "please",
            ];
            let mut seed = (round * TOPICS + t) as u64 * 2_654_435_761 + 1;
            for i in (1..words.len()).rev() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                words.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let asked = words.join(" ");
            let gw = &replicas[(round + t) % 2];
            let r = ask(gw, &key, question("fake/m", &asked), &[]).await;
            let answer = r.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned();
            match r.header("x-tollgate-cache") {
                Some("semantic") => {
                    served += 1;
                    served_wrong += usize::from(answer != format!("about {topic}"));
                }
                Some("miss") => {
                    upstream_answers += 1;
                    assert_eq!(answer, format!("about {topic}"), "{asked}");
                }
                other => panic!("{asked}: {other:?}"),
            }
        }
    }
    // Wrong answers within the bound, and rewordings still served from the cache (most
    // candidates are checked here, so most rewordings go upstream: a test's rate, not a
    // production one).
    // Which candidates are checked is drawn at random, so the wrong answers served are a
    // sample: within the bound up to three standard deviations of a binomial count at it (55
    // served at 0.05 allow 7; a threshold that did not learn serves far more wrong answers).
    let n = served.max(1) as f64;
    let allowed = MAX_ERROR_RATE * n + 3.0 * (n * MAX_ERROR_RATE * (1.0 - MAX_ERROR_RATE)).sqrt();
    assert!(
        served_wrong as f64 <= allowed,
        "{served_wrong} wrong of {served} served (at most {allowed:.1})"
    );
    assert!(
        served >= TOPICS * (ASKED - 1) / 10,
        "{served} served, {upstream_answers} from the upstream"
    );
    // The checks, shared through Redis (read on either replica): wrong candidates were caught,
    // and the threshold moved (it never goes below min_threshold).
    let stats = replicas[1].semantic.check_stats("fake/m").await.unwrap();
    assert_eq!(
        stats,
        replicas[0].semantic.check_stats("fake/m").await.unwrap()
    );
    assert!(stats.wrong >= 1 && stats.checked > stats.wrong, "{stats:?}");
    let threshold = stats.threshold.unwrap();
    assert!(
        threshold >= 0.8 && (threshold - 0.9).abs() > 1e-6,
        "{stats:?}"
    );
    // Each wrong candidate raised its own entry's floor, in Redis, where every replica reads it.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut floors = 0;
    for items in keys_matching(&url, &format!("{prefix}sc:*:items")).await {
        let records: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(&items)
            .query_async(&mut conn)
            .await
            .unwrap();
        floors += records
            .iter()
            .filter(|r| String::from_utf8_lossy(r).contains("\"@floor\""))
            .count();
    }
    assert!(
        floors >= 1 && floors as u64 <= stats.wrong,
        "{floors} floors, {stats:?}"
    );
    // Each replica counts its own checks and shows the threshold it last set.
    let metrics: String = futures::future::join_all(replicas.iter().map(|gw| async move {
        call(
            gw,
            "GET",
            "/metrics",
            &[("authorization", "Bearer mk")],
            None,
        )
        .await
        .text
    }))
    .await
    .concat();
    assert!(
        metrics.contains("tollgate_semantic_checks_total{model=\"fake/m\",outcome=\"wrong\"")
            && metrics
                .contains("tollgate_semantic_checks_total{model=\"fake/m\",outcome=\"right\"")
            && metrics.contains("tollgate_semantic_threshold{model=\"fake/m\"}"),
        "{metrics}"
    );
    // Every check was one more upstream call: the upstream saw the misses and the checks.
    assert_eq!(upstream.calls() as usize, upstream_answers);
}

/// The keys of the Redis at `url` that match `pattern`.
async fn keys_matching(url: &str, pattern: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The cosine similarity of the embeddings of `a` and `b` by `model`.
async fn similarity(gw: &AppState, key: &str, model: &str, a: &str, b: &str) -> f32 {
    let body = json!({"model": model, "input": [a, b]});
    let r = call(
        gw,
        "POST",
        "/v1/embeddings",
        &[("authorization", key)],
        Some(body),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v: Vec<Vec<f32>> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect();
    let dot: f32 = v[0].iter().zip(&v[1]).map(|(x, y)| x * y).sum();
    let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
    dot / (norm(&v[0]) * norm(&v[1]))
}

/// A model's vectors carry a version: a local model's is its weights' hash, others' "1" unless
/// `[embeddings.versions]` says otherwise. Replicas on another version neither read the cached
/// embeddings nor search the semantic partitions of the old one (left to expire), and find
/// their own.
#[tokio::test]
async fn another_embedding_version_starts_the_embedding_and_semantic_caches_afresh() {
    let (url, prefix) = (shared_redis().url(), unique_prefix());
    let config = |version: &str| {
        format!(
            "[server]\nmaster_key = \"mk\"\n[semantic_cache]\nenabled = true\nthreshold = 0.8\n\
             lookup_budget_ms = 60000\nembedding_model = \"mock/embed\"\n\
             [embeddings.versions]\n\"mock/embed\" = \"{version}\"\n"
        )
    };
    let old = gateway_at(&url, &prefix, &config("1")).await;
    let new = gateway_at(&url, &prefix, &config("2024-06")).await;
    let key = tenant_keys(&old, &["acme"]).await.remove(0);
    let embed_with = |gw: AppState, model: &'static str, text: &'static str| {
        let key = key.clone();
        async move {
            let body = json!({"model": model, "input": [text]});
            let r = call(
                &gw,
                "POST",
                "/v1/embeddings",
                &[("authorization", &key)],
                Some(body),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            r.header("x-tollgate-embeddings-cached").unwrap().to_owned()
        }
    };
    assert_eq!(
        embed_with(old.clone(), "mock/embed", "hello world").await,
        "0"
    );
    assert_eq!(
        embed_with(old.clone(), "mock/embed", "hello world").await,
        "1"
    );
    assert_eq!(
        embed_with(new.clone(), "mock/embed", "hello world").await,
        "0"
    );
    assert_eq!(
        embed_with(new.clone(), "mock/embed", "hello world").await,
        "1"
    );
    // The semantic cache: the new version finds nothing of the old one's, then its own.
    let asked = |gw: &AppState, text: &str| {
        let (gw, key, text) = (gw.clone(), key.clone(), text.to_owned());
        async move {
            ask(&gw, &key, question("mock/echo", &text), &[])
                .await
                .header("x-tollgate-cache")
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(asked(&old, "What is the capital of France?").await, "miss");
    assert_eq!(
        asked(&old, "what is the capital of france").await,
        "semantic"
    );
    assert_eq!(asked(&new, "What is the capital of France").await, "miss");
    assert_eq!(
        asked(&new, "WHAT is the capital of France?!").await,
        "semantic"
    );
    // The local model's version is its weights' hash (pinned by scripts/install-models.sh).
    let local = gateway_at(&url, &prefix, &config("1")).await;
    embed_with(local, "local/all-minilm-l6-v2", "one").await;
    let keys = keys_matching(&url, &format!("{prefix}{{e:*")).await;
    for version in [
        "{e:mock/embed:1}",
        "{e:mock/embed:2024-06}",
        "{e:local/all-minilm-l6-v2:53aa51172d14}",
    ] {
        assert!(
            keys.iter().any(|k| k.contains(version)),
            "{version}: {keys:?}"
        );
    }
}

/// Replicas (or a restart) with another embedding model never compare their vectors with the
/// old model's: each embedder has its own partitions, so the cache starts afresh for it.
#[tokio::test]
async fn another_embedding_model_never_compares_its_vectors_with_the_old_ones() {
    let (url, prefix) = (shared_redis().url(), unique_prefix());
    let config = |model: &str| {
        format!(
            "[server]\nmaster_key = \"mk\"\n[semantic_cache]\nenabled = true\nthreshold = 0.8\n\
             lookup_budget_ms = 60000\nembedding_model = \"{model}\"\n"
        )
    };
    let minilm = gateway_at(&url, &prefix, &config("local/all-minilm-l6-v2")).await;
    let hashed = gateway_at(&url, &prefix, &config("mock/embed")).await;
    let key = tenant_keys(&minilm, &["acme"]).await.remove(0);
    let r = ask(
        &minilm,
        &key,
        question("mock/echo", "What is the capital of France?"),
        &[],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("miss"));
    // The other embedder finds nothing of the first's, then its own questions.
    let r = ask(
        &hashed,
        &key,
        question("mock/echo", "What's the capital city of France?"),
        &[],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("miss"), "{}", r.text);
    let r = ask(
        &hashed,
        &key,
        question("mock/echo", "what is the capital city of france"),
        &[],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("semantic"), "{}", r.text);
    let r = ask(
        &minilm,
        &key,
        question("mock/echo", "what's the capital of france"),
        &[],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("semantic"), "{}", r.text);
    // Two partitions, one per embedder, for the same model, tenant and context.
    let partitions = keys_matching(&url, &format!("{prefix}sc:*:items")).await;
    assert_eq!(partitions.len(), 2, "{partitions:?}");
}

#[tokio::test]
async fn an_expired_or_invalidated_answer_is_never_served_semantically() {
    let gw = semantic_gateway().await;
    let key = tenant_keys(&gw, &["acme"]).await.remove(0);
    let r = ask(
        &gw,
        &key,
        question("mock/echo", "How tall is the Eiffel Tower?"),
        &[("x-tollgate-cache-ttl", "1")],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("miss"));
    let r = ask(
        &gw,
        &key,
        question("mock/echo", "how tall is the eiffel tower"),
        &[],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("semantic"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = ask(
        &gw,
        &key,
        question("mock/echo", "What is the height of the Eiffel Tower?"),
        &[],
    )
    .await;
    assert_eq!(
        r.header("x-tollgate-cache"),
        Some("miss"),
        "expired: {}",
        r.text
    );

    // That miss stored a fresh answer; invalidating the model makes it unreachable too.
    let r = ask(
        &gw,
        &key,
        question("mock/echo", "how tall is the eiffel tower?"),
        &[],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), Some("semantic"));
    let inv = call(
        &gw,
        "POST",
        "/admin/cache/invalidate",
        &[("authorization", "Bearer mk")],
        Some(json!({"model": "mock/echo"})),
    )
    .await;
    assert_eq!(inv.status, StatusCode::OK, "{}", inv.text);
    let r = ask(
        &gw,
        &key,
        question("mock/echo", "how tall is the eiffel tower?"),
        &[],
    )
    .await;
    assert_eq!(
        r.header("x-tollgate-cache"),
        Some("miss"),
        "invalidated: {}",
        r.text
    );
}

/// Every documented route but the open ones refuses a caller without a key, and every
/// `/admin` route refuses an API key that is not the master key: the route groups decide it,
/// not each handler.
#[tokio::test]
async fn every_route_but_the_open_ones_needs_a_key_and_admin_routes_the_master_key() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    let bearer = tenant_keys(&gw, &["t1"]).await.remove(0);
    let doc: Value = serde_json::from_str(tollgate_server::app::OPENAPI).unwrap();
    let open = ["/healthz", "/readyz", "/openapi.json"];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let method = method.to_uppercase();
            let anonymous = call(&gw, &method, &concrete, &[], Some(json!({}))).await;
            if open.contains(&path.as_str()) {
                assert_ne!(
                    anonymous.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}"
                );
                continue;
            }
            assert_eq!(
                anonymous.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} answered without a key: {}",
                anonymous.text
            );
            assert_eq!(anonymous.json()["error"]["type"], "authentication_error");
            if path.starts_with("/admin") {
                let tenant = call(
                    &gw,
                    &method,
                    &concrete,
                    &[("authorization", &bearer)],
                    Some(json!({})),
                )
                .await;
                assert_eq!(tenant.status, StatusCode::FORBIDDEN, "{method} {path}");
                assert_eq!(tenant.json()["error"]["type"], "permission_error");
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} routes checked");
}

/// Each request has an id (the client's when it sends a usable one), echoed in
/// `x-request-id`; metrics name the route template that matched, never the path as sent.
#[tokio::test]
async fn requests_carry_an_id_and_metrics_name_their_route_template() {
    let gw = gateway("").await;
    let given = call(&gw, "GET", "/healthz", &[("x-request-id", "req-42")], None).await;
    assert_eq!(given.header("x-request-id"), Some("req-42"));
    let made = call(&gw, "GET", "/healthz", &[], None).await;
    let id = made.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let again = call(&gw, "GET", "/healthz", &[], None).await;
    assert_ne!(again.header("x-request-id"), Some(id.as_str()));
    // Errors carry it too.
    let missing = call(&gw, "GET", "/v1/responses/resp_nope", &[], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.header("x-request-id").is_some());

    let _ = call(&gw, "GET", "/v1/sessions/abc", &[], None).await;
    let _ = call(&gw, "GET", "/no/such/path", &[], None).await;
    let metrics = call(&gw, "GET", "/metrics", &[], None).await.text;
    for route in [
        "route=\"/v1/responses/{id}\"",
        "route=\"/v1/sessions/{id}\"",
        "route=\"/healthz\"",
        "route=\"unmatched\"",
    ] {
        assert!(metrics.contains(route), "{route} missing from /metrics");
    }
    assert!(!metrics.contains("resp_nope") && !metrics.contains("/v1/sessions/abc"));
}

/// A body over the limit is refused before it is read when it says its length, and while it is
/// read when it does not.
#[tokio::test]
async fn an_oversized_body_is_a_413_whether_or_not_it_declares_its_length() {
    let gw = gateway("[server]\nmax_body_bytes = 4096\n").await;
    let big = chat(&"x".repeat(5000)).to_string();
    let declared = Request::post("/v1/chat/completions")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let response = app(gw.clone()).oneshot(declared).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(1000)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let streamed = Request::post("/v1/chat/completions")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let response = app(gw.clone()).oneshot(streamed).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let e: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(e["error"]["code"], "request_too_large");
}

/// Fills `redis` until it refuses writes (`maxmemory` reached under `noeviction`).
async fn fill_until_full(redis: &RedisServer) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let block = "x".repeat(64 * 1024);
    for i in 0..10_000 {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("ballast:{i}"))
            .arg(&block)
            .query_async(&mut conn)
            .await;
        if let Err(e) = set {
            assert!(e.to_string().contains("OOM"), "{e}");
            return;
        }
    }
    panic!("redis never filled up");
}

/// Asks the same question until the exact cache answers it (at most `attempts` times, 50 ms
/// apart), every answer a 200: the cache came back by itself after a Redis fault.
async fn cache_comes_back(gw: &AppState, attempts: usize) {
    for _ in 0..attempts {
        let r = call(gw, "POST", "/v1/chat/completions", &[], Some(chat("after"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.header("x-tollgate-cache") == Some("hit") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the cache did not come back");
}

/// A Redis at its memory limit refuses every write with OOM: the gateway degrades as it does
/// when Redis is away (the cache bypassed, limits by their policy, streams to the client only),
/// and answers every request; when memory frees up, the cache works again.
#[tokio::test]
async fn a_full_redis_degrades_like_an_outage_and_every_request_is_answered() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let gw = gateway_on(&redis.url(), "").await;
    // Scripts are loaded and the cache seen working before the memory runs out.
    let warm = call(&gw, "POST", "/v1/chat/completions", &[], Some(chat("warm"))).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.text);
    fill_until_full(&redis).await;
    for i in 0..20 {
        let content = format!("question {i}");
        let mut body = chat(&content);
        if i % 2 == 1 {
            body["stream"] = json!(true);
        }
        let headers: &[(&str, &str)] = if i % 4 == 0 {
            &[("x-tollgate-session-id", "full-redis")]
        } else {
            &[]
        };
        let r = call(&gw, "POST", "/v1/chat/completions", headers, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
        assert_ne!(r.header("x-tollgate-cache"), Some("hit"));
        if i % 2 == 1 {
            assert!(sse_text(&r.text).contains("question"), "{}", r.text);
        }
    }
    let metrics = call(&gw, "GET", "/metrics", &[], None).await.text;
    assert!(
        metrics.contains("tollgate_cache_lookups_total{result=\"error\"}"),
        "{metrics}"
    );
    // Memory back: the cache stores and hits again.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    cache_comes_back(&gw, 50).await;
}

/// Redis at its `maxclients` refuses new connections ("max number of clients reached"): a
/// gateway whose connections were cut cannot reconnect, answers every request without Redis,
/// and comes back by itself once Redis takes clients again.
#[tokio::test]
async fn a_redis_refusing_new_clients_degrades_like_an_outage_and_recovers() {
    let redis = RedisServer::start();
    let gw = gateway_on(&redis.url(), "").await;
    let warm = call(&gw, "POST", "/v1/chat/completions", &[], Some(chat("warm"))).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.text);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    for kind in ["normal", "pubsub"] {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .arg("SKIPME")
            .arg("yes")
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
    }
    for i in 0..10 {
        let mut body = chat(&format!("crowded {i}"));
        if i % 2 == 1 {
            body["stream"] = json!(true);
        }
        let r = call(&gw, "POST", "/v1/chat/completions", &[], Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
    }
    let refused: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !refused.contains("rejected_connections:0\r"),
        "the gateway never tried to reconnect: {refused}"
    );
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1000)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    cache_comes_back(&gw, 100).await;
}

/// A hung Redis (stopped, its connections open, nothing answered): every request is answered
/// within the command timeout's cost instead of hanging, and the cache works again once Redis
/// does.
#[tokio::test]
async fn a_hung_redis_costs_the_command_timeout_not_an_answer() {
    let redis = RedisServer::start();
    let gw = gateway_on(&redis.url(), "").await;
    let warm = call(&gw, "POST", "/v1/chat/completions", &[], Some(chat("warm"))).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.text);
    redis.freeze(true);
    let answered = async {
        for i in 0..6 {
            let mut body = chat(&format!("hung {i}"));
            if i % 2 == 1 {
                body["stream"] = json!(true);
            }
            let r = call(&gw, "POST", "/v1/chat/completions", &[], Some(body)).await;
            assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
            assert_ne!(r.header("x-tollgate-cache"), Some("hit"));
        }
    };
    // Not a timing check: a generous bound that only a hang would break.
    let finished = tokio::time::timeout(Duration::from_secs(60), answered).await;
    redis.freeze(false);
    assert!(finished.is_ok(), "requests hung with Redis");
    cache_comes_back(&gw, 100).await;
}

/// The document's limits hold everywhere, and the small answers are OpenAI-shaped too: a
/// method a path does not take, an id over 200 bytes (path, header or body), a key id that is
/// no key id.
#[tokio::test]
async fn limits_of_the_document_hold_and_every_error_is_openai_shaped() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    let master = [("authorization", "Bearer mk")];
    let wrong_method = call(&gw, "PATCH", "/v1/chat/completions", &master, None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.json()["error"]["type"],
        "invalid_request_error"
    );

    let long = "s".repeat(201);
    let path = call(&gw, "GET", &format!("/v1/sessions/{long}"), &master, None).await;
    assert_eq!(path.status, StatusCode::BAD_REQUEST, "{}", path.text);
    assert_eq!(path.json()["error"]["param"], "id");
    let header = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer mk"),
            ("x-tollgate-session-id", &long),
        ],
        Some(chat("x")),
    )
    .await;
    assert_eq!(header.status, StatusCode::BAD_REQUEST, "{}", header.text);
    assert_eq!(header.json()["error"]["param"], "x-tollgate-session-id");
    let huge = "s".repeat(1 << 20);
    let body = call(
        &gw,
        "POST",
        "/v1/sessions",
        &master,
        Some(json!({"id": huge})),
    )
    .await;
    assert_eq!(body.status, StatusCode::BAD_REQUEST);
    assert_eq!(body.json()["error"]["param"], "id");
    let at_limit = call(
        &gw,
        "POST",
        "/v1/sessions",
        &master,
        Some(json!({"id": "s".repeat(200)})),
    )
    .await;
    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.text);

    let nul = call(&gw, "GET", "/admin/spend?key=%00", &master, None).await;
    assert_eq!(nul.status, StatusCode::BAD_REQUEST, "{}", nul.text);
    assert_eq!(nul.json()["error"]["param"], "key");

    // Metrics show traffic and money: the master key's.
    assert_eq!(
        call(&gw, "GET", "/metrics", &[], None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let scraped = call(&gw, "GET", "/metrics", &master, None).await;
    assert_eq!(scraped.status, StatusCode::OK);
    assert!(scraped.text.contains("tollgate_http_requests_total"));
}

/// `serve` on a free port with `extra` configuration; the address.
async fn serving(extra: &str) -> std::net::SocketAddr {
    let gw = gateway(extra).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tollgate_server::serve::serve(
        listener,
        gw,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    addr
}

/// Reads until the server closes the connection (or `within` passes); what it sent.
async fn until_closed(conn: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// A connection that sends nothing, one that never finishes its headers, and one that sits
/// idle after a request are each closed once the idle timeout passes.
#[tokio::test]
async fn connections_that_send_nothing_stall_or_idle_are_closed() {
    use tokio::io::AsyncWriteExt;
    let addr = serving("[server]\nidle_timeout_seconds = 1\n").await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, conn) in [
        ("silent", &mut silent),
        ("stalled", &mut stalled),
        ("idle", &mut idle),
    ] {
        let sent = until_closed(conn, Duration::from_secs(10)).await;
        assert!(sent.is_some(), "the {name} connection is still open");
        if name == "idle" {
            assert!(sent.unwrap().starts_with("HTTP/1.1 200"));
        }
    }
}

/// Past `max_connections`, a new connection gets a 503 (OpenAI-shaped, with `retry-after`)
/// and is closed; once a connection closes, new ones are served again.
#[tokio::test]
async fn past_the_connection_cap_a_new_connection_gets_a_503_and_the_rest_are_served() {
    use tokio::io::AsyncWriteExt;
    let addr = serving("[server]\nmax_connections = 2\n").await;
    let held_1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let held_2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = until_closed(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection past the cap was not closed");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    let body = refused.split("\r\n\r\n").nth(1).unwrap();
    let e: Value = serde_json::from_str(body).unwrap();
    assert_eq!(e["error"]["code"], "too_many_connections");
    drop(held_1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut conn, Duration::from_secs(10))
            .await
            .unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held_2);
}

/// A stream read again (or resumed) carries what the original client got: the usage chunk
/// only when that client asked for it.
#[tokio::test]
async fn a_stream_read_again_carries_what_its_client_got() {
    let gw = gateway("").await;
    for include_usage in [false, true] {
        let mut req = chat(&format!("usage {include_usage}"));
        req["stream"] = json!(true);
        if include_usage {
            req["stream_options"] = json!({"include_usage": true});
        }
        let first = call(&gw, "POST", "/v1/chat/completions", &[], Some(req)).await;
        let id = first.header("x-tollgate-stream-id").unwrap().to_owned();
        let again = call(&gw, "GET", &format!("/v1/streams/{id}"), &[], None).await;
        assert_eq!(sse_data(&again.text), sse_data(&first.text));
        let usage_chunks = sse_data(&again.text)
            .iter()
            .filter(|d| d.contains("\"usage\":{"))
            .count();
        assert_eq!(usage_chunks, usize::from(include_usage), "{}", again.text);
    }
}

/// The commands the gateway's Redis ran while it answered `requests`, one after another, and
/// for 300 ms after (the work after each answer: settling, records).
async fn commands_sent(gw: &AppState, redis: &RedisServer, requests: Vec<Value>) -> CommandCount {
    let answer_all = async {
        for body in requests {
            let r = call(gw, "POST", "/v1/chat/completions", &[], Some(body)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
    };
    count_commands(&redis.url(), Duration::from_millis(300), answer_all)
        .await
        .1
}

/// Redis work per request, counted on a real Redis so that a regression shows: a non-streamed
/// request nobody else can read writes no token stream, and an exact hit is one lookup, one
/// admission and one settlement.
#[tokio::test]
async fn redis_commands_per_request_stay_within_their_budget() {
    let redis = RedisServer::start();
    let gw = gateway_on(&redis.url(), "").await;
    let fresh = |i: usize| {
        let mut body = chat(&format!("pass-through {i}"));
        body["temperature"] = json!(0.9);
        body
    };
    // Scripts loaded, the hit stored.
    for body in [
        fresh(1000),
        chat("the same question"),
        chat("the same question"),
    ] {
        let r = call(&gw, "POST", "/v1/chat/completions", &[], Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    const N: usize = 20;
    let pass = commands_sent(&gw, &redis, (0..N).map(fresh).collect()).await;
    let hits = commands_sent(
        &gw,
        &redis,
        (0..N).map(|_| chat("the same question")).collect(),
    )
    .await;
    eprintln!("pass-through, per {N}: {pass:?}\nexact hit, per {N}: {hits:?}");
    for (what, counts) in [("pass-through", &pass), ("exact hit", &hits)] {
        for forbidden in ["XADD", "MULTI", "EXEC"] {
            assert_eq!(
                counts.by_name.get(forbidden),
                None,
                "{what} sent {forbidden}: {counts:?}"
            );
        }
    }
    let per_pass = pass.sent() as f64 / N as f64;
    let per_hit = hits.sent() as f64 / N as f64;
    assert!(
        per_pass <= 12.0,
        "{per_pass} commands per pass-through request: {pass:?}"
    );
    assert!(per_hit <= 6.0, "{per_hit} commands per exact hit: {hits:?}");
}

#[tokio::test]
async fn tiered_results_answer_from_the_most_specific_tier_per_tenant() {
    let gw = gateway("[server]\nmaster_key = \"mk\"\n").await;
    let keys = tenant_keys(&gw, &["acme", "globex"]).await;
    let (acme, globex) = (
        [("authorization", keys[0].as_str())],
        [("authorization", keys[1].as_str())],
    );
    let lookup = json!({"keys": ["u1:ctx9", "precomp:u1", "popular:books"]});
    let put = |key: &str, value: Value| {
        let path = format!("/v1/results/recs/{key}");
        let (gw, acme) = (gw.clone(), acme);
        async move {
            call(
                &gw,
                "PUT",
                &path,
                &acme,
                Some(json!({"value": value, "ttl_seconds": 600})),
            )
            .await
        }
    };
    assert_eq!(
        put("popular:books", json!(["b1", "b2"])).await.status,
        StatusCode::OK
    );
    let found = call(
        &gw,
        "POST",
        "/v1/results/recs/lookup",
        &acme,
        Some(lookup.clone()),
    )
    .await
    .json();
    assert_eq!(
        (
            found["hit"].clone(),
            found["tier"].clone(),
            found["key"].clone()
        ),
        (json!(true), json!(2), json!("popular:books"))
    );
    assert_eq!(found["value"], json!(["b1", "b2"]));
    put("precomp:u1", json!({"items": ["b7"]})).await;
    let found = call(
        &gw,
        "POST",
        "/v1/results/recs/lookup",
        &acme,
        Some(lookup.clone()),
    )
    .await
    .json();
    assert_eq!(
        (found["tier"].clone(), found["value"]["items"][0].clone()),
        (json!(1), json!("b7"))
    );
    // Another tenant sees none of it.
    let theirs = call(
        &gw,
        "POST",
        "/v1/results/recs/lookup",
        &globex,
        Some(lookup.clone()),
    )
    .await
    .json();
    assert_eq!(theirs["hit"], false);
    // Deleted, the next tier answers again.
    let deleted = call(&gw, "DELETE", "/v1/results/recs/precomp:u1", &acme, None)
        .await
        .json();
    assert_eq!(deleted["deleted"], true);
    let found = call(&gw, "POST", "/v1/results/recs/lookup", &acme, Some(lookup))
        .await
        .json();
    assert_eq!(found["tier"], 2);
    // Bad input: named, OpenAI-shaped.
    for (method, path, body, param) in [
        (
            "POST",
            "/v1/results/recs/lookup",
            json!({"keys": []}),
            "keys",
        ),
        (
            "PUT",
            "/v1/results/recs/k",
            json!({"value": 1, "ttl_seconds": 0}),
            "ttl_seconds",
        ),
    ] {
        let r = call(&gw, method, path, &acme, Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        assert_eq!(r.json()["error"]["param"], param);
    }
    let r = call(
        &gw,
        "PUT",
        "/v1/results/recs/k",
        &acme,
        Some(json!({"ttl_seconds": 5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let metrics = call(
        &gw,
        "GET",
        "/metrics",
        &[("authorization", "Bearer mk")],
        None,
    )
    .await;
    assert!(
        metrics
            .text
            .contains("tollgate_result_lookups_total{tier=\"2\"}"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn a_request_that_could_never_fit_a_token_limit_is_refused_naming_it() {
    let gw = gateway("[tiers.default]\ntpm = 100000\n[capacity.\"mock/echo\"]\ntpm = 300\n").await;
    let mut req = chat("far too long an answer");
    req["temperature"] = json!(0.7);
    req["max_tokens"] = json!(500);
    let r = call(&gw, "POST", "/v1/chat/completions", &[], Some(req.clone())).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("more than mock/echo's capacity of 300 tokens per minute"),
        "{message}"
    );
    // Within the capacity, the key's own limit is the one named.
    let gw = gateway("[tiers.default]\ntpm = 200\n").await;
    let r = call(&gw, "POST", "/v1/chat/completions", &[], Some(req)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than the limit of 200 tokens per minute"),
        "{}",
        r.text
    );
}
