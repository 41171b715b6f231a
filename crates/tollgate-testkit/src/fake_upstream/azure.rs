//! The fake upstream as an Azure OpenAI resource, and as the Microsoft Entra ID token endpoint
//! that issues its tokens.
//!
//! `POST /openai/deployments/{deployment}/chat/completions` and `.../embeddings` check what
//! Azure checks: an `api-version` it knows, and either the resource's key in `api-key` or an
//! unexpired bearer token this fake issued. Chat answers are the OpenAI side's, with Azure's
//! first stream chunk (the prompt's filter results, no choices); a last user message containing
//! `[filtered]` is refused the way Azure's content filter refuses a prompt.
//!
//! `POST /{tenant}/oauth2/v2.0/token` is the client-credentials grant as Entra ID answers it:
//! the tenant, client id, scope and a client secret or a federated client assertion must match
//! [`FakeEntra`]; tokens live `token_seconds`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, answer_chat, openai_error};

/// The API versions the fake resource takes (a few of Azure's GA and preview versions).
pub const AZURE_API_VERSIONS: &[&str] = &["2024-06-01", "2024-10-21", "2025-01-01-preview"];

/// The application Entra ID knows, and how long its tokens live.
#[derive(Debug, Clone)]
pub struct FakeEntra {
    pub tenant_id: String,
    pub client_id: String,
    /// The client secret it takes, if any.
    pub client_secret: Option<String>,
    /// The federated token (workload identity) it takes as a client assertion, if any.
    pub federated_token: Option<String>,
    pub token_seconds: u64,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ApiVersion {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Azure's checks before a deployment is called, the API version and the credential: the
/// refusal, if one fails.
fn refusal(shared: &Shared, headers: &HeaderMap, version: &ApiVersion) -> Option<Response> {
    match version.api_version.as_deref() {
        Some(v) if AZURE_API_VERSIONS.contains(&v) => {}
        Some(_) => {
            return Some(azure_error(
                StatusCode::NOT_FOUND,
                "404",
                "Resource not found",
            ));
        }
        None => {
            return Some(azure_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Missing API version parameter.",
            ));
        }
    }
    let key = headers.get("api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match (key, bearer) {
        (Some(key), _) => shared.config.api_key.as_deref().is_none_or(|k| k == key),
        (None, Some(token)) => shared.token_is_live(token),
        (None, None) => false,
    };
    (!authorized).then(|| {
        azure_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint.",
        )
    })
}

pub(super) async fn chat(
    State(shared): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    Query(version): Query<ApiVersion>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    shared.record_path(&format!(
        "/openai/deployments/{deployment}/chat/completions"
    ));
    if let Some(refused) = refusal(&shared, &headers, &version) {
        return refused;
    }
    let last_user = request
        .pointer("/messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    if last_user.contains("[filtered]") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation",
                               "content_filter_result": {"violence": {"filtered": true, "severity": "high"}}}}})),
        )
            .into_response();
    }
    // Azure answers for the deployment, whatever model the body names.
    let mut request = request;
    request["model"] = json!(deployment);
    // The credential was checked above, Azure's way.
    let n = match shared.admit(&request, shared.config.api_key.as_deref(), openai_error) {
        Ok(n) => n,
        Err(refused) => return refused.into_response(),
    };
    let prelude = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
            "hate": {"filtered": false, "severity": "safe"}}}]});
    answer_chat(&shared, n, &request, Some(prelude)).await
}

pub(super) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    Query(version): Query<ApiVersion>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    shared.record_path(&format!("/openai/deployments/{deployment}/embeddings"));
    if let Some(refused) = refusal(&shared, &headers, &version) {
        return refused;
    }
    super::embeddings_answer(&shared, &request, &deployment)
}

#[derive(Debug, serde::Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

fn entra_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let Some(entra) = shared.config.entra.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(form) = serde_urlencoded::from_bytes::<TokenRequest>(&body) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: the request body must be a form",
        );
    };
    if tenant != entra.tenant_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "AADSTS90002: Tenant not found.",
        );
    }
    if form.grant_type.as_deref() != Some("client_credentials") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003",
        );
    }
    if form.scope.as_deref() != Some("https://cognitiveservices.azure.com/.default") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided value for scope is not valid.",
        );
    }
    if form.client_id.as_deref() != Some(entra.client_id.as_str()) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    let by_secret = entra.client_secret.is_some() && form.client_secret == entra.client_secret;
    let by_assertion = entra.federated_token.is_some()
        && form.client_assertion_type.as_deref()
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && form.client_assertion == entra.federated_token;
    if !by_secret && !by_assertion {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let n = shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = format!("entra-token-{n}");
    let expires = Instant::now() + Duration::from_secs(entra.token_seconds);
    if let Ok(mut live) = shared.bearer_tokens.lock() {
        live.push((token.clone(), expires));
    }
    Json(
        json!({"token_type": "Bearer", "expires_in": entra.token_seconds,
                "ext_expires_in": entra.token_seconds, "access_token": token}),
    )
    .into_response()
}
