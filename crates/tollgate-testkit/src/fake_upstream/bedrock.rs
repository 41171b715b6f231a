//! The fake upstream as AWS Bedrock's runtime: `POST /model/{id}/converse`,
//! `/converse-stream` (AWS event-stream frames) and `/invoke` (Titan and Cohere embeddings).
//!
//! Every request must carry a SigV4 signature that this fake computes again itself, step by step
//! as AWS documents it (canonical request with the path's segments encoded again, string to
//! sign, the HMAC chain of date, region, service and `aws4_request`), independently of the
//! signer the gateway uses; the access key, region, service, date and, for temporary
//! credentials, the session token must all be the expected ones. Failures answer as AWS does
//! (403 with `x-amzn-ErrorType`).
//!
//! It checks what Converse checks (turns alternate and start with the user; tool blocks need a
//! `toolConfig`) and answers with the OpenAI side's words and tool behaviour. A last user text
//! containing `[throttle]` gets a stream whose first frame is a `throttlingException`;
//! `[guardrail]` an answer stopped by a guardrail.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Shared, ToolAnswer, ToolTurn, call_arguments, fake_vector, paced_body, words_for};

/// The AWS account the fake takes signatures of.
#[derive(Debug, Clone)]
pub struct FakeAws {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Required (as `x-amz-security-token`, signed) when set: temporary credentials.
    pub session_token: Option<String>,
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", kind),
            ("content-type", "application/json"),
        ],
        json!({"message": message}).to_string(),
    )
        .into_response()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// URI-encodes as SigV4 does: unreserved characters as they are, the rest `%XX`.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Checks the request's SigV4 signature as AWS does; the refusal if it does not hold.
fn verify(aws: &FakeAws, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let denied = |m: &str| {
        Some(aws_error(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            m,
        ))
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(auth) = header("authorization") else {
        return Some(aws_error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let Some(fields) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return denied("Authorization header requires AWS4-HMAC-SHA256");
    };
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
    };
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) else {
        return denied("Authorization header requires Credential, SignedHeaders and Signature");
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return denied("Credential should be scoped to a valid region and service");
    };
    if key_id != aws.access_key_id {
        return Some(aws_error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if region != aws.region || service != "bedrock" {
        return denied(&format!(
            "Credential should be scoped to a valid region ({region}) and service ({service})"
        ));
    }
    let Some(amz_date) = header("x-amz-date") else {
        return denied("x-amz-date is required");
    };
    if !amz_date.starts_with(date) {
        return denied("Date in Credential scope does not match x-amz-date");
    }
    // The request time must be within 5 minutes of the fake's.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed_at = parse_amz_date(amz_date);
    if signed_at.is_none_or(|t| t.abs_diff(now) > 300) {
        return denied("Signature expired: the request time is too far from the current time");
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return denied(&format!("{required} must be signed"));
        }
    }
    if let Some(token) = &aws.session_token
        && (header("x-amz-security-token") != Some(token.as_str())
            || !names.contains(&"x-amz-security-token"))
    {
        return Some(aws_error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let value = headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(",");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    // Outside S3, each segment of the path as sent is encoded again.
    let canonical_uri: String = uri
        .path()
        .split('/')
        .map(encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "POST\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex::encode(Sha256::digest(body))
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{}", aws.secret_access_key).as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    let k_signing = hmac(&k_service, "aws4_request");
    let expected = hex::encode(hmac(&k_signing, &string_to_sign));
    if expected != signature {
        return denied(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method.",
        );
    }
    None
}

/// Seconds since the epoch of an `x-amz-date` (`20240101T120000Z`).
fn parse_amz_date(s: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|d| d.parse::<u64>().ok());
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm, ss) = (n(9..11)?, n(11..13)?, n(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

pub(super) async fn model(
    State(shared): State<Arc<Shared>>,
    Path((id, operation)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.record_path(uri.path());
    let Some(aws) = shared.config.aws.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(refused) = verify(&aws, &uri, &headers, &body) {
        return refused;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Malformed input request",
        );
    };
    match operation.as_str() {
        "invoke" => invoke(&shared, &id, &request),
        "converse" | "converse-stream" => {
            converse(&shared, &request, operation == "converse-stream").await
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn invoke(shared: &Shared, id: &str, request: &Value) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut requests) = shared.requests.lock() {
        requests.push(request.clone());
    }
    if id.starts_with("amazon.titan-embed") {
        let Some(text) = request["inputText"].as_str() else {
            return aws_error(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "inputText is required",
            );
        };
        return axum::Json(json!({"embedding": fake_vector(text),
            "inputTextTokenCount": text.split_whitespace().count()}))
        .into_response();
    }
    if id.starts_with("cohere.embed") {
        let texts: Vec<&str> = request["texts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let vectors: Vec<Vec<f32>> = texts.iter().map(|t| fake_vector(t)).collect();
        return axum::Json(json!({"embeddings": vectors, "id": "e1", "texts": texts}))
            .into_response();
    }
    aws_error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        "this fake invokes embedding models only",
    )
}

async fn converse(shared: &Shared, request: &Value, stream: bool) -> Response {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let invalid = |m: &str| aws_error(StatusCode::BAD_REQUEST, "ValidationException", m);
    if messages.first().is_none_or(|m| m["role"] != "user") {
        return invalid("A conversation must start with a user message.");
    }
    if messages.windows(2).any(|w| w[0]["role"] == w[1]["role"]) {
        return invalid("A conversation must alternate between user and assistant roles.");
    }
    let blocks = || {
        messages
            .iter()
            .filter_map(|m| m["content"].as_array())
            .flatten()
    };
    if blocks().any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
        && request.get("toolConfig").is_none()
    {
        return invalid(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        );
    }
    if let Err((status, _)) = shared.admit(
        request,
        shared.config.api_key.as_deref(),
        |_, m| json!({"message": m}),
    ) {
        return if status == StatusCode::INTERNAL_SERVER_ERROR {
            aws_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                "Bedrock is unable to process your request.",
            )
        } else {
            aws_error(status, "AccessDeniedException", "denied")
        };
    }
    let last = messages.last().cloned().unwrap_or_default();
    let question: String = last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect();
    let names: Vec<&str> = request
        .pointer("/toolConfig/tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/toolSpec/name").and_then(Value::as_str))
        .collect();
    let results: Vec<String> = last["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            b.pointer("/toolResult/content/0/text")
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .collect();
    let tools = ToolTurn {
        names,
        forced: request
            .pointer("/toolConfig/toolChoice/tool/name")
            .and_then(Value::as_str),
        parallel: true,
        results,
    }
    .answer();
    let (texts, calls): (Vec<String>, Vec<(String, String)>) = match tools {
        Some(ToolAnswer::Calls(names)) => (
            Vec::new(),
            names
                .into_iter()
                .enumerate()
                .map(|(i, name)| (format!("tooluse_{i}"), name))
                .collect(),
        ),
        Some(ToolAnswer::Text(text)) => (vec![text], Vec::new()),
        None => {
            let as_chat = json!({"messages": [{"role": "user", "content": question}]});
            (words_for(&shared.config, &as_chat), Vec::new())
        }
    };
    let stop = if !calls.is_empty() {
        "tool_use"
    } else if question.contains("[guardrail]") {
        "guardrail_intervened"
    } else {
        "end_turn"
    };
    let usage = json!({"inputTokens": 10, "outputTokens": texts.len().max(calls.len()),
        "totalTokens": 10 + texts.len().max(calls.len())});
    if !stream {
        let mut content: Vec<Value> = Vec::new();
        if !texts.is_empty() {
            content.push(json!({"text": texts.concat()}));
        }
        for (i, (use_id, name)) in calls.iter().enumerate() {
            let input: Value = serde_json::from_str(&call_arguments(i)).unwrap_or_default();
            content.push(json!({"toolUse": {"toolUseId": use_id, "name": name, "input": input}}));
        }
        return axum::Json(
            json!({"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}}),
        )
        .into_response();
    }
    let mut frames: Vec<Vec<u8>> = Vec::new();
    if question.contains("[throttle]") {
        frames.push(frame(
            "exception",
            "throttlingException",
            &json!({"message": "Too many requests, please wait before trying again."}),
        ));
    } else {
        frames.push(frame(
            "event",
            "messageStart",
            &json!({"role": "assistant"}),
        ));
        for text in &texts {
            frames.push(frame(
                "event",
                "contentBlockDelta",
                &json!({"delta": {"text": text}, "contentBlockIndex": 0}),
            ));
        }
        if !texts.is_empty() {
            frames.push(frame(
                "event",
                "contentBlockStop",
                &json!({"contentBlockIndex": 0}),
            ));
        }
        for (i, (use_id, name)) in calls.iter().enumerate() {
            let block = i + 1;
            frames.push(frame("event", "contentBlockStart", &json!({"start": {"toolUse": {"toolUseId": use_id, "name": name}}, "contentBlockIndex": block})));
            let arguments = call_arguments(i);
            let (a, b) = arguments.split_at(arguments.len() / 2);
            for part in [a, b] {
                frames.push(frame(
                    "event",
                    "contentBlockDelta",
                    &json!({"delta": {"toolUse": {"input": part}}, "contentBlockIndex": block}),
                ));
            }
            frames.push(frame(
                "event",
                "contentBlockStop",
                &json!({"contentBlockIndex": block}),
            ));
        }
        frames.push(frame("event", "messageStop", &json!({"stopReason": stop})));
        frames.push(frame(
            "event",
            "metadata",
            &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
        ));
    }
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(paced_body(frames, shared.config.chunk_delay))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One event-stream frame (headers as ConverseStream sends them, the payload JSON).
fn frame(message_type: &'static str, kind: &'static str, payload: &Value) -> Vec<u8> {
    let type_header = if message_type == "exception" {
        ":exception-type"
    } else {
        ":event-type"
    };
    let message = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.into()),
        ))
        .add_header(Header::new(type_header, HeaderValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut bytes = Vec::new();
    if aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes).is_err() {
        bytes.clear();
    }
    bytes
}
