//! The admin API's handlers. Answers are JSON; times are RFC 3339 in UTC; message bytes are
//! given as text with segments separated by `\r` as received.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use courier_store::{
    AuditEntry, DeliveryDetail, DeliveryStatus, MessageDetail, MessageId, MessageStatus,
    MessageSummary, Search, Store, StoreError, TypeFilter,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use super::{Actor, Admin, error, typed};
use crate::metrics::METRICS;

type Shared = State<Arc<Admin>>;

fn time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A refusal with its status; becomes `{"error": ...}`.
pub(super) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The store, or the answer for an engine running without one.
fn store(admin: &Admin) -> Result<&Arc<dyn Store>, ApiError> {
    admin.engine.store().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "the store is off ([store] enabled = false): there are no stored messages".into(),
        )
    })
}

fn store_error(e: &StoreError) -> Response {
    let status = match e {
        StoreError::MessageNotFound(_) | StoreError::DeliveryNotFound(_) => StatusCode::NOT_FOUND,
        e if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Records what an operator did, in the store and the log. Never patient data: ids, names
/// of destinations and which filters were used.
async fn audit(
    admin: &Admin,
    actor: &Actor,
    action: &str,
    message: Option<MessageId>,
    detail: String,
) {
    info!(
        target: "courier::audit",
        actor = %actor.0,
        action,
        message = message.map(|m| m.0),
        %detail,
        "admin action"
    );
    if let Some(store) = admin.engine.store()
        && let Err(e) = store
            .audit(AuditEntry {
                at: SystemTime::now(),
                actor: actor.0.clone(),
                action: action.to_owned(),
                message_id: message,
                detail,
            })
            .await
    {
        tracing::warn!(error = %e, action, "could not write the audit entry to the store");
    }
}

pub(super) async fn health(State(admin): Shared) -> Response {
    Json(json!({ "status": "ok", "version": admin.engine.version() })).into_response()
}

pub(super) async fn metrics(State(admin): Shared) -> Response {
    let store = admin.engine.store().map(|s| &**s);
    typed(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        METRICS.render(store).await,
    )
}

pub(super) async fn status(State(admin): Shared) -> Response {
    let config = admin.engine.config();
    let store_bytes = match admin.engine.store() {
        Some(s) => s.size_bytes().await.ok(),
        None => None,
    };
    Json(json!({
        "config": config.source.display().to_string(),
        "version": admin.engine.version(),
        "started_at": time(admin.engine.started_at()),
        "store": admin.engine.store().is_some(),
        "store_bytes": store_bytes,
        "listeners": config.listeners.iter().map(|l| {
            let l = l.get_ref();
            json!({
                "name": l.name,
                "kind": format!("{:?}", l.kind).to_lowercase(),
                "bind": l.bind.get_ref(),
                "directory": l.directory.as_ref().map(|d| d.get_ref().display().to_string()),
                "ack_policy": format!("{:?}", l.ack_policy),
            })
        }).collect::<Vec<_>>(),
    }))
    .into_response()
}

pub(super) async fn routes(State(admin): Shared) -> Response {
    let config = admin.engine.config();
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            let r = r.get_ref();
            let names = |v: &Option<Vec<toml::Spanned<String>>>| {
                v.as_ref()
                    .map(|v| v.iter().map(|s| s.get_ref().clone()).collect::<Vec<_>>())
            };
            json!({
                "name": r.name,
                "listeners": names(&r.listeners),
                "message_types": names(&r.message_types),
                "when": r.when.iter().map(|w| w.get_ref().clone()).collect::<Vec<_>>(),
                "destinations": r.destinations.iter().map(|d| d.get_ref().clone()).collect::<Vec<_>>(),
                "steps": r.steps.iter().map(|s| {
                    let s = s.get_ref();
                    match (&s.wasm, &s.script) {
                        _ if s.package.is_some() => {
                            let p = s.package.as_ref().map(|p| (p.manifest.id(), p.component_sha256.clone(), p.key_id.clone())).unwrap_or_default();
                            json!({ "kind": "wasm", "plugin": p.0, "content_hash": p.1, "key_id": p.2 })
                        }
                        (Some(w), _) => json!({ "kind": "wasm", "file": w.get_ref().display().to_string() }),
                        (_, Some(sc)) => json!({ "kind": "rhai", "file": sc.get_ref().display().to_string() }),
                        _ => json!({}),
                    }
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "routes": routes })).into_response()
}

pub(super) async fn destinations(State(admin): Shared) -> Response {
    let config = admin.engine.config();
    let depths = match admin.engine.store() {
        Some(s) => match s.queue_depths().await {
            Ok(d) => d,
            Err(e) => return store_error(&e),
        },
        None => Vec::new(),
    };
    let list: Vec<Value> = config
        .destinations
        .iter()
        .map(|d| {
            let d = d.get_ref();
            let depth = depths.iter().find(|q| q.destination == d.name);
            let (queued, in_flight, errored) = match (depth, admin.engine.store()) {
                (Some(q), _) => (q.queued, q.in_flight, q.errored),
                (None, Some(_)) => (0, 0, 0),
                (None, None) => (admin.engine.memory_depth(&d.name).unwrap_or(0) as u64, 0, 0),
            };
            json!({
                "name": d.name,
                "address": d.target(),
                "kind": format!("{:?}", d.kind).to_lowercase(),
                "ordering": format!("{:?}", d.ordering),
                "paused": admin.engine.paused().is_paused(&d.name),
                "queued": queued,
                "in_flight": in_flight,
                "errored": errored,
            })
        })
        .collect();
    Json(json!({ "destinations": list })).into_response()
}

fn known_destination(admin: &Admin, name: &str) -> Result<(), ApiError> {
    if admin
        .engine
        .config()
        .destinations
        .iter()
        .any(|d| d.get_ref().name == name)
    {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no destination named `{name}`"),
        ))
    }
}

async fn set_paused(admin: &Admin, actor: &Actor, name: &str, paused: bool) -> Response {
    if let Err(r) = known_destination(admin, name) {
        return r.into_response();
    }
    if admin.engine.store().is_none() {
        return error(
            StatusCode::CONFLICT,
            "pausing needs the store: in-memory queues cannot hold messages back",
        );
    }
    let changed = admin.engine.paused().set(name, paused);
    if !paused {
        admin.engine.wake(Some(name));
    }
    let action = if paused { "pause" } else { "resume" };
    audit(admin, actor, action, None, format!("destination={name}")).await;
    Json(json!({ "destination": name, "paused": paused, "changed": changed })).into_response()
}

pub(super) async fn pause(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    set_paused(&admin, &actor, &name, true).await
}

pub(super) async fn resume(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    set_paused(&admin, &actor, &name, false).await
}

async fn retry(admin: &Admin, actor: &Actor, destination: Option<&str>) -> Response {
    let store = match store(admin) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match store.retry_errored(destination).await {
        Ok(n) => {
            admin.engine.wake(destination);
            let detail =
                destination.map_or_else(|| "all".to_owned(), |d| format!("destination={d}"));
            audit(
                admin,
                actor,
                "retry",
                None,
                format!("{detail} requeued={n}"),
            )
            .await;
            Json(json!({ "requeued": n })).into_response()
        }
        Err(e) => store_error(&e),
    }
}

pub(super) async fn retry_destination(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = known_destination(&admin, &name) {
        return r.into_response();
    }
    retry(&admin, &actor, Some(&name)).await
}

pub(super) async fn retry_all(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
) -> Response {
    retry(&admin, &actor, None).await
}

/// `GET /api/messages` filters: all optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    control_id: Option<String>,
    /// PID-3.1.
    patient_id: Option<String>,
    /// MSH-9 prefix, e.g. `ADT` or `ADT^A04`.
    #[serde(rename = "type")]
    message_type: Option<String>,
    status: Option<String>,
    /// A delivery status: only messages with a delivery in it.
    delivery: Option<String>,
    destination: Option<String>,
    listener: Option<String>,
    /// RFC 3339 time, or a duration back from now (`2h`, `7d`).
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// A query parameter that names one of a fixed set of words (a status).
fn parse_word<T>(key: &str, value: Option<&str>) -> Result<Option<T>, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .map(str::parse::<T>)
        .transpose()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{key}: {e}")))
}

fn parse_time(key: &str, value: &str) -> Result<SystemTime, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc).into());
    }
    humantime::parse_duration(value)
        .ok()
        .and_then(|d: Duration| SystemTime::now().checked_sub(d))
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("{key}: `{value}` is neither an RFC 3339 time nor a duration like 2h"),
            )
        })
}

pub(super) async fn search(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let store = match store(&admin) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let parsed = || -> Result<_, ApiError> {
        Ok((
            parse_word::<MessageStatus>("status", q.status.as_deref())?,
            parse_word::<DeliveryStatus>("delivery", q.delivery.as_deref())?,
            q.since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            q.until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
        ))
    };
    let (status, delivery_status, since, until) = match parsed() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    // Which filters were used, not their values: a patient id is patient data.
    let used: Vec<&str> = [
        ("control_id", q.control_id.is_some()),
        ("patient_id", q.patient_id.is_some()),
        ("type", q.message_type.is_some()),
        ("status", q.status.is_some()),
        ("delivery", q.delivery.is_some()),
        ("destination", q.destination.is_some()),
        ("since", q.since.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    let filter = Search {
        status,
        message_type: q.message_type.map(TypeFilter::Prefix),
        control_id: q.control_id,
        patient_id: q.patient_id,
        listener: q.listener,
        delivery_status,
        destination: q.destination,
        since,
        until,
        limit: q.limit.unwrap_or(50).min(500),
        offset: q.offset.unwrap_or(0),
    };
    match store.search(&filter).await {
        Ok(found) => {
            audit(
                &admin,
                &actor,
                "search",
                None,
                format!("filters={}", used.join(",")),
            )
            .await;
            Json(json!({ "messages": found.iter().map(summary).collect::<Vec<_>>() }))
                .into_response()
        }
        Err(e) => store_error(&e),
    }
}

fn summary(m: &MessageSummary) -> Value {
    json!({
        "id": m.id.0,
        "received_at": time(m.received_at),
        "processed_at": m.processed_at.map(time),
        "listener": m.listener,
        "peer": m.peer,
        "control_id": m.control_id,
        "type": m.message_type,
        "sending_application": m.sending_application,
        "sending_facility": m.sending_facility,
        "status": m.status.as_str(),
        "reason": m.reason,
        "deliveries": {
            "queued": m.deliveries.queued,
            "in_flight": m.deliveries.in_flight,
            "delivered": m.deliveries.delivered,
            "error": m.deliveries.error,
        },
    })
}

fn delivery(d: &DeliveryDetail) -> Value {
    json!({
        "id": d.id.0,
        "route": d.route,
        "destination": d.destination,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "possible_duplicate": d.possible_duplicate,
        "created_at": time(d.created_at),
        "last_attempt_at": d.last_attempt_at.map(time),
        "next_attempt_at": d.next_attempt_at.map(time),
        "finished_at": d.finished_at.map(time),
        "last_error": d.last_error,
        "ack": d.ack.as_deref().map(text),
        "payload": text(&d.payload),
        "resent_from": d.resent_from.map(|r| r.0),
    })
}

fn detail(m: &MessageDetail) -> Value {
    json!({
        "id": m.id.0,
        "received_at": time(m.received_at),
        "processed_at": m.processed_at.map(time),
        "listener": m.listener,
        "peer": m.peer,
        "control_id": m.control_id,
        "type": m.message_type,
        "sending_application": m.sending_application,
        "sending_facility": m.sending_facility,
        "patient_id": m.patient_id,
        "status": m.status.as_str(),
        "reason": m.reason,
        "raw": text(&m.raw),
        "ack": m.ack.as_deref().map(text),
        "steps": m.steps.iter().map(|s| json!({
            "seq": s.seq,
            "route": s.route,
            "step": s.step,
            "kind": s.kind,
            "content_hash": s.content_hash,
            "outcome": s.outcome.as_str(),
            "output": match &s.outcome {
                courier_store::StepOutcome::Changed(out) => Some(text(&out.to_bytes())),
                _ => None,
            },
            "reason": s.reason,
        })).collect::<Vec<_>>(),
        "deliveries": m.deliveries.iter().map(delivery).collect::<Vec<_>>(),
    })
}

pub(super) async fn message(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Response {
    let store = match store(&admin) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match store.message(MessageId(id)).await {
        Ok(Some(m)) => {
            audit(&admin, &actor, "view", Some(m.id), String::new()).await;
            Json(detail(&m)).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no message {id} in the store"),
        ),
        Err(e) => store_error(&e),
    }
}

/// `POST /api/messages/{id}/resend` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResendBody {
    /// Only to this destination.
    to: Option<String>,
}

pub(super) async fn resend(
    State(admin): Shared,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    let body: ResendBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResendBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let store = match store(&admin) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match store.resend(MessageId(id), body.to.as_deref()).await {
        Ok(ids) if ids.is_empty() => error(
            StatusCode::CONFLICT,
            format!(
                "message {id} has no delivery to resend{}",
                body.to.map(|d| format!(" to {d}")).unwrap_or_default()
            ),
        ),
        Ok(ids) => {
            admin.engine.wake(body.to.as_deref());
            let detail = body
                .to
                .as_ref()
                .map(|d| format!("to={d}"))
                .unwrap_or_default();
            audit(&admin, &actor, "resend", Some(MessageId(id)), detail).await;
            Json(json!({ "deliveries": ids.iter().map(|d| d.0).collect::<Vec<_>>() }))
                .into_response()
        }
        Err(e) => store_error(&e),
    }
}

/// `GET /api/audit` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    message: Option<i64>,
    limit: Option<u32>,
}

pub(super) async fn audit_log(
    State(admin): Shared,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let store = match store(&admin) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match store
        .audit_log(q.message.map(MessageId), q.limit.unwrap_or(100).min(1000))
        .await
    {
        Ok(entries) => Json(json!({
            "entries": entries.iter().map(|e| json!({
                "at": time(e.at),
                "actor": e.actor,
                "action": e.action,
                "message": e.message_id.map(|m| m.0),
                "detail": e.detail,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_error(&e),
    }
}

pub(super) async fn reload(State(admin): Shared, Extension(actor): Extension<Actor>) -> Response {
    let outcome = admin.engine.reload().await;
    let detail = match &outcome {
        Ok(v) => format!("version={v}"),
        Err(_) => "refused".to_owned(),
    };
    audit(&admin, &actor, "reload", None, detail).await;
    match outcome {
        Ok(version) => Json(json!({ "reloaded": true, "version": version })).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "reloaded": false, "error": e, "version": admin.engine.version() })),
        )
            .into_response(),
    }
}
