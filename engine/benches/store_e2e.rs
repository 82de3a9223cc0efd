//! End-to-end throughput with the store on (`after-store`, fsync on every group commit)
//! beside the same run with the store off, over 1 and 16 sender connections, in one run.
//!
//! `cargo bench -p courier --bench store_e2e` (add `-- --quick` for a short run). Everything
//! is on loopback in this process: senders → the engine (listener, route, destination
//! worker) → a sink that ACKs each message. Two figures per run: *accepted/s*, the rate at
//! which senders get their AA (what a sending system sees), and *delivered/s*, the rate at
//! which the sink has them all (end to end). The ratio store on / store off is what to read:
//! absolute figures depend on the machine and its disk.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::config::Config;
use courier::hl7::{AckCode, Message, build_ack};
use courier::mllp::{ClientSettings, Handler, ListenerSettings, MllpClient, PeerInfo};
use courier::runtime::Engine;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A receiving system that ACKs every message and counts them.
struct Sink {
    received: AtomicUsize,
    want: AtomicUsize,
    done: Notify,
}

impl Handler for Sink {
    async fn handle(&self, frame: Bytes, _peer: &PeerInfo) -> Option<Bytes> {
        let msg = Message::parse(frame).ok()?;
        let n = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.want.load(Ordering::SeqCst) {
            self.done.notify_one();
        }
        Some(build_ack(&msg, AckCode::AA, None, "SINK", "20261201000000"))
    }
}

fn message(sender: usize, i: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|REGADT|RIVERSIDE_FD|EMR|RIVERSIDE|20261201083012||ADT^A04^ADT_A01|S{sender}-{i}|P|2.5.1\r\
         EVN|A04|20261201083012\r\
         PID|1||{i}^^^RIVERSIDE^MR~99{i}^^^STATE^SS||Johnson^Sarah^Marie||19840312|F|||42 Elm Street^^Springfield^IL^62704^USA||(217)555-0143|||S||ACC{i}\r\
         PV1|1|O|CLINIC^101^A^RIVERSIDE||||1234^Patel^Anil^^^DR|||FAM||||1|||1234^Patel^Anil^^^DR|OP|V{i}|||||||||||||||||||||||||20261201083000\r"
    )
    .into_bytes()
}

struct Figures {
    accepted_per_s: f64,
    delivered_per_s: f64,
}

async fn run(store: bool, senders: usize, per_sender: usize, dir: &Path) -> Figures {
    let shutdown = CancellationToken::new();
    let sink = Arc::new(Sink {
        received: AtomicUsize::new(0),
        want: AtomicUsize::new(senders * per_sender),
        done: Notify::new(),
    });
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = socket.local_addr().unwrap();
    let mut settings = ListenerSettings::new("sink");
    settings.max_connections = 64;
    tokio::spawn(courier::mllp::serve(
        socket,
        settings,
        sink.clone(),
        shutdown.clone(),
    ));

    let text = format!(
        r#"
[engine]
watch = false
[store]
enabled = {store}
[[listener]]
name = "in"
bind = "127.0.0.1:0"
[[destination]]
name = "emr"
address = "{sink_addr}"
queue_capacity = 100000
[[route]]
name = "adt"
destinations = ["emr"]
"#
    );
    let path = dir.join(format!("bench-{store}-{senders}.toml"));
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    let engine = Engine::start(config).await.unwrap();
    let addr: SocketAddr = engine.listener_addr("in").unwrap();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::new(addr.to_string(), ClientSettings::default());
            for i in 0..per_sender {
                let reply = client
                    .request(&message(s, i), Duration::from_secs(30))
                    .await
                    .expect("an ACK");
                assert!(
                    reply.windows(6).any(|w| w == b"MSA|AA"),
                    "{}",
                    String::from_utf8_lossy(&reply)
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    let total = senders * per_sender;
    tokio::time::timeout(Duration::from_secs(300), async {
        while sink.received.load(Ordering::SeqCst) < total {
            sink.done.notified().await;
        }
    })
    .await
    .expect("the sink gets every message");
    let delivered = started.elapsed();
    engine.shutdown_token().cancel();
    engine.wait().await;
    shutdown.cancel();
    Figures {
        accepted_per_s: total as f64 / accepted.as_secs_f64(),
        delivered_per_s: total as f64 / delivered.as_secs_f64(),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("store_e2e: ~1 KB ADT^A04, loopback, one route, one destination");
    println!(
        "{:<14} {:>8} {:>16} {:>16} {:>16} {:>16} {:>8}",
        "connections",
        "messages",
        "off accepted/s",
        "off delivered/s",
        "on accepted/s",
        "on delivered/s",
        "ratio"
    );
    for (senders, per_sender) in [
        (1, if quick { 200 } else { 1000 }),
        (16, if quick { 50 } else { 250 }),
    ] {
        // Warm-up (connections, allocator, page cache), then the measured pair.
        rt.block_on(run(false, senders, per_sender / 10 + 1, dir.path()));
        let off = rt.block_on(run(false, senders, per_sender, dir.path()));
        let on = rt.block_on(run(true, senders, per_sender, dir.path()));
        println!(
            "{:<14} {:>8} {:>16.0} {:>16.0} {:>16.0} {:>16.0} {:>7.0}%",
            senders,
            senders * per_sender,
            off.accepted_per_s,
            off.delivered_per_s,
            on.accepted_per_s,
            on.delivered_per_s,
            100.0 * on.delivered_per_s / off.delivered_per_s,
        );
    }
    println!("ratio = store on / store off, delivered/s (end to end)");
}
