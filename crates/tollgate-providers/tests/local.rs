//! The local models (real weights, installed by `scripts/install-models.sh`, which `make test`
//! runs): embeddings against an independent numpy reference, generation, its limits and its
//! errors.

#![cfg(feature = "local")]
#![allow(clippy::unwrap_used, reason = "tests panic on failure")]

use futures::StreamExt;
use serde_json::{Value, json};
use tollgate_core::{Aggregator, ChatRequest};
use tollgate_providers::local::{CHAT_MODEL, EMBEDDING_MODEL, LocalConfig, LocalProvider};
use tollgate_providers::{Provider, ProviderError};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[tokio::test]
async fn embeddings_match_an_independent_reference() {
    let reference: Vec<Value> =
        serde_json::from_str(include_str!("data/minilm_reference.json")).unwrap();
    let texts: Vec<String> = reference
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    let local = LocalProvider::start(LocalConfig::default());
    // One batch: inputs of different lengths are padded, which must not move any vector.
    let batch = local
        .embed(EMBEDDING_MODEL.into(), texts.clone())
        .await
        .unwrap();
    assert_eq!(batch.vectors.len(), texts.len());
    assert!(batch.prompt_tokens > texts.len() as u64);
    for (r, got) in reference.iter().zip(&batch.vectors) {
        let want: Vec<f32> = serde_json::from_value(r["embedding"].clone()).unwrap();
        assert_eq!(got.len(), 384);
        let cos = cosine(got, &want);
        assert!(cos >= 0.999, "{}: cosine to the reference {cos}", r["text"]);
    }
    let alone = local
        .embed(EMBEDDING_MODEL.into(), vec![texts[2].clone()])
        .await
        .unwrap();
    assert!(cosine(&alone.vectors[0], &batch.vectors[2]) > 0.99999);
    // A paraphrase is near, another question is not.
    assert!(cosine(&batch.vectors[0], &batch.vectors[1]) > 0.85);
    assert!(cosine(&batch.vectors[0], &batch.vectors[2]) < 0.3);
}

/// Questions sent at once by many requests are embedded together (one padded forward pass);
/// each still gets its own vector, within 1e-3 cosine of the reference and of itself embedded
/// alone, and its own token count.
#[tokio::test]
async fn questions_embedded_together_get_the_vectors_they_get_alone() {
    let reference: Vec<Value> =
        serde_json::from_str(include_str!("data/minilm_reference.json")).unwrap();
    let local = std::sync::Arc::new(LocalProvider::start(LocalConfig::default()));
    let texts: Vec<String> = reference
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    let mut alone = Vec::new();
    for t in &texts {
        alone.push(
            local
                .embed(EMBEDDING_MODEL.into(), vec![t.clone()])
                .await
                .unwrap(),
        );
    }
    let together = futures::future::join_all(texts.iter().cycle().take(texts.len() * 4).map(|t| {
        let local = local.clone();
        let t = t.clone();
        async move { local.embed(EMBEDDING_MODEL.into(), vec![t]).await.unwrap() }
    }))
    .await;
    for (i, got) in together.iter().enumerate() {
        let i = i % texts.len();
        let want: Vec<f32> = serde_json::from_value(reference[i]["embedding"].clone()).unwrap();
        assert!(cosine(&got.vectors[0], &want) >= 0.999, "{}", texts[i]);
        assert!(
            cosine(&got.vectors[0], &alone[i].vectors[0]) >= 0.999,
            "{}",
            texts[i]
        );
        assert_eq!(got.prompt_tokens, alone[i].prompt_tokens, "{}", texts[i]);
    }
}

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

async fn generate(local: &LocalProvider, v: Value) -> (tollgate_core::ChatCompletion, usize) {
    let mut stream = local.chat_stream(request(v)).await.unwrap();
    let (mut agg, mut chunks) = (Aggregator::default(), 0);
    while let Some(chunk) = stream.next().await {
        agg.push(&chunk.unwrap());
        chunks += 1;
    }
    (agg.finish(), chunks)
}

#[tokio::test]
async fn the_chat_model_answers_streams_and_keeps_to_its_limits() {
    let local = LocalProvider::start(LocalConfig::default());
    let question = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let (answer, chunks) = generate(
        &local,
        json!({"model": CHAT_MODEL, "messages": question, "temperature": 0, "max_tokens": 24}),
    )
    .await;
    let text = answer.choices[0].message.text_content();
    assert!(text.contains("Paris"), "{text}");
    assert!(chunks > 3, "streamed piece by piece, not in one chunk");
    let usage = answer.usage.unwrap();
    assert!(
        usage.prompt_tokens > 5 && usage.completion_tokens <= 24,
        "{usage:?}"
    );
    assert_eq!(answer.choices[0].finish_reason.as_deref(), Some("stop"));

    let (cut, _) = generate(
        &local,
        json!({"model": CHAT_MODEL, "messages": question, "temperature": 0, "max_tokens": 3}),
    )
    .await;
    assert_eq!(cut.choices[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(cut.usage.unwrap().completion_tokens, 3);

    // Sampling with a seed is reproducible.
    let sampled = json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Tell me about cats."}],
                         "temperature": 0.9, "top_p": 0.9, "seed": 7, "max_tokens": 12});
    let (a, _) = generate(&local, sampled.clone()).await;
    let (b, _) = generate(&local, sampled).await;
    assert_eq!(
        a.choices[0].message.text_content(),
        b.choices[0].message.text_content()
    );

    // A stop string ends the answer before it.
    let (stopped, _) = generate(
        &local,
        json!({"model": CHAT_MODEL, "messages": question, "temperature": 0, "max_tokens": 24, "stop": ["Paris"]}),
    )
    .await;
    let text = stopped.choices[0].message.text_content();
    assert!(!text.contains("Paris"), "{text}");
    assert_eq!(stopped.choices[0].finish_reason.as_deref(), Some("stop"));

    let wrong = local
        .chat_stream(request(
            json!({"model": EMBEDDING_MODEL, "messages": question}),
        ))
        .await
        .err();
    assert!(
        matches!(wrong, Some(ProviderError::Rejected { status: 404, .. })),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once_as_rate_limited() {
    let local = LocalProvider::start(LocalConfig {
        chat_queue: 1,
        ..LocalConfig::default()
    });
    let long = json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Count to a hundred."}],
                      "temperature": 0, "max_tokens": 64});
    // One generation runs (the model loads for it first), one waits: the third is refused at
    // once, whatever the timing of the worker picking up the first.
    let mut streams = Vec::new();
    let mut refused = None;
    for _ in 0..3 {
        match local.chat_stream(request(long.clone())).await {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(
            refused,
            Some(ProviderError::RateLimited {
                retry_after: Some(_)
            })
        ),
        "{refused:?}"
    );
    assert!(!streams.is_empty() && streams.len() <= 2);
}

#[tokio::test]
async fn missing_weights_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalProvider::start(LocalConfig {
        model_dir: dir.path().to_owned(),
        ..LocalConfig::default()
    });
    let err = local
        .embed(EMBEDDING_MODEL.into(), vec!["x".into()])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, ProviderError::Rejected { status: 503, .. }),
        "{err:?}"
    );
    let ProviderError::Rejected {
        message: detail, ..
    } = err
    else {
        unreachable!()
    };
    assert!(detail.contains("make models"), "{message}: {detail}");
    let mut stream = local
        .chat_stream(request(
            json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ))
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    assert!(
        matches!(first, Err(ProviderError::Rejected { status: 503, .. })),
        "{first:?}"
    );
}
