//! What the listener logs: each limit by name and value, bad framing by count, and never a
//! payload byte (payloads carry patient data). Captured with a minimal in-test subscriber.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::capture::{Line, capture, find};
use common::{Server, bounded, connect, expect_closed, round_trip, settings};
use courier_mllp::ListenerSettings;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Level;

/// Marks payload bytes: it must never reach a log line.
const PHI: &str = "SMITH^JOHN";

fn assert_no_payload(lines: &Mutex<Vec<Line>>) {
    let lines = lines.lock().unwrap();
    assert!(!lines.is_empty(), "nothing captured");
    for line in lines.iter() {
        assert!(
            !line.text.contains(PHI),
            "payload in a log line: {}",
            line.text
        );
        assert!(
            !line.text.contains("SMITH"),
            "payload in a log line: {}",
            line.text
        );
    }
}

#[tokio::test]
async fn limits_are_named_with_their_values() {
    let (lines, _guard) = capture();
    let server = Server::start(ListenerSettings {
        max_connections: 1,
        max_frame_size: 64,
        idle_timeout: Duration::from_millis(300),
        ..settings()
    })
    .await;

    // max_frame_size: a 200-byte frame from the only allowed connection.
    let mut big = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    let mut wire = vec![0x0B];
    wire.extend(PHI.repeat(20).as_bytes());
    bounded("write", big.write_all(&wire)).await.unwrap();
    expect_closed(&mut big).await;

    // max_connections: one held (a reply proves it); the next evicts it.
    let mut held = connect(server.addr).await;
    let msg = format!("PID|1||{PHI}");
    assert_eq!(round_trip(&mut held, &msg).await, msg);
    let mut newcomer = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    expect_closed(held.get_mut()).await;

    // idle_timeout: the newcomer goes quiet.
    expect_closed(&mut newcomer).await;
    server.stop().await;

    assert!(
        find(&lines, Level::WARN, &["max_frame_size", "64"]),
        "{:#?}",
        lines.lock().unwrap()
    );
    assert!(find(
        &lines,
        Level::WARN,
        &["limit=\"max_connections\"", "max_connections=1"]
    ));
    assert!(find(
        &lines,
        Level::INFO,
        &["limit=\"idle_timeout\"", "idle_timeout=300ms"]
    ));
    // The connection span carries listener, peer and connection id.
    assert!(find(
        &lines,
        Level::INFO,
        &[
            "span mllp_connection",
            "listener=test",
            "peer=127.0.0.1:",
            "connection_id="
        ]
    ));
    assert_no_payload(&lines);
}

#[tokio::test]
async fn bad_framing_is_logged_by_count_only() {
    let (lines, _guard) = capture();
    let server = Server::start(settings()).await;
    let mut conn = connect(server.addr).await;
    let mut wire = format!("{PHI} as garbage").into_bytes();
    let skipped = format!("skipped_bytes={}", wire.len());
    wire.extend(format!("\x0b{PHI} never closed").as_bytes()); // discarded
    wire.extend(format!("\x0bPID|{PHI}\x1c\r").as_bytes());
    bounded("write", conn.get_mut().write_all(&wire))
        .await
        .unwrap();
    let reply = bounded("reply", futures::StreamExt::next(&mut conn))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, format!("PID|{PHI}").as_bytes());

    // A truncated frame at close is reported by size.
    bounded(
        "write",
        conn.get_mut().write_all(format!("\x0b{PHI}").as_bytes()),
    )
    .await
    .unwrap();
    drop(conn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop().await;

    assert!(
        find(&lines, Level::WARN, &[&skipped]),
        "{:#?}",
        lines.lock().unwrap()
    );
    assert!(find(&lines, Level::WARN, &["discarded_frames=1"]));
    assert!(find(
        &lines,
        Level::WARN,
        &["inside a frame", "10 bytes buffered"]
    ));
    assert_no_payload(&lines);
}
