//! The HTTP destination: each message is POSTed to a URL, as ER7 or as JSON.
//!
//! 2xx = delivered; 5xx, 408, 429, a timeout or a connection failure = retried after the
//! backoff; any other status (4xx, a redirect) = rejected, a dead letter. The status line and
//! the start of the response body are kept with the delivery as its "ACK". The connection is
//! kept open between deliveries (HTTP/1.1 keep-alive) while the receiver keeps it open, for at
//! most [`IDLE_LIMIT`] between two; a request that finds it closed before any byte went out
//! is sent on a new one at once.
//! `https://` URLs go over rustls with the CA named in `tls`, as MLLP destinations do.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_hl7::{Message, ParseOptions};
use courier_mllp::ClientTls;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::{Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{DestinationConfig, PayloadFormat};
use crate::destination::Attempt;

/// Most bytes of a response body kept with the delivery.
pub const KEPT_RESPONSE: usize = 64 * 1024;

/// How long a kept connection may sit idle and still be used. Firewalls between a clinic and
/// its receivers often forget an idle connection without telling either end; a request
/// written into one would wait out the whole ACK timeout and a retry. A fresh connection
/// after a quiet spell costs one handshake instead.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// The media type of ER7 over HTTP.
pub const ER7_MEDIA_TYPE: &str = "x-application/hl7-v2+er7";

/// A URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// `https://`.
    pub https: bool,
    /// Host name or address (no brackets).
    pub host: String,
    /// Port (80/443 by default).
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    /// Request target.
    pub path_and_query: String,
}

impl ParsedUrl {
    /// `host:port`, as TLS names its server.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parses an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{url}` has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(ParsedUrl {
        https,
        port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        host,
    })
}

/// The body for a stored message in `format`, as pieces to send one after the other. The
/// payload is what the engine stored, so it parses; should it not, the delivery cannot
/// succeed and is refused.
pub fn encode(payload: Bytes, format: PayloadFormat) -> Result<Body, String> {
    match format {
        PayloadFormat::Er7 => Ok(Body::from(vec![payload])),
        PayloadFormat::Json => {
            let opts = ParseOptions {
                line_endings: courier_hl7::LineEndings::Lenient,
                ..ParseOptions::default()
            };
            let msg = Message::parse_with(payload, &opts)
                .map_err(|e| format!("cannot convert the message to JSON: {e}"))?;
            // Written straight from the message (no `Value` tree in between), with long
            // values (a 1 MiB report) sent from the payload's own buffer: the body costs the
            // keys and punctuation, not a second copy of the message.
            let mut pieces = courier_hl7::json_pieces(&msg);
            pieces.push(Bytes::from_static(b"\n"));
            Ok(Body::from(pieces))
        }
    }
}

/// A message body as the pieces it was made of, sent one after the other with its length
/// known up front (`Content-Length`). http-body-util's `Full` takes one buffer; joining the
/// pieces into one would copy what they share with the stored payload.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pieces: VecDeque<Bytes>,
    len: u64,
}

impl From<Vec<Bytes>> for Body {
    fn from(pieces: Vec<Bytes>) -> Body {
        let len = pieces.iter().map(|p| p.len() as u64).sum();
        Body {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
            len,
        }
    }
}

impl Body {
    /// The pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.iter()
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.pieces.pop_front().map(|piece| {
            self.len -= piece.len() as u64;
            Ok(Frame::data(piece))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// POSTs messages to one URL.
#[derive(Debug)]
pub struct HttpSink {
    url: ParsedUrl,
    headers: Vec<(HeaderName, HeaderValue)>,
    format: PayloadFormat,
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    max_response: usize,
    /// The connection kept from the last delivery, if the receiver kept it open.
    kept: Option<Connection>,
}

/// An open HTTP/1.1 connection: the handle that sends on it and the task that drives it.
#[derive(Debug)]
struct Connection {
    sender: SendRequest<Body>,
    driver: tokio::task::JoinHandle<()>,
    /// When its last response was read.
    idle_since: Instant,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A connection dropped mid-exchange (a timeout) is not left half-read in the background.
        self.driver.abort();
    }
}

impl HttpSink {
    /// The sink for a `kind = "http"` destination (validated at load).
    pub fn new(cfg: &DestinationConfig) -> HttpSink {
        let url = cfg
            .url
            .as_ref()
            .and_then(|u| parse_url(u.get_ref()).ok())
            .unwrap_or(ParsedUrl {
                https: false,
                host: String::new(),
                port: 0,
                authority: String::new(),
                path_and_query: "/".into(),
            });
        let headers = cfg
            .headers
            .iter()
            .flat_map(|h| h.get_ref().iter())
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(&v.0).ok()?,
                ))
            })
            .collect();
        HttpSink {
            url,
            headers,
            format: cfg.payload_format(),
            tls: cfg.tls_loaded.clone(),
            connect_timeout: cfg.connect_timeout,
            max_response: cfg.max_frame_size,
            kept: None,
        }
    }

    /// One POST; `timeout` bounds the whole exchange.
    pub async fn attempt(
        &mut self,
        payload: Bytes,
        control_id: &str,
        timeout: Duration,
    ) -> Attempt {
        let body = match encode(payload, self.format) {
            Ok(b) => b,
            Err(reason) => {
                return Attempt::Rejected {
                    ack: Bytes::new(),
                    reason,
                };
            }
        };
        let (status, kept) = match tokio::time::timeout(timeout, self.post(body, control_id)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => return Attempt::Retry { reason },
            Err(_) => {
                return Attempt::Retry {
                    reason: format!("no HTTP response within {} ms", timeout.as_millis()),
                };
            }
        };
        let code = status.as_u16();
        if status.is_success() {
            Attempt::Delivered(kept)
        } else if status.is_server_error() || code == 408 || code == 429 {
            Attempt::Retry {
                reason: format!("HTTP {status} from the receiver"),
            }
        } else if status.is_redirection() {
            Attempt::Rejected {
                ack: kept,
                reason: format!("HTTP {status}: redirects are not followed; fix the URL"),
            }
        } else {
            Attempt::Rejected {
                ack: kept,
                reason: format!(
                    "HTTP {status} from the receiver (its body is kept with the delivery)"
                ),
            }
        }
    }

    /// Sends `body` on the kept connection, or on a new one if there is none, the receiver
    /// closed it, or it was found closed before the request went out.
    async fn post(
        &mut self,
        body: Body,
        control_id: &str,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let mut request = self.request(body, control_id)?;
        // Taken out while in use: a timeout drops it with the exchange, half done.
        let mut conn = match self.kept.take() {
            Some(mut kept)
                if !kept.sender.is_closed() && kept.idle_since.elapsed() < IDLE_LIMIT =>
            {
                match kept.sender.ready().await {
                    Ok(()) => kept,
                    Err(_) => self.connect().await?,
                }
            }
            _ => self.connect().await?,
        };
        let response = match conn.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // Nothing was written: the receiver had closed the connection (an idle
                // keep-alive timing out as it was reused). The request goes on a new one.
                Some(unsent) => {
                    request = unsent;
                    conn = self.connect().await?;
                    conn.sender
                        .send_request(request)
                        .await
                        .map_err(|e| format!("HTTP request failed: {e}"))?
                }
                None => return Err(format!("HTTP request failed: {}", e.into_error())),
            },
        };
        let status = response.status();
        let closes = response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = Limited::new(response.into_body(), self.max_response)
            .collect()
            .await
            .map(|c| c.to_bytes());
        // Kept only after a whole response: one cut short or over the limit leaves the rest
        // of it on the connection.
        let body = match body {
            Ok(body) => {
                if !closes {
                    conn.idle_since = Instant::now();
                    self.kept = Some(conn);
                }
                body
            }
            Err(_) => Bytes::new(),
        };
        let kept = &body[..body.len().min(KEPT_RESPONSE)];
        let mut record = format!("HTTP {status}\r\n\r\n").into_bytes();
        record.extend_from_slice(kept);
        Ok((status, Bytes::from(record)))
    }

    /// The POST for one message.
    fn request(&self, body: Body, control_id: &str) -> Result<Request<Body>, String> {
        let mut request = Request::post(self.url.path_and_query.as_str())
            .header(hyper::header::HOST, self.url.authority.as_str())
            .header(
                hyper::header::CONTENT_TYPE,
                match self.format {
                    PayloadFormat::Er7 => ER7_MEDIA_TYPE,
                    PayloadFormat::Json => "application/json",
                },
            )
            .header(hyper::header::USER_AGENT, "courier");
        if let Ok(v) = HeaderValue::from_str(control_id) {
            request = request.header("x-hl7-control-id", v);
        }
        let mut request = request
            .body(body)
            .map_err(|e| format!("cannot build the request: {e}"))?;
        for (k, v) in &self.headers {
            request.headers_mut().insert(k.clone(), v.clone());
        }
        Ok(request)
    }

    /// A new connection to the URL's host, over TLS for `https://`.
    async fn connect(&self) -> Result<Connection, String> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.url.host.as_str(), self.url.port)),
        )
        .await
        .map_err(|_| format!("connect to {} timed out", self.url.host_port()))?
        .map_err(|e| format!("cannot connect to {}: {e}", self.url.host_port()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let name = tls
                    .server_name_for(&self.url.host_port())
                    .map_err(|e| e.to_string())?;
                let stream = tokio_rustls::TlsConnector::from(tls.config())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        format!(
                            "TLS with {} failed: {}",
                            self.url.host_port(),
                            courier_mllp::tls::describe_handshake_error(&e)
                        )
                    })?;
                handshake(stream).await
            }
            None => handshake(tcp).await,
        }
    }
}

/// HTTP/1.1 over `stream`, its driver spawned.
async fn handshake<S>(stream: S) -> Result<Connection, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Connection {
        sender,
        driver,
        idle_since: Instant::now(),
    })
}
