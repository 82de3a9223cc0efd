//! Delivery: a destination that is down and then comes up, backpressure when its queue is
//! full, AE/AR/MSA-2 handling, and a graceful shutdown that drains the queues.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// `store`: false runs with the bounded in-memory queues (where backpressure applies).
fn config(dest: SocketAddr, queue_capacity: usize, store: bool) -> String {
    format!(
        r#"
[engine]
shutdown_grace = "5s"

[store]
enabled = {store}

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "emr"
address = "{dest}"
ack_timeout = "2s"
connect_timeout = "1s"
queue_capacity = {queue_capacity}
retry = {{ initial = "100ms", max = "400ms" }}

[[route]]
name = "all"
destinations = ["emr"]
"#
    )
}

#[test]
fn destination_down_then_up_gets_everything_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dest: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (engine, addr) = start_engine(tmp.path(), &config(dest, 100, true), "in");
    let mut c = Mllp::connect(addr);
    let sent: Vec<_> = (1..=5).map(|i| adt(&format!("DOWN{i}"))).collect();
    for (i, m) in sent.iter().enumerate() {
        let ack = c.request(m);
        assert_eq!(field(&ack, "MSA", 1), "AA", "message {i} queued while down");
    }
    engine.wait_line(Duration::from_secs(10), |l| {
        l.contains("will retry").then_some(())
    });
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, _) = standin("emr", &out, port, &[]);
    assert_eq!(wait_files(&out, 5, Duration::from_secs(30)), sent);
}

/// A receiver that answers AE to the first attempt of `fail_once` and AA to everything else,
/// and records the control ids in the order they arrive.
fn flaky_receiver(port: u16, fail_once: &'static str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let socket = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let record = seen.clone();
    std::thread::spawn(move || {
        let failed = Arc::new(AtomicBool::new(false));
        for stream in socket.incoming() {
            let Ok(stream) = stream else { return };
            let (record, failed) = (record.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut conn = Mllp::from_stream(stream);
                while let Some(frame) = conn.recv(Duration::from_secs(30)) {
                    let id = field(&frame, "MSH", 10);
                    record.lock().unwrap().push(id.clone());
                    let code = if id == fail_once && !failed.swap(true, Ordering::SeqCst) {
                        "AE"
                    } else {
                        "AA"
                    };
                    conn.send(
                        format!(
                            "MSH|^~\\&|EMR|EMR|COURIER|RIVERSIDE|20261202||ACK|R{id}|P|2.5.1\rMSA|{code}|{id}\r"
                        )
                        .as_bytes(),
                    );
                }
            });
        }
    });
    seen
}

/// Deliveries are claimed from the store in batches; under strict order a delivery that fails
/// in the middle of a batch holds back the rest of it until it has gone through.
#[test]
fn a_failure_mid_batch_holds_back_the_rest_under_strict_order() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dest: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (engine, addr) = start_engine(tmp.path(), &config(dest, 100, true), "in");
    let mut c = Mllp::connect(addr);
    // Queued while the destination is down, so the worker claims them together once it is up.
    let ids: Vec<String> = (1..=10).map(|i| format!("B{i}")).collect();
    for id in &ids {
        assert_eq!(field(&c.request(&adt(id)), "MSA", 1), "AA");
    }
    engine.wait_line(Duration::from_secs(10), |l| {
        l.contains("will retry").then_some(())
    });
    let seen = flaky_receiver(port, "B3");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 11 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut want: Vec<&str> = vec!["B1", "B2", "B3", "B3"];
    want.extend(ids[3..].iter().map(String::as_str));
    assert_eq!(*seen.lock().unwrap(), want);
}

#[test]
fn a_full_queue_slows_the_sender_instead_of_dropping() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dest: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_engine, addr) = start_engine(tmp.path(), &config(dest, 2, false), "in");
    let mut c = Mllp::connect(addr);
    // One message is being retried by the worker and two wait in the queue...
    for i in 1..=3 {
        assert_eq!(field(&c.request(&adt(&format!("BP{i}"))), "MSA", 1), "AA");
    }
    // ...so the fourth is held: no ACK while the destination is down.
    c.send(&adt("BP4"));
    assert_eq!(c.recv(Duration::from_millis(1500)), None, "backpressure");
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, _) = standin("emr", &out, port, &[]);
    // Once the destination is up the held message is taken and acknowledged.
    let ack = c
        .recv(Duration::from_secs(30))
        .expect("ACK after the queue drained");
    assert_eq!(field(&ack, "MSA", 2), "BP4");
    let got = wait_files(&out, 4, Duration::from_secs(30));
    assert_eq!(
        got,
        (1..=4).map(|i| adt(&format!("BP{i}"))).collect::<Vec<_>>()
    );
}

#[test]
fn ae_is_retried_and_ar_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let (mut nak, dest) = standin("emr-ae", &out, port, &["--ack", "AE"]);
    let (engine, addr) = start_engine(tmp.path(), &config(dest, 10, true), "in");
    let mut c = Mllp::connect(addr);
    assert_eq!(field(&c.request(&adt("AE1")), "MSA", 1), "AA");
    // The AE stand-in stores each attempt: wait for two, proving the retry.
    wait_files(&out, 2, Duration::from_secs(20));
    nak.signal("KILL");
    nak.wait_exit(Duration::from_secs(10));
    let ok_dir = tmp.path().join("emr-ok");
    std::fs::create_dir_all(&ok_dir).unwrap();
    let (_ok, _) = standin("emr-ok", &ok_dir, port, &[]);
    assert_eq!(
        wait_files(&ok_dir, 1, Duration::from_secs(20)),
        [adt("AE1")]
    );
    engine.wait_line(Duration::from_secs(10), |l| {
        (l.contains("\"delivered\"") && l.contains("AE1")).then_some(())
    });
    drop(engine);

    // AR: logged as rejected, tried exactly once.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_ar, dest) = standin("emr-ar", &out, 0, &["--ack", "AR"]);
    let (engine, addr) = start_engine(tmp.path(), &config(dest, 10, true), "in");
    let mut c = Mllp::connect(addr);
    assert_eq!(field(&c.request(&adt("AR1")), "MSA", 1), "AA");
    engine.wait_line(Duration::from_secs(10), |l| {
        (l.contains("rejected") && l.contains("AR1")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "AR is not retried"
    );
}

#[test]
fn a_mismatched_msa2_never_counts_as_delivered() {
    // A receiver that first answers AA for the wrong control id, then the right one.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = server.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut received = 0;
        for reply_id in ["SOMETHING-ELSE", "MM1"] {
            let (mut s, _) = server.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(2).any(|w| w == [0x1c, 0x0d]) {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            received += 1;
            let ack = format!(
                "\x0bMSH|^~\\&|EMR|X|COURIER|Y|20261124||ACK^A04^ACK|A{received}|P|2.5.1\rMSA|AA|{reply_id}\r\x1c\r"
            );
            s.write_all(ack.as_bytes()).unwrap();
            // Keep the connection open; the engine must drop it itself on a mismatch.
            std::thread::sleep(Duration::from_millis(50));
        }
        received
    });
    let tmp = tempfile::tempdir().unwrap();
    let (engine, addr) = start_engine(tmp.path(), &config(dest, 10, true), "in");
    let mut c = Mllp::connect(addr);
    assert_eq!(field(&c.request(&adt("MM1")), "MSA", 1), "AA");
    engine.wait_line(Duration::from_secs(20), |l| {
        (l.contains("does not match the control id sent") && l.contains("MM1")).then_some(())
    });
    engine.wait_line(Duration::from_secs(20), |l| {
        (l.contains("\"delivered\"") && l.contains("MM1")).then_some(())
    });
    assert_eq!(receiver.join().unwrap(), 2, "sent again after the mismatch");
}

#[test]
fn sigterm_finishes_the_queue_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, dest) = standin("emr", &out, 0, &[]);
    let (mut engine, addr) = start_engine(tmp.path(), &config(dest, 100, true), "in");
    let mut c = Mllp::connect(addr);
    let sent: Vec<_> = (1..=20).map(|i| adt(&format!("TERM{i}"))).collect();
    for m in &sent {
        assert_eq!(field(&c.request(m), "MSA", 1), "AA");
    }
    engine.signal("TERM");
    let status = engine.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(wait_files(&out, 20, Duration::from_secs(5)), sent);
    assert!(engine.stderr_text().contains("\"stopped\""));
    // The listener is closed.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// An idle engine stops at once on SIGTERM: nothing (the pruner, the alert checks) holds the
/// shutdown for its whole grace period.
#[test]
fn an_idle_engine_stops_promptly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dest: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text =
        config(dest, 10, true).replace("shutdown_grace = \"5s\"", "shutdown_grace = \"120s\"");
    let (mut engine, _) = start_engine(tmp.path(), &text, "in");
    engine.signal("TERM");
    // Well under the 120 s grace: nothing is queued, so nothing should wait for it.
    assert!(engine.wait_exit(Duration::from_secs(60)).success());
}
