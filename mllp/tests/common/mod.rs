//! Shared helpers for the socket tests: a scripted handler, a server on 127.0.0.1:0, and
//! raw MLLP connections to poke at it.

#![allow(dead_code)] // each test file uses a different subset

pub mod capture;
pub mod pki;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use courier_mllp::{Handler, ListenerSettings, MllpCodec, PeerInfo, serve};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single step of a test, so a hang fails instead of stalling CI.
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `fut` under [`STEP`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Echoes each frame, driven by its payload:
/// `sleep <ms> <text>` sleeps then replies `<text>`; `silent` replies nothing; `big <n>`
/// replies `n` bytes; anything else is echoed. Records concurrency and the last connection
/// id, and signals when a slow frame has started.
#[derive(Default)]
pub struct Script {
    pub calls: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub slow_started: Notify,
    pub slow_finished: AtomicBool,
    pub last_connection_id: AtomicU64,
}

impl Handler for Script {
    async fn handle(&self, frame: Bytes, peer: &PeerInfo) -> Option<Bytes> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.last_connection_id
            .store(peer.connection_id, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let text = std::str::from_utf8(&frame).unwrap_or("").to_owned();
        let reply = if let Some(rest) = text.strip_prefix("sleep ") {
            let (ms, body) = rest.split_once(' ').unwrap_or((rest, ""));
            self.slow_started.notify_one();
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            self.slow_finished.store(true, Ordering::SeqCst);
            Some(Bytes::from(body.to_owned()))
        } else if let Some(n) = text.strip_prefix("big ") {
            Some(Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]))
        } else if text == "silent" {
            None
        } else {
            Some(frame)
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        reply
    }
}

/// A listener running on its own task.
pub struct Server {
    pub addr: SocketAddr,
    pub handler: Arc<Script>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and serves with `settings`.
    pub async fn start(settings: ListenerSettings) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, settings)
    }

    /// Serves on an already bound listener.
    pub fn start_on(listener: TcpListener, settings: ListenerSettings) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let handler = Arc::new(Script::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            settings,
            Arc::clone(&handler),
            shutdown.clone(),
        ));
        Self {
            addr,
            handler,
            shutdown,
            task,
        }
    }

    /// Cancels shutdown and waits for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        bounded("serve() to return", self.task)
            .await
            .expect("serve task panicked")
            .expect("serve returned an error");
    }
}

pub fn settings() -> ListenerSettings {
    ListenerSettings {
        idle_timeout: Duration::from_secs(30),
        ..ListenerSettings::new("test")
    }
}

/// A raw MLLP connection to `addr`.
pub async fn connect(addr: SocketAddr) -> Framed<TcpStream, MllpCodec> {
    let stream = bounded("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    Framed::new(stream, MllpCodec::default())
}

/// Sends one frame and returns the reply's payload.
pub async fn round_trip(conn: &mut Framed<TcpStream, MllpCodec>, payload: &str) -> String {
    bounded("send", conn.send(payload.as_bytes()))
        .await
        .expect("send");
    let reply = bounded("reply", conn.next())
        .await
        .expect("connection closed before the reply")
        .expect("reply decodes");
    String::from_utf8(reply.to_vec()).expect("utf-8 reply")
}

/// Waits until the server closes `stream` (end of stream or reset), failing on any data.
pub async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match bounded("server to close the connection", stream.read(&mut buf)).await {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection closed, got {n} bytes"),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("unexpected error waiting for close: {e}"),
    }
}
