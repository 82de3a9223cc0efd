//! The admin HTTP server: a JSON API over the routes, destinations and the message store,
//! Prometheus metrics, and the dashboard page that uses them.
//!
//! Every endpoint but `/health` and the dashboard's static page needs the bearer token
//! (`[admin] token` or `COURIER_ADMIN_TOKEN`). The check runs before any handler, so a request
//! without the token is answered 401 before its body is read or anything is deserialised;
//! tokens are compared as SHA-256 digests in constant time. Bodies are capped at
//! `[admin] max_body`. What an operator views, resends, retries, pauses or reloads goes to the
//! audit log, in the store and in the log, without patient data.

mod api;
mod dashboard;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{AdminConfig, Secret};
use crate::runtime::EngineView;

/// Destinations an operator paused: their workers claim nothing until resumed. Kept for the
/// engine's life (a reload keeps it; a restart resumes everything).
#[derive(Debug, Default)]
pub struct Paused {
    names: Mutex<HashSet<String>>,
}

impl Paused {
    /// Whether `destination` is paused.
    pub fn is_paused(&self, destination: &str) -> bool {
        self.lock().contains(destination)
    }

    /// Pauses or resumes; true if that changed anything.
    pub fn set(&self, destination: &str, paused: bool) -> bool {
        let mut names = self.lock();
        if paused {
            names.insert(destination.to_owned())
        } else {
            names.remove(destination)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the handlers share.
pub(crate) struct Admin {
    token: [u8; 32],
    engine: EngineView,
}

/// Binds the admin server and serves it until `shutdown`; returns the bound address.
pub(crate) async fn start(
    cfg: &AdminConfig,
    token: Secret,
    engine: EngineView,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = cfg.bind.get_ref().parse().context("admin.bind")?;
    let socket = TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin server: cannot bind {addr}"))?;
    let local = socket.local_addr()?;
    let state = Arc::new(Admin {
        token: Sha256::digest(token.0.as_bytes()).into(),
        engine,
    });
    let app = router(state, cfg.max_body);
    info!(addr = %local, "admin server listening");
    tracker.spawn(async move {
        let served = axum::serve(
            socket,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            warn!(error = %e, "admin server stopped with an error");
        }
    });
    Ok(local)
}

fn router(state: Arc<Admin>, max_body: usize) -> Router {
    let protected = Router::new()
        .route("/metrics", get(api::metrics))
        .route("/api/status", get(api::status))
        .route("/api/routes", get(api::routes))
        .route("/api/destinations", get(api::destinations))
        .route("/api/destinations/{name}/pause", post(api::pause))
        .route("/api/destinations/{name}/resume", post(api::resume))
        .route(
            "/api/destinations/{name}/retry",
            post(api::retry_destination),
        )
        .route("/api/retry", post(api::retry_all))
        .route("/api/messages", get(api::search))
        .route("/api/messages/{id}", get(api::message))
        .route("/api/messages/{id}/resend", post(api::resend))
        .route("/api/audit", get(api::audit_log))
        .route("/api/reload", post(api::reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(api::health))
        .route("/", get(dashboard::page))
        .merge(protected)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// The caller's identity for the audit log: the token's holder and where they called from.
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub(crate) String);

/// Lets a request through only with the right bearer token; tells the handler who it is.
async fn authenticate(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    let ok = presented.is_some_and(|d| bool::from(d.as_slice().ct_eq(&admin.token)));
    if !ok {
        warn!(
            peer = %peer,
            path = %request.uri().path(),
            reason = if presented.is_some() { "wrong token" } else { "no bearer token" },
            "admin request refused (401)"
        );
        return unauthorized();
    }
    request
        .extensions_mut()
        .insert(Actor(format!("admin@{}", peer.ip())));
    next.run(request).await
}

fn unauthorized() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": "a valid bearer token is required" })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    // The body was not read: do not keep the connection for another request behind it.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A JSON error answer.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// A response with a fixed content type.
pub(crate) fn typed(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
