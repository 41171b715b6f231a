//! The cloud providers through every API the gateway speaks (chat, Responses, Messages,
//! embeddings), with retries and fallback, against fake upstreams that check credentials the
//! way the real services do, on a real redis-server.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers panic on failure, as the tests do"
)]

use axum::http::StatusCode;
use serde_json::{Value, json};
use tollgate_testkit::{
    FakeAws, FakeEntra, FakeGoogle, FakeUpstream, FakeUpstreamConfig, fake_vector,
    service_account_json, service_account_public_key,
};

mod common;
use common::{call, gateway};
use tollgate_server::AppState;

/// `[providers.NAME]` for the fake Azure resource, with `auth` lines.
fn azure(name: &str, upstream: &FakeUpstream, auth: &str) -> String {
    format!(
        "[providers.{name}]\nkind = \"azure\"\nbase_url = \"{}\"\napi_version = \"2024-10-21\"\n{auth}\n",
        upstream.root_url()
    )
}

fn chat(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
}

/// The text of an SSE chat stream.
fn streamed_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// `model` answers `answer` through chat (whole, then streamed), the Responses API and the
/// Messages API: four calls upstream.
async fn answers_through_every_api(gw: &AppState, model: &str, answer: &str) {
    for stream in [false, true] {
        let reply = call(
            gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat(model, "hi", stream)),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.header("x-tollgate-route"), Some(model));
        let text = if stream {
            streamed_text(&reply.text)
        } else {
            reply.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(text, answer, "stream: {stream}");
    }
    let body = json!({"model": model, "input": "hey", "instructions": "be kind"});
    let response = call(gw, "POST", "/v1/responses", &[], Some(body)).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.json()["output"][0]["content"][0]["text"], answer);
    let body = json!({"model": model, "max_tokens": 50, "system": "be kind",
                      "messages": [{"role": "user", "content": "hoi"}]});
    let message = call(gw, "POST", "/v1/messages", &[], Some(body)).await;
    assert_eq!(message.status, StatusCode::OK, "{}", message.text);
    assert_eq!(message.json()["content"][0]["text"], answer);
}

/// The vectors `/v1/embeddings` answers for `inputs` with `model`.
async fn embeddings(gw: &AppState, model: &str, inputs: &[&str]) -> Vec<Vec<f32>> {
    let body = json!({"model": model, "input": inputs});
    let embedded = call(gw, "POST", "/v1/embeddings", &[], Some(body)).await;
    assert_eq!(embedded.status, StatusCode::OK, "{}", embedded.text);
    embedded.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn azure_deployments_answer_chat_responses_messages_and_embeddings() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        api_key: Some("azure-key".into()),
        ..Default::default()
    })
    .await;
    let gw = gateway(&azure("az", &upstream, "api_key = \"azure-key\"")).await;
    let answer = upstream.answer();

    answers_through_every_api(&gw, "az/gpt4o-prod", &answer).await;
    assert_eq!(upstream.calls(), 4);
    // Azure's first stream chunk (the prompt's filter results) never reaches a client.
    let streamed = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("az/gpt4o-prod", "ho", true)),
    )
    .await;
    assert!(
        !streamed.text.contains("prompt_filter_results"),
        "{}",
        streamed.text
    );

    // Embeddings: computed by the deployment once, then from the embedding cache.
    for _ in 0..2 {
        let vectors = embeddings(&gw, "az/embed-small", &["alpha", "beta"]).await;
        assert_eq!(vectors, [fake_vector("alpha"), fake_vector("beta")]);
    }
    assert_eq!(
        upstream.calls(),
        6,
        "the second embedding request was answered from the cache"
    );
    let paths = upstream.paths();
    assert_eq!(paths.len(), 6);
    assert!(
        paths[..5]
            .iter()
            .all(|p| p == "/openai/deployments/gpt4o-prod/chat/completions")
    );
    assert_eq!(paths[5], "/openai/deployments/embed-small/embeddings");

    // The content filter's refusal, in OpenAI's shape.
    let filtered = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("az/gpt4o-prod", "tell me [filtered]", false)),
    )
    .await;
    assert_eq!(
        filtered.status,
        StatusCode::BAD_REQUEST,
        "{}",
        filtered.text
    );
    let error = &filtered.json()["error"];
    assert_eq!(error["code"], "content_filter");
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("content management policy"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failing_azure_deployment_is_retried_and_then_left_for_the_fallback() {
    let flaky = FakeUpstream::start(FakeUpstreamConfig {
        fail_first: 1,
        ..Default::default()
    })
    .await;
    let down = FakeUpstream::start(FakeUpstreamConfig {
        fail_first: 1000,
        ..Default::default()
    })
    .await;
    let backup = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let config = format!(
        "{}{}[providers.backup]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"x\"\n\
         [retry]\nmax_retries = 2\nbase_backoff_ms = 1\nmax_backoff_ms = 5\n\
         [aliases.smart]\ndeployments = [{{ model = \"down/gpt4o\", weight = 1 }}, {{ model = \"backup/m\", weight = 0 }}]\n",
        azure("flaky", &flaky, "api_key = \"k\""),
        azure("down", &down, "api_key = \"k\""),
        backup.base_url(),
    );
    let gw = gateway(&config).await;
    let retried = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("flaky/gpt4o", "hi", false)),
    )
    .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(flaky.calls(), 2, "one failure, one retry");
    let fell_back = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("smart", "hi", true)),
    )
    .await;
    assert_eq!(fell_back.status, StatusCode::OK, "{}", fell_back.text);
    assert_eq!(fell_back.header("x-tollgate-route"), Some("backup/m"));
    assert_eq!(down.calls(), 3, "the first attempt and two retries");
    assert_eq!(backup.calls(), 1);
}

#[tokio::test]
async fn an_entra_workload_identity_is_exchanged_for_tokens_the_resource_takes() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        api_key: Some("unguessable".into()),
        entra: Some(FakeEntra {
            tenant_id: "t1".into(),
            client_id: "app".into(),
            client_secret: None,
            federated_token: Some("federated-jwt".into()),
            token_seconds: 3600,
        }),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("federated");
    std::fs::write(&file, "federated-jwt").unwrap();
    let entra = format!(
        "[providers.az.entra]\ntenant_id = \"t1\"\nclient_id = \"app\"\nfederated_token_file = \"{}\"\nauthority = \"{}\"\n",
        file.display(),
        upstream.root_url()
    );
    let gw = gateway(&azure("az", &upstream, &entra)).await;
    for question in ["one", "two", "three"] {
        let answered = call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("az/d", question, false)),
        )
        .await;
        assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    }
    assert_eq!(
        upstream.tokens_issued(),
        1,
        "one token serves every call while it lives"
    );

    // A credential the identity platform refuses is the caller's 401-class problem, not a 5xx,
    // and is not retried.
    std::fs::write(&file, "revoked").unwrap();
    let other = gateway(&azure("az", &upstream, &entra)).await;
    let refused = call(
        &other,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("az/d", "four", false)),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text);
    assert!(refused.text.contains("AADSTS7000215"), "{}", refused.text);
    assert_eq!(upstream.calls(), 3);
}

/// `[providers.NAME]` for the fake Gemini API (AI Studio).
fn gemini(name: &str, upstream: &FakeUpstream, key: &str) -> String {
    format!(
        "[providers.{name}]\nkind = \"gemini\"\nbase_url = \"{}\"\napi_key = \"{key}\"\n",
        upstream.root_url()
    )
}

#[tokio::test]
async fn gemini_answers_chat_responses_messages_and_embeddings_and_blocks_clearly() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        api_key: Some("g-key".into()),
        ..Default::default()
    })
    .await;
    let gw = gateway(&gemini("g", &upstream, "g-key")).await;
    answers_through_every_api(&gw, "g/gemini-2.0-flash", &upstream.answer()).await;
    // The Messages API's system prompt became Gemini's system instruction.
    let sent = upstream.requests().last().unwrap().clone();
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "be kind");
    let vectors = embeddings(&gw, "g/text-embedding-004", &["alpha"]).await;
    assert_eq!(vectors, [fake_vector("alpha")]);

    // A prompt Gemini blocks: OpenAI's 400 content_filter, streamed or not; a field it cannot
    // take: a 400 naming it, and nothing sent.
    let before = upstream.calls();
    for stream in [false, true] {
        let blocked = call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("g/gemini-2.0-flash", "[blocked] this", stream)),
        )
        .await;
        assert_eq!(blocked.status, StatusCode::BAD_REQUEST, "{}", blocked.text);
        assert_eq!(blocked.json()["error"]["code"], "content_filter");
    }
    let mut refused = chat("g/gemini-2.0-flash", "hi", false);
    refused["logit_bias"] = json!({"50256": -100});
    let refused = call(&gw, "POST", "/v1/chat/completions", &[], Some(refused)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert!(refused.text.contains("logit_bias"), "{}", refused.text);
    assert_eq!(
        upstream.calls(),
        before + 2,
        "only the two blocked prompts were sent"
    );
}

#[tokio::test]
async fn vertex_serves_with_a_service_account_and_an_overloaded_model_falls_back() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        google: Some(FakeGoogle {
            client_email: "gw@proj.iam.gserviceaccount.com".into(),
            public_key_der: service_account_public_key(),
            token_seconds: 3600,
        }),
        ..Default::default()
    })
    .await;
    let overloaded = FakeUpstream::start(FakeUpstreamConfig {
        fail_first: 1000,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(
        &key_file,
        service_account_json("gw@proj.iam.gserviceaccount.com", &upstream.token_uri()),
    )
    .unwrap();
    let config = format!(
        "[providers.vertex]\nkind = \"vertex\"\nbase_url = \"{}\"\nlocation = \"us-central1\"\n\
         credentials_file = \"{}\"\n{}\
         [retry]\nmax_retries = 1\nbase_backoff_ms = 1\nmax_backoff_ms = 5\n\
         [aliases.flash]\ndeployments = [{{ model = \"busy/gemini-2.0-flash\", weight = 1 }}, \
         {{ model = \"vertex/gemini-2.0-flash\", weight = 0 }}]\n",
        upstream.root_url(),
        key_file.display(),
        gemini("busy", &overloaded, "k"),
    );
    let gw = gateway(&config).await;
    for question in ["one", "two"] {
        let reply = call(
            &gw,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("flash", question, question == "two")),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(
            reply.header("x-tollgate-route"),
            Some("vertex/gemini-2.0-flash")
        );
    }
    assert_eq!(overloaded.calls(), 4, "two requests, each tried twice");
    assert_eq!(upstream.tokens_issued(), 1);
    // The project is the service account's own.
    assert!(
        upstream.paths()[0].starts_with("/v1/projects/test-project/locations/us-central1/"),
        "{:?}",
        upstream.paths()
    );
}

#[tokio::test]
async fn bedrock_answers_every_api_and_a_throttled_stream_falls_back() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        aws: Some(FakeAws {
            region: "us-west-2".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("token".into()),
        }),
        ..Default::default()
    })
    .await;
    let backup = FakeUpstream::start(FakeUpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[prod]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\naws_session_token = token\n",
    )
    .unwrap();
    let config = format!(
        "[providers.aws]\nkind = \"bedrock\"\nbase_url = \"{}\"\nregion = \"us-west-2\"\n\
         credentials_file = \"{}\"\nprofile = \"prod\"\n\
         [providers.backup]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"x\"\n\
         [retry]\nmax_retries = 1\nbase_backoff_ms = 1\nmax_backoff_ms = 5\n\
         [aliases.claude]\ndeployments = [{{ model = \"aws/anthropic.claude-3-5-sonnet-20240620-v1:0\", weight = 1 }}, \
         {{ model = \"backup/m\", weight = 0 }}]\n",
        upstream.root_url(),
        credentials.display(),
        backup.base_url(),
    );
    let gw = gateway(&config).await;
    answers_through_every_api(
        &gw,
        "aws/anthropic.claude-3-5-sonnet-20240620-v1:0",
        &upstream.answer(),
    )
    .await;
    // The Messages API's system prompt became Converse's system blocks.
    assert_eq!(
        upstream.requests().last().unwrap()["system"],
        json!([{"text": "be kind"}])
    );
    let vectors = embeddings(&gw, "aws/amazon.titan-embed-text-v2:0", &["alpha", "beta"]).await;
    assert_eq!(vectors, [fake_vector("alpha"), fake_vector("beta")]);

    // Throttled at the start of the stream, twice: the alias falls back to its other deployment.
    let reply = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(chat("claude", "[throttle] hi", true)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("x-tollgate-route"), Some("backup/m"));
    assert_eq!(backup.calls(), 1);
}
