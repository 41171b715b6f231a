//! Azure OpenAI: OpenAI's chat completions and embeddings at a resource's deployments
//! (`{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=V`). The model name
//! after the provider's is the deployment's.
//!
//! Authentication is the resource's `api-key` header, or a Microsoft Entra ID bearer token
//! ([`EntraCredential`]): a token file kept fresh by something else (read again shortly before
//! the token in it expires), or an application's credentials (a client secret, or a workload
//! identity's federated token file) exchanged at the identity platform for a token that is cached
//! and fetched again before it expires, one fetch at a time.
//!
//! Azure's differences from OpenAI's wire format are taken care of here: a first chunk that only
//! carries the prompt's filter results (no choices) is dropped, and a prompt the content filter
//! refuses (a 400 with code `content_filter`) becomes [`ProviderError::ContentFiltered`], which
//! the gateway answers in OpenAI's shape. `retry-after-ms` is honoured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tollgate_core::{ChatCompletion, ChatRequest};

use crate::openai_compat::{
    Parsed, Timeouts, chat_body, chunk_stream, http_client, read_completion, read_embeddings, send,
};
use crate::sse::SseEvent;
use crate::token::{Fetched, TokenCache, exchange};
use crate::{ChunkStream, Embeddings, Provider, ProviderError};

/// The API version sent when the configuration names none (Azure's current GA version).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The scope of a token for Azure OpenAI (Cognitive Services).
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// Where Microsoft Entra ID issues tokens (a sovereign cloud has its own).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// How the gateway proves who it is to Azure OpenAI.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// The resource's key, sent as `api-key`.
    ApiKey(String),
    /// A Microsoft Entra ID token, sent as `Authorization: Bearer`.
    Entra(EntraCredential),
}

/// Where Entra ID tokens come from.
#[derive(Debug, Clone)]
pub enum EntraCredential {
    /// A token as it is (from the environment): used until the process restarts.
    Token(String),
    /// A file holding the token, which something else keeps fresh; read again when the token in
    /// it (a JWT's `exp`) is about to expire, or every minute when it says nothing.
    TokenFile(PathBuf),
    /// An application registration's credentials, exchanged for tokens (OAuth client credentials).
    Application {
        /// `https://login.microsoftonline.com` or a sovereign cloud's.
        authority: String,
        tenant_id: String,
        client_id: String,
        secret: ClientSecret,
    },
}

/// How an application proves itself to Entra ID.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    /// A client secret.
    Secret(String),
    /// A federated token in a file (workload identity: `AZURE_FEDERATED_TOKEN_FILE`), read afresh
    /// for each exchange since its issuer rotates it.
    FederatedTokenFile(PathBuf),
}

/// An Azure OpenAI resource.
#[derive(Debug, Clone)]
pub struct AzureOpenAi {
    client: reqwest::Client,
    /// `https://RESOURCE.openai.azure.com`, without a trailing slash.
    endpoint: String,
    /// `api-version=V`, encoded.
    query: String,
    auth: Arc<Auth>,
    timeouts: Timeouts,
}

impl AzureOpenAi {
    /// The resource at `endpoint`, called with `api_version` (empty: [`DEFAULT_API_VERSION`]).
    pub fn new(
        endpoint: &str,
        api_version: &str,
        auth: AzureAuth,
        timeouts: Timeouts,
    ) -> Result<Self, ProviderError> {
        let client = http_client(&timeouts)?;
        let api_version = if api_version.is_empty() {
            DEFAULT_API_VERSION
        } else {
            api_version
        };
        Ok(AzureOpenAi {
            auth: Arc::new(Auth {
                how: auth,
                client: client.clone(),
                cache: TokenCache::default(),
            }),
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            query: serde_urlencoded::to_string([("api-version", api_version)])
                .map_err(|e| ProviderError::Protocol(format!("api-version: {e}")))?,
            timeouts,
        })
    }

    /// A call to `operation` (`chat/completions`, `embeddings`) of `deployment`, authorized.
    async fn call(
        &self,
        deployment: &str,
        operation: &str,
        body: String,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        if deployment.is_empty() || deployment.contains(['/', '?', '#']) {
            return Err(ProviderError::Rejected {
                status: 400,
                message: format!("{deployment:?} is not an Azure OpenAI deployment name"),
            });
        }
        let url = format!(
            "{}/openai/deployments/{deployment}/{operation}?{}",
            self.endpoint, self.query
        );
        let call = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        let call = match &self.auth.how {
            AzureAuth::ApiKey(key) => call.header("api-key", key),
            AzureAuth::Entra(_) => call.bearer_auth(self.auth.token().await?),
        };
        Ok(crate::with_trace_context(call))
    }
}

impl Provider for AzureOpenAi {
    fn chat_stream(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChunkStream, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let call = this
                .call(
                    &request.model,
                    "chat/completions",
                    chat_body(&request, true)?,
                )
                .await?;
            let response = send(call, this.timeouts.first_byte).await?;
            Ok(chunk_stream(
                response,
                this.timeouts.idle,
                Box::new(parse_azure_event),
            ))
        })
    }

    fn chat(
        &self,
        request: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatCompletion, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let call = this
                .call(
                    &request.model,
                    "chat/completions",
                    chat_body(&request, false)?,
                )
                .await?;
            let mut answer = read_completion(call, this.timeouts.whole).await?;
            // Azure's answers carry filter results OpenAI's do not.
            answer.extra.remove("prompt_filter_results");
            Ok(answer)
        })
    }

    fn embed(
        &self,
        model: String,
        texts: Vec<String>,
    ) -> BoxFuture<'static, Result<Embeddings, ProviderError>> {
        let this = self.clone();
        Box::pin(async move {
            let expected = texts.len();
            let body = serde_json::json!({"input": texts, "encoding_format": "float"});
            let call = this.call(&model, "embeddings", body.to_string()).await?;
            let response = send(call, this.timeouts.first_byte).await?;
            read_embeddings(response, expected, this.timeouts.idle).await
        })
    }
}

/// Azure's stream is OpenAI's, but for a first chunk that carries only the prompt's filter
/// results (no choices, no usage): nothing a client of OpenAI's API expects, so it is dropped.
fn parse_azure_event(event: &SseEvent) -> Result<Parsed, ProviderError> {
    match crate::openai_compat::parse_openai_event(event)? {
        Parsed::Chunks(chunks) => {
            let chunks: Vec<_> = chunks
                .into_iter()
                .filter(|c| !c.choices.is_empty() || c.usage.is_some())
                .map(|mut c| {
                    c.extra.remove("prompt_filter_results");
                    c
                })
                .collect();
            Ok(if chunks.is_empty() {
                Parsed::Skip
            } else {
                Parsed::Chunks(chunks)
            })
        }
        other => Ok(other),
    }
}

/// The credential, and the Entra ID token it last got.
#[derive(Debug)]
struct Auth {
    how: AzureAuth,
    client: reqwest::Client,
    cache: TokenCache,
}

impl Auth {
    async fn token(&self) -> Result<String, ProviderError> {
        self.cache.get(self.fetch()).await
    }

    /// A token and how long it lives (`None`: unknown).
    async fn fetch(&self) -> Result<Fetched, ProviderError> {
        let AzureAuth::Entra(credential) = &self.how else {
            return Err(ProviderError::Connect("no Entra ID credential".into()));
        };
        match credential {
            EntraCredential::Token(token) => Ok((token.clone(), Some(Duration::MAX))),
            EntraCredential::TokenFile(path) => {
                let token = read_token_file(path).await?;
                let lives = jwt_lifetime(&token);
                Ok((token, lives))
            }
            EntraCredential::Application {
                authority,
                tenant_id,
                client_id,
                secret,
            } => {
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "client_credentials".into()),
                    ("client_id", client_id.clone()),
                    ("scope", SCOPE.into()),
                ];
                match secret {
                    ClientSecret::Secret(s) => form.push(("client_secret", s.clone())),
                    ClientSecret::FederatedTokenFile(path) => {
                        form.push((
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                        ));
                        form.push(("client_assertion", read_token_file(path).await?));
                    }
                }
                let url = format!(
                    "{}/{tenant_id}/oauth2/v2.0/token",
                    authority.trim_end_matches('/')
                );
                exchange(&self.client, &url, &form).await
            }
        }
    }
}

async fn read_token_file(path: &std::path::Path) -> Result<String, ProviderError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ProviderError::Connect(format!("token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ProviderError::Connect(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// What is left of a JWT's life by its `exp` claim (read, not verified: the issuer's business);
/// `None` for a token that is not a JWT or has no `exp`.
fn jwt_lifetime(token: &str) -> Option<Duration> {
    use base64::Engine as _;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    Some(Duration::from_secs(exp.saturating_sub(crate::unix_now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_says_how_long_it_lives() {
        use base64::Engine as _;
        let claims = serde_json::json!({"exp": crate::unix_now() + 600}).to_string();
        let jwt = format!(
            "e30.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
        );
        let left = jwt_lifetime(&jwt).unwrap_or_default();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
        assert_eq!(jwt_lifetime("not-a-jwt"), None);
    }
}
