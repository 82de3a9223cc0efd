//! Bad input gets a clear answer, never a crash: each case is answered with AR and an ERR
//! segment naming what was wrong, and the same connection keeps serving the next message.

mod support;

use std::time::Duration;

use support::*;

fn config(dest: std::net::SocketAddr) -> String {
    format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
max_frame_size = 4096

[[destination]]
name = "emr"
address = "{dest}"
ack_timeout = "5s"

[[route]]
name = "all"
destinations = ["emr"]
"#
    )
}

#[test]
fn bad_messages_are_refused_with_err_and_the_connection_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, emr) = standin("emr", &out, 0, &[]);
    let (engine, addr) = start_engine(tmp.path(), &config(emr), "in");
    let mut c = Mllp::connect(addr);

    // Not HL7 at all.
    let ack = c.request(b"hello, is this the lab?");
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert!(
        !field(&ack, "ERR", 3).is_empty(),
        "ERR-3 names the HL7 error code"
    );
    assert!(
        field(&ack, "ERR", 8).contains("MSH"),
        "{}",
        String::from_utf8_lossy(&ack)
    );

    // No MSH-10.
    let no_id = String::from_utf8(adt("")).unwrap();
    let ack = c.request(no_id.as_bytes());
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "ERR", 2), "MSH^1^10");
    assert!(
        field(&ack, "ERR", 3).starts_with("101^"),
        "{}",
        field(&ack, "ERR", 3)
    );
    assert!(field(&ack, "ERR", 8).contains("MSH-10"));

    // A malformed segment ID in the middle: refused whole, never truncated.
    let mut bad = adt("BAD1");
    bad.extend_from_slice(b"P!D|1||X\rOBX|1|ST|A||B\r");
    let ack = c.request(&bad);
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "MSA", 2), "BAD1", "MSA-2 salvaged from MSH-10");
    let err = String::from_utf8_lossy(&ack).to_string();
    assert!(
        err.contains("segment 3"),
        "the ERR names the segment: {err}"
    );
    assert!(
        !err.contains("Johnson"),
        "no patient data in the NAK: {err}"
    );

    // Garbage before the start block is skipped; the good message still gets AA.
    c.write_raw(b"\r\n\x00junk");
    let ack = c.request(&adt("GOOD1"));
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(field(&ack, "MSA", 2), "GOOD1");
    assert_eq!(field(&ack, "MSH", 9), "ACK^A04^ACK");
    assert_eq!(
        field(&ack, "MSH", 3),
        "COURIER",
        "sender and receiver swapped"
    );
    assert_eq!(field(&ack, "MSH", 5), "REGADT");

    // Only the good message was forwarded.
    let got = wait_files(&out, 1, Duration::from_secs(20));
    assert_eq!(got, [adt("GOOD1")]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);

    // An oversize frame closes that connection (naming the limit in the log) while a new
    // connection is served.
    let mut big = adt("BIG1");
    big.resize(8000, b'X');
    c.send(&big);
    assert_eq!(c.recv(Duration::from_secs(10)), None, "connection closed");
    engine.wait_line(Duration::from_secs(10), |l| {
        l.contains("4096").then_some(())
    });
    let mut c2 = Mllp::connect(addr);
    assert_eq!(field(&c2.request(&adt("GOOD2")), "MSA", 1), "AA");
}

#[test]
fn messages_over_the_segment_or_field_limit_are_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, emr) = standin("emr", &out, 0, &[]);
    let text = config(emr).replace(
        "max_frame_size = 4096",
        "max_frame_size = 4096\nmax_segments = 4\nmax_fields = 30",
    );
    let (_engine, addr) = start_engine(tmp.path(), &text, "in");
    let mut c = Mllp::connect(addr);

    // Two segments (MSH, PID) plus three: one over the limit of 4.
    let mut many = adt("SEGS1");
    many.extend_from_slice(b"OBX|1|ST|A||1\rOBX|2|ST|B||2\rNTE|1||note\r");
    let ack = c.request(&many);
    let shown = String::from_utf8_lossy(&ack).to_string();
    assert_eq!(field(&ack, "MSA", 1), "AR", "{shown}");
    assert_eq!(field(&ack, "MSA", 2), "SEGS1", "MSA-2 salvaged from MSH-10");
    assert!(field(&ack, "ERR", 3).starts_with("207^"), "{shown}");
    assert!(
        field(&ack, "ERR", 8).contains("max_segments limit of 4"),
        "{shown}"
    );

    // The same connection serves the next message, which is at the limit.
    let mut at_limit = adt("GOOD1");
    at_limit.extend_from_slice(b"OBX|1|ST|A||1\rOBX|2|ST|B||2\r");
    let ack = c.request(&at_limit);
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(field(&ack, "MSA", 2), "GOOD1");

    // A segment with 31 fields (PID-1 .. PID-31): ERR-2 points at the first field over.
    let mut wide = adt("WIDE1");
    wide.extend_from_slice(b"ZPD");
    for n in 1..=31 {
        wide.extend_from_slice(format!("|{n}").as_bytes());
    }
    wide.push(b'\r');
    let ack = c.request(&wide);
    let shown = String::from_utf8_lossy(&ack).to_string();
    assert_eq!(field(&ack, "MSA", 1), "AR", "{shown}");
    assert_eq!(field(&ack, "MSA", 2), "WIDE1");
    assert_eq!(field(&ack, "ERR", 2), "ZPD^1^31", "{shown}");
    assert!(
        field(&ack, "ERR", 8).contains("max_fields limit of 30"),
        "{shown}"
    );

    let ack = c.request(&adt("GOOD2"));
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(field(&ack, "MSA", 2), "GOOD2");

    // Only the two good messages were forwarded.
    let got = wait_files(&out, 2, Duration::from_secs(20));
    assert_eq!(got.len(), 2);
    assert!(got.contains(&at_limit) && got.contains(&adt("GOOD2")));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

#[test]
fn enhanced_mode_gets_commit_acks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, emr) = standin("emr", &out, 0, &[]);
    let (_engine, addr) = start_engine(tmp.path(), &config(emr), "in");
    let mut c = Mllp::connect(addr);
    let enhanced = String::from_utf8(adt("ENH1"))
        .unwrap()
        .replace("|P|2.5.1\r", "|P|2.5.1|||AL|NE\r");
    let ack = c.request(enhanced.as_bytes());
    assert_eq!(field(&ack, "MSA", 1), "CA");
    assert_eq!(field(&ack, "MSA", 2), "ENH1");

    // MSH-15 = ER: a commit ACK only on error, so a good message gets no reply...
    let quiet = String::from_utf8(adt("ENH2"))
        .unwrap()
        .replace("|P|2.5.1\r", "|P|2.5.1|||ER|NE\r");
    c.send(quiet.as_bytes());
    assert_eq!(c.recv(Duration::from_millis(500)), None);
    // ...and a bad one gets CR.
    let bad = quiet.replace("ENH2", "ENH3").replace("PID|", "P!D|");
    let ack = c.request(bad.as_bytes());
    assert!(["CR", "AR"].contains(&field(&ack, "MSA", 1).as_str()));
    wait_files(&out, 2, Duration::from_secs(20));
}
