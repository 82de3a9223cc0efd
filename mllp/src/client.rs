//! The MLLP client: one connection to one peer, one request at a time.
//!
//! [`MllpClient`] connects lazily, keeps the connection for the next call, and drops it on
//! any error so the next call starts from a fresh connection. It does not retry and does not
//! back off: how often and how long to retry a destination is the caller's policy (the
//! destination sender's), and a message that got no reply may or may not have been
//! processed by the peer — only the caller knows whether resending is safe.
//!
//! Like the listener, it never looks inside a frame and never logs payload bytes.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tracing::{debug, warn};

use crate::codec::{
    CARRIAGE_RETURN, CodecError, DEFAULT_MAX_FRAME_SIZE, END_BLOCK, MllpCodec, START_BLOCK,
};
use crate::tls::ClientTls;

/// A connection: plain TCP or TLS over it.
type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;
type Connection = Framed<Stream, MllpCodec>;

/// Default for [`ClientSettings::connect_timeout`]: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ClientSettings::write_timeout`]: 30 seconds.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most unasked-for frames read off a kept connection before one call goes ahead.
const MAX_DRAINED_FRAMES: usize = 1024;

/// Limits of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Longest wait for a TCP connection (name resolution included).
    pub connect_timeout: Duration,
    /// Longest wait for a frame to be written and flushed; bounds a peer that stops reading.
    pub write_timeout: Duration,
    /// Largest payload sent or accepted in one frame, in bytes.
    pub max_frame_size: usize,
    /// Speak TLS: the server's certificate is checked against this CA bundle and name, and
    /// a client certificate is offered if one is configured. The handshake counts towards
    /// `connect_timeout`.
    pub tls: Option<ClientTls>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            tls: None,
        }
    }
}

/// What went wrong talking to a peer. Every variant names the peer address; after any of
/// them the client has dropped its connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made (or the address did not resolve).
    #[error("could not connect to {addr}")]
    Connect {
        /// The peer address as configured.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TCP connection was not made within the connect timeout.
    #[error("no connection to {addr} within the connect_timeout limit of {after:?}")]
    ConnectTimeout {
        /// The peer address as configured.
        addr: String,
        /// The `connect_timeout` limit in force.
        after: Duration,
    },
    /// The TLS handshake failed (the server's certificate is not trusted or not for this
    /// name, our client certificate was refused, no common protocol).
    #[error("TLS handshake with {addr} failed")]
    Tls {
        /// The peer address as configured.
        addr: String,
        /// What rustls said.
        #[source]
        source: io::Error,
    },
    /// The frame was not written within the write timeout.
    #[error("frame to {addr} not written within the write_timeout limit of {after:?}")]
    WriteTimeout {
        /// The peer address as configured.
        addr: String,
        /// The `write_timeout` limit in force.
        after: Duration,
    },
    /// No reply frame arrived within the reply timeout.
    #[error("no reply from {addr} within the reply timeout of {after:?}")]
    ReplyTimeout {
        /// The peer address as configured.
        addr: String,
        /// The reply timeout given to the request.
        after: Duration,
    },
    /// The peer closed the connection before replying.
    #[error("{addr} closed the connection before replying")]
    Closed {
        /// The peer address as configured.
        addr: String,
    },
    /// Reading or writing failed.
    #[error("i/o error talking to {addr}")]
    Io {
        /// The peer address as configured.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A frame could not be encoded or decoded (too large, truncated, reserved byte).
    #[error("framing error talking to {addr}")]
    Codec {
        /// The peer address as configured.
        addr: String,
        /// What the codec refused.
        #[source]
        source: CodecError,
    },
}

impl ClientError {
    fn from_codec(addr: &str, error: CodecError) -> Self {
        let addr = addr.to_owned();
        match error {
            CodecError::Io(source) => Self::Io { addr, source },
            source => Self::Codec { addr, source },
        }
    }
}

/// A lazily connected MLLP client for one peer.
///
/// Calls take `&mut self`, so there is never more than one request on the wire: a reply
/// read is always the reply to the frame just written. Reconnecting is implicit (the next
/// call after an error connects again); backing off between attempts is the caller's job.
pub struct MllpClient {
    addr: String,
    settings: ClientSettings,
    connection: Option<Connection>,
}

impl std::fmt::Debug for MllpClient {
    // By hand: the framed connection's buffers may hold payload bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpClient")
            .field("addr", &self.addr)
            .field("settings", &self.settings)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// What was found waiting on a kept connection before using it.
enum Waiting {
    Nothing,
    Closed,
    Frames(usize),
}

impl MllpClient {
    /// A client for `addr` (`host:port`), which is resolved each time a connection is made.
    /// Nothing is connected until the first call.
    pub fn new(addr: impl Into<String>, settings: ClientSettings) -> Self {
        Self {
            addr: addr.into(),
            settings,
            connection: None,
        }
    }

    /// The peer address as given to [`MllpClient::new`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether a connection is being kept. It may still turn out to be closed by the peer;
    /// the next call notices and reconnects.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Drops the connection, if any; the next call connects again.
    pub fn disconnect(&mut self) {
        if self.connection.take().is_some() {
            debug!(addr = %self.addr, "disconnected");
        }
    }

    /// Writes `payload` as one frame and waits up to `reply_timeout` for one reply frame,
    /// whose payload is returned. Connects first if needed (bounded by the connect timeout);
    /// the write is bounded by the write timeout.
    ///
    /// On any error the connection is dropped — in particular after a
    /// [`ClientError::ReplyTimeout`], so a late reply to this request can never be read as
    /// the reply to the next one. A kept connection on which a frame arrived unasked is
    /// dropped too, before writing, for the same reason.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; the peer may or may not have processed the payload unless the error
    /// is `Connect` or `ConnectTimeout`.
    pub async fn request(
        &mut self,
        payload: &[u8],
        reply_timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        self.request_any(payload, reply_timeout).await
    }

    /// [`MllpClient::request`] with the payload given rather than lent: it is dropped once
    /// written, so a large message is not held while the reply is awaited.
    ///
    /// # Errors
    ///
    /// As [`MllpClient::request`].
    pub async fn request_owned(
        &mut self,
        payload: Bytes,
        reply_timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        self.request_any(payload, reply_timeout).await
    }

    /// A request with the payload lent or given; the connection is dropped on any error.
    async fn request_any(
        &mut self,
        payload: impl AsRef<[u8]>,
        reply_timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let outcome = self.try_request(payload, reply_timeout).await;
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }

    /// Writes `payload` as one frame without waiting for a reply (for peers that send
    /// none). Connects first if needed. Frames the peer sends anyway are read and dropped
    /// before each write, so they cannot pile up.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; on any error the connection is dropped.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let outcome = self.try_send(payload).await;
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }

    async fn try_request(
        &mut self,
        payload: impl AsRef<[u8]>,
        reply_timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        if let Waiting::Frames(count) = self.check_kept_connection() {
            // Not ours: a reply we did not wait for, or a peer speaking out of turn. The
            // stream cannot be trusted to be in step, so start over on a new connection.
            warn!(
                addr = %self.addr,
                frames = count,
                "unrequested frames waiting on the connection; reconnecting"
            );
            self.connection = None;
        }
        let Self {
            addr,
            settings,
            connection,
        } = self;
        let framed = connect(connection, addr, settings).await?;
        write(framed, payload.as_ref(), settings.write_timeout)
            .await
            .map_err(|e| e.into_client_error(addr))?;
        drop(payload);
        match tokio::time::timeout(reply_timeout, framed.next()).await {
            Err(_elapsed) => Err(ClientError::ReplyTimeout {
                addr: addr.clone(),
                after: reply_timeout,
            }),
            Ok(None) => Err(ClientError::Closed { addr: addr.clone() }),
            Ok(Some(Err(error))) => Err(ClientError::from_codec(addr, error)),
            Ok(Some(Ok(reply))) => {
                let codec = framed.codec_mut();
                let (skipped, discarded) = (codec.take_skipped(), codec.take_discarded());
                if skipped > 0 || discarded > 0 {
                    warn!(
                        addr = %addr,
                        skipped_bytes = skipped,
                        discarded_frames = discarded,
                        "peer sent bytes outside frames"
                    );
                }
                Ok(reply)
            }
        }
    }

    async fn try_send(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        if let Waiting::Frames(count) = self.check_kept_connection() {
            debug!(addr = %self.addr, frames = count, "dropped frames sent by the peer");
        }
        let Self {
            addr,
            settings,
            connection,
        } = self;
        let framed = connect(connection, addr, settings).await?;
        write(framed, payload, settings.write_timeout)
            .await
            .map_err(|e| e.into_client_error(addr))
    }

    /// Looks, without waiting, at what the peer sent on a kept connection since the last
    /// call: an end of stream (the peer closed an idle connection, or restarted) drops the
    /// connection so this call reconnects instead of writing into a dead socket; frames are
    /// read and dropped, and counted. Best effort: a close still in flight is caught as an
    /// error of the call instead.
    fn check_kept_connection(&mut self) -> Waiting {
        let Some(framed) = self.connection.as_mut() else {
            return Waiting::Nothing;
        };
        let mut frames = 0;
        // Bounded so a peer streaming frames cannot keep this call spinning.
        while frames < MAX_DRAINED_FRAMES {
            match framed.next().now_or_never() {
                None => break,
                Some(Some(Ok(_frame))) => frames += 1,
                Some(None | Some(Err(_))) => {
                    debug!(addr = %self.addr, "kept connection was closed; reconnecting");
                    self.connection = None;
                    return Waiting::Closed;
                }
            }
        }
        if frames > 0 {
            Waiting::Frames(frames)
        } else {
            Waiting::Nothing
        }
    }
}

/// The kept connection, or a new one (TCP connect and any TLS handshake bounded together by
/// the connect timeout) kept from now on.
async fn connect<'a>(
    connection: &'a mut Option<Connection>,
    addr: &str,
    settings: &ClientSettings,
) -> Result<&'a mut Connection, ClientError> {
    match connection {
        Some(framed) => Ok(framed),
        None => {
            let after = settings.connect_timeout;
            let stream = match tokio::time::timeout(after, open(addr, settings)).await {
                Err(_elapsed) => {
                    return Err(ClientError::ConnectTimeout {
                        addr: addr.to_owned(),
                        after,
                    });
                }
                Ok(result) => result?,
            };
            Ok(connection.insert(Framed::new(stream, MllpCodec::new(settings.max_frame_size))))
        }
    }
}

/// Connects, then (with TLS) runs the handshake.
async fn open(addr: &str, settings: &ClientSettings) -> Result<Stream, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // A request waits on its reply: don't let Nagle hold the frame back.
    if let Err(error) = stream.set_nodelay(true) {
        debug!(addr, error = %error, "could not set TCP_NODELAY");
    }
    debug!(addr, peer = ?stream.peer_addr().ok(), "connected");
    let Some(tls) = &settings.tls else {
        return Ok(Either::Left(stream));
    };
    let tls_error = |source| ClientError::Tls {
        addr: addr.to_owned(),
        source,
    };
    let name = tls
        .server_name_for(addr)
        .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let stream = TlsConnector::from(tls.config())
        .connect(name, stream)
        .await
        .map_err(tls_error)?;
    debug!(addr, protocol = ?stream.get_ref().1.protocol_version(), "TLS handshake done");
    Ok(Either::Right(Box::new(stream)))
}

/// A failed write, before the client's address is attached.
enum WriteError {
    Timeout(Duration),
    Codec(CodecError),
}

impl WriteError {
    fn into_client_error(self, addr: &str) -> ClientError {
        match self {
            Self::Timeout(after) => ClientError::WriteTimeout {
                addr: addr.to_owned(),
                after,
            },
            Self::Codec(error) => ClientError::from_codec(addr, error),
        }
    }
}

/// Payloads from this size up are written to the stream directly, not through the codec.
const DIRECT_WRITE: usize = 64 * 1024;

async fn write(framed: &mut Connection, payload: &[u8], limit: Duration) -> Result<(), WriteError> {
    let written = async {
        if payload.len() < DIRECT_WRITE {
            return framed.send(payload).await;
        }
        // The codec would copy a large payload into the connection's write buffer, which
        // then keeps that capacity (a 1 MiB report: 1 MiB more for as long as the
        // connection lives). Every send flushes, so the buffer is empty here and the frame
        // can go straight to the stream, checked as the codec would check it.
        framed.codec().check_payload(payload)?;
        let stream = framed.get_mut();
        stream.write_all(&[START_BLOCK]).await?;
        stream.write_all(payload).await?;
        stream.write_all(&[END_BLOCK, CARRIAGE_RETURN]).await?;
        stream.flush().await?;
        Ok(())
    };
    match tokio::time::timeout(limit, written).await {
        Err(_elapsed) => Err(WriteError::Timeout(limit)),
        Ok(result) => result.map_err(WriteError::Codec),
    }
}
