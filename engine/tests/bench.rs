//! `courier bench` against real receivers: every message sent once with a unique control id,
//! every ACK checked (an AE, or an AA for the wrong MSA-2, is an error, not a success), and the
//! figures printed as JSON.

mod support;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn bench(args: &[&str]) -> (bool, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

#[test]
fn every_message_is_sent_once_and_every_ack_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rx");
    let (_rx, addr) = standin("rx", &out, 0, &[]);
    let to = addr.to_string();
    let (ok, v) = bench(&[
        "--to",
        &to,
        "--connections",
        "4",
        "--in-flight",
        "4",
        "--messages",
        "300",
    ]);
    assert!(ok, "{v}");
    assert_eq!(v["accepted"], 300, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["messages_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() >= v["latency_ms"]["p50"].as_f64().unwrap());
    let files = wait_files(&out, 300, Duration::from_secs(20));
    let ids: HashSet<String> = files.iter().map(|m| field(m, "MSH", 10)).collect();
    assert_eq!(ids.len(), 300, "control ids are unique");
    // The built-in corpus takes turns: registrations, orders and results.
    let types: HashSet<String> = files.iter().map(|m| field(m, "MSH", 9)).collect();
    assert_eq!(types.len(), 3, "{types:?}");

    // A corpus of the example messages.
    let sarah = repo().join("examples/messages/adt_a04_sarah.hl7");
    let (ok, v) = bench(&[
        "--to",
        &to,
        "--messages",
        "5",
        "--corpus",
        sarah.to_str().unwrap(),
    ]);
    assert!(ok && v["accepted"] == 5, "{v}");
}

#[test]
fn an_ae_or_a_wrong_msa_2_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ae, ae) = standin("ae", &tmp.path().join("ae"), 0, &["--ack", "AE"]);
    let (ok, v) = bench(&["--to", &ae.to_string(), "--messages", "10"]);
    assert!(!ok);
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["errors_by_kind"]["AE"], 10, "{v}");

    // A receiver that acknowledges something else than what was sent.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let wrong = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in socket.incoming() {
            let Ok(stream) = stream else { return };
            let mut conn = Mllp::from_stream(stream);
            while conn.recv(Duration::from_secs(10)).is_some() {
                conn.send(b"MSH|^~\\&|RX|RX|B|B|20261202||ACK|1|P|2.5.1\rMSA|AA|SOMETHING-ELSE\r");
            }
        }
    });
    let (ok, v) = bench(&["--to", &wrong.to_string(), "--messages", "4"]);
    assert!(!ok);
    assert_eq!(v["accepted"], 0);
    assert_eq!(v["errors_by_kind"]["MSA-2 mismatch"], 4, "{v}");

    // Nobody listening.
    let (ok, v) = bench(&[
        "--to",
        &format!("127.0.0.1:{}", free_port()),
        "--messages",
        "3",
    ]);
    assert!(!ok);
    assert_eq!(v["errors_by_kind"]["connect: connection refused"], 1, "{v}");
}
