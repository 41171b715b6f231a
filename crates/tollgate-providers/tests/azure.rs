//! Azure OpenAI against the fake resource and its fake Entra ID (the real ones are paid and out
//! of reach), which check the credentials and the API version as Azure does.

#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_core::{Aggregator, ChatRequest};
use tollgate_providers::azure::{AzureAuth, AzureOpenAi, ClientSecret, EntraCredential};
use tollgate_providers::openai_compat::Timeouts;
use tollgate_providers::{Provider, ProviderError};
use tollgate_testkit::{FakeEntra, FakeUpstream, FakeUpstreamConfig, fake_vector};

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn hello(deployment: &str) -> ChatRequest {
    request(json!({"model": deployment, "messages": [{"role": "user", "content": "hello"}]}))
}

async fn fold(
    p: &dyn Provider,
    req: ChatRequest,
) -> Result<tollgate_core::ChatCompletion, ProviderError> {
    let mut stream = p.chat_stream(req).await?;
    let mut agg = Aggregator::default();
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Azure's filter-results chunk (no choices) never reaches a client.
        if first {
            assert!(!chunk.choices.is_empty(), "{chunk:?}");
            assert!(!chunk.extra.contains_key("prompt_filter_results"));
            first = false;
        }
        agg.push(&chunk);
    }
    Ok(agg.finish())
}

fn entra(secret: Option<&str>, federated: Option<&str>, seconds: u64) -> FakeEntra {
    FakeEntra {
        tenant_id: "tenant-1".into(),
        client_id: "app-1".into(),
        client_secret: secret.map(str::to_owned),
        federated_token: federated.map(str::to_owned),
        token_seconds: seconds,
    }
}

fn application(upstream: &FakeUpstream, secret: ClientSecret) -> AzureAuth {
    AzureAuth::Entra(EntraCredential::Application {
        authority: upstream.root_url(),
        tenant_id: "tenant-1".into(),
        client_id: "app-1".into(),
        secret,
    })
}

#[tokio::test]
async fn chat_tools_and_embeddings_reach_the_deployment_with_the_resource_key() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 3,
        api_key: Some("azure-key".into()),
        ..Default::default()
    })
    .await;
    let azure = AzureOpenAi::new(
        &upstream.root_url(),
        "",
        AzureAuth::ApiKey("azure-key".into()),
        Timeouts::default(),
    )
    .unwrap();

    let streamed = fold(&azure, hello("gpt4o-prod")).await.unwrap();
    assert_eq!(
        streamed.choices[0].message.text_content(),
        upstream.answer()
    );
    assert_eq!(streamed.usage.unwrap().completion_tokens, 3);
    let whole = azure.chat(hello("gpt4o-prod")).await.unwrap();
    assert_eq!(whole.choices[0].message.text_content(), upstream.answer());
    assert!(!whole.extra.contains_key("prompt_filter_results"));

    let tools = request(json!({"model": "gpt4o-prod",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}));
    let called = fold(&azure, tools).await.unwrap();
    let calls = &called.choices[0].message.extra["tool_calls"];
    assert_eq!(calls[0]["function"]["name"], "weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"i\": 0}");
    assert_eq!(
        called.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );

    let vectors = azure
        .embed("embed-small".into(), vec!["a".into(), "bb".into()])
        .await
        .unwrap();
    assert_eq!(vectors.vectors, vec![fake_vector("a"), fake_vector("bb")]);
    assert_eq!(vectors.prompt_tokens, 2);

    assert_eq!(
        upstream.paths(),
        [
            "/openai/deployments/gpt4o-prod/chat/completions",
            "/openai/deployments/gpt4o-prod/chat/completions",
            "/openai/deployments/gpt4o-prod/chat/completions",
            "/openai/deployments/embed-small/embeddings",
        ]
    );
}

#[tokio::test]
async fn wrong_keys_versions_and_filtered_prompts_are_refused_for_good() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        api_key: Some("azure-key".into()),
        ..Default::default()
    })
    .await;
    let with = |key: &str, version: &str| {
        AzureOpenAi::new(
            &upstream.root_url(),
            version,
            AzureAuth::ApiKey(key.into()),
            Timeouts::default(),
        )
        .unwrap()
    };
    let wrong_key = with("nope", "").chat(hello("d")).await.unwrap_err();
    assert!(
        matches!(wrong_key, ProviderError::Rejected { status: 401, .. })
            && !wrong_key.is_retryable(),
        "{wrong_key:?}"
    );
    let wrong_version = with("azure-key", "1999-01-01")
        .chat(hello("d"))
        .await
        .unwrap_err();
    assert!(
        matches!(wrong_version, ProviderError::Rejected { status: 404, .. }),
        "{wrong_version:?}"
    );
    let filtered = request(json!({"model": "d",
        "messages": [{"role": "user", "content": "something [filtered]"}]}));
    let Err(refused) = with("azure-key", "").chat_stream(filtered).await else {
        panic!("a filtered prompt was answered");
    };
    assert!(
        matches!(&refused, ProviderError::ContentFiltered { message } if message.contains("content management policy"))
            && !refused.is_retryable(),
        "{refused:?}"
    );
    assert_eq!(upstream.calls(), 0, "no refused call reached a deployment");
}

#[tokio::test]
async fn entra_tokens_are_fetched_once_and_again_before_they_expire() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        chunks: 2,
        // The resource takes no key: only tokens.
        api_key: Some("unguessable".into()),
        entra: Some(entra(Some("s3cret"), None, 2)),
        ..Default::default()
    })
    .await;
    let azure = AzureOpenAi::new(
        &upstream.root_url(),
        "2024-06-01",
        application(&upstream, ClientSecret::Secret("s3cret".into())),
        Timeouts::default(),
    )
    .unwrap();
    // Eight calls at once share one token.
    let calls = (0..8).map(|_| azure.chat(hello("d")));
    for answer in futures::future::join_all(calls).await {
        assert_eq!(
            answer.unwrap().choices[0].message.text_content(),
            upstream.answer()
        );
    }
    assert_eq!(upstream.tokens_issued(), 1);
    // Tokens live 2 s here: half way through, the next call fetches a new one, so no call ever
    // carries an expired token.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        azure.chat(hello("d")).await.unwrap();
    }
    let issued = upstream.tokens_issued();
    assert!(
        (2..=4).contains(&issued),
        "{issued} tokens for 3 s of calls"
    );

    let wrong = AzureOpenAi::new(
        &upstream.root_url(),
        "",
        application(&upstream, ClientSecret::Secret("guess".into())),
        Timeouts::default(),
    )
    .unwrap();
    let refused = wrong.chat(hello("d")).await.unwrap_err();
    assert!(
        matches!(&refused, ProviderError::Rejected { status: 401, message } if message.contains("AADSTS7000215"))
            && !refused.is_retryable(),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_workload_identity_and_a_token_file_authenticate_too() {
    let upstream = FakeUpstream::start(FakeUpstreamConfig {
        api_key: Some("unguessable".into()),
        entra: Some(entra(None, Some("federated-jwt"), 3600)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let federated = dir.path().join("federated-token");
    std::fs::write(&federated, "federated-jwt\n").unwrap();
    let azure = AzureOpenAi::new(
        &upstream.root_url(),
        "",
        application(&upstream, ClientSecret::FederatedTokenFile(federated)),
        Timeouts::default(),
    )
    .unwrap();
    azure.chat(hello("d")).await.unwrap();
    assert_eq!(upstream.tokens_issued(), 1);

    // A file kept fresh by something else: here, the token the workload identity just got.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "entra-token-0").unwrap();
    let from_file = AzureOpenAi::new(
        &upstream.root_url(),
        "",
        AzureAuth::Entra(EntraCredential::TokenFile(token_file.clone())),
        Timeouts::default(),
    )
    .unwrap();
    from_file.chat(hello("d")).await.unwrap();
    std::fs::write(&token_file, "not-a-token").unwrap();
    let stale = AzureOpenAi::new(
        &upstream.root_url(),
        "",
        AzureAuth::Entra(EntraCredential::TokenFile(token_file)),
        Timeouts::default(),
    )
    .unwrap();
    let refused = stale.chat(hello("d")).await.unwrap_err();
    assert!(
        matches!(refused, ProviderError::Rejected { status: 401, .. }),
        "{refused:?}"
    );
    assert_eq!(upstream.tokens_issued(), 1);
}
