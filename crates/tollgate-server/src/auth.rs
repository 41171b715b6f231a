//! Who is calling: an API key (its tenant and limits), the master key, or nobody (open mode,
//! loopback only, when no master key is set).
//!
//! Identity comes from extractors: [`Principal`] for the tenant routes, [`Admin`] for `/admin`.
//! The router also puts each group of routes behind [`require_key`] or [`require_master`]
//! (see `app.rs`), so a route added to a group is authenticated whether or not its handler
//! asks who is calling; the routes open by design are listed together there.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Limits;
use crate::error::ApiError;
use crate::state::{AppState, Gateway};

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

impl Principal {
    /// `name` in this principal's tenant (see [`tenant_scoped`]).
    pub fn scoped(&self, name: &str) -> String {
        tenant_scoped(&self.tenant, name)
    }
}

/// A name scoped to a tenant (`TENANT/NAME`): event streams, feature entity types and vector
/// collections are per tenant, so one tenant's keys never reach another's.
pub fn tenant_scoped(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// The master key was presented (or no master key is set: open mode).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    // Anthropic's clients send the key as `x-api-key`.
    let Some(value) = headers.get("authorization") else {
        return headers
            .get("x-api-key")?
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty());
    };
    let value = value.to_str().ok()?;
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
pub fn admin(gw: &Gateway, headers: &HeaderMap) -> Result<Admin, ApiError> {
    let Some(master) = gw.master_key() else {
        return Ok(Admin);
    };
    match bearer(headers) {
        Some(t) if same(t, master) => Ok(Admin),
        Some(_) => Err(ApiError::Forbidden(
            "admin routes need the master key".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "missing master key: send `Authorization: Bearer MASTER_KEY`".into(),
        )),
    }
}

/// The layer in front of the tenant routes: authenticates once and leaves the [`Principal`]
/// in the request for its handler.
pub async fn require_key(State(gw): State<AppState>, mut request: Request, next: Next) -> Response {
    match principal(&gw, request.headers()).await {
        Ok(p) => {
            request.extensions_mut().insert(p);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The layer in front of `/admin`: the master key, or a 401/403.
pub async fn require_master(State(gw): State<AppState>, request: Request, next: Next) -> Response {
    match admin(&gw, request.headers()) {
        Ok(Admin) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &AppState) -> Result<Self, ApiError> {
        // Put there by `require_key`; a handler mounted elsewhere authenticates by itself.
        if let Some(p) = parts.extensions.remove::<Principal>() {
            return Ok(p);
        }
        principal(gw, &parts.headers).await
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &AppState) -> Result<Self, ApiError> {
        admin(gw, &parts.headers)
    }
}
