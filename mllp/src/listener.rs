//! The MLLP listener: accepts connections, reads frames, hands each to a [`Handler`] and
//! writes its reply back.
//!
//! [`serve`] owns the accept loop and the connection limit; [`serve_connection`] owns one
//! connection and is generic over the stream, so a TLS stream can be served by the same code.
//! Neither looks inside a frame: what a frame means and what to answer is the handler's job.
//!
//! Shutdown is one [`CancellationToken`] passed down. When it is cancelled the listener stops
//! accepting at once; a connection whose frame is with the handler lets the handler finish,
//! writes and flushes the reply, then closes; an idle connection closes straight away. A frame
//! that had only partly arrived is dropped: its sender has no ACK for it and will send it
//! again. [`serve`] returns once every connection task has finished — so a handler that never
//! completes holds shutdown up; bounding the handler's own work is the handler's business.
//!
//! Logs carry the listener name, the peer address, the connection id, limits and byte counts —
//! never payload bytes, which carry patient data.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::codec::{CodecError, DEFAULT_MAX_FRAME_SIZE, MllpCodec};

/// Default for [`ListenerSettings::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default for [`ListenerSettings::idle_timeout`]: 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long the accept loop pauses after an accept error (for example `EMFILE`, out of file
/// descriptors) before trying again, so it neither spins nor gives up.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits and identity of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Name of the listener, as it appears in logs.
    pub name: String,
    /// Most connections served at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// How long a connection may go without delivering a complete frame (and how long a
    /// reply may take to be written) before it is closed. Because it counts to the end of a
    /// frame, it also bounds a sender that trickles a frame byte by byte.
    pub idle_timeout: Duration,
    /// Largest payload accepted in one frame, in bytes; a larger frame closes the connection.
    pub max_frame_size: usize,
}

impl ListenerSettings {
    /// Settings named `name` with the default limits.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }
}

/// Who sent a frame: handed to the [`Handler`] with every frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Name of the listener that accepted the connection.
    pub listener: Arc<str>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Identifies the connection among those the listener accepted (counts up from 1).
    pub connection_id: u64,
}

/// What the listener does with each frame.
pub trait Handler: Send + Sync + 'static {
    /// Called once per frame, in order per connection; the returned bytes (if any) are framed
    /// and written back before the next frame is read.
    ///
    /// Once called, the future is driven to completion even if shutdown is requested
    /// meanwhile, so the reply (typically an ACK) still reaches the sender.
    fn handle(&self, frame: Bytes, peer: &PeerInfo) -> impl Future<Output = Option<Bytes>> + Send;
}

/// Why a connection was closed other than by its peer or by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// No complete frame arrived within the idle timeout.
    #[error("peer {peer} sent no complete frame within the idle_timeout limit of {limit:?}")]
    IdleTimeout {
        /// The peer's address.
        peer: SocketAddr,
        /// The `idle_timeout` limit in force.
        limit: Duration,
    },
    /// A reply could not be written within the idle timeout (the peer stopped reading).
    #[error("reply to peer {peer} not written within the idle_timeout limit of {limit:?}")]
    WriteTimeout {
        /// The peer's address.
        peer: SocketAddr,
        /// The `idle_timeout` limit in force.
        limit: Duration,
    },
    /// The peer sent a frame larger than the frame size limit.
    #[error("peer {peer} sent a frame over the max_frame_size limit of {limit} bytes")]
    FrameTooLarge {
        /// The peer's address.
        peer: SocketAddr,
        /// The `max_frame_size` limit in force, in bytes.
        limit: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("peer {peer} closed the connection inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// The peer's address.
        peer: SocketAddr,
        /// Payload bytes received for the unfinished frame.
        buffered: usize,
    },
    /// The handler's reply could not be framed (too large, or holds a framing byte).
    #[error("reply to peer {peer} could not be framed")]
    Reply {
        /// The peer's address.
        peer: SocketAddr,
        /// What the codec refused.
        #[source]
        source: CodecError,
    },
    /// Reading from or writing to the connection failed.
    #[error("i/o error on the connection from peer {peer}")]
    Io {
        /// The peer's address.
        peer: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Accepts connections on `listener` and serves each on its own task until `shutdown` is
/// cancelled; returns once every connection has finished.
///
/// A connection beyond `settings.max_connections` is accepted and closed at once, with a
/// warning naming the limit. Accept errors (such as running out of file descriptors) are
/// logged and retried after a short pause; they never stop the listener.
///
/// # Errors
///
/// Only if the listener's local address cannot be read at start-up.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    settings: ListenerSettings,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let name: Arc<str> = Arc::from(settings.name.as_str());
    let span = info_span!("mllp_listener", listener = %name, local = %local);
    let settings = Arc::new(settings);
    async move {
        info!(
            max_connections = settings.max_connections,
            idle_timeout = ?settings.idle_timeout,
            max_frame_size = settings.max_frame_size,
            "listening"
        );
        let tracker = TaskTracker::new();
        // Semaphore::new panics above MAX_PERMITS; a limit that large means "no limit".
        let slots = Arc::new(Semaphore::new(
            settings.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let mut next_id: u64 = 0;
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(error = %error, pause = ?ACCEPT_ERROR_PAUSE, "accept failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            };
            next_id += 1;
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn!(
                    peer = %peer,
                    connection_id = next_id,
                    limit = "max_connections",
                    max_connections = settings.max_connections,
                    "connection refused: max_connections limit of {} reached",
                    settings.max_connections
                );
                drop(stream);
                continue;
            };
            // Replies are small and awaited by the sender: don't let Nagle hold them back.
            if let Err(error) = stream.set_nodelay(true) {
                debug!(peer = %peer, error = %error, "could not set TCP_NODELAY");
            }
            let info = PeerInfo {
                listener: Arc::clone(&name),
                peer,
                connection_id: next_id,
            };
            let settings = Arc::clone(&settings);
            let handler = Arc::clone(&handler);
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                // Held for the task's life: the slot frees itself however the task ends.
                let _slot = slot;
                // The outcome is logged inside; nothing more to do with it here.
                let _ = serve_connection(stream, info, &settings, &*handler, &shutdown).await;
            });
        }
        // Close the socket now, before waiting on the connections, so new connects are
        // refused during the drain rather than left in the backlog.
        drop(listener);
        tracker.close();
        info!(
            connections = tracker.len(),
            "stopped accepting; waiting for connections to finish"
        );
        tracker.wait().await;
        info!("listener stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Serves one connection: reads frames one at a time, hands each to `handler`, writes back
/// its reply, until the peer closes, a limit is hit, or `shutdown` is cancelled (see the
/// [module documentation](self) for what shutdown waits for).
///
/// Generic over the stream so that TLS (or a test's in-memory pipe) is served by the same
/// loop. The outcome is logged here, at a level that fits it; it is also returned for callers
/// that count outcomes. `Ok` means the peer closed between frames or shutdown closed the
/// connection.
///
/// # Errors
///
/// The limit that was hit ([`ConnectionError::IdleTimeout`],
/// [`ConnectionError::FrameTooLarge`], ...) or the I/O error that ended the connection.
pub async fn serve_connection<S, H>(
    stream: S,
    peer: PeerInfo,
    settings: &ListenerSettings,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let span = info_span!(
        "mllp_connection",
        listener = %peer.listener,
        peer = %peer.peer,
        connection_id = peer.connection_id
    );
    async move {
        debug!("connection opened");
        let outcome = connection_loop(stream, &peer, settings, handler, shutdown).await;
        match &outcome {
            Ok(()) => debug!("connection closed"),
            Err(error @ ConnectionError::IdleTimeout { limit, .. }) => {
                info!(limit = "idle_timeout", idle_timeout = ?limit, "closing connection: {error}");
            }
            Err(error @ ConnectionError::FrameTooLarge { limit, .. }) => {
                warn!(
                    limit = "max_frame_size",
                    max_frame_size = limit,
                    "closing connection: {error}"
                );
            }
            Err(error @ ConnectionError::WriteTimeout { limit, .. }) => {
                warn!(limit = "idle_timeout", idle_timeout = ?limit, "closing connection: {error}");
            }
            Err(error) => warn!("closing connection: {}", Chain(error)),
        }
        outcome
    }
    .instrument(span)
    .await
}

async fn connection_loop<S, H>(
    stream: S,
    peer: &PeerInfo,
    settings: &ListenerSettings,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    let addr = peer.peer;
    let idle = settings.idle_timeout;
    let mut framed = Framed::new(stream, MllpCodec::new(settings.max_frame_size));
    loop {
        // Reading is the only place shutdown may interrupt: `Framed::next` is cancel-safe,
        // and a frame not yet handed to the handler has not been acknowledged.
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                debug!("shutdown: closing connection between frames");
                return Ok(());
            }
            next = tokio::time::timeout(idle, framed.next()) => next,
        };
        report_codec_events(framed.codec_mut());
        let frame = match next {
            Err(_elapsed) => {
                return Err(ConnectionError::IdleTimeout {
                    peer: addr,
                    limit: idle,
                });
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(error))) => return Err(decode_error(addr, error)),
            Ok(Some(Ok(frame))) => frame,
        };
        debug!(frame_len = frame.len(), "frame received");
        let Some(reply) = handler.handle(frame, peer).await else {
            continue;
        };
        let reply_len = reply.len();
        match tokio::time::timeout(idle, framed.send(reply)).await {
            Err(_elapsed) => {
                return Err(ConnectionError::WriteTimeout {
                    peer: addr,
                    limit: idle,
                });
            }
            Ok(Err(CodecError::Io(source))) => {
                return Err(ConnectionError::Io { peer: addr, source });
            }
            Ok(Err(source)) => return Err(ConnectionError::Reply { peer: addr, source }),
            Ok(Ok(())) => debug!(reply_len, "reply written"),
        }
    }
}

/// Logs what the codec threw away since the last frame — counts only.
fn report_codec_events(codec: &mut MllpCodec) {
    let skipped = codec.take_skipped();
    if skipped > 0 {
        warn!(
            skipped_bytes = skipped,
            total_skipped_bytes = codec.skipped_bytes(),
            "skipped bytes outside a frame"
        );
    }
    let discarded = codec.take_discarded();
    if discarded > 0 {
        warn!(
            discarded_frames = discarded,
            total_discarded_frames = codec.discarded_frames(),
            "resynchronised: discarded an unfinished frame when a new start block arrived"
        );
    }
}

fn decode_error(peer: SocketAddr, error: CodecError) -> ConnectionError {
    match error {
        CodecError::FrameTooLarge { limit } => ConnectionError::FrameTooLarge { peer, limit },
        CodecError::Truncated { buffered } => ConnectionError::Truncated { peer, buffered },
        CodecError::Io(source) => ConnectionError::Io { peer, source },
        // The decoder never refuses a payload byte; kept total rather than panicking.
        source @ CodecError::ReservedByte { .. } => ConnectionError::Reply { peer, source },
    }
}

/// Displays an error with its sources, `outer: inner: innermost`, for one-line logs.
struct Chain<'a>(&'a ConnectionError);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
