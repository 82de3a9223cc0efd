//! What the listener logs: each limit by name and value, bad framing by count, and never a
//! payload byte (payloads carry patient data). Captured with a minimal in-test subscriber.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, bounded, connect, expect_closed, round_trip, settings};
use courier_mllp::ListenerSettings;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Marks payload bytes: it must never reach a log line.
const PHI: &str = "SMITH^JOHN";

#[derive(Debug, Clone)]
struct Line {
    level: Level,
    text: String,
}

/// Records every event and span as `name=value` text.
#[derive(Default)]
struct Capture {
    lines: Arc<Mutex<Vec<Line>>>,
    next_span: std::sync::atomic::AtomicU64,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl Capture {
    fn push(&self, level: Level, text: String) {
        self.lines.lock().unwrap().push(Line { level, text });
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut fields);
        self.push(*attrs.metadata().level(), fields.0);
        Id::from_u64(
            1 + self
                .next_span
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        )
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut fields = Fields("record".to_owned());
        values.record(&mut fields);
        self.push(Level::TRACE, fields.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.push(*event.metadata().level(), fields.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Captures everything logged on this thread (tests run on a current-thread runtime, so
/// that includes the server's tasks) until the guard drops.
fn capture() -> (Arc<Mutex<Vec<Line>>>, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let lines = Arc::clone(&capture.lines);
    (lines, tracing::subscriber::set_default(capture))
}

fn find(lines: &Mutex<Vec<Line>>, level: Level, needles: &[&str]) -> bool {
    lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.level == level && needles.iter().all(|n| l.text.contains(n)))
}

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

    // max_connections: one held (a reply proves it), the next refused.
    let mut held = connect(server.addr).await;
    let msg = format!("PID|1||{PHI}");
    assert_eq!(round_trip(&mut held, &msg).await, msg);
    let mut refused = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    expect_closed(&mut refused).await;

    // idle_timeout: the held connection goes quiet.
    expect_closed(held.get_mut()).await;
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
