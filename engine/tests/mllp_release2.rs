//! MLLP release 2 against the real binary: the listener answers with commit
//! acknowledgement blocks only once a message is stored (an unreadable one is stored as
//! errored, not lost), and a release 2 destination is sent a message again on NAK and on
//! timeout until it commits.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Mllp, Proc, adt, start_engine};

const ACK_BLOCK: &[u8] = &[0x06];
const NAK_BLOCK: &[u8] = &[0x15];

/// What the stand-in receiver does with the n-th frame it reads (0-based).
#[derive(Clone, Copy, Debug)]
enum Reply {
    Ack,
    Nak,
    Silence,
}

/// A release 2 receiver written for this test: frames in, commit blocks out, as `script`
/// says (then ACK for everything). Returns its address and the payloads it read.
fn receiver(script: Vec<Reply>) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut n = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let read = match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(r) => r,
                };
                buf.extend_from_slice(&chunk[..read]);
                while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                    let start = buf.iter().position(|&b| b == 0x0b).unwrap_or(0);
                    let payload = buf[start + 1..end].to_vec();
                    buf.drain(..end + 2);
                    log.lock().unwrap().push(payload);
                    let reply = script.get(n).copied().unwrap_or(Reply::Ack);
                    n += 1;
                    let block = match reply {
                        Reply::Ack => ACK_BLOCK,
                        Reply::Nak => NAK_BLOCK,
                        // No answer: the sender times out and (having dropped the
                        // connection) sends again on a new one.
                        Reply::Silence => continue,
                    };
                    let mut frame = vec![0x0b];
                    frame.extend_from_slice(block);
                    frame.extend_from_slice(&[0x1c, 0x0d]);
                    if stream.write_all(&frame).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (addr, seen)
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn release_2_commits_then_forwards_with_resend_on_nak_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (dest, seen) = receiver(vec![Reply::Nak, Reply::Ack, Reply::Silence, Reply::Ack]);
    let config = format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
mllp_release = 2

[[destination]]
name = "lis"
address = "{dest}"
mllp_release = 2
ack_timeout = "1s"
retry = {{ initial = "50ms", max = "200ms" }}

[[route]]
name = "all"
destinations = ["lis"]
"#
    );
    let (engine, addr) = start_engine(dir.path(), &config, "in");
    let mut c = Mllp::connect(addr);

    // A readable message: committed, then forwarded; NAKed once, so sent twice.
    assert_eq!(c.request(&adt("R2-1")), ACK_BLOCK);
    wait_for("R2-1 sent twice", || seen.lock().unwrap().len() >= 2);
    // The second: the receiver stays silent the first time; sent again after the timeout.
    assert_eq!(c.request(&adt("R2-2")), ACK_BLOCK);
    wait_for("R2-2 sent twice", || seen.lock().unwrap().len() >= 4);
    let ids: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|p| support::field(p, "MSH", 10))
        .collect();
    assert_eq!(ids, ["R2-1", "R2-1", "R2-2", "R2-2"]);

    // Not HL7 at all: release 2 cannot refuse content, so it is stored as errored and
    // committed; nothing is forwarded.
    assert_eq!(c.request(b"this is not an HL7 message"), ACK_BLOCK);
    let store = dir.path().join("courier.data");
    let list = Proc::spawn(
        "list",
        &[
            "messages",
            "--store-dir",
            store.to_str().unwrap(),
            "list",
            "--status",
            "error",
        ],
    );
    let line = list.wait_line(Duration::from_secs(30), |l| {
        l.contains(" error ").then(|| l.to_owned())
    });
    assert!(line.contains("0 delivered"), "{line}");
    let show = Proc::spawn(
        "show",
        &[
            "messages",
            "--store-dir",
            store.to_str().unwrap(),
            "show",
            line.split_whitespace().next().unwrap(),
        ],
    );
    show.wait_line(Duration::from_secs(30), |l| {
        l.contains("not a readable HL7 message").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.lock().unwrap().len(), 4, "nothing more was forwarded");
    // Both deliveries were recorded as delivered only after the receiver's commit ACK.
    wait_for("two deliveries logged", || {
        engine
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"delivered\""))
            .count()
            >= 2
    });
}

#[test]
fn release_2_needs_the_store_and_after_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
mllp_release = 2
ack_policy = "after-delivery"
"#,
    )
    .unwrap();
    let mut check = Proc::spawn("check", &["check", path.to_str().unwrap()]);
    let status = check.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let err = check.stderr_text();
    assert!(
        err.contains("bad.toml:") && err.contains("listener[0].mllp_release"),
        "{err}"
    );
    assert!(err.contains("after-store"), "{err}");
}
