//! `courier listen`: a receiver that acknowledges every message and prints it or writes it
//! to a directory — a stand-in EMR, LIS or billing system for demos and tests.
//!
//! Unlike the engine this tool prints message bodies: it is the user's own test receiver.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use courier::runtime::hl7_now;
use courier_hl7::{
    AckCode, AckError, AckMode, ErrorCode, LineEndings, Message, ParseOptions, Severity, build_ack,
    build_nak_for_unparsed,
};
use courier_mllp::{Handler, ListenerSettings, PeerInfo, ServerTls, ServerTlsFiles};
use tokio_util::sync::CancellationToken;

/// TLS options of `courier listen`.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates that chain to this CA bundle (PEM): mutual TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// What `courier listen` speaks and how it answers.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// HTTP POSTs instead of MLLP.
    pub http: bool,
    /// Fail the first N messages (503 / AE).
    pub fail_first: u64,
}

/// Serves until SIGINT/SIGTERM.
pub fn listen(
    addr: SocketAddr,
    out: Option<PathBuf>,
    ack: &str,
    mode: Mode,
    tls: &TlsArgs,
) -> anyhow::Result<ExitCode> {
    let tls = match (&tls.tls_cert, &tls.tls_key) {
        (Some(cert), Some(key)) => Some(
            ServerTls::load(ServerTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: tls.tls_client_ca.clone(),
            })
            .context("TLS options")?,
        ),
        _ => None,
    };
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let code = match ack {
        "AE" => AckCode::AE,
        "AR" => AckCode::AR,
        _ => AckCode::AA,
    };
    super::runtime()?.block_on(async {
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        let local = socket.local_addr()?;
        println!("listening on {local}");
        match &tls {
            Some(t) if t.mutual() => println!("TLS: client certificates required (mutual TLS)"),
            Some(_) => println!("TLS"),
            None => {}
        }
        std::io::stdout().flush()?;
        let token = CancellationToken::new();
        super::cancel_on_signal(token.clone());
        let receiver = Arc::new(Receiver {
            out,
            code,
            seq: AtomicU64::new(0),
            fail_first: mode.fail_first,
            failed: AtomicU64::new(0),
        });
        if mode.http {
            serve_http(socket, tls, receiver, token).await;
            return Ok(ExitCode::SUCCESS);
        }
        let settings = ListenerSettings {
            max_connections: 64,
            idle_timeout: std::time::Duration::from_secs(3600),
            tls,
            ..ListenerSettings::new("listen")
        };
        courier_mllp::serve(socket, settings, receiver, token).await?;
        Ok(ExitCode::SUCCESS)
    })
}

struct Receiver {
    out: Option<PathBuf>,
    code: AckCode,
    seq: AtomicU64,
    /// Fail this many messages first.
    fail_first: u64,
    failed: AtomicU64,
}

impl Handler for Receiver {
    async fn handle(&self, frame: Bytes, peer: &PeerInfo) -> Option<Bytes> {
        let options = ParseOptions {
            line_endings: LineEndings::Lenient,
            ..ParseOptions::default()
        };
        let msg = match Message::parse_with(frame.clone(), &options) {
            Ok(m) => m,
            Err(e) => {
                println!("--- unreadable message from {}: {e}", peer.peer);
                let err = AckError::from_parse_error(&e);
                return Some(build_nak_for_unparsed(
                    &frame,
                    AckCode::AR,
                    &err,
                    &self.ack_id(),
                    &hl7_now(),
                ));
            }
        };
        let control_id = msg.control_id().unwrap_or_default();
        if self.should_fail() {
            println!(
                "--- failing {} {control_id} from {} as asked (--fail-first)",
                msg.message_type(),
                peer.peer
            );
            let _ = std::io::stdout().flush();
            return Some(self.reply(&msg, AckCode::AE, Some("stand-in failing as asked")));
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let header = format!(
            "--- #{seq} {} {control_id} from {} ({} bytes)",
            msg.message_type(),
            peer.peer,
            frame.len()
        );
        match &self.out {
            Some(dir) => {
                let name = format!("{seq:06}-{}.hl7", sanitise(&control_id));
                let written = write_atomically(dir, &name, &frame);
                match written {
                    Ok(()) => println!("{header} -> {name}"),
                    Err(e) => {
                        println!("{header}: cannot write {name}: {e}");
                        return Some(self.reply(
                            &msg,
                            AckCode::AE,
                            Some("stand-in could not store the message"),
                        ));
                    }
                }
            }
            None => {
                let text = String::from_utf8_lossy(&frame).replace('\r', "\n");
                println!("{header}\n{}", text.trim_end());
            }
        }
        let _ = std::io::stdout().flush();
        let text = (!self.code.is_accept()).then_some("stand-in configured to refuse");
        Some(self.reply(&msg, self.code, text))
    }
}

impl Receiver {
    /// Counts one failure off `--fail-first`, if any are left.
    fn should_fail(&self) -> bool {
        self.failed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.fail_first).then_some(n + 1)
            })
            .is_ok()
    }

    fn ack_id(&self) -> String {
        format!("LSN{}", self.seq.load(Ordering::SeqCst))
    }

    fn reply(&self, msg: &Message, code: AckCode, text: Option<&str>) -> Bytes {
        let code = match (AckMode::of(msg), code) {
            (AckMode::Original, c) => c,
            (_, AckCode::AA) => AckCode::CA,
            (_, AckCode::AE) => AckCode::CE,
            (_, _) => AckCode::CR,
        };
        let error = text.map(|t| AckError {
            code: ErrorCode::ApplicationInternalError,
            location: None,
            text: t.to_owned(),
            severity: Severity::Error,
        });
        build_ack(msg, code, error.as_ref(), &self.ack_id(), &hl7_now())
    }
}

/// Keeps file names portable whatever a control id holds.
fn sanitise(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "no-control-id".into()
    } else {
        cleaned
    }
}

/// Writes to a temporary name and renames, so readers never see half a file.
fn write_atomically(dir: &std::path::Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// `--http`: each POST's body (ER7, or JSON with a JSON `Content-Type`) is handled like an
/// MLLP frame; the ACK comes back with 200 (AA), 400 (AR) or 500 (AE), or 503 while
/// `--fail-first` lasts.
async fn serve_http(
    socket: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    receiver: Arc<Receiver>,
    token: CancellationToken,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::{Response, StatusCode};

    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            a = socket.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let receiver = receiver.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let receiver = receiver.clone();
                    async move {
                        let json = req
                            .headers()
                            .get(hyper::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.contains("json"));
                        // The MLLP side's default frame limit bounds a body too.
                        let limit = ListenerSettings::new("listen").max_frame_size;
                        let body = match http_body_util::Limited::new(req.into_body(), limit)
                            .collect()
                            .await
                        {
                            Ok(b) => b.to_bytes(),
                            Err(e) => {
                                println!("--- body refused from {peer}: {e}");
                                let mut r = Response::new(Full::new(Bytes::from(format!(
                                    "body refused: {e} (at most {limit} bytes)\n"
                                ))));
                                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                                return Ok::<_, std::convert::Infallible>(r);
                            }
                        };
                        let frame = if json {
                            match serde_json::from_slice(&body)
                                .map_err(|e| e.to_string())
                                .and_then(|v| courier_hl7::from_json(&v).map_err(|e| e.to_string()))
                            {
                                Ok(m) => m.encode(),
                                Err(e) => {
                                    println!("--- unreadable JSON from {peer}: {e}");
                                    let mut r = Response::new(Full::new(Bytes::from(format!(
                                        "not an HL7 message in JSON: {e}\n"
                                    ))));
                                    *r.status_mut() = StatusCode::BAD_REQUEST;
                                    return Ok::<_, std::convert::Infallible>(r);
                                }
                            }
                        } else {
                            body
                        };
                        let info = PeerInfo {
                            listener: "listen".into(),
                            peer,
                            connection_id: 0,
                        };
                        let failing = receiver.failed.load(Ordering::SeqCst) < receiver.fail_first;
                        let ack = receiver.handle(frame, &info).await.unwrap_or_default();
                        let status = if failing {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            match courier_hl7::ReceivedAck::parse(&ack).map(|a| a.code) {
                                Ok(AckCode::AA | AckCode::CA) => StatusCode::OK,
                                Ok(AckCode::AR | AckCode::CR) => StatusCode::BAD_REQUEST,
                                _ => StatusCode::INTERNAL_SERVER_ERROR,
                            }
                        };
                        let mut r = Response::new(Full::new(ack));
                        *r.status_mut() = status;
                        Ok(r)
                    }
                });
            let builder = hyper::server::conn::http1::Builder::new();
            let _ = match tls {
                Some(tls) => match tokio_rustls::TlsAcceptor::from(tls.config())
                    .accept(stream)
                    .await
                {
                    Ok(s) => {
                        builder
                            .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                            .await
                    }
                    Err(_) => Ok(()),
                },
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
            };
        });
    }
    tracker.close();
    tracker.wait().await;
}
