//! The fake upstream as Google Gemini: the Generative Language API
//! (`POST /v1beta/models/{model}:{method}`, `x-goog-api-key`) and Vertex AI
//! (`POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}`, a bearer
//! token), with Google's OAuth token endpoint (`POST /token`) that takes a service account's
//! signed JWT the way Google does: the RS256 signature checked against the account's public key,
//! and the issuer, audience, scope and times checked.
//!
//! Methods: `generateContent`, `streamGenerateContent?alt=sse` (one event per word, usage on the
//! last), `batchEmbedContents` and `predict` (embeddings). It checks what Gemini checks of a
//! request (turns of `user` and `model`, not empty) and answers with the OpenAI side's words and
//! tool behaviour. A last user text containing `[blocked]` has its prompt blocked; `[unsafe]`
//! gets a candidate stopped for `SAFETY`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Shared, ToolAnswer, ToolTurn, call_arguments, event_stream, fake_vector, words_for};

/// The service account whose JWTs the token endpoint takes.
#[derive(Debug, Clone)]
pub struct FakeGoogle {
    pub client_email: String,
    /// The account's RSA public key (PKCS#1 DER).
    pub public_key_der: Vec<u8>,
    pub token_seconds: u64,
}

/// A service account key file for the test key pair (`data/service-account-test-key.pem`):
/// the JSON a Google Cloud console download holds, with `token_uri` pointing at `token_uri`.
pub fn service_account_json(client_email: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "k1",
        "private_key": include_str!("../../data/service-account-test-key.pem"),
        "client_email": client_email,
        "client_id": "1",
        "token_uri": token_uri,
    })
    .to_string()
}

/// The public half of the test key pair, for [`FakeGoogle::public_key_der`].
pub fn service_account_public_key() -> Vec<u8> {
    include_bytes!("../../data/service-account-test-key.pub.der").to_vec()
}

/// The public half of another key: a token endpoint with it refuses the test account's JWTs.
pub fn another_public_key() -> Vec<u8> {
    include_bytes!("../../data/another-key.pub.der").to_vec()
}

fn google_error(status: StatusCode, message: &str) -> Response {
    let name = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
        _ => "INVALID_ARGUMENT",
    };
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message, "status": name}})),
    )
        .into_response()
}

/// Gemini's error body for `admit`'s refusals.
fn admit_error(kind: &str, message: &str) -> Value {
    json!({"error": {"code": 0, "message": message, "status": kind}})
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct Alt {
    alt: Option<String>,
}

pub(super) async fn ai_studio(
    State(shared): State<Arc<Shared>>,
    Path(call): Path<String>,
    Query(alt): Query<Alt>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    shared.record_path(&format!("/v1beta/models/{call}"));
    let key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let valid = key.is_some_and(|k| shared.config.api_key.as_deref().is_none_or(|e| e == k));
    if !valid {
        // Google answers a bad key with a 400.
        return google_error(
            StatusCode::BAD_REQUEST,
            "API key not valid. Please pass a valid API key.",
        );
    }
    answer(&shared, &call, alt, request, false).await
}

pub(super) async fn vertex(
    State(shared): State<Arc<Shared>>,
    Path((project, location, call)): Path<(String, String, String)>,
    Query(alt): Query<Alt>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    shared.record_path(&format!(
        "/v1/projects/{project}/locations/{location}/publishers/google/models/{call}"
    ));
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| shared.token_is_live(t)) {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials.",
        );
    }
    answer(&shared, &call, alt, request, true).await
}

async fn answer(shared: &Shared, call: &str, alt: Alt, request: Value, vertex: bool) -> Response {
    let Some((model, method)) = call.split_once(':') else {
        return google_error(StatusCode::NOT_FOUND, "no method");
    };
    match method {
        "generateContent" | "streamGenerateContent" => {}
        "batchEmbedContents" if !vertex => return embed_contents(shared, model, &request),
        "predict" if vertex => return predict(shared, &request),
        _ => return google_error(StatusCode::NOT_FOUND, &format!("no method {method}")),
    }
    let stream = method == "streamGenerateContent";
    if stream && alt.alt.as_deref() != Some("sse") {
        return google_error(
            StatusCode::BAD_REQUEST,
            "this fake streams with alt=sse only",
        );
    }
    let contents = request["contents"].as_array().cloned().unwrap_or_default();
    if contents.is_empty() {
        return google_error(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    for (i, c) in contents.iter().enumerate() {
        if !matches!(c["role"].as_str(), Some("user" | "model")) {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("* GenerateContentRequest.contents[{i}].role: must be user or model"),
            );
        }
        if c["parts"].as_array().is_none_or(Vec::is_empty) {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty"
                ),
            );
        }
    }
    // The credential was checked above, Google's way.
    if let Err((status, _)) = shared.admit(&request, shared.config.api_key.as_deref(), admit_error)
    {
        let status = if status == StatusCode::INTERNAL_SERVER_ERROR {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            status
        };
        return google_error(status, "The model is overloaded. Please try again later.");
    }
    let last = contents.last().cloned().unwrap_or_default();
    let question: String = last["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .collect();
    let usage = |out: usize| json!({"promptTokenCount": 10, "candidatesTokenCount": out, "totalTokenCount": 10 + out});
    let version = json!(model);
    let mut events: Vec<Value> = Vec::new();
    if question.contains("[blocked]") {
        events
            .push(json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage(0)}));
    } else if question.contains("[unsafe]") {
        events.push(
            json!({"candidates": [{"finishReason": "SAFETY", "index": 0}],
                           "usageMetadata": usage(0), "modelVersion": version}),
        );
    } else if let Some(tools) = tool_answer(&request, &contents) {
        let parts: Vec<Value> = match tools {
            ToolAnswer::Calls(names) => names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let args: Value = serde_json::from_str(&call_arguments(i)).unwrap_or_default();
                    json!({"functionCall": {"name": name, "args": args}})
                })
                .collect(),
            ToolAnswer::Text(text) => vec![json!({"text": text})],
        };
        events.push(json!({"candidates": [{"content": {"role": "model", "parts": parts},
            "finishReason": "STOP", "index": 0}], "usageMetadata": usage(5), "modelVersion": version}));
    } else {
        let as_chat = json!({"messages": [{"role": "user", "content": question}]});
        let mut words = words_for(&shared.config, &as_chat);
        if request.pointer("/generationConfig/responseMimeType") == Some(&json!("application/json"))
        {
            words = vec![json!({"text": words.concat()}).to_string()];
        }
        let count = words.len();
        for (i, word) in words.into_iter().enumerate() {
            let mut event = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": word}]},
                "index": 0}], "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
                "modelVersion": version});
            if i + 1 == count {
                event["candidates"][0]["finishReason"] = json!("STOP");
                event["usageMetadata"] = usage(count);
            }
            events.push(event);
        }
    }
    let delay = shared.config.chunk_delay;
    if stream {
        let frames = events
            .iter()
            .map(|e| format!("data: {e}\r\n\r\n"))
            .collect();
        return event_stream(frames, delay);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay * events.len() as u32).await;
    }
    // The whole answer: the events' parts joined, the last event's finish and usage.
    let mut whole = events.last().cloned().unwrap_or_default();
    let parts: Vec<Value> = events
        .iter()
        .filter_map(|e| {
            e.pointer("/candidates/0/content/parts")
                .and_then(Value::as_array)
        })
        .flatten()
        .cloned()
        .collect();
    if whole.pointer("/candidates/0/content").is_some() {
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let merged: Vec<Value> = if text.is_empty() {
            parts
        } else {
            vec![json!({"text": text})]
        };
        whole["candidates"][0]["content"]["parts"] = Value::Array(merged);
    }
    Json(whole).into_response()
}

/// The fake model's tool behaviour over Gemini's contents.
fn tool_answer(request: &Value, contents: &[Value]) -> Option<ToolAnswer> {
    let names: Vec<&str> = request["tools"]
        .as_array()?
        .iter()
        .filter_map(|t| t["functionDeclarations"].as_array())
        .flatten()
        .filter_map(|d| d["name"].as_str())
        .collect();
    let config = request.pointer("/toolConfig/functionCallingConfig");
    if config.and_then(|c| c["mode"].as_str()) == Some("NONE") {
        return None;
    }
    let forced = config
        .and_then(|c| c["allowedFunctionNames"].as_array())
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let results: Vec<String> = contents
        .last()
        .and_then(|c| c["parts"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.pointer("/functionResponse/response"))
        .map(|r| match r.get("content").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => r.to_string(),
        })
        .collect();
    ToolTurn {
        names,
        forced,
        parallel: true,
        results,
    }
    .answer()
}

fn embed_contents(shared: &Shared, model: &str, request: &Value) -> Response {
    let mut embeddings = Vec::new();
    for (i, r) in request["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if r["model"].as_str() != Some(format!("models/{model}").as_str()) {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("* BatchEmbedContentsRequest.requests[{i}].model: must be models/{model}"),
            );
        }
        let text = r
            .pointer("/content/parts/0/text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        embeddings.push(json!({"values": fake_vector(text)}));
    }
    shared.calls.fetch_add(1, Ordering::SeqCst);
    Json(json!({"embeddings": embeddings})).into_response()
}

fn predict(shared: &Shared, request: &Value) -> Response {
    let predictions: Vec<Value> = request["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let text = i["content"].as_str().unwrap_or_default();
            json!({"embeddings": {"values": fake_vector(text),
                "statistics": {"token_count": text.split_whitespace().count(), "truncated": false}}})
        })
        .collect();
    shared.calls.fetch_add(1, Ordering::SeqCst);
    Json(json!({"predictions": predictions})).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    assertion: Option<String>,
}

fn oauth_error(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": description})),
    )
        .into_response()
}

/// Google's OAuth token endpoint for a service account's JWT bearer grant.
pub(super) async fn token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Some(google) = shared.config.google.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(form) = serde_urlencoded::from_bytes::<TokenRequest>(&body) else {
        return oauth_error("the request body must be a form");
    };
    if form.grant_type.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error("Invalid grant_type");
    }
    let assertion = form.assertion.unwrap_or_default();
    let pieces: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = pieces[..] else {
        return oauth_error("Invalid JWT: not three parts");
    };
    let decode = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    };
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        google.public_key_der.as_slice(),
    );
    let signed = format!("{header}.{claims}");
    let valid = decode(signature).is_some_and(|sig| key.verify(signed.as_bytes(), &sig).is_ok());
    if !valid {
        return oauth_error("Invalid JWT Signature.");
    }
    let header: Value = decode(header)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let claims: Value = decode(claims)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    let token_uri = shared
        .token_uri
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    let problem = if header["alg"] != "RS256" {
        Some("Invalid JWT: alg must be RS256")
    } else if claims["iss"].as_str() != Some(google.client_email.as_str()) {
        Some("Invalid JWT: unknown issuer")
    } else if claims["aud"].as_str() != Some(token_uri.as_str()) {
        Some("Invalid JWT: wrong audience")
    } else if !claims["scope"].as_str().is_some_and(|s| {
        s.split(' ')
            .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    }) {
        Some("Invalid JWT: no cloud-platform scope")
    } else if iat > now + 60 || exp <= now || exp.saturating_sub(iat) > 3600 {
        Some(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        )
    } else {
        None
    };
    if let Some(problem) = problem {
        return oauth_error(problem);
    }
    let n = shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = format!("ya29.fake-{n}");
    let expires = Instant::now() + Duration::from_secs(google.token_seconds);
    if let Ok(mut live) = shared.bearer_tokens.lock() {
        live.push((token.clone(), expires));
    }
    Json(json!({"access_token": token, "expires_in": google.token_seconds, "token_type": "Bearer"}))
        .into_response()
}
