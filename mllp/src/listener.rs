//! The MLLP listener: accepts connections, reads frames, hands each to a [`Handler`] and
//! writes its reply back.
//!
//! [`serve`] owns the accept loop and what is decided before a byte is read — the source
//! allow-list, the per-address and total connection limits (evicting, when full, the
//! connection longest without a complete frame: the slowloris defence) and, with TLS, the
//! handshake; [`serve_connection`] owns one connection and is generic over the stream, so
//! plain TCP and TLS are served by the same loop.
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

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
pub use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::codec::{CodecError, DEFAULT_MAX_FRAME_SIZE, MllpCodec};
use crate::tls::ServerTls;

/// Default for [`ListenerSettings::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default for [`ListenerSettings::idle_timeout`]: 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long the accept loop pauses after an accept error (for example `EMFILE`, out of file
/// descriptors) before trying again, so it neither spins nor gives up.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Default for [`ListenerSettings::handshake_timeout`]: 10 seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits and identity of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Name of the listener, as it appears in logs.
    pub name: String,
    /// Most connections served at once. When full, a new connection evicts the connection
    /// that has gone longest without completing a frame (see [`serve`]); if every connection
    /// is in the middle of a message, the new one is closed at once.
    pub max_connections: usize,
    /// Most connections served at once from one IP address; one more from that address is
    /// closed at once. `None`: no per-address limit.
    pub max_connections_per_ip: Option<usize>,
    /// How long a connection may go without delivering a complete frame (and how long a
    /// reply may take to be written) before it is closed. Because it counts to the end of a
    /// frame, it also bounds a sender that trickles a frame byte by byte.
    pub idle_timeout: Duration,
    /// Largest payload accepted in one frame, in bytes; a larger frame closes the connection.
    pub max_frame_size: usize,
    /// Source addresses allowed to connect (networks or single addresses); a connection from
    /// anywhere else is closed right after accept, before a byte is read. Empty: all allowed.
    pub allow: Vec<IpNet>,
    /// Serve TLS (and, with a client CA, mutual TLS) instead of plain TCP.
    pub tls: Option<ServerTls>,
    /// With TLS: how long the handshake may take before the connection is closed.
    pub handshake_timeout: Duration,
}

impl ListenerSettings {
    /// Settings named `name` with the default limits, plain TCP, every source allowed.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            allow: Vec::new(),
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Whether `ip` may connect under [`ListenerSettings::allow`]. An IPv4 address seen as
    /// IPv6 (`::ffff:10.1.2.3`, on a dual-stack socket) is checked as the IPv4 address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// Parses one allow-list entry: a network in CIDR notation (`10.0.0.0/8`, `fd00::/8`) or a
/// single address (`127.0.0.1`, `::1`).
///
/// # Errors
///
/// A message saying what is expected, if `entry` is neither.
pub fn parse_allow(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    if let Ok(net) = entry.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("`{entry}` is not an IP address or network, e.g. 10.0.0.0/8, 127.0.0.1 or ::1")
    })
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
    /// The listener was full and this connection, having gone longest without completing a
    /// frame, made room for a new one.
    #[error(
        "peer {peer} evicted to make room for a new connection: max_connections limit of {limit} reached"
    )]
    Evicted {
        /// The peer's address.
        peer: SocketAddr,
        /// The `max_connections` limit in force.
        limit: usize,
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
/// What happens to a new connection, in order, before any byte of it is read:
///
/// 1. **Allow-list.** A peer outside [`ListenerSettings::allow`] is closed, with a warning
///    naming the peer and the listener.
/// 2. **Per-address limit.** A peer that already holds
///    [`ListenerSettings::max_connections_per_ip`] connections is closed, with a warning.
/// 3. **Connection limit, with eviction.** When [`ListenerSettings::max_connections`] are
///    open, the new connection evicts one that is not handling a message: the one that has
///    never completed a frame and was accepted first, or failing that the one whose last frame
///    is oldest. A connection whose frame is with the handler, or whose reply is being
///    written, is never evicted; if all are, the new connection is closed with a warning
///    naming the limit. This is what keeps a slowloris (many connections trickling bytes and
///    never finishing a frame) from starving real senders: a trickler's clock starts at
///    accept and never restarts, while a working sender's restarts with every message, so
///    the tricklers are the ones that make room. `idle_timeout` still bounds how long any
///    frame may take; the per-address limit bounds what one host can hold.
/// 4. **TLS.** With [`ListenerSettings::tls`], the handshake runs on the connection's own
///    task (bounded by `handshake_timeout`); one that fails — plaintext sent to a TLS port,
///    an old protocol, a missing, unknown-CA or expired client certificate — is logged at warn
///    with the reason, the listener and the peer, and no byte of it reaches the codec.
///
/// Accept errors (such as running out of file descriptors) are logged and retried after a
/// short pause; they never stop the listener.
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
            max_connections_per_ip = ?settings.max_connections_per_ip,
            idle_timeout = ?settings.idle_timeout,
            max_frame_size = settings.max_frame_size,
            tls = settings.tls.is_some(),
            mutual_tls = settings.tls.as_ref().is_some_and(ServerTls::mutual),
            allow = settings.allow.len(),
            "listening"
        );
        let tracker = TaskTracker::new();
        let slots = Arc::new(Slots::new(
            settings.max_connections,
            settings.max_connections_per_ip,
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
            if !settings.allows(peer.ip()) {
                warn!(
                    listener = %name,
                    peer = %peer,
                    connection_id = next_id,
                    "connection refused: peer {} is not in listener {}'s allow list",
                    peer.ip(),
                    name
                );
                drop(stream);
                continue;
            }
            let slot = match slots.admit(next_id, peer.ip()) {
                Admit::Yes(slot) => slot,
                Admit::Evicting(slot, victim) => {
                    warn!(
                        peer = %peer,
                        connection_id = next_id,
                        limit = "max_connections",
                        max_connections = settings.max_connections,
                        evicted_peer = %victim.peer_ip,
                        evicted_connection_id = victim.id,
                        evicted_idle = ?victim.idle,
                        evicted_had_frames = victim.had_frames,
                        "max_connections limit of {} reached: evicting connection {} (no complete frame for {:?}) to admit this one",
                        settings.max_connections,
                        victim.id,
                        victim.idle
                    );
                    slot
                }
                Admit::Full => {
                    warn!(
                        peer = %peer,
                        connection_id = next_id,
                        limit = "max_connections",
                        max_connections = settings.max_connections,
                        "connection refused: max_connections limit of {} reached and every connection is handling a message",
                        settings.max_connections
                    );
                    drop(stream);
                    continue;
                }
                Admit::PerIpFull(limit) => {
                    warn!(
                        peer = %peer,
                        connection_id = next_id,
                        limit = "max_connections_per_ip",
                        max_connections_per_ip = limit,
                        "connection refused: peer {} already holds the max_connections_per_ip limit of {} connections",
                        peer.ip(),
                        limit
                    );
                    drop(stream);
                    continue;
                }
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
                let slot = slot;
                // The outcome is logged inside; nothing more to do with it here.
                let _ = match &settings.tls {
                    None => {
                        serve_tracked(stream, info, &settings, &*handler, &shutdown, Some(&slot))
                            .await
                    }
                    Some(tls) => {
                        let Some(stream) = handshake(stream, tls, &info, &settings, &shutdown, &slot).await
                        else {
                            return;
                        };
                        serve_tracked(stream, info, &settings, &*handler, &shutdown, Some(&slot))
                            .await
                    }
                };
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

/// Runs the TLS handshake on an accepted connection, bounded by `handshake_timeout`, and
/// interrupted by shutdown or eviction. A failure is logged at warn with why, the listener
/// and the peer; nothing the peer sent is read as a frame.
async fn handshake(
    stream: TcpStream,
    tls: &ServerTls,
    info: &PeerInfo,
    settings: &ListenerSettings,
    shutdown: &CancellationToken,
    slot: &Slot,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(tls.config());
    let limit = settings.handshake_timeout;
    let outcome = tokio::select! {
        () = shutdown.cancelled() => return None,
        () = slot.evicted() => {
            info!(listener = %info.listener, peer = %info.peer, connection_id = info.connection_id,
                "TLS handshake abandoned: connection evicted (max_connections)");
            return None;
        }
        outcome = tokio::time::timeout(limit, acceptor.accept(stream)) => outcome,
    };
    match outcome {
        Ok(Ok(stream)) => {
            debug!(listener = %info.listener, peer = %info.peer, connection_id = info.connection_id,
                protocol = ?stream.get_ref().1.protocol_version(), "TLS handshake done");
            Some(stream)
        }
        Ok(Err(error)) => {
            warn!(
                listener = %info.listener,
                peer = %info.peer,
                connection_id = info.connection_id,
                reason = %crate::tls::describe_handshake_error(&error),
                "TLS handshake failed on listener {} with peer {}: {}",
                info.listener,
                info.peer,
                crate::tls::describe_handshake_error(&error)
            );
            None
        }
        Err(_elapsed) => {
            warn!(
                listener = %info.listener,
                peer = %info.peer,
                connection_id = info.connection_id,
                limit = "handshake_timeout",
                handshake_timeout = ?limit,
                "TLS handshake failed on listener {} with peer {}: not done within the handshake_timeout limit of {:?}",
                info.listener,
                info.peer,
                limit
            );
            None
        }
    }
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
    serve_tracked(stream, peer, settings, handler, shutdown, None).await
}

/// [`serve_connection`], telling the listener's [`Slots`] when a frame starts and ends being
/// handled (so a busy connection is never evicted) and stopping when evicted.
async fn serve_tracked<S, H>(
    stream: S,
    peer: PeerInfo,
    settings: &ListenerSettings,
    handler: &H,
    shutdown: &CancellationToken,
    slot: Option<&Slot>,
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
        let outcome = connection_loop(stream, &peer, settings, handler, shutdown, slot).await;
        match &outcome {
            Ok(()) => debug!("connection closed"),
            Err(error @ ConnectionError::Evicted { limit, .. }) => {
                info!(
                    limit = "max_connections",
                    max_connections = limit,
                    "closing connection: {error}"
                );
            }
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
    slot: Option<&Slot>,
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
            () = evicted(slot) => {
                return Err(ConnectionError::Evicted { peer: addr, limit: settings.max_connections });
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
            // A TLS peer that closes the TCP connection without a close_notify alert: the
            // usual way MLLP senders hang up, so a plain close between frames, and a truncated
            // frame otherwise.
            Ok(Some(Err(CodecError::Io(error))))
                if error.kind() == io::ErrorKind::UnexpectedEof =>
            {
                let buffered = framed.read_buffer().len();
                if buffered == 0 {
                    return Ok(());
                }
                return Err(ConnectionError::Truncated {
                    peer: addr,
                    buffered,
                });
            }
            Ok(Some(Err(error))) => return Err(decode_error(addr, error)),
            Ok(Some(Ok(frame))) => frame,
        };
        debug!(frame_len = frame.len(), "frame received");
        // From here until the reply is written this connection is not to be evicted.
        let _busy = slot.map(Slot::busy);
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

/// Waits until `slot` is evicted; never, without a slot.
async fn evicted(slot: Option<&Slot>) {
    match slot {
        Some(slot) => slot.evicted().await,
        None => std::future::pending().await,
    }
}

/// The listener's open connections, for the connection limits and eviction (see [`serve`]).
struct Slots {
    max: usize,
    per_ip: Option<usize>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    by_id: HashMap<u64, Entry>,
    by_ip: HashMap<IpAddr, usize>,
}

struct Entry {
    ip: IpAddr,
    /// Accept time, or when the last frame was received or its reply written.
    since: Instant,
    /// Has completed at least one frame.
    had_frames: bool,
    /// A frame is with the handler or its reply is being written.
    busy: bool,
    evict: CancellationToken,
}

/// The connection a new one evicted, for the log line.
struct Victim {
    id: u64,
    peer_ip: IpAddr,
    idle: Duration,
    had_frames: bool,
}

enum Admit {
    Yes(Slot),
    Evicting(Slot, Victim),
    Full,
    PerIpFull(usize),
}

impl Open {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.by_id.remove(&id)?;
        if let Some(count) = self.by_ip.get_mut(&entry.ip) {
            *count -= 1;
            if *count == 0 {
                self.by_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }
}

impl Slots {
    fn new(max: usize, per_ip: Option<usize>) -> Self {
        Self {
            max,
            per_ip,
            open: Mutex::new(Open::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits connection `id` from `ip`, evicting another if the listener is full.
    fn admit(self: &Arc<Self>, id: u64, ip: IpAddr) -> Admit {
        let ip = ip.to_canonical();
        let now = Instant::now();
        let mut open = self.lock();
        if let Some(limit) = self.per_ip
            && open.by_ip.get(&ip).copied().unwrap_or(0) >= limit
        {
            return Admit::PerIpFull(limit);
        }
        let mut victim = None;
        if open.by_id.len() >= self.max {
            // Never-framed first, then the oldest `since`; a busy connection never.
            let Some((&vid, _)) = open
                .by_id
                .iter()
                .filter(|(_, e)| !e.busy)
                .min_by_key(|(_, e)| (e.had_frames, e.since))
            else {
                return Admit::Full;
            };
            let entry = open.remove(vid).expect("present");
            entry.evict.cancel();
            victim = Some(Victim {
                id: vid,
                peer_ip: entry.ip,
                idle: now.duration_since(entry.since),
                had_frames: entry.had_frames,
            });
        }
        let evict = CancellationToken::new();
        open.by_id.insert(
            id,
            Entry {
                ip,
                since: now,
                had_frames: false,
                busy: false,
                evict: evict.clone(),
            },
        );
        *open.by_ip.entry(ip).or_default() += 1;
        let slot = Slot {
            slots: Arc::clone(self),
            id,
            evict,
        };
        match victim {
            None => Admit::Yes(slot),
            Some(victim) => Admit::Evicting(slot, victim),
        }
    }
}

/// One connection's place in [`Slots`]; freed when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: CancellationToken,
}

impl Slot {
    async fn evicted(&self) {
        self.evict.cancelled().await;
    }

    /// Marks a frame received: busy (not evictable) until the guard drops, and its clock
    /// restarted then.
    fn busy(&self) -> Busy<'_> {
        self.mark(true);
        Busy(self)
    }

    fn mark(&self, busy: bool) {
        let mut open = self.slots.lock();
        if let Some(entry) = open.by_id.get_mut(&self.id) {
            entry.busy = busy;
            entry.had_frames = true;
            entry.since = Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(self.id);
    }
}

/// A connection busy with a frame; see [`Slot::busy`].
struct Busy<'a>(&'a Slot);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.mark(false);
    }
}
