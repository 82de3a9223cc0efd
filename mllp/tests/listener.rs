//! The listener over real TCP on 127.0.0.1: replies, ordering, the connection limit, the
//! idle timeout, the frame size limit and bad framing on the wire.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Server, bounded, connect, expect_closed, round_trip, settings};
use courier_mllp::ListenerSettings;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn frame(payload: &str) -> Vec<u8> {
    let mut v = vec![0x0B];
    v.extend_from_slice(payload.as_bytes());
    v.extend_from_slice(&[0x1C, 0x0D]);
    v
}

#[tokio::test]
async fn echoes_each_frame_on_one_connection() {
    let server = Server::start(settings()).await;
    let mut conn = connect(server.addr).await;
    for i in 0..5 {
        let msg = format!("MSH|^~\\&|LAB|{i}\r");
        assert_eq!(round_trip(&mut conn, &msg).await, msg);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_frame_without_reply_gets_none_and_the_next_is_answered() {
    let server = Server::start(settings()).await;
    let mut conn = connect(server.addr).await;
    bounded("send", conn.send(&b"silent"[..])).await.unwrap();
    assert_eq!(round_trip(&mut conn, "ping").await, "ping");
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_frames_are_handled_one_at_a_time_and_answered_in_order() {
    let server = Server::start(settings()).await;
    let mut conn = connect(server.addr).await;
    // Later frames are faster, so any overlap would reorder the replies.
    let mut wire = Vec::new();
    for i in 0..5 {
        wire.extend(frame(&format!("sleep {} reply-{i}", 50 - i * 10)));
    }
    bounded("write", conn.get_mut().write_all(&wire))
        .await
        .unwrap();
    for i in 0..5 {
        let reply = bounded("reply", conn.next()).await.unwrap().unwrap();
        assert_eq!(&reply[..], format!("reply-{i}").as_bytes());
    }
    assert_eq!(server.handler.max_in_flight.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_framing_on_the_wire_is_skipped_and_resynchronised() {
    let server = Server::start(settings()).await;
    let mut conn = connect(server.addr).await;
    let mut wire = b"line noise".to_vec();
    wire.extend(b"\x0bnever closed"); // resynchronised away by the next start block
    wire.extend(frame("one"));
    wire.extend(b"\n");
    wire.extend(b"\x0btwo\x1c"); // no <CR>
    wire.extend(frame("three"));
    bounded("write", conn.get_mut().write_all(&wire))
        .await
        .unwrap();
    for want in ["one", "two", "three"] {
        let reply = bounded("reply", conn.next()).await.unwrap().unwrap();
        assert_eq!(&reply[..], want.as_bytes());
    }
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test]
async fn when_full_a_new_connection_evicts_the_one_longest_without_a_frame() {
    let server = Server::start(ListenerSettings {
        max_connections: 2,
        ..settings()
    })
    .await;
    let mut first = connect(server.addr).await;
    let mut second = connect(server.addr).await;
    // A reply proves each holds a slot; `second` has the more recent frame.
    assert_eq!(round_trip(&mut first, "a").await, "a");
    assert_eq!(round_trip(&mut second, "b").await, "b");

    // The listener is full: the newcomer takes the place of `first`, idle longest.
    let mut third = connect(server.addr).await;
    assert_eq!(round_trip(&mut third, "c").await, "c");
    expect_closed(first.get_mut()).await;
    assert_eq!(round_trip(&mut second, "d").await, "d");
    assert_eq!(round_trip(&mut third, "e").await, "e");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_handling_a_message_is_never_evicted() {
    let server = Server::start(ListenerSettings {
        max_connections: 1,
        ..settings()
    })
    .await;
    let mut busy = connect(server.addr).await;
    bounded("send", busy.send(&b"sleep 600 done"[..]))
        .await
        .unwrap();
    bounded(
        "the slow frame to start",
        server.handler.slow_started.notified(),
    )
    .await;

    // Full, and the only connection is busy: the newcomer is the one closed.
    let mut refused = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    expect_closed(&mut refused).await;
    let reply = bounded("reply", busy.next()).await.unwrap().unwrap();
    assert_eq!(&reply[..], b"done");

    // Once idle, it is the one that makes room.
    let mut newcomer = connect(server.addr).await;
    assert_eq!(round_trip(&mut newcomer, "x").await, "x");
    expect_closed(busy.get_mut()).await;
    server.stop().await;
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let server = Server::start(ListenerSettings {
        idle_timeout: idle,
        ..settings()
    })
    .await;

    // Traffic keeps a connection open past the timeout: it counts from the last frame.
    let mut busy = connect(server.addr).await;
    let started = Instant::now();
    while started.elapsed() < idle * 2 {
        assert_eq!(round_trip(&mut busy, "keepalive").await, "keepalive");
        tokio::time::sleep(idle / 4).await;
    }

    let opened = Instant::now();
    let mut quiet = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    expect_closed(&mut quiet).await;
    let waited = opened.elapsed();
    assert!(
        waited >= idle - Duration::from_millis(50),
        "closed after {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn oversize_frame_closes_that_connection_only() {
    let server = Server::start(ListenerSettings {
        max_frame_size: 1024,
        ..settings()
    })
    .await;
    let mut good = connect(server.addr).await;
    assert_eq!(round_trip(&mut good, "before").await, "before");

    // At the limit is fine.
    let at_limit = "x".repeat(1024);
    assert_eq!(round_trip(&mut good, &at_limit).await, at_limit);

    // Over the limit, and no end block ever: closed without waiting for one.
    let mut bad = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    let mut wire = vec![0x0B];
    wire.extend(std::iter::repeat_n(b'A', 4096));
    bounded("write", bad.write_all(&wire)).await.unwrap();
    expect_closed(&mut bad).await;

    assert_eq!(round_trip(&mut good, "after").await, "after");
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test]
async fn serve_connection_works_over_any_stream() {
    // An in-memory pipe stands in for TLS: the connection loop only needs AsyncRead + Write.
    let (client_side, server_side) = tokio::io::duplex(64);
    let handler = common::Script::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let peer = courier_mllp::PeerInfo {
        listener: "in-memory".into(),
        peer: "127.0.0.1:1".parse().unwrap(),
        connection_id: 7,
    };
    let settings = settings();
    let serving = courier_mllp::serve_connection(server_side, peer, &settings, &handler, &shutdown);
    let talking = async {
        let mut conn =
            tokio_util::codec::Framed::new(client_side, courier_mllp::MllpCodec::default());
        conn.send(&b"over a pipe"[..]).await.unwrap();
        let reply = conn.next().await.unwrap().unwrap();
        assert_eq!(&reply[..], b"over a pipe");
        // Closing our side ends the connection cleanly.
    };
    let (outcome, ()) = bounded("pipe round trip", async { tokio::join!(serving, talking) }).await;
    outcome.expect("clean close");
    assert_eq!(handler.last_connection_id.load(Ordering::SeqCst), 7);
}
