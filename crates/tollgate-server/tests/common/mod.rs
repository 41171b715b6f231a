//! What the HTTP tests share: gateways called as tower services (no socket) on a real
//! redis-server, and one call through them.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tollgate_server::{AppState, Config, Gateway, app};
use tollgate_testkit::{shared_redis, unique_prefix};
use tower::ServiceExt;

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) async fn gateway_on(url: &str, extra: &str) -> AppState {
    gateway_at(url, &unique_prefix(), extra).await
}

/// A gateway on `url` under `prefix` (gateways sharing one act as replicas).
pub(crate) async fn gateway_at(url: &str, prefix: &str, extra: &str) -> AppState {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    // The semantic cache is off unless a test turns it on: the others check the exact cache.
    let semantic = if extra.contains("[semantic_cache]") {
        ""
    } else {
        "[semantic_cache]\nenabled = false\n"
    };
    let text =
        format!("[redis]\nkey_prefix = \"{prefix}\"\ncommand_timeout_ms = 300\n{semantic}{extra}");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(Some(&path), &HashMap::new()).unwrap();
    Arc::new(Gateway::build(config, url).await.unwrap())
}

pub(crate) async fn gateway(extra: &str) -> AppState {
    gateway_on(&shared_redis().url(), extra).await
}

pub(crate) async fn call(
    gw: &AppState,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let response = app(gw.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
