//! Nothing acknowledged is lost: kill -9 the engine while messages flow (and while the
//! destination is down), restart it, and check that every message that got AA reaches the
//! destination, in order per sender, with duplicates only among the messages in flight at
//! the kill. Real processes, a real SQLite file, real sockets on 127.0.0.1.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// Deliveries the destination worker claims per store commit.
const CLAIM_BATCH: usize = 16;

fn config(port: u16, dest: SocketAddr) -> String {
    format!(
        r#"
[engine]
shutdown_grace = "5s"

[[listener]]
name = "in"
bind = "127.0.0.1:{port}"

[[destination]]
name = "emr"
address = "{dest}"
ack_timeout = "3s"
connect_timeout = "1s"
retry = {{ initial = "50ms", max = "500ms" }}
claim_batch = {CLAIM_BATCH}

[[route]]
name = "all"
destinations = ["emr"]
"#
    )
}

/// The control ids in the files a stand-in wrote, in arrival order.
fn received_ids(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".hl7"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            n.trim_end_matches(".hl7")
                .split_once('-')
                .unwrap()
                .1
                .to_owned()
        })
        .collect()
}

fn wait_for_ids(dir: &Path, want: &HashSet<String>, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = received_ids(dir);
        let have: HashSet<_> = got.iter().cloned().collect();
        if want.is_subset(&have) {
            return got;
        }
        let missing: Vec<_> = want.difference(&have).take(5).collect();
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never arrived, e.g. {missing:?}",
            want.difference(&have).count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks each sender's messages arrived in the order it sent them (first arrival of each).
fn assert_in_order_per_sender(got: &[String]) {
    let mut last: HashMap<&str, u32> = HashMap::new();
    let mut seen = HashSet::new();
    for id in got {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let (sender, n) = id.rsplit_once('N').unwrap();
        let n: u32 = n.parse().unwrap();
        if let Some(prev) = last.insert(sender, n) {
            assert!(n > prev, "{sender}: message {n} arrived after {prev}");
        }
    }
}

#[test]
fn kill_9_while_messages_flow_loses_nothing_acknowledged() {
    const SENDERS: usize = 4;
    const PER_SENDER: u32 = 300;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    let (_emr, dest) = standin("emr", &out, 0, &[]);
    let port = free_port();
    let cfg = config(port, dest);
    let (engine, addr) = start_engine(tmp.path(), &cfg, "in");
    let engine = Arc::new(Mutex::new(Some(engine)));

    let acked = Arc::new(Mutex::new(HashSet::new()));
    let in_flight_at_kill = Arc::new(Mutex::new(HashSet::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let acked = acked.clone();
            let in_flight_at_kill = in_flight_at_kill.clone();
            std::thread::spawn(move || {
                // A real sender: resend a message until it gets AA, reconnecting as needed.
                let mut n = 1;
                let mut conn: Option<Mllp> = None;
                let started = Instant::now();
                while n <= PER_SENDER {
                    assert!(started.elapsed() < Duration::from_secs(120), "sender stuck");
                    let id = format!("S{s}N{n}");
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match std::net::TcpStream::connect(addr) {
                            Ok(_) => conn.insert(Mllp::connect(addr)),
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        },
                    };
                    c.send(&adt(&id));
                    match c.recv(Duration::from_secs(10)) {
                        Some(ack) if field(&ack, "MSA", 1) == "AA" => {
                            acked.lock().unwrap().insert(id);
                            n += 1;
                        }
                        _ => {
                            in_flight_at_kill.lock().unwrap().insert(id);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();

    // Kill -9 once a third of the messages are acknowledged, then restart on the same port.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < (SENDERS * PER_SENDER as usize) / 3 {
        assert!(Instant::now() < deadline, "too slow before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    {
        let mut e = engine.lock().unwrap();
        let mut p = e.take().unwrap();
        p.signal("KILL");
        p.wait_exit(Duration::from_secs(10));
        killed.store(true, Ordering::SeqCst);
    }
    let (restarted, _) = start_engine(tmp.path(), &cfg, "in");
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), SENDERS * PER_SENDER as usize);
    let got = wait_for_ids(&out, &acked, Duration::from_secs(60));
    assert_in_order_per_sender(&got);

    // Duplicates only among messages in flight at the kill (or resent by their sender).
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &got {
        *counts.entry(id).or_default() += 1;
    }
    let resent = in_flight_at_kill.lock().unwrap();
    let dups: Vec<_> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| *id)
        .collect();
    // The restarted engine names each delivery it sends again after the crash (its log is
    // JSON lines).
    let log = restarted.stderr_text();
    let flagged_again = |id: &str| {
        let field = format!("\"control_id\":\"{id}\"");
        log.lines()
            .any(|l| l.contains("possible duplicate") && l.contains(&field))
    };
    for id in &dups {
        assert!(
            flagged_again(id) || resent.contains(*id),
            "{id} duplicated without being in flight at the kill"
        );
    }
    // In flight at the kill: a claimed batch at the destination, and a message per sender.
    assert!(
        dups.len() <= CLAIM_BATCH + SENDERS * 4,
        "too many duplicates: {}",
        dups.len()
    );
}

#[test]
fn kill_9_while_the_destination_is_down_delivers_everything_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dest_port = free_port();
    let dest: SocketAddr = format!("127.0.0.1:{dest_port}").parse().unwrap();
    let port = free_port();
    let cfg = config(port, dest);
    let (mut engine, addr) = start_engine(tmp.path(), &cfg, "in");
    let mut c = Mllp::connect(addr);
    let sent: Vec<String> = (1..=200).map(|n| format!("D0N{n}")).collect();
    for id in &sent {
        assert_eq!(field(&c.request(&adt(id)), "MSA", 1), "AA");
    }
    engine.signal("KILL");
    engine.wait_exit(Duration::from_secs(10));
    let (_restarted, _) = start_engine(tmp.path(), &cfg, "in");
    let out = tmp.path().join("emr");
    let (_emr, _) = standin("emr", &out, dest_port, &[]);
    let want: HashSet<_> = sent.iter().cloned().collect();
    let got = wait_for_ids(&out, &want, Duration::from_secs(60));
    assert_in_order_per_sender(&got);
    assert_eq!(
        got.len(),
        sent.len(),
        "no duplicates: nothing was in flight"
    );
}

#[test]
fn sigterm_under_load_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    let (_emr, dest) = standin("emr", &out, 0, &[]);
    let port = free_port();
    let cfg = config(port, dest);
    let (mut engine, addr) = start_engine(tmp.path(), &cfg, "in");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let sender = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut c = Mllp::connect(addr);
            for n in 1..=2000 {
                let id = format!("T0N{n}");
                c.send(&adt(&id));
                match c.recv(Duration::from_secs(10)) {
                    Some(ack) if field(&ack, "MSA", 1) == "AA" => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => break,
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.signal("TERM");
    assert!(engine.wait_exit(Duration::from_secs(30)).success());
    sender.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    // Whatever the drain did not deliver before exit goes out after a restart.
    let (_restarted, _) = start_engine(tmp.path(), &cfg, "in");
    wait_for_ids(&out, &acked, Duration::from_secs(60));
}
