//! AWS Bedrock against the fake Bedrock runtime, which recomputes every request's SigV4
//! signature itself (independently of the signer under test) and answers in Converse's wire
//! formats: JSON, and AWS event-stream frames.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_core::{Aggregator, ChatCompletion, ChatRequest};
use tollgate_providers::bedrock::{AwsCredentials, AwsKeys, Bedrock};
use tollgate_providers::openai_compat::Timeouts;
use tollgate_providers::{Provider, ProviderError};
use tollgate_testkit::{FakeAws, FakeUpstream, FakeUpstreamConfig, fake_vector};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn ask(text: &str) -> ChatRequest {
    request(json!({"model": MODEL, "messages": [{"role": "user", "content": text}]}))
}

async fn fold(p: &dyn Provider, req: ChatRequest) -> Result<ChatCompletion, ProviderError> {
    let mut stream = p.chat_stream(req).await?;
    let mut agg = Aggregator::default();
    while let Some(chunk) = stream.next().await {
        agg.push(&chunk?);
    }
    Ok(agg.finish())
}

fn account(session_token: Option<&str>) -> FakeAws {
    FakeAws {
        region: "eu-west-1".into(),
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: session_token.map(str::to_owned),
    }
}

fn keys(secret: &str, session_token: Option<&str>) -> AwsCredentials {
    AwsCredentials::Keys(AwsKeys {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: secret.into(),
        session_token: session_token.map(str::to_owned),
    })
}

fn bedrock(upstream: &FakeUpstream, region: &str, credentials: AwsCredentials) -> Bedrock {
    Bedrock::new(
        region,
        &upstream.root_url(),
        credentials,
        Timeouts::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn signed_converse_calls_answer_stream_call_tools_and_embed() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        aws: Some(account(Some("session-token"))),
        ..Default::default()
    })
    .await;
    let aws = bedrock(
        &upstream,
        "eu-west-1",
        keys(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token"),
        ),
    );
    let streamed = fold(&aws, ask("hello")).await.unwrap();
    assert_eq!(
        streamed.choices[0].message.text_content(),
        upstream.answer()
    );
    assert_eq!(streamed.choices[0].finish_reason.as_deref(), Some("stop"));
    let usage = streamed.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 3));
    let whole = aws.chat(ask("hello")).await.unwrap();
    assert_eq!(whole.choices[0].message.text_content(), upstream.answer());
    assert_eq!(whole.usage.unwrap().total_tokens, 13);

    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}}}}]);
    let called = fold(
        &aws,
        request(json!({"model": MODEL, "tools": tools, "messages": [{"role": "user", "content": "weather?"}]})),
    )
    .await
    .unwrap();
    assert_eq!(
        called.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
    let calls = called.choices[0].message.extra["tool_calls"].clone();
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"i\": 0}");
    let answered = aws
        .chat(request(
            json!({"model": MODEL, "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}]}),
        ))
        .await
        .unwrap();
    assert_eq!(
        answered.choices[0].message.text_content(),
        "tools said: sunny"
    );

    let titan = aws
        .embed(
            "amazon.titan-embed-text-v2:0".into(),
            vec!["a b".into(), "c".into()],
        )
        .await
        .unwrap();
    assert_eq!(titan.vectors, vec![fake_vector("a b"), fake_vector("c")]);
    assert_eq!(titan.prompt_tokens, 3);
    let calls_before = upstream.calls();
    let cohere = aws
        .embed(
            "cohere.embed-english-v3".into(),
            vec!["x".into(), "y".into()],
        )
        .await
        .unwrap();
    assert_eq!(cohere.vectors, vec![fake_vector("x"), fake_vector("y")]);
    assert_eq!(
        upstream.calls(),
        calls_before + 1,
        "Cohere embeds a batch in one call"
    );

    // The versioned model id travels percent-encoded in its one path segment.
    assert_eq!(
        upstream.paths()[0],
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
    );
}

#[tokio::test]
async fn a_signature_that_does_not_hold_is_refused_for_good() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        aws: Some(account(Some("session-token"))),
        ..Default::default()
    })
    .await;
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    for (aws, why) in [
        (
            bedrock(
                &upstream,
                "eu-west-1",
                keys("not-the-secret", Some("session-token")),
            ),
            "signature we calculated does not match",
        ),
        (
            bedrock(&upstream, "us-east-1", keys(secret, Some("session-token"))),
            "valid region",
        ),
        (
            bedrock(&upstream, "eu-west-1", keys(secret, None)),
            "security token included in the request is invalid",
        ),
    ] {
        let refused = aws.chat(ask("hi")).await.unwrap_err();
        assert!(
            matches!(&refused, ProviderError::Rejected { status: 403, message } if message.contains(why))
                && !refused.is_retryable(),
            "{why}: {refused:?}"
        );
    }
    assert_eq!(upstream.calls(), 0, "no unsigned call reached a model");
}

#[tokio::test]
async fn shared_credentials_files_throttling_and_guardrails() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        fail_first: 1,
        aws: Some(account(None)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = OTHER\naws_secret_access_key = x\n\n\
         [bedrock]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n",
    )
    .unwrap();
    let aws = bedrock(
        &upstream,
        "eu-west-1",
        AwsCredentials::SharedFile {
            path: file,
            profile: "bedrock".into(),
        },
    );
    let unavailable = aws.chat(ask("hi")).await.unwrap_err();
    assert!(
        matches!(&unavailable, ProviderError::Upstream { status: 503, message } if message.contains("ServiceUnavailableException"))
            && unavailable.is_retryable(),
        "{unavailable:?}"
    );
    aws.chat(ask("hi")).await.unwrap();
    // Throttled at the stream's first frame: an error before the answer, retryable.
    let Err(throttled) = aws.chat_stream(ask("[throttle] please")).await else {
        panic!("a throttled stream was handed on");
    };
    assert!(
        matches!(throttled, ProviderError::RateLimited { .. }),
        "{throttled:?}"
    );
    let stopped = fold(&aws, ask("[guardrail] this")).await.unwrap();
    assert_eq!(
        stopped.choices[0].finish_reason.as_deref(),
        Some("content_filter")
    );
}
