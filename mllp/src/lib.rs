//! MLLP (Minimal Lower Layer Protocol) for Courier: framing, a listener and a client.
//!
//! MLLP wraps each message in a frame, `<VT 0x0B> payload <FS 0x1C><CR 0x0D>`, on a TCP (or
//! TLS) stream. This crate moves frames and nothing else: it never parses or logs a payload
//! (payloads are HL7 messages carrying patient data) and does not depend on the HL7 model.
//! What a frame means and what to answer is decided by the [`Handler`] the listener is
//! given, and by the caller of [`MllpClient`].
//!
//! * [`codec`] — [`MllpCodec`], a `tokio_util` codec: split reads, many frames per read,
//!   garbage between frames, missing `<CR>`, resynchronisation and the frame size limit.
//! * [`listener`] — [`serve`] accepts connections (source allow-list, per-address and total
//!   connection limits with eviction of the connection longest without a complete frame,
//!   optional TLS handshake) and serves each with [`serve_connection`]: one frame at a time,
//!   handler, reply, next frame; idle timeout; graceful shutdown through a
//!   `CancellationToken`.
//! * [`tls`] — rustls (ring, TLS 1.2 and 1.3) server and client material from PEM files,
//!   optionally mutual, reloaded for new handshakes when the files change.
//! * [`client`] — [`MllpClient`]: lazy connect (over TLS when configured), one request and its reply at a time, the
//!   connection dropped on any error. Retry and backoff are the caller's.
//!
//! Every resource has a named limit — [`ListenerSettings::max_connections`],
//! [`ListenerSettings::max_connections_per_ip`], [`ListenerSettings::idle_timeout`],
//! [`ListenerSettings::handshake_timeout`], `max_frame_size`, [`ClientSettings::connect_timeout`],
//! [`ClientSettings::write_timeout`], the reply timeout — and the error or log line that
//! reports hitting one names it and its value.
//!
//! ```no_run
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use courier_mllp::{Handler, ListenerSettings, PeerInfo, serve};
//! use tokio_util::sync::CancellationToken;
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     async fn handle(&self, frame: Bytes, _peer: &PeerInfo) -> Option<Bytes> {
//!         Some(frame)
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2575").await?;
//! let shutdown = CancellationToken::new();
//! serve(listener, ListenerSettings::new("adt-in"), Arc::new(Echo), shutdown).await
//! # }
//! ```

#![deny(missing_docs)]

pub mod client;
pub mod codec;
pub mod listener;
pub mod tls;

pub use client::{ClientError, ClientSettings, MllpClient};
pub use codec::{CodecError, DEFAULT_MAX_FRAME_SIZE, MllpCodec};
pub use listener::{
    ConnectionError, Handler, IpNet, ListenerSettings, PeerInfo, parse_allow, serve,
    serve_connection,
};
pub use tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles, TlsError};

/// MLLP release 2 commit acknowledgement: the payload of the block a receiver sends once it
/// has durably committed a message (`<VT><ACK><FS><CR>`).
pub const COMMIT_ACK: &[u8] = &[0x06];

/// MLLP release 2 negative commit acknowledgement: the message was not committed and the
/// sender should send it again (`<VT><NAK><FS><CR>`).
pub const COMMIT_NAK: &[u8] = &[0x15];

/// What an MLLP release 2 reply block says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Committed.
    Ack,
    /// Not committed: send it again.
    Nak,
}

impl Commit {
    /// Reads a release 2 reply block; `None` if it is neither an ACK nor a NAK block.
    pub fn of(frame: &[u8]) -> Option<Commit> {
        match frame {
            COMMIT_ACK => Some(Commit::Ack),
            COMMIT_NAK => Some(Commit::Nak),
            _ => None,
        }
    }
}
