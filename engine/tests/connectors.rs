//! File and HTTP connectors end to end: the real binary, real files, real HTTP on 127.0.0.1,
//! a real kill -9. The HTTP receivers are `courier listen --http` stand-ins.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Lines of JSON logs whose message is `message`.
fn log_lines(p: &Proc, message: &str) -> Vec<serde_json::Value> {
    let lines = p.stdout.lock().unwrap().clone();
    let mut all = p.stderr.lock().unwrap().clone();
    all.extend(lines);
    all.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

fn count_lines(p: &Proc, needle: &str) -> usize {
    p.stdout
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An HTTP POST with a content type; status, content type and body.
fn post(addr: SocketAddr, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /hl7 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(s)
}

#[test]
fn http_destination_answering_503_then_200_gets_the_message_once() {
    let tmp = tempfile::tempdir().unwrap();
    let got = tmp.path().join("portal");
    let (portal, portal_addr) = standin("portal", &got, 0, &["--http", "--fail-first", "1"]);
    let config = format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "portal"
kind = "http"
url = "http://{portal_addr}/hl7/inbound"
format = "json"
headers = {{ Authorization = "Bearer portal-secret" }}
retry = {{ initial = "100ms", max = "200ms" }}

[[route]]
name = "all"
destinations = ["portal"]
"#
    );
    let (engine, addr) = start_engine(tmp.path(), &config, "in");
    let ack = Mllp::connect(addr).request(&adt("HTTP0001"));
    assert_eq!(field(&ack, "MSA", 1), "AA");

    let files = wait_files(&got, 1, WAIT);
    assert_eq!(field(&files[0], "MSH", 10), "HTTP0001");
    let delivered = engine.wait_line(WAIT, |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "delivered").then(|| v["attempt"].as_u64())?
    });
    assert_eq!(
        delivered, 2,
        "one 503, then delivered on the second attempt"
    );
    assert_eq!(count_lines(&portal, "failing"), 1);
    assert_eq!(
        names_in(&got)
            .iter()
            .filter(|n| n.ends_with(".hl7"))
            .count(),
        1,
        "the receiver got it once"
    );
    assert_eq!(log_lines(&engine, "delivery failed; will retry").len(), 1);
}

#[test]
fn http_destination_4xx_is_a_dead_letter_with_the_response_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (_portal, portal_addr) = standin(
        "portal",
        &tmp.path().join("p"),
        0,
        &["--http", "--ack", "AR"],
    );
    let config = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "portal"
kind = "http"
url = "http://{portal_addr}/"
retry = {{ initial = "100ms", max = "200ms" }}

[[route]]
name = "all"
destinations = ["portal"]
"#
    );
    let (engine, addr) = start_engine(tmp.path(), &config, "in");
    let admin = admin_addr(&engine);
    Mllp::connect(addr).request(&adt("HTTP0400"));
    engine.wait_line(WAIT, |l| {
        l.contains("destination rejected the message; not retrying")
            .then_some(())
    });
    // The response (status line and the receiver's AR) is kept with the delivery.
    let (status, body) = http(
        admin,
        "GET",
        "/api/messages?control_id=HTTP0400",
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = v["messages"][0]["id"].clone();
    let (status, body) = http(
        admin,
        "GET",
        &format!("/api/messages/{id}"),
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("HTTP 400 Bad Request"), "{body}");
    assert!(body.contains("MSA|AR|HTTP0400"), "{body}");
}

#[test]
fn file_destination_writes_whole_files_named_by_the_pattern() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("outbox");
    let config = format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "drop"
kind = "file"
directory = "{}"
name_pattern = "{{message_type}}-{{control_id}}.hl7"

[[destination]]
name = "json"
kind = "file"
directory = "{}"
name_pattern = "{{control_id}}.json"
format = "json"

[[route]]
name = "all"
destinations = ["drop", "json"]
"#,
        out.display(),
        out.display()
    );
    let (_engine, addr) = start_engine(tmp.path(), &config, "in");
    let mut c = Mllp::connect(addr);
    for id in ["FILE01", "FILE02", "FILE02"] {
        assert_eq!(field(&c.request(&adt(id)), "MSA", 1), "AA");
    }
    let files = wait_files(&out, 3, WAIT);
    wait_for("3 JSON files", WAIT, || {
        names_in(&out)
            .iter()
            .filter(|n| n.ends_with(".json"))
            .count()
            == 3
    });
    let names = names_in(&out);
    assert_eq!(
        names,
        [
            "ADT_A04-FILE01.hl7",
            "ADT_A04-FILE02-1.hl7",
            "ADT_A04-FILE02.hl7",
            "FILE01.json",
            "FILE02-1.json",
            "FILE02.json"
        ],
        "a taken name is never overwritten; no temporary file is left"
    );
    assert!(
        files
            .iter()
            .all(|f| f.as_slice() == adt(&field(f, "MSH", 10)).as_slice())
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("FILE01.json")).unwrap()).unwrap();
    let back = courier::hl7::from_json(&json).unwrap();
    assert_eq!(back.encode().as_ref(), adt("FILE01").as_slice());
}

#[test]
fn http_source_takes_er7_and_json_and_refuses_what_is_not_hl7() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("outbox");
    let config = format!(
        r#"
[[listener]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"

[[destination]]
name = "drop"
kind = "file"
directory = "{}"
name_pattern = "{{control_id}}.hl7"

[[route]]
name = "all"
destinations = ["drop"]
"#,
        out.display()
    );
    let (_engine, addr) = start_engine(tmp.path(), &config, "web");

    let (status, body) = post(addr, "x-application/hl7-v2+er7", &adt("WEB0001"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(body.as_bytes(), "MSA", 1), "AA");
    assert_eq!(field(body.as_bytes(), "MSA", 2), "WEB0001");

    let json = courier::hl7::to_json(
        &courier::hl7::Message::parse(bytes::Bytes::from(adt("WEB0002"))).unwrap(),
    );
    let (status, body) = post(addr, "application/json", json.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ack = courier::hl7::from_json(&ack).unwrap();
    assert_eq!(field(&ack.encode(), "MSA", 1), "AA");
    assert_eq!(field(&ack.encode(), "MSA", 2), "WEB0002");

    let (status, body) = post(addr, "text/plain", b"hello, this is not HL7");
    assert_eq!(status, 400, "{body}");
    assert_eq!(field(body.as_bytes(), "MSA", 1), "AR");
    assert!(body.contains("ERR|"), "{body}");

    let (status, body) = post(addr, "application/json", b"{\"segments\": 3}");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an HL7 message"), "{body}");

    let (status, _) = http(addr, "GET", "/", None, b"");
    assert_eq!(status, 405);

    let files = wait_files(&out, 2, WAIT);
    assert_eq!(files[0], adt("WEB0001"));
    assert_eq!(files[1], adt("WEB0002"));
}

fn file_source_config(inbox: &Path, outbox: &Path, settle: &str) -> String {
    format!(
        r#"
[engine]
shutdown_grace = "2s"

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[listener]]
name = "lab-drop"
kind = "file"
directory = "{}"
pattern = "*.hl7"
settle = "{settle}"
poll_interval = "100ms"
max_frame_size = 65536

[[destination]]
name = "drop"
kind = "file"
directory = "{}"
name_pattern = "{{control_id}}.hl7"
claim_batch = 1

[[route]]
name = "all"
destinations = ["drop"]
"#,
        inbox.display(),
        outbox.display()
    )
}

#[test]
fn a_file_written_slowly_in_pieces_is_picked_up_once_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let (inbox, outbox) = (tmp.path().join("inbox"), tmp.path().join("outbox"));
    std::fs::create_dir_all(&inbox).unwrap();
    let (engine, _) = start_engine(
        tmp.path(),
        &file_source_config(&inbox, &outbox, "1500ms"),
        "in",
    );
    engine.wait_line(WAIT, |l| l.contains("\"watching\"").then_some(()));

    // Three messages, one FHS/BHS batch, written a few bytes at a time with pauses well
    // under `settle`.
    let mut batch = b"FHS|^~\\&|ANALYZER|LAB\rBHS|^~\\&|ANALYZER|LAB\r".to_vec();
    for id in ["SLOW01", "SLOW02", "SLOW03"] {
        batch.extend(adt(id));
    }
    batch.extend(b"BTS|3\rFTS|1\r");
    let path = inbox.join("results.hl7");
    let mut f = std::fs::File::create(&path).unwrap();
    for piece in batch.chunks(batch.len() / 6 + 1) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(f);

    wait_for("the file in processed/", WAIT, || {
        inbox.join("processed/results.hl7").exists()
    });
    let files = wait_files(&outbox, 3, WAIT);
    for (f, id) in files.iter().zip(["SLOW01", "SLOW02", "SLOW03"]) {
        assert_eq!(f, &adt(id), "complete messages only");
    }
    assert_eq!(
        std::fs::read(inbox.join("processed/results.hl7")).unwrap(),
        batch
    );
    assert_eq!(log_lines(&engine, "accepted").len(), 3, "picked up once");
    assert!(names_in(&inbox.join("error")).is_empty());

    // A file that is not HL7 goes to error/ with its reason beside it.
    std::fs::write(inbox.join("junk.hl7"), b"this is not an HL7 message\n").unwrap();
    wait_for("junk in error/", WAIT, || {
        inbox.join("error/junk.hl7").exists()
    });
    let why = std::fs::read_to_string(inbox.join("error/junk.hl7.error.txt")).unwrap();
    assert!(why.contains("not an HL7 message"), "{why}");
    // So does a file over the size limit, unread.
    std::fs::write(inbox.join("huge.hl7"), vec![b'x'; 70_000]).unwrap();
    wait_for("huge in error/", WAIT, || {
        inbox.join("error/huge.hl7").exists()
    });
    let why = std::fs::read_to_string(inbox.join("error/huge.hl7.error.txt")).unwrap();
    assert!(why.contains("max_frame_size limit of 65536"), "{why}");
    // A file the pattern does not take stays where it is.
    std::fs::write(inbox.join("notes.txt"), b"x").unwrap();
    std::fs::write(inbox.join("last.hl7"), adt("SLOW04")).unwrap();
    wait_for("last.hl7 processed", WAIT, || {
        inbox.join("processed/last.hl7").exists()
    });
    assert!(inbox.join("notes.txt").exists());
}

/// The control ids in `messages list` output, with how often each appears.
fn stored_ids(config: &Path) -> HashMap<String, usize> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args([
            "messages",
            "--config",
            config.to_str().unwrap(),
            "list",
            "--limit",
            "100000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids = HashMap::new();
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if word.starts_with("KILL") {
            *ids.entry(word.to_owned()).or_insert(0) += 1;
        }
    }
    ids
}

#[test]
fn kill_9_during_file_pickup_loses_and_duplicates_nothing() {
    const FILES: usize = 12;
    const PER_FILE: usize = 25;
    let tmp = tempfile::tempdir().unwrap();
    let (inbox, outbox) = (tmp.path().join("inbox"), tmp.path().join("outbox"));
    std::fs::create_dir_all(&inbox).unwrap();
    // Written elsewhere and moved in whole, as a well-behaved instrument does.
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut all = Vec::new();
    for f in 0..FILES {
        let mut body = Vec::new();
        for m in 0..PER_FILE {
            let id = format!("KILL{f:03}M{m:03}");
            body.extend(adt(&id));
            all.push(id);
        }
        let name = format!("run{f:03}.hl7");
        std::fs::write(staging.join(&name), body).unwrap();
        std::fs::rename(staging.join(&name), inbox.join(&name)).unwrap();
    }
    let config = file_source_config(&inbox, &outbox, "100ms");
    let config_path = tmp.path().join("courier.toml");

    // Kill the engine three times at different points of the pickup, then let it finish.
    for round in 1..=3 {
        let (mut engine, _) = start_engine(tmp.path(), &config, "in");
        let target = 20 + round * 13;
        wait_for("messages stored", Duration::from_secs(120), || {
            log_lines(&engine, "accepted").len() >= target
        });
        engine.signal("KILL");
        engine.wait_exit(WAIT);
        eprintln!(
            "killed in round {round}; processed/ has {} files",
            names_in(&inbox.join("processed")).len()
        );
    }
    let (mut engine, _) = start_engine(tmp.path(), &config, "in");
    wait_for("every file processed", Duration::from_secs(180), || {
        names_in(&inbox.join("processed")).len() == FILES
    });
    let files = wait_files(&outbox, FILES * PER_FILE, Duration::from_secs(180));
    engine.signal("TERM");
    engine.wait_exit(WAIT);

    assert!(names_in(&inbox.join("error")).is_empty(), "nothing refused");
    assert!(
        names_in(&inbox.join(".courier-work")).is_empty(),
        "nothing left claimed"
    );
    assert!(names_in(&inbox).iter().all(|n| !n.ends_with(".hl7")));
    // Stored once each: none lost, none stored twice.
    let stored = stored_ids(&config_path);
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for id in &all {
        assert_eq!(stored.get(id), Some(&1), "{id} is not stored");
    }
    // And every one reached the destination (a redelivery after a kill would be a second
    // file with -1, flagged possible duplicate in the log; each id is there at least once).
    let delivered: std::collections::HashSet<String> =
        files.iter().map(|f| field(f, "MSH", 10)).collect();
    assert_eq!(delivered.len(), FILES * PER_FILE);
}

/// The narrowest window of a crash: a message stored, the engine killed before the file's
/// progress says so. Set up that state by hand and check the message is not stored twice.
#[test]
fn a_message_stored_just_before_a_crash_is_not_stored_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (inbox, outbox) = (tmp.path().join("inbox"), tmp.path().join("outbox"));
    std::fs::create_dir_all(&inbox).unwrap();
    let config = file_source_config(&inbox, &outbox, "100ms");
    let config_path = tmp.path().join("courier.toml");

    let claimed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let (mut engine, _) = start_engine(tmp.path(), &config, "in");
    std::fs::write(inbox.join("first.hl7"), adt("KILLA")).unwrap();
    wait_for("first.hl7 processed", WAIT, || {
        inbox.join("processed/first.hl7").exists()
    });
    engine.signal("KILL");
    engine.wait_exit(WAIT);

    // As if the engine had claimed a three-message file, stored its first message and died
    // before recording that.
    let work = inbox.join(".courier-work");
    let mut body = adt("KILLA");
    body.extend(adt("KILLB"));
    body.extend(adt("KILLC"));
    std::fs::write(work.join("three.hl7"), &body).unwrap();
    std::fs::write(
        work.join("three.hl7.courier-progress"),
        format!("0 {claimed}\n"),
    )
    .unwrap();

    let (mut engine, _) = start_engine(tmp.path(), &config, "in");
    wait_for("three.hl7 processed", WAIT, || {
        inbox.join("processed/three.hl7").exists()
    });
    engine.signal("TERM");
    engine.wait_exit(WAIT);
    let stored = stored_ids(&config_path);
    assert_eq!(stored.get("KILLA"), Some(&1), "{stored:?}");
    assert_eq!(stored.get("KILLB"), Some(&1), "{stored:?}");
    assert_eq!(stored.get("KILLC"), Some(&1), "{stored:?}");
}

/// A reload that changes a file listener starts it again: the old watcher finishes and lets
/// go of the folder, the new one takes the next file, once.
#[test]
fn a_reloaded_file_listener_keeps_taking_files_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (inbox, outbox) = (tmp.path().join("inbox"), tmp.path().join("outbox"));
    std::fs::create_dir_all(&inbox).unwrap();
    let config = file_source_config(&inbox, &outbox, "100ms");
    let (engine, _) = start_engine(tmp.path(), &config, "in");
    std::fs::write(inbox.join("one.hl7"), adt("RELOAD1")).unwrap();
    wait_for("one.hl7 processed", WAIT, || {
        inbox.join("processed/one.hl7").exists()
    });

    std::fs::write(
        tmp.path().join("courier.toml"),
        config.replace("settle = \"100ms\"", "settle = \"200ms\""),
    )
    .unwrap();
    wait_for("a second watcher", WAIT, || {
        log_lines(&engine, "watching").len() == 2
    });
    std::fs::write(inbox.join("two.hl7"), adt("RELOAD2")).unwrap();
    wait_for("two.hl7 processed", WAIT, || {
        inbox.join("processed/two.hl7").exists()
    });
    let files = wait_files(&outbox, 2, WAIT);
    assert_eq!(files, [adt("RELOAD1"), adt("RELOAD2")]);
    assert_eq!(log_lines(&engine, "accepted").len(), 2);
}

/// The HTTP listener keeps the listener's policies: a duplicate gets the original ACK back
/// and is stored once; a message no route wants is refused (AR → 400) under
/// `unrouted = "reject"`.
#[test]
fn http_source_applies_duplicate_detection_and_unrouted_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("outbox");
    let config = format!(
        r#"
[[listener]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"
duplicate_window = "1h"
unrouted = "reject"

[[destination]]
name = "drop"
kind = "file"
directory = "{}"
name_pattern = "{{control_id}}.hl7"

[[route]]
name = "adt"
message_types = ["ADT^*"]
destinations = ["drop"]
"#,
        out.display()
    );
    let (engine, addr) = start_engine(tmp.path(), &config, "web");
    let (s1, first) = post(addr, "x-application/hl7-v2+er7", &adt("DUP0001"));
    let (s2, second) = post(addr, "x-application/hl7-v2+er7", &adt("DUP0001"));
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, second, "the original ACK, replayed");
    let orm = String::from_utf8(adt("ORM0001"))
        .unwrap()
        .replace("ADT^A04^ADT_A01", "ORM^O01^ORM_O01");
    let (status, body) = post(addr, "x-application/hl7-v2+er7", orm.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert_eq!(field(body.as_bytes(), "MSA", 1), "AR");
    wait_files(&out, 1, WAIT);
    assert_eq!(log_lines(&engine, "accepted").len(), 1, "stored once");
    assert_eq!(names_in(&out), ["DUP0001.hl7"]);
}

/// A message refused before a crash still sends its file to error/ after the restart: the
/// reasons are kept with the progress.
#[test]
fn reasons_recorded_before_a_crash_still_send_the_file_to_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (inbox, outbox) = (tmp.path().join("inbox"), tmp.path().join("outbox"));
    let work = inbox.join(".courier-work");
    std::fs::create_dir_all(&work).unwrap();
    let mut body = b"MSH|not a message\r".to_vec();
    body.extend(adt("AFTER1"));
    std::fs::write(work.join("mixed.hl7"), &body).unwrap();
    let claimed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    std::fs::write(
        work.join("mixed.hl7.courier-progress"),
        format!("1 {claimed}\nmessage 1 of 2: not a readable HL7 message: (before the crash)\n"),
    )
    .unwrap();
    let config = file_source_config(&inbox, &outbox, "100ms");
    let (_engine, _) = start_engine(tmp.path(), &config, "in");
    wait_for("mixed.hl7 in error/", WAIT, || {
        inbox.join("error/mixed.hl7").exists()
    });
    let why = std::fs::read_to_string(inbox.join("error/mixed.hl7.error.txt")).unwrap();
    assert!(why.contains("(before the crash)"), "{why}");
    assert_eq!(wait_files(&outbox, 1, WAIT), [adt("AFTER1")]);
}

/// How a [`counting_receiver`] treats a connection after each response.
#[derive(Clone, Copy)]
enum AfterResponse {
    /// Keeps it open for the next request.
    KeepOpen,
    /// Says `Connection: close` and closes it.
    SayClose,
    /// Closes it without saying so (an idle keep-alive timing out).
    Drop,
}

/// (connection number, control id) of each request a [`counting_receiver`] read, in order.
type Received = Arc<Mutex<Vec<(usize, String)>>>;

/// An HTTP receiver answering 200 to every POST, recording what it read.
fn counting_receiver(after: AfterResponse) -> (SocketAddr, Received) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let (mut length, mut control_id) = (0usize, String::new());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (k, v) = header.split_once(':').unwrap();
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => length = v.trim().parse().unwrap(),
                            "x-hl7-control-id" => control_id = v.trim().to_owned(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push((n, control_id));
                    let close = matches!(after, AfterResponse::SayClose);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{}\r\nok",
                        if close { "Connection: close\r\n" } else { "" }
                    );
                    out.write_all(head.as_bytes()).unwrap();
                    if !matches!(after, AfterResponse::KeepOpen) {
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

/// Sends `n` ADTs through an engine whose only destination is an HTTP one at `receiver`, and
/// waits until each is logged as delivered; returns the attempt each took.
fn through_http(receiver: SocketAddr, prefix: &str, n: usize) -> Vec<u64> {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "portal"
kind = "http"
url = "http://{receiver}/hl7"
retry = {{ initial = "100ms", max = "200ms" }}

[[route]]
name = "all"
destinations = ["portal"]
"#
    );
    let (engine, addr) = start_engine(tmp.path(), &config, "in");
    let mut c = Mllp::connect(addr);
    for i in 0..n {
        let ack = c.request(&adt(&format!("{prefix}{i}")));
        assert_eq!(field(&ack, "MSA", 1), "AA");
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let delivered = log_lines(&engine, "delivered");
        if delivered.len() >= n {
            return delivered
                .iter()
                .map(|v| v["attempt"].as_u64().unwrap())
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            engine.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_destination_keeps_its_connection_between_deliveries() {
    let (receiver, got) = counting_receiver(AfterResponse::KeepOpen);
    let attempts = through_http(receiver, "KEEP", 5);
    assert_eq!(attempts, [1; 5], "each delivered on its first attempt");
    let got = got.lock().unwrap().clone();
    let ids: Vec<_> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["KEEP0", "KEEP1", "KEEP2", "KEEP3", "KEEP4"]);
    assert!(
        got.iter().all(|(conn, _)| *conn == 0),
        "all five on one connection: {got:?}"
    );
}

#[test]
fn http_destination_opens_a_new_connection_when_the_receiver_closes_it() {
    // Said: each request on a connection of its own, none failing.
    let (receiver, got) = counting_receiver(AfterResponse::SayClose);
    let attempts = through_http(receiver, "SAID", 4);
    assert_eq!(attempts, [1; 4], "each delivered on its first attempt");
    let got = got.lock().unwrap().clone();
    let conns: Vec<_> = got.iter().map(|(conn, _)| *conn).collect();
    assert_eq!(conns, [0, 1, 2, 3], "{got:?}");

    // Not said: the receiver closes after each response. Whether the engine sees that before
    // its next request or only after it, each message still arrives, once, in order.
    let (receiver, got) = counting_receiver(AfterResponse::Drop);
    let attempts = through_http(receiver, "DROP", 4);
    assert_eq!(attempts.len(), 4);
    let ids: Vec<_> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids, ["DROP0", "DROP1", "DROP2", "DROP3"]);
}
