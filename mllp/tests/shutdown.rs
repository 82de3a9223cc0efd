//! Graceful shutdown over real TCP: the frame in flight is finished and answered, idle and
//! half-received connections close at once, new connections are refused, and `serve`
//! returns only when every connection is done.

mod common;

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, bounded, connect, expect_closed, round_trip, settings};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn frame_in_flight_is_answered_before_serve_returns() {
    let server = Server::start(settings()).await;
    let handler = std::sync::Arc::clone(&server.handler);

    let mut idle = connect(server.addr).await;
    assert_eq!(round_trip(&mut idle, "hello").await, "hello");

    let mut busy = connect(server.addr).await;
    bounded("send", busy.send(&b"sleep 1500 ack-1"[..]))
        .await
        .unwrap();
    bounded("slow handler to start", handler.slow_started.notified()).await;

    server.shutdown.cancel();

    // The idle connection closes at once, while the slow frame is still with the handler.
    expect_closed(idle.get_mut()).await;
    assert!(!handler.slow_finished.load(Ordering::SeqCst));

    // The listener stops accepting at once too.
    bounded("new connections to be refused", async {
        loop {
            match TcpStream::connect(server.addr).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert!(!handler.slow_finished.load(Ordering::SeqCst));
    assert!(
        !server.task.is_finished(),
        "serve returned with a frame in flight"
    );

    // The frame in flight gets its reply, then the connection closes.
    let reply = bounded("reply", busy.next()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"ack-1");
    assert!(bounded("close", busy.next()).await.is_none());

    bounded("serve() to return", server.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn partly_received_frame_is_dropped_at_shutdown() {
    let server = Server::start(settings()).await;
    let mut partial = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    bounded("write", partial.write_all(b"\x0bMSH|half a mess"))
        .await
        .unwrap();
    // Let the server read it (a round trip on another connection orders us after the accept).
    let mut other = connect(server.addr).await;
    assert_eq!(round_trip(&mut other, "sync").await, "sync");

    let handler = std::sync::Arc::clone(&server.handler);
    server.shutdown.cancel();
    expect_closed(&mut partial).await;
    bounded("serve() to return", server.task)
        .await
        .unwrap()
        .unwrap();
    // Only the "sync" frame reached the handler; the unfinished one was never acknowledged.
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn serve_returns_at_once_without_connections() {
    let server = Server::start(settings()).await;
    server.stop().await;
}
