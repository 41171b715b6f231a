//! Google Gemini against the fake Generative Language API and Vertex AI, whose token endpoint
//! checks a service account's JWT as Google does (signature, issuer, audience, scope, times).

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_core::{Aggregator, ChatCompletion, ChatRequest};
use tollgate_providers::gemini::{Gemini, GeminiApi, ServiceAccount};
use tollgate_providers::openai_compat::Timeouts;
use tollgate_providers::{Provider, ProviderError};
use tollgate_testkit::{
    FakeGoogle, FakeUpstream, FakeUpstreamConfig, another_public_key, fake_vector,
    service_account_json, service_account_public_key,
};

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn ask(text: &str) -> ChatRequest {
    request(json!({"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": text}]}))
}

async fn fold(p: &dyn Provider, req: ChatRequest) -> Result<ChatCompletion, ProviderError> {
    let mut stream = p.chat_stream(req).await?;
    let mut agg = Aggregator::default();
    while let Some(chunk) = stream.next().await {
        agg.push(&chunk?);
    }
    Ok(agg.finish())
}

fn ai_studio(upstream: &FakeUpstream, key: &str) -> Gemini {
    let api = GeminiApi::AiStudio {
        base_url: upstream.root_url(),
        api_key: key.into(),
    };
    Gemini::new(api, Timeouts::default()).unwrap()
}

fn vertex(upstream: &FakeUpstream, email: &str) -> Gemini {
    let json = service_account_json(email, &upstream.token_uri());
    let api = GeminiApi::Vertex {
        base_url: upstream.root_url(),
        project: "proj".into(),
        location: "europe-west4".into(),
        account: ServiceAccount::from_json(&json).unwrap(),
    };
    Gemini::new(api, Timeouts::default()).unwrap()
}

fn google(public_key_der: Vec<u8>) -> Option<FakeGoogle> {
    Some(FakeGoogle {
        client_email: "gateway@proj.iam.gserviceaccount.com".into(),
        public_key_der,
        token_seconds: 3600,
    })
}

#[tokio::test]
async fn ai_studio_answers_stream_call_tools_and_embed() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 4,
        api_key: Some("g-key".into()),
        ..Default::default()
    })
    .await;
    let gemini = ai_studio(&upstream, "g-key");
    let streamed = fold(&gemini, ask("hello")).await.unwrap();
    assert_eq!(
        streamed.choices[0].message.text_content(),
        upstream.answer()
    );
    assert_eq!(streamed.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = streamed.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 4));
    let whole = gemini.chat(ask("hello")).await.unwrap();
    assert_eq!(whole.choices[0].message.text_content(), upstream.answer());
    assert_eq!(whole.usage.unwrap().total_tokens, 14);
    let sent = &upstream.requests()[0];
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "hello"}]}])
    );

    // A tool round trip: the model calls, the results go back as function responses.
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}}}}]);
    let called = fold(
        &gemini,
        request(json!({"model": "gemini-2.0-flash", "tools": tools,
            "messages": [{"role": "user", "content": "weather?"}]})),
    )
    .await
    .unwrap();
    assert_eq!(
        called.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
    let calls = called.choices[0].message.extra["tool_calls"].clone();
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"i\":0}");
    let id = calls[0]["id"].as_str().unwrap();
    let answered = gemini
        .chat(request(
            json!({"model": "gemini-2.0-flash", "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}]}),
        ))
        .await
        .unwrap();
    assert_eq!(
        answered.choices[0].message.text_content(),
        "tools said: sunny"
    );

    // Structured output.
    let structured = gemini
        .chat(request(json!({"model": "gemini-2.0-flash",
            "messages": [{"role": "user", "content": "json please"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema":
                {"type": "object", "properties": {"text": {"type": "string"}}, "additionalProperties": false}}}})))
        .await
        .unwrap();
    let parsed: Value =
        serde_json::from_str(&structured.choices[0].message.text_content()).unwrap();
    assert_eq!(parsed["text"], upstream.answer());
    let config = upstream.requests().last().unwrap()["generationConfig"].clone();
    assert_eq!(config["responseMimeType"], "application/json");
    assert!(
        config["responseSchema"]
            .get("additionalProperties")
            .is_none()
    );

    let embedded = gemini
        .embed("text-embedding-004".into(), vec!["a b".into(), "c".into()])
        .await
        .unwrap();
    assert_eq!(embedded.vectors, vec![fake_vector("a b"), fake_vector("c")]);
    let paths = upstream.paths();
    assert_eq!(
        paths[0],
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    );
    assert_eq!(paths[1], "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(
        paths.last().unwrap(),
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    );
}

#[tokio::test]
async fn safety_blocks_and_bad_keys_are_clear_and_final() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        api_key: Some("g-key".into()),
        ..Default::default()
    })
    .await;
    let gemini = ai_studio(&upstream, "g-key");
    // Streamed, the block is the stream's first event: read before the stream is handed on.
    let Err(blocked) = gemini.chat_stream(ask("[blocked] question")).await else {
        panic!("a blocked prompt opened a stream");
    };
    assert!(
        matches!(blocked, ProviderError::ContentFiltered { .. }),
        "{blocked:?}"
    );
    let blocked = fold(&gemini, ask("[blocked] question")).await.unwrap_err();
    assert!(
        matches!(&blocked, ProviderError::ContentFiltered { message } if message.contains("SAFETY"))
            && !blocked.is_retryable(),
        "{blocked:?}"
    );
    let blocked = gemini.chat(ask("[blocked] again")).await.unwrap_err();
    assert!(
        matches!(blocked, ProviderError::ContentFiltered { .. }),
        "{blocked:?}"
    );
    let stopped = gemini.chat(ask("[unsafe] answer")).await.unwrap();
    assert_eq!(
        stopped.choices[0].finish_reason.as_deref(),
        Some("content_filter")
    );

    let wrong = ai_studio(&upstream, "nope")
        .chat(ask("hi"))
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong, ProviderError::Rejected { status: 400, message } if message.contains("API key not valid"))
            && !wrong.is_retryable(),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn vertex_signs_a_jwt_for_a_token_and_keeps_it() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 2,
        google: google(service_account_public_key()),
        ..Default::default()
    })
    .await;
    let gemini = vertex(&upstream, "gateway@proj.iam.gserviceaccount.com");
    let calls = (0..6).map(|_| gemini.chat(ask("hi")));
    for answer in futures::future::join_all(calls).await {
        assert_eq!(
            answer.unwrap().choices[0].message.text_content(),
            upstream.answer()
        );
    }
    let streamed = fold(&gemini, ask("hi")).await.unwrap();
    assert_eq!(
        streamed.choices[0].message.text_content(),
        upstream.answer()
    );
    let embedded = gemini
        .embed("text-embedding-005".into(), vec!["one two".into()])
        .await
        .unwrap();
    assert_eq!(embedded.vectors, vec![fake_vector("one two")]);
    assert_eq!(embedded.prompt_tokens, 2);
    assert_eq!(
        upstream.tokens_issued(),
        1,
        "one token for every call while it lives"
    );
    let paths = upstream.paths();
    assert_eq!(
        paths[0],
        "/v1/projects/proj/locations/europe-west4/publishers/google/models/gemini-2.0-flash:generateContent"
    );
    assert!(
        paths
            .last()
            .unwrap()
            .ends_with("/models/text-embedding-005:predict")
    );

    // An account the token endpoint does not know, or a key that is not the account's: refused
    // for good, with Google's reason.
    let stranger = vertex(&upstream, "someone@else.iam.gserviceaccount.com");
    let refused = stranger.chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Rejected { status: 401, message } if message.contains("unknown issuer"))
            && !refused.is_retryable(),
        "{refused:?}"
    );
    let other_key = FakeUpstream::start(FakeUpstreamConfig {
        google: google(another_public_key()),
        ..Default::default()
    })
    .await;
    let refused = vertex(&other_key, "gateway@proj.iam.gserviceaccount.com")
        .chat(ask("hi"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Rejected { status: 401, message } if message.contains("Invalid JWT Signature")),
        "{refused:?}"
    );
    assert_eq!(other_key.calls(), 0);
}
