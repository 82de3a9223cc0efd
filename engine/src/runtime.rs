//! The top level: reads a config and wires listeners, routes and destinations together.
//!
//! One message's way: the listener hands each frame to [`Intake`], which parses it, checks
//! the fields every message needs, picks the routes, queues a copy for each of their
//! destinations and only then answers AA/CA. Anything wrong with the message is answered
//! with AR/AE (CR/CE in enhanced mode) and an ERR segment naming what and where.
//!
//! Shutdown is one token: listeners stop accepting and finish the message in flight; then
//! destinations drain their queues for up to `engine.shutdown_grace`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use courier_hl7::{
    AckCode, AckError, AckMode, ErrorCode, ErrorLocation, LineEndings, Message, ParseOptions,
    Severity, build_ack, build_nak_for_unparsed,
};
use courier_mllp::{Handler, ListenerSettings, PeerInfo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, LineEndingsConfig, UnroutedPolicy, parse_charset};
use crate::destination::{self, Delivery, DestinationHandle};
use crate::route::{Envelope, Router};

/// A running engine.
pub struct Engine {
    listeners: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Binds every listener (failing fast if one cannot bind), starts the destination
    /// workers and begins serving.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let destinations_tracker = TaskTracker::new();
        let destinations: Vec<DestinationHandle> = config
            .destinations
            .iter()
            .map(|d| destination::spawn(d.get_ref(), &destinations_tracker, hard_stop.clone()))
            .collect();
        destinations_tracker.close();
        let router = Router::new(&config, |name| {
            destinations.iter().position(|d| &**d.name() == name)
        })?;
        let pipeline = Arc::new(Pipeline {
            router,
            destinations,
        });
        let ack_ids = Arc::new(AckIds::new());

        let listeners_tracker = TaskTracker::new();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let l = l.get_ref();
            let addr: SocketAddr = l.bind.get_ref().parse().context("listener bind address")?;
            let socket = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listener {}: cannot bind {addr}", l.name))?;
            let local = socket.local_addr()?;
            info!(listener = %l.name, addr = %local, "listening");
            bound.push((l.name.clone(), local));
            let intake = Arc::new(Intake {
                listener: l.name.as_str().into(),
                options: ParseOptions {
                    line_endings: match l.line_endings {
                        LineEndingsConfig::Strict => LineEndings::Strict,
                        LineEndingsConfig::Lenient => LineEndings::Lenient,
                    },
                    default_charset: parse_charset(l.default_charset.get_ref())
                        .context("listener default_charset")?,
                },
                unrouted: l.unrouted,
                pipeline: pipeline.clone(),
                ack_ids: ack_ids.clone(),
                shutdown: shutdown.clone(),
            });
            let settings = ListenerSettings {
                name: l.name.clone(),
                max_connections: l.max_connections,
                idle_timeout: l.idle_timeout,
                max_frame_size: l.max_frame_size,
            };
            let token = shutdown.clone();
            let name = l.name.clone();
            listeners_tracker.spawn(async move {
                if let Err(e) = courier_mllp::serve(socket, settings, intake, token).await {
                    warn!(listener = %name, error = %e, "listener stopped with an error");
                }
            });
        }
        listeners_tracker.close();
        drop(pipeline);

        let grace = config.engine.shutdown_grace;
        let token = shutdown.clone();
        let done = tokio::spawn(async move {
            token.cancelled().await;
            listeners_tracker.wait().await;
            info!("listeners closed; draining destination queues");
            // The listeners held the last references to the queues' senders: each worker
            // now delivers what is left and stops, or is stopped when the grace period ends.
            if tokio::time::timeout(grace, destinations_tracker.wait())
                .await
                .is_err()
            {
                hard_stop.cancel();
                destinations_tracker.wait().await;
            }
            info!("stopped");
        });
        Ok(Engine {
            listeners: bound,
            shutdown,
            done,
        })
    }

    /// The address each listener is bound to, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// A token that stops the engine gracefully when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the engine has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

struct Pipeline {
    router: Router,
    destinations: Vec<DestinationHandle>,
}

/// Generates MSH-10 for the engine's own ACKs: unique within a run and across runs.
struct AckIds {
    prefix: String,
    next: AtomicU64,
}

impl AckIds {
    fn new() -> AckIds {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        AckIds {
            prefix: format!("CR{}", base36(secs)),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}.{}", self.prefix, base36(n))
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The current time as an HL7 DTM with offset, e.g. `20261124083012-0500`.
pub fn hl7_now() -> String {
    chrono::Local::now().format("%Y%m%d%H%M%S%z").to_string()
}

/// One listener's message handling.
struct Intake {
    listener: Arc<str>,
    options: ParseOptions,
    unrouted: UnroutedPolicy,
    pipeline: Arc<Pipeline>,
    ack_ids: Arc<AckIds>,
    shutdown: CancellationToken,
}

/// How a message was answered, for the log line.
enum Answer {
    Accepted { routes: usize },
    Unrouted,
    Refused(AckCode, AckError),
}

impl Handler for Intake {
    async fn handle(&self, frame: Bytes, peer: &PeerInfo) -> Option<Bytes> {
        let started = Instant::now();
        let span = info_span!("message", listener = %self.listener, peer = %peer.peer);
        async {
            let msg = match self.parse(&frame) {
                Ok(m) => m,
                Err(err) => {
                    warn!(
                        code = err.code.code(),
                        error = %err.text,
                        bytes = frame.len(),
                        "rejected: not a readable HL7 message"
                    );
                    return Some(build_nak_for_unparsed(
                        &frame,
                        AckCode::AR,
                        &err,
                        &self.ack_ids.next(),
                        &hl7_now(),
                    ));
                }
            };
            let control_id = msg.control_id().unwrap_or_default();
            let env = Envelope::of(&msg);
            let answer = self.process(&msg, &env, &control_id).await;
            let elapsed_us = started.elapsed().as_micros() as u64;
            let mode = AckMode::of(&msg);
            let (code, error) = match answer {
                Answer::Accepted { routes } => {
                    info!(%control_id, message_type = %env.message_type, routes, elapsed_us, "accepted");
                    (AckCode::AA, None)
                }
                Answer::Unrouted => {
                    info!(%control_id, message_type = %env.message_type, elapsed_us, "accepted; no route wants it (unrouted)");
                    (AckCode::AA, None)
                }
                Answer::Refused(code, err) => {
                    warn!(%control_id, message_type = %env.message_type, ack = code.as_str(), error = %err.text, elapsed_us, "refused");
                    (code, Some(err))
                }
            };
            let code = match mode {
                AckMode::Original => code,
                AckMode::Enhanced { accept, .. } => {
                    if !accept.wants(code.is_accept()) {
                        return None;
                    }
                    commit_code(code)
                }
            };
            Some(build_ack(
                &msg,
                code,
                error.as_ref(),
                &self.ack_ids.next(),
                &hl7_now(),
            ))
        }
        .instrument(span)
        .await
    }
}

impl Intake {
    fn parse(&self, frame: &Bytes) -> Result<Message, AckError> {
        if frame.starts_with(b"FHS") || frame.starts_with(b"BHS") {
            return Err(AckError {
                code: ErrorCode::UnsupportedMessageType,
                location: Some(location("MSH", None)),
                text: "batches (FHS/BHS) are not accepted over MLLP; send one message per frame"
                    .into(),
                severity: Severity::Error,
            });
        }
        let msg = Message::parse_with(frame.clone(), &self.options)
            .map_err(|e| AckError::from_parse_error(&e))?;
        if msg.message_type().code.is_empty() {
            return Err(AckError {
                code: ErrorCode::RequiredFieldMissing,
                location: Some(location("MSH", Some(9))),
                text: "MSH-9 (message type) is empty".into(),
                severity: Severity::Error,
            });
        }
        if msg.control_id().is_none() {
            return Err(AckError {
                code: ErrorCode::RequiredFieldMissing,
                location: Some(location("MSH", Some(10))),
                text: "MSH-10 (message control ID) is empty".into(),
                severity: Severity::Error,
            });
        }
        Ok(msg)
    }

    async fn process(&self, msg: &Message, env: &Envelope, control_id: &str) -> Answer {
        let p = &self.pipeline;
        let routes: Vec<_> = p.router.select(&self.listener, env, msg).collect();
        if routes.is_empty() {
            return match self.unrouted {
                UnroutedPolicy::Accept => Answer::Unrouted,
                UnroutedPolicy::Reject => Answer::Refused(
                    AckCode::AR,
                    AckError {
                        code: ErrorCode::UnsupportedMessageType,
                        location: Some(location("MSH", Some(9))),
                        text: format!(
                            "no route accepts {} on listener {}",
                            env.message_type, self.listener
                        ),
                        severity: Severity::Error,
                    },
                ),
            };
        }
        let bytes = msg.encode();
        let control_id: Arc<str> = control_id.into();
        let message_type: Arc<str> = env.message_type.as_str().into();
        let received = Instant::now();
        for route in &routes {
            for &d in &route.destinations {
                let dest = &p.destinations[d];
                let delivery = Delivery {
                    message: bytes.clone(),
                    control_id: control_id.clone(),
                    message_type: message_type.clone(),
                    route: route.name.clone(),
                    received,
                };
                let queued = tokio::select! {
                    biased;
                    r = dest.enqueue(delivery) => r.is_ok(),
                    _ = self.shutdown.cancelled() => false,
                };
                if !queued {
                    // Copies already queued for other destinations will still go out: the
                    // sender resends on AE, which is at-least-once, never loss.
                    return Answer::Refused(
                        AckCode::AE,
                        AckError {
                            code: ErrorCode::ApplicationInternalError,
                            location: None,
                            text: format!(
                                "engine is shutting down; destination {} did not take the message, resend it",
                                dest.name()
                            ),
                            severity: Severity::Error,
                        },
                    );
                }
            }
        }
        Answer::Accepted {
            routes: routes.len(),
        }
    }
}

fn location(segment: &str, field: Option<usize>) -> ErrorLocation {
    ErrorLocation {
        segment: segment.into(),
        sequence: 1,
        field,
        component: None,
    }
}

/// Enhanced mode answers with commit codes.
fn commit_code(code: AckCode) -> AckCode {
    match code {
        AckCode::AA | AckCode::CA => AckCode::CA,
        AckCode::AE | AckCode::CE => AckCode::CE,
        AckCode::AR | AckCode::CR => AckCode::CR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_are_unique_and_short() {
        let ids = AckIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(a.len() <= 20, "{a}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "Z");
        assert_eq!(base36(36), "10");
    }
}
