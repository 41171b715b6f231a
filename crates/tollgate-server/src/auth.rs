//! Who is calling: an API key (its tenant and limits), the master key, or nobody (open mode,
//! loopback only, when no master key is set).

use axum::http::HeaderMap;

use crate::config::Limits;
use crate::error::ApiError;
use crate::state::Gateway;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Rate-limit subject and owner of sessions and streams: the key id, `master`, or `open`.
    pub subject: String,
    /// Cache namespace.
    pub tenant: String,
    /// Limits in force (the key's own over its tier's).
    pub limits: Limits,
    /// True for the master key (and in open mode): may use `/admin`.
    pub admin: bool,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Constant-time comparison, so the master key cannot be guessed byte by byte from timings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Authenticates a `/v1` request.
pub async fn principal(gw: &Gateway, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let tier = |name: &str| {
        gw.config
            .tiers
            .get(name)
            .or_else(|| gw.config.tiers.get(&gw.config.limits.default_tier))
    };
    let Some(master) = gw.master_key() else {
        let limits = tier(&gw.config.limits.default_tier)
            .cloned()
            .unwrap_or_default();
        return Ok(Principal {
            subject: "open".into(),
            tenant: "open".into(),
            limits,
            admin: true,
        });
    };
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("missing API key: send `Authorization: Bearer KEY`".into())
    })?;
    if same(token, master) {
        return Ok(Principal {
            subject: "master".into(),
            tenant: "master".into(),
            limits: Limits::default(),
            admin: true,
        });
    }
    let record = match gw.lookup_key(token).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(ApiError::Unauthorized("invalid API key".into())),
        Err(e) => return Err(ApiError::Unavailable(format!("key lookup: {e}"))),
    };
    let own: Limits = serde_json::from_value(record.limits.clone()).unwrap_or_default();
    Ok(Principal {
        subject: record.id.clone(),
        tenant: record.tenant.clone(),
        limits: own.over(tier(&record.tier).unwrap_or(&Limits::default())),
        admin: false,
    })
}

/// Authenticates an `/admin` request: the master key (anything goes in open mode).
pub fn admin(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(master) = gw.master_key() else {
        return Ok(());
    };
    match bearer(headers) {
        Some(t) if same(t, master) => Ok(()),
        Some(_) => Err(ApiError::Forbidden(
            "admin routes need the master key".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "missing master key: send `Authorization: Bearer MASTER_KEY`".into(),
        )),
    }
}
