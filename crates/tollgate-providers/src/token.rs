//! Bearer tokens that expire (Microsoft Entra ID, Google OAuth): cached, and fetched again
//! before they expire, one fetch at a time.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::ProviderError;

/// A token and how long it lives (`None`: unknown).
pub(crate) type Fetched = (String, Option<Duration>);

/// The current token. A request reads it under a read lock; when it is due, one request fetches
/// a new one while the others wait for it (and then read it).
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    /// The token and when to fetch the next one.
    cached: RwLock<Option<(String, Instant)>>,
    fetching: tokio::sync::Mutex<()>,
}

impl TokenCache {
    /// The cached token, or the one `fetch` gets when none is fresh.
    pub(crate) async fn get<F>(&self, fetch: F) -> Result<String, ProviderError>
    where
        F: std::future::Future<Output = Result<Fetched, ProviderError>>,
    {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Another request may have fetched it while this one waited.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let (token, lives) = fetch.await?;
        let renew_at = Instant::now() + renew_after(lives);
        if let Ok(mut cached) = self.cached.write() {
            *cached = Some((token.clone(), renew_at));
        }
        Ok(token)
    }

    fn fresh(&self) -> Option<String> {
        let cached = self.cached.read().ok()?;
        let (token, renew_at) = cached.as_ref()?;
        (Instant::now() < *renew_at).then(|| token.clone())
    }
}

/// When to fetch a token that lives `lives` again: 5 minutes before it expires, or half way
/// through a shorter life; every minute when its life is unknown.
pub(crate) fn renew_after(lives: Option<Duration>) -> Duration {
    const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    match lives {
        None => Duration::from_secs(60),
        Some(l) if l >= FOREVER => FOREVER,
        Some(l) => l.saturating_sub(Duration::from_secs(300).min(l / 2)),
    }
}

/// Posts an OAuth token request (a form) and reads `access_token` and `expires_in` from the
/// answer. A refusal is not retryable (the credential is wrong: a 401); a failure of the token
/// service is.
pub(crate) async fn exchange(
    client: &reqwest::Client,
    url: &str,
    form: &[(&str, String)],
) -> Result<Fetched, ProviderError> {
    use crate::openai_compat::http_error;
    let body = serde_urlencoded::to_string(form)
        .map_err(|e| ProviderError::Protocol(format!("token request: {e}")))?;
    let response = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(http_error)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(http_error)?;
    let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status != 200 {
        let why = reply
            .get("error_description")
            .or_else(|| reply.get("error"))
            .and_then(|v| v.as_str())
            .unwrap_or("no reason given")
            .to_owned();
        let message = format!("the token endpoint refused the credential ({status}): {why}");
        return Err(if status >= 500 || status == 429 {
            ProviderError::Upstream { status, message }
        } else {
            ProviderError::Rejected {
                status: 401,
                message,
            }
        });
    }
    let token = reply
        .get("access_token")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ProviderError::Protocol("the token answer has no access_token".into()))?;
    // `expires_in` is a number, or a string of one (Entra ID's v1 endpoint).
    let lives = reply.get("expires_in").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    Ok((token.to_owned(), lives.map(Duration::from_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        assert_eq!(
            renew_after(Some(Duration::from_secs(3600))),
            Duration::from_secs(3300)
        );
        assert_eq!(
            renew_after(Some(Duration::from_secs(120))),
            Duration::from_secs(60)
        );
        assert_eq!(renew_after(None), Duration::from_secs(60));
        assert!(renew_after(Some(Duration::MAX)) > Duration::from_secs(365 * 24 * 3600));
    }
}
