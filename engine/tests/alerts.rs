//! Alert rules against the real binary: a destination that goes down raises one notice (not
//! one per message or per retry) on the webhook and in the log, and one recovery notice when
//! it comes back; a queue-depth rule does the same around its threshold.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A webhook receiver: records each POSTed JSON body and answers 200.
fn webhook() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in socket.incoming() {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut raw = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => raw.extend_from_slice(&chunk[..n]),
                }
                let text = String::from_utf8_lossy(&raw).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body[..len].to_owned());
                    }
                }
            };
            if let Some(body) = body {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::String(body)));
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, seen)
}

fn notices(seen: &Mutex<Vec<Value>>, alert: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|n| n["alert"] == alert)
        .map(|n| n["status"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn a_destination_going_down_alerts_once_and_once_more_on_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook, seen) = webhook();
    let port = free_port();
    let config = format!(
        r#"
[engine]
shutdown_grace = "5s"

[alerts]
webhook = "http://{hook}/courier"
check_every = "100ms"

[[alert]]
name = "emr-down"
when = "destination_down"
destination = "emr"
for = "500ms"

[[alert]]
name = "emr-backlog"
when = "queue_depth"
destination = "emr"
above = 1

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "emr"
address = "127.0.0.1:{port}"
connect_timeout = "1s"
retry = {{ initial = "100ms", max = "200ms" }}

[[route]]
name = "all"
destinations = ["emr"]
"#
    );
    let (engine, addr) = start_engine(tmp.path(), &config, "in");
    let mut c = Mllp::connect(addr);
    assert_eq!(field(&c.request(&adt("AL1")), "MSA", 1), "AA");
    wait_for("the down alert", Duration::from_secs(15), || {
        notices(&seen, "emr-down") == ["firing"]
    });
    // More messages and many more failed attempts: still one notice per rule.
    for i in 2..=4 {
        assert_eq!(field(&c.request(&adt(&format!("AL{i}"))), "MSA", 1), "AA");
    }
    wait_for("the backlog alert", Duration::from_secs(15), || {
        notices(&seen, "emr-backlog") == ["firing"]
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(notices(&seen, "emr-down"), ["firing"]);
    assert_eq!(notices(&seen, "emr-backlog"), ["firing"]);

    // The EMR comes back: everything is delivered and both rules recover, once each.
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, _) = standin("emr", &out, port, &[]);
    wait_files(&out, 4, Duration::from_secs(30));
    wait_for("the recoveries", Duration::from_secs(15), || {
        notices(&seen, "emr-down") == ["firing", "resolved"]
            && notices(&seen, "emr-backlog") == ["firing", "resolved"]
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(notices(&seen, "emr-down"), ["firing", "resolved"]);
    assert_eq!(notices(&seen, "emr-backlog"), ["firing", "resolved"]);

    let all = seen.lock().unwrap().clone();
    let first = &all[0];
    assert_eq!(first["subject"], "destination emr");
    for n in &all {
        let text = n.to_string();
        assert!(
            !text.contains("Johnson") && !text.contains("100234"),
            "{text}"
        );
    }
    let log = engine.stderr_text();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"alert firing\"") && l.contains("emr-down"))
            .count(),
        1
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"alert resolved\"") && l.contains("emr-down"))
            .count(),
        1
    );
}

#[test]
fn a_rule_naming_an_unknown_destination_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\n\n[[alert]]\nname = \"x\"\nwhen = \"queue_depth\"\ndestination = \"nowhere\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:8")
            && err.contains("alert[0].destination")
            && err.contains("nowhere"),
        "{err}"
    );
}
