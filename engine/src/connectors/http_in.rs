//! The HTTP source: HL7 in the body of a POST, the ACK in the response.
//!
//! The body is ER7 as it is, or the JSON shape of docs/json.md when the request's
//! `Content-Type` is JSON. Each request goes to the same intake as an MLLP frame, so the
//! listener's `ack_policy`, duplicate detection and limits apply. The response's status
//! follows the ACK: AA/CA → 200, AE/CE → 500 (the sender may retry), AR/CR → 400, and a
//! body that is not HL7 at all → 400 with an AR ACK naming what was wrong. The ACK comes
//! back as ER7, or as JSON when the request was JSON or asks for it (`Accept`). Requests
//! other than POST get 405; a body over `max_frame_size` gets 413.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use courier_hl7::{
    AckCode, AckError, ErrorCode, Message, ParseOptions, ReceivedAck, Severity,
    build_nak_for_unparsed,
};
use courier_mllp::{Handler, ListenerSettings, PeerInfo};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::http_out::ER7_MEDIA_TYPE;
use crate::runtime::hl7_now;

/// Serves HTTP (or HTTPS, with `settings.tls`) on `socket` until `stop`; requests in
/// progress finish and get their response.
pub async fn serve<H: Handler>(
    socket: TcpListener,
    settings: ListenerSettings,
    options: ParseOptions,
    handler: Arc<H>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let name: Arc<str> = settings.name.as_str().into();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let tracker = TaskTracker::new();
    let next_id = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        name: name.clone(),
        options,
        max_body: settings.max_frame_size,
        handler,
    });
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            a = socket.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(listener = %name, error = %e, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !settings.allows(peer.ip()) {
            warn!(listener = %name, %peer, "connection refused: peer {} is not in listener {}'s allow list", peer.ip(), name);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(listener = %name, %peer, limit = "max_connections", "connection refused: max_connections limit of {} reached", settings.max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        let stop = stop.clone();
        let tls = settings.tls.clone();
        let handshake_timeout = settings.handshake_timeout;
        let idle = settings.idle_timeout;
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, peer, id, shared, stop, idle).await,
                        Ok(Err(e)) => warn!(%peer, error = %courier_mllp::tls::describe_handshake_error(&e), "TLS handshake failed"),
                        Err(_) => warn!(%peer, "TLS handshake timed out"),
                    }
                }
                None => connection(stream, peer, id, shared, stop, idle).await,
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

struct Shared<H> {
    name: Arc<str>,
    options: ParseOptions,
    max_body: usize,
    handler: Arc<H>,
}

async fn connection<S, H>(
    stream: S,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared<H>>,
    stop: CancellationToken,
    idle: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let info = Arc::new(PeerInfo {
        listener: shared.name.clone(),
        peer,
        connection_id: id,
    });
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(answer(req, &shared, &info).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "HTTP connection ended with an error") },
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn wants_json(req: &Request<Incoming>) -> (bool, bool) {
    let is_json = |v: Option<&HeaderValue>| {
        v.and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json") || v.contains("+json"))
    };
    let body_json = is_json(req.headers().get(CONTENT_TYPE));
    (body_json, body_json || is_json(req.headers().get(ACCEPT)))
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn ack_response(status: StatusCode, ack: Bytes, json: bool) -> Response<Full<Bytes>> {
    let (body, media) = if json {
        let opts = ParseOptions {
            line_endings: courier_hl7::LineEndings::Lenient,
            ..ParseOptions::default()
        };
        match Message::parse_with(ack.clone(), &opts) {
            Ok(m) => {
                let mut text = Vec::with_capacity(ack.len() * 2 + 128);
                courier_hl7::write_json(&m, &mut text);
                (Bytes::from(text), "application/json")
            }
            Err(_) => (ack, ER7_MEDIA_TYPE),
        }
    } else {
        (ack, ER7_MEDIA_TYPE)
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    r
}

fn refusal(raw: &[u8], text: String, json: bool) -> Response<Full<Bytes>> {
    let err = AckError {
        code: ErrorCode::SegmentSequenceError,
        location: None,
        text,
        severity: Severity::Error,
    };
    static REFUSALS: AtomicU64 = AtomicU64::new(0);
    let id = format!("HTTP{}", REFUSALS.fetch_add(1, Ordering::Relaxed) + 1);
    let ack = build_nak_for_unparsed(raw, AckCode::AR, &err, &id, &hl7_now());
    ack_response(StatusCode::BAD_REQUEST, ack, json)
}

async fn answer<H: Handler>(
    req: Request<Incoming>,
    shared: &Shared<H>,
    peer: &PeerInfo,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an HL7 message (ER7, or JSON with Content-Type: application/json)",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (body_json, reply_json) = wants_json(&req);
    let body = match Limited::new(req.into_body(), shared.max_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            warn!(listener = %shared.name, peer = %peer.peer, limit = "max_frame_size", "request refused: body over the max_frame_size limit of {} bytes", shared.max_body);
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "body over the max_frame_size limit of {} bytes",
                    shared.max_body
                ),
            );
        }
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let frame = if body_json {
        let value: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                warn!(listener = %shared.name, peer = %peer.peer, error = %e, "rejected: the body is not JSON");
                return refusal(b"", format!("the body is not JSON: {e}"), reply_json);
            }
        };
        match courier_hl7::from_json_with(&value, &shared.options) {
            Ok(m) => m.encode(),
            Err(e) => {
                warn!(listener = %shared.name, peer = %peer.peer, error = %e, "rejected: the JSON is not an HL7 message");
                return refusal(
                    b"",
                    format!("the JSON is not an HL7 message: {e}"),
                    reply_json,
                );
            }
        }
    } else {
        body
    };
    let Some(ack) = shared.handler.handle(frame, peer).await else {
        // Enhanced mode with no accept acknowledgement wanted.
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
    };
    let status = match ReceivedAck::parse(&ack).map(|a| a.code) {
        Ok(AckCode::AA | AckCode::CA) => StatusCode::OK,
        Ok(AckCode::AR | AckCode::CR) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ack_response(status, ack, reply_json)
}
