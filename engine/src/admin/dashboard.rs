//! The dashboard: one self-contained page (HTML, CSS and script in one file, compiled into the
//! binary) that calls the admin API with the token the operator signs in with. Nothing to
//! build or install at run time, and nothing fetched from elsewhere.

use axum::http::HeaderValue;
use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard/index.html");

pub(super) async fn page() -> Response {
    let mut response = super::typed("text/html; charset=utf-8", PAGE).into_response();
    let headers = response.headers_mut();
    // The page talks to its own origin only; no inline frames, no outside scripts.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
