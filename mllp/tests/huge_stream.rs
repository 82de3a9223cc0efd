//! A sender that opens a frame and never closes it: 1 GiB of payload without an end block,
//! streamed into a real listener on 127.0.0.1. The listener must cut the connection once the
//! frame passes `max_frame_size` — long before the gigabyte is through — and the process's
//! memory must stay bounded by about one frame, not grow with the stream.
//!
//! The gigabyte is never allocated: one 256 KiB chunk is written again and again. The test has
//! this file (so its process) to itself, so the process's resident-memory figures from
//! `/proc/self/status` measure the listener and not some other test.

#![cfg(target_os = "linux")]

mod common;

use std::sync::atomic::Ordering;

use common::{Server, bounded, round_trip, settings};
use courier_mllp::ListenerSettings;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}: {line:?}"));
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_without_an_end_block_is_cut_at_the_frame_limit_in_bounded_memory() {
    let limit = 64 * 1024;
    let server = Server::start(ListenerSettings {
        max_frame_size: limit,
        ..settings()
    })
    .await;
    let rss_before = status_bytes("VmRSS");

    let mut stream = bounded("connect", TcpStream::connect(server.addr))
        .await
        .unwrap();
    bounded("start block", stream.write_all(&[0x0B]))
        .await
        .unwrap();
    let chunk = vec![b'A'; CHUNK];
    let mut sent: u64 = 0;
    // Each write is bounded: a listener that stopped reading without closing would block the
    // sender, and that must fail the test rather than hang it.
    let closed = loop {
        if sent >= GIB {
            break None;
        }
        match bounded("write", stream.write_all(&chunk)).await {
            Ok(()) => sent += CHUNK as u64,
            Err(e) => break Some(e),
        }
    };
    let hwm_after = status_bytes("VmHWM");

    let error = closed.unwrap_or_else(|| panic!("the listener took all of {sent} bytes"));
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "the write failed because the listener closed the connection: {error}"
    );
    // What got through is the limit plus what the two kernels' socket buffers held.
    assert!(
        sent < 64 * MIB,
        "closed only after {} MiB of a {limit}-byte limit",
        sent / MIB
    );
    assert!(sent >= limit as u64, "closed after {sent} bytes");
    let grown = hwm_after.saturating_sub(rss_before);
    eprintln!(
        "closed after {sent} bytes sent; peak resident memory {} KiB above the start",
        grown / 1024
    );
    assert!(
        grown < 64 * MIB,
        "peak memory grew by {} MiB while a {} MiB stream was refused",
        grown / MIB,
        sent / MIB
    );
    assert_eq!(
        server.handler.calls.load(Ordering::SeqCst),
        0,
        "no frame reached the handler"
    );

    // The listener itself keeps serving.
    let mut conn = common::connect(server.addr).await;
    assert_eq!(round_trip(&mut conn, "after").await, "after");
    server.stop().await;
}
