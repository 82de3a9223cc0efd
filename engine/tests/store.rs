//! The store's promises seen from outside: duplicates get the original ACK, pass-through
//! relays the destination's ACK, and a full store answers AE — never AA for a message it
//! did not keep — while the engine keeps serving.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

fn config(dest: SocketAddr, listener_extra: &str, store_extra: &str) -> String {
    format!(
        r#"
[store]
{store_extra}

[[listener]]
name = "in"
bind = "127.0.0.1:0"
{listener_extra}

[[destination]]
name = "emr"
address = "{dest}"
ack_timeout = "3s"
retry = {{ initial = "50ms", max = "200ms" }}

[[route]]
name = "all"
destinations = ["emr"]
"#
    )
}

/// An engine with `duplicate_window = "1h"` whose one route goes to a stand-in writing what
/// it gets to `emr/` in the returned directory.
fn with_duplicate_window() -> (tempfile::TempDir, Proc, Proc, SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let (emr, dest) = standin("emr", &tmp.path().join("emr"), 0, &[]);
    let (engine, addr) = start_engine(
        tmp.path(),
        &config(dest, "duplicate_window = \"1h\"", ""),
        "in",
    );
    (tmp, emr, engine, addr)
}

#[test]
fn a_duplicate_gets_the_original_ack_and_is_not_sent_again() {
    let (tmp, _emr, _engine, addr) = with_duplicate_window();
    let out = tmp.path().join("emr");
    let mut c = Mllp::connect(addr);
    let first = c.request(&adt("DUP1"));
    assert_eq!(field(&first, "MSA", 1), "AA");
    wait_files(&out, 1, Duration::from_secs(20));
    let again = c.request(&adt("DUP1"));
    assert_eq!(again, first, "the original ACK, byte for byte");
    // A different sender may reuse the control id: that is not a duplicate.
    let other = String::from_utf8(adt("DUP1"))
        .unwrap()
        .replace("REGADT", "OTHERAPP");
    assert_eq!(field(&c.request(other.as_bytes()), "MSA", 1), "AA");
    wait_files(&out, 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

/// Copies of one message arriving at the same moment on several connections: the duplicate
/// check is part of the store write, so exactly one is stored and sent, and every copy gets
/// the stored one's ACK. (With the check as a read before the steps, copies that arrived
/// within one message's processing time were all stored.)
#[test]
fn copies_arriving_together_are_stored_and_sent_once() {
    let (tmp, _emr, _engine, addr) = with_duplicate_window();
    let out = tmp.path().join("emr");
    const COPIES: usize = 6;
    for round in 0..3 {
        let control = format!("TWIN{round}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(COPIES));
        let senders: Vec<_> = (0..COPIES)
            .map(|_| {
                let barrier = barrier.clone();
                let message = adt(&control);
                std::thread::spawn(move || {
                    let mut c = Mllp::connect(addr);
                    barrier.wait();
                    c.request(&message)
                })
            })
            .collect();
        let acks: Vec<Vec<u8>> = senders.into_iter().map(|s| s.join().unwrap()).collect();
        assert_eq!(field(&acks[0], "MSA", 1), "AA");
        assert!(
            acks.iter().all(|a| *a == acks[0]),
            "every copy gets the stored one's ACK"
        );
        wait_files(&out, round + 1, Duration::from_secs(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        3,
        "one delivery per message"
    );
}

#[test]
fn after_delivery_relays_the_destinations_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    let (_emr, dest) = standin("emr", &out, 0, &["--ack", "AR"]);
    let (_engine, addr) = start_engine(
        tmp.path(),
        &config(dest, "ack_policy = \"after-delivery\"", ""),
        "in",
    );
    let mut c = Mllp::connect(addr);
    let ack = c.request(&adt("PASS1"));
    // The EMR's own ACK (its MSH-10 starts with LSN, as `courier listen` makes them).
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "MSA", 2), "PASS1");
    assert!(
        field(&ack, "MSH", 10).starts_with("LSN"),
        "relayed as it is"
    );

    // Destination down: AE after delivery_wait; the message stays queued.
    let tmp2 = tempfile::tempdir().unwrap();
    let port = free_port();
    let down: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_engine2, addr2) = start_engine(
        tmp2.path(),
        &config(
            down,
            "ack_policy = \"after-delivery\"\ndelivery_wait = \"500ms\"",
            "",
        ),
        "in",
    );
    let ack = Mllp::connect(addr2).request(&adt("PASS2"));
    assert_eq!(field(&ack, "MSA", 1), "AE");
    let out2 = tmp2.path().join("emr");
    let (_emr2, _) = standin("emr2", &out2, port, &[]);
    assert_eq!(
        wait_files(&out2, 1, Duration::from_secs(20)),
        [adt("PASS2")]
    );
}

#[test]
fn a_full_store_answers_ae_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    let (_emr, dest) = standin("emr", &out, 0, &[]);
    let (engine, addr) = start_engine(
        tmp.path(),
        &config(dest, "", "max_size_bytes = 262144"),
        "in",
    );
    let mut c = Mllp::connect(addr);
    let mut accepted = HashSet::new();
    let mut refused = 0;
    // Large messages fill the capped store quickly.
    let big = |id: &str| {
        let mut m = adt(id);
        m.extend_from_slice(b"NTE|1||");
        m.extend(std::iter::repeat_n(b'x', 8000));
        m.push(b'\r');
        m
    };
    for n in 1..=80 {
        let id = format!("FULL{n}");
        let ack = c.request(&big(&id));
        match field(&ack, "MSA", 1).as_str() {
            "AA" => {
                accepted.insert(id);
            }
            "AE" => {
                refused += 1;
                assert!(String::from_utf8_lossy(&ack).contains("could not be stored"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the cap was never reached");
    assert!(!accepted.is_empty());
    engine.wait_line(Duration::from_secs(5), |l| {
        l.contains("cannot store the message").then_some(())
    });
    // Everything that got AA is delivered; nothing refused is.
    let got = wait_files(&out, accepted.len(), Duration::from_secs(30));
    assert_eq!(got.len(), accepted.len());
    // The listener still answers (here: still full, so AE).
    assert_eq!(field(&c.request(&adt("AFTER")), "MSA", 1).len(), 2);
}

/// `courier messages` beside a running engine: list and show what was stored, retry the
/// deliveries a receiver rejected, and resend a delivered message to its destination.
#[test]
fn messages_cli_lists_shows_retries_and_resends_while_the_engine_runs() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    let port = free_port();
    let (mut rejecting, dest) = standin("emr-ar", &out, port, &["--ack", "AR"]);
    let (_engine, addr) = start_engine(tmp.path(), &config(dest, "", ""), "in");
    let cfg = tmp.path().join("courier.toml");
    let courier = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("messages")
            .args(["--config", cfg.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "courier messages {args:?} failed");
        String::from_utf8(o.stdout).unwrap()
    };
    let mut c = Mllp::connect(addr);
    assert_eq!(field(&c.request(&adt("CLI1")), "MSA", 1), "AA");
    wait_files(&out, 1, Duration::from_secs(20));
    // The rejection is recorded (dead letter) — wait until the store says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let l = courier(&["list", "--delivery", "error"]);
        if l.contains("CLI1") {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no errored delivery listed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let id = listed
        .lines()
        .find(|l| l.contains("CLI1"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let shown = courier(&["show", &id]);
    assert!(shown.contains("control id CLI1"), "{shown}");
    assert!(shown.contains("emr via all: error"), "{shown}");
    assert!(shown.contains("ACK AR"), "{shown}");
    assert!(shown.contains("PID|1||100234"), "raw shown: {shown}");

    // The EMR is fixed: retry the errored delivery.
    rejecting.signal("KILL");
    rejecting.wait_exit(Duration::from_secs(10));
    let fixed_out = tmp.path().join("emr-fixed");
    let (_fixed, _) = standin("emr-fixed", &fixed_out, port, &[]);
    assert!(courier(&["retry", "--status", "error"]).contains("queued 1 errored delivery"));
    assert_eq!(
        wait_files(&fixed_out, 1, Duration::from_secs(20)),
        [adt("CLI1")]
    );

    // And resend it once more on request.
    assert!(courier(&["resend", &id, "--to", "emr"]).contains("queued 1 new delivery"));
    assert_eq!(wait_files(&fixed_out, 2, Duration::from_secs(20)).len(), 2);
    let shown = courier(&["show", &id]);
    assert_eq!(shown.matches("delivered after").count(), 2, "{shown}");

    // What the operator did is in the audit log, newest first, without patient data.
    let audit = courier(&["audit"]);
    let actions: Vec<&str> = audit
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
        .collect();
    assert_eq!(actions, ["view", "resend", "retry", "view"], "{audit}");
    assert!(audit.lines().all(|l| l.contains("cli:")), "{audit}");
    assert!(!audit.contains("100234"), "{audit}");
    assert_eq!(courier(&["audit", "--message", &id]).lines().count(), 3);
}
