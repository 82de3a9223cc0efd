//! `courier send` reads every form a clinic's files come in — one message, several, an
//! FHS/BHS batch, MLLP frames, `\n` line endings — and exits non-zero on any NAK; a listener
//! in strict mode refuses `\n` terminators with the position, in lenient mode accepts them.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

fn send(files: &[&Path], to: std::net::SocketAddr, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("send")
        .args(files)
        .args(["--to", &to.to_string()])
        .args(extra)
        .output()
        .unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn codes(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap_or("").to_owned())
        .collect()
}

#[test]
fn send_reads_several_messages_batches_frames_and_newlines() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("rx");
    let (_rx, addr) = standin("rx", &out_dir, 0, &[]);
    let m = |id: &str| String::from_utf8(adt(id)).unwrap();

    let several = tmp.path().join("several.hl7");
    std::fs::write(
        &several,
        format!("{}\n{}", m("S1"), m("S2")).replace('\r', "\n"),
    )
    .unwrap();
    let batch = tmp.path().join("batch.hl7");
    std::fs::write(
        &batch,
        format!(
            "FHS|^~\\&|REGADT|RIVERSIDE\rBHS|^~\\&|REGADT|RIVERSIDE\r{}{}{}BTS|3\rFTS|1\r",
            m("B1"),
            m("B2"),
            m("B3")
        ),
    )
    .unwrap();
    let framed = tmp.path().join("framed.mllp");
    std::fs::write(
        &framed,
        format!("\x0b{}\x1c\r\x0b{}\x1c\r", m("F1"), m("F2")),
    )
    .unwrap();

    let out = send(&[&several, &batch, &framed], addr, &[]);
    assert!(out.status.success());
    assert_eq!(codes(&out), ["AA"; 7]);
    let got = wait_files(&out_dir, 7, Duration::from_secs(20));
    let expected: Vec<_> = ["S1", "S2", "B1", "B2", "B3", "F1", "F2"]
        .iter()
        .map(|id| adt(id))
        .collect();
    assert_eq!(
        got, expected,
        "sent in order, line endings normalised to \\r"
    );

    // A batch whose trailer count is wrong is refused before anything is sent.
    let bad_batch = tmp.path().join("bad-batch.hl7");
    std::fs::write(&bad_batch, format!("BHS|^~\\&|X\r{}BTS|2\r", m("X1"))).unwrap();
    let out = send(&[&bad_batch], addr, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BTS"));
}

#[test]
fn send_exits_non_zero_on_a_nak() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rx, addr) = standin("rx", &tmp.path().join("rx"), 0, &["--ack", "AE"]);
    let file = tmp.path().join("one.hl7");
    std::fs::write(&file, adt("N1")).unwrap();
    let out = send(&[&file], addr, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(codes(&out), ["AE"]);

    let junk = tmp.path().join("junk.txt");
    std::fs::write(&junk, "not a message").unwrap();
    let (_rx2, addr2) = standin("rx2", &tmp.path().join("rx2"), 0, &[]);
    let out = send(&[&junk], addr2, &["--raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(codes(&out), ["AR"]);
}

#[test]
fn strict_listeners_refuse_newline_terminators_and_lenient_ones_accept_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("emr");
    let (_emr, emr) = standin("emr", &out_dir, 0, &[]);
    let config = format!(
        r#"
[[listener]]
name = "strict"
bind = "127.0.0.1:0"

[[listener]]
name = "lenient"
bind = "127.0.0.1:0"
line_endings = "lenient"

[[destination]]
name = "emr"
address = "{emr}"

[[route]]
name = "all"
destinations = ["emr"]
"#
    );
    let (engine, strict) = start_engine(tmp.path(), &config, "strict");
    let lenient = engine.wait_line(Duration::from_secs(10), |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "listening" && v["listener"] == "lenient").then(|| {
            v["addr"]
                .as_str()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap()
        })
    });
    let crlf = String::from_utf8(adt("NL1")).unwrap().replace('\r', "\r\n");

    let ack = Mllp::connect(strict).request(crlf.as_bytes());
    assert_eq!(field(&ack, "MSA", 1), "AR");
    let text = String::from_utf8_lossy(&ack).to_string();
    assert!(text.contains("line feed"), "{text}");
    assert!(text.contains("byte offset"), "{text}");

    let ack = Mllp::connect(lenient).request(crlf.as_bytes());
    assert_eq!(field(&ack, "MSA", 1), "AA");
    // Forwarded exactly as received: the engine does not rewrite what it does not change.
    assert_eq!(
        wait_files(&out_dir, 1, Duration::from_secs(20)),
        [crlf.into_bytes()]
    );
}
