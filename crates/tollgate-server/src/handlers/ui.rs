//! The operator's dashboard at `/ui`: three files compiled into the binary (no CDN, nothing
//! fetched from elsewhere). The files hold no data and are served to anyone; the page reads the
//! admin API (`/metrics`, `/admin/*`) with the master key the operator types in, as the CLI does.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// Only this page's own files may run or style it.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    response
}

/// `GET /ui`: the page.
pub async fn index_handler() -> Response {
    file(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/{file}`: its script and style.
pub async fn asset_handler(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file(SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => file(STYLE, "text/css; charset=utf-8"),
        "" => index_handler().await,
        _ => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
