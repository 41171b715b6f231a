//! OpenTelemetry end to end: a real `tollgate serve` configured by the standard `OTEL_*`
//! environment sends its spans over OTLP/HTTP to a receiver that decodes them, and passes the
//! trace on to the upstream in `traceparent`.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

mod common;

use std::time::{Duration, Instant};

use common::{Replica, config_file};
use serde_json::json;
use tollgate_testkit::{FakeUpstream, FakeUpstreamConfig, OtlpReceiver, ReceivedSpan, RedisServer};

/// The spans called `name`.
fn named(spans: &[ReceivedSpan], name: &str) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).cloned().collect()
}

/// A `tollgate serve` with `config` that sends its spans to a receiver of its own (within 100
/// ms of their end), on a Redis of its own.
struct Traced {
    _redis: RedisServer,
    _config: tempfile::TempDir,
    receiver: OtlpReceiver,
    replica: Replica,
}

impl Traced {
    fn start(config: &str, env: &[(&str, &str)]) -> Traced {
        let redis = RedisServer::start();
        let receiver = OtlpReceiver::start();
        let (dir, path) = config_file(config);
        let endpoint = receiver.endpoint();
        let mut env = env.to_vec();
        env.extend([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]);
        let replica = Replica::start(&redis.url(), &path, &env);
        Traced {
            _redis: redis,
            _config: dir,
            receiver,
            replica,
        }
    }
}

/// Waits until `done` holds of the spans received (or 10 s went by), and returns them.
async fn spans_until(
    receiver: &OtlpReceiver,
    done: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = receiver.spans();
        if done(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_request_is_one_trace_with_genai_attributes_and_its_upstream_joins_it() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let Traced {
        receiver, replica, ..
    } = &Traced::start(
        &format!(
            "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up/m\"]\n",
            upstream.base_url()
        ),
        &[("OTEL_SERVICE_NAME", "gateway-under-test")],
    );
    let http = common::client(Duration::from_secs(30));
    let secret = "the secret prompt text";
    let body = json!({"model": "up/m", "temperature": 0, "max_tokens": 20, "messages": [{"role": "user", "content": secret}]});
    // The caller's own trace: tollgate's spans join it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    for _ in 0..2 {
        let r = http
            .post(replica.url("/v1/chat/completions"))
            .header(
                "traceparent",
                format!("00-{caller_trace}-00f067aa0ba902b7-01"),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let chats = |spans: &[ReceivedSpan]| named(spans, "chat up/m");
    let spans = spans_until(receiver, |s| {
        chats(s).len() == 2 && s.iter().any(|x| x.name == "usage record")
    })
    .await;
    let chat = chats(&spans);
    assert_eq!(chat.len(), 2, "{spans:#?}");
    let (miss, hit) = if chat[0].attributes["tollgate.cache"] == "miss" {
        (&chat[0], &chat[1])
    } else {
        (&chat[1], &chat[0])
    };
    assert_eq!(miss.attributes["tollgate.cache"], "miss");
    assert_eq!(hit.attributes["tollgate.cache"], "hit");
    // The GenAI semantic conventions, and tollgate's own.
    for (name, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "up/m"),
        ("gen_ai.request.max_tokens", "20"),
        ("tollgate.key_id", "open"),
        ("tollgate.route", "up/m"),
    ] {
        assert_eq!(
            miss.attributes.get(name).map(String::as_str),
            Some(value),
            "{name}: {miss:#?}"
        );
    }
    for name in [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.response.finish_reasons",
        "gen_ai.response.model",
    ] {
        assert!(miss.attributes.contains_key(name), "{name}: {miss:#?}");
    }
    assert_eq!(miss.service, "gateway-under-test");
    // One trace: the caller's. The HTTP span is the chat span's parent, and the cache lookup,
    // the limits, the upstream attempt and the usage record are the chat span's children.
    // (The readiness probes of the test's start are traces of their own.)
    let requests: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !s.name.starts_with("GET "))
        .collect();
    assert!(
        requests.iter().all(|s| s.trace_id == caller_trace),
        "{requests:#?}"
    );
    let http_span = spans
        .iter()
        .find(|s| s.span_id == miss.parent_span_id)
        .unwrap();
    assert_eq!(http_span.name, "POST /v1/chat/completions");
    assert_eq!(http_span.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(http_span.attributes["http.response.status_code"], "200");
    for child in ["cache lookup", "limits", "upstream up/m", "usage record"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == child && s.parent_span_id == miss.span_id),
            "no {child:?} under the miss: {spans:#?}"
        );
    }
    // A hit goes nowhere upstream.
    assert!(
        !spans
            .iter()
            .any(|s| s.name.starts_with("upstream") && s.parent_span_id == hit.span_id)
    );
    // The upstream was called within the trace.
    let parents = upstream.traceparents();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert!(
        parents[0].starts_with(&format!("00-{caller_trace}-")),
        "{parents:?}"
    );
    // Prompts and answers are never attributes.
    for s in &spans {
        assert!(
            !s.attributes
                .values()
                .any(|v| v.contains(secret) || v.contains(&upstream.answer())),
            "{s:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_sent_and_nothing_is_passed_on() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let (_dir, path) = config_file(&format!(
        "[providers.up]\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"up/m\"]\n",
        upstream.base_url()
    ));
    let replica = Replica::start(&redis.url(), &path, &[]);
    let r = common::client(Duration::from_secs(30))
        .post(replica.url("/v1/chat/completions"))
        .json(&json!({"model": "up/m", "temperature": 0.5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.calls(), 1);
    assert!(upstream.traceparents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embeddings_request_is_traced_with_its_inputs_and_what_the_cache_held() {
    let Traced {
        receiver, replica, ..
    } = &Traced::start("", &[]);
    let http = common::client(Duration::from_secs(30));
    for _ in 0..2 {
        let r = http
            .post(replica.url("/v1/embeddings"))
            .json(&json!({"model": "mock/embed", "input": ["first text", "second text"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let name = "embeddings mock/embed";
    let spans = spans_until(receiver, |s| named(s, name).len() == 2).await;
    let mut embeddings = named(&spans, name);
    embeddings.sort_by_key(|s| s.attributes["tollgate.cached_inputs"].clone());
    assert_eq!(embeddings.len(), 2, "{spans:#?}");
    assert_eq!(embeddings[0].attributes["tollgate.cached_inputs"], "0");
    assert_eq!(embeddings[1].attributes["tollgate.cached_inputs"], "2");
    for s in &embeddings {
        assert_eq!(s.attributes["gen_ai.operation.name"], "embeddings");
        assert_eq!(s.attributes["tollgate.inputs"], "2");
        assert!(s.attributes.contains_key("gen_ai.usage.input_tokens"));
    }
    // Only what went upstream was: one attempt, under the first request's span.
    let upstream: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("upstream"))
        .collect();
    assert_eq!(upstream.len(), 1, "{spans:#?}");
    assert_eq!(upstream[0].parent_span_id, embeddings[0].span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_sessions_trace_what_they_read_and_store() {
    let Traced {
        receiver, replica, ..
    } = &Traced::start("", &[]);
    let http = common::client(Duration::from_secs(30));
    // A chain of two responses, the second streamed.
    let first: serde_json::Value = http
        .post(replica.url("/v1/responses"))
        .json(&json!({"model": "mock/echo", "input": "My name is Ada."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_id = first["id"].as_str().unwrap().to_owned();
    let streamed = http
        .post(replica.url("/v1/responses"))
        .json(
            &json!({"model": "mock/echo", "input": "What is my name?", "stream": true,
                      "previous_response_id": first_id}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let events = streamed.text().await.unwrap();
    assert!(events.contains("response.completed"), "{events}");
    // A session's two turns.
    for text in ["one", "two"] {
        let r = http
            .post(replica.url("/v1/chat/completions"))
            .header("x-tollgate-session-id", "traced-session")
            .json(&json!({"model": "mock/echo", "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let spans = spans_until(receiver, |s| {
        named(s, "response store").len() == 2 && named(s, "session write").len() == 2
    })
    .await;
    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id);
    let parent_name = |s: &ReceivedSpan| by_id(&s.parent_span_id).map(|p| p.name.clone());

    // Each response is stored in its request's trace, beside its chat span, the streamed one
    // too (stored once its stream ended).
    let stores = named(&spans, "response store");
    assert_eq!(stores.len(), 2, "{spans:#?}");
    assert!(
        stores
            .iter()
            .any(|s| s.attributes["gen_ai.response.id"] == first_id),
        "{stores:#?}"
    );
    for s in &stores {
        assert_eq!(
            parent_name(s).as_deref(),
            Some("POST /v1/responses"),
            "{spans:#?}"
        );
        assert!(s.attributes["gen_ai.response.id"].starts_with("resp_"));
    }
    let second = stores
        .iter()
        .find(|s| s.attributes["gen_ai.response.id"] != first_id)
        .unwrap();
    // The second holds the whole chain: two questions and two answers.
    assert_eq!(second.attributes["tollgate.context_messages"], "4");
    // The chain was read from Redis, in the second request's trace.
    let loads = named(&spans, "response load");
    assert_eq!(loads.len(), 1, "{spans:#?}");
    assert_eq!(loads[0].attributes["tollgate.response_id"], first_id);
    assert_eq!(loads[0].attributes["tollgate.source"], "redis");
    assert_eq!(loads[0].parent_span_id, second.parent_span_id);

    // A session's history is read and its exchange written under the request's chat span.
    let histories = named(&spans, "session history");
    let writes = named(&spans, "session write");
    assert_eq!((histories.len(), writes.len()), (2, 2), "{spans:#?}");
    let mut read = Vec::new();
    for (history, write) in histories.iter().zip(&writes) {
        for s in [history, write] {
            assert_eq!(s.attributes["tollgate.session_id"], "traced-session");
            assert_eq!(parent_name(s).as_deref(), Some("chat mock/echo"), "{s:#?}");
        }
        read.push(history.attributes["tollgate.history_messages"].clone());
        assert_eq!(write.attributes["tollgate.messages"], "2");
    }
    read.sort();
    assert_eq!(read, ["0", "2"]);
}
