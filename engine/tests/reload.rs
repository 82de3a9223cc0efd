//! Hot reload against the real binary: plugins, scripts and the config change while
//! messages flow; nothing is lost or duplicated, each message is processed by exactly one
//! version, a broken change is refused while the old version keeps serving, and connections
//! that the change does not concern stay open.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Mllp, Proc, adt, build_plugins, field, repo, standin, start_engine, wait_files};

const WAIT: Duration = Duration::from_secs(60);

/// Writes a file the way a careful deploy does: a temporary file renamed over the old one.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Log lines (JSON) whose message is `msg`.
fn count(p: &Proc, msg: &str) -> usize {
    p.stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == msg))
        .count()
}

/// Waits until the engine logged `msg` `n` times; returns the last such line.
fn wait_count(p: &Proc, msg: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines: Vec<serde_json::Value> = p
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == msg)
            .collect();
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{n} × `{msg}` not logged; log:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn script(tag_path: &str, version: usize) -> String {
    format!("// version {version}\nmsg.set(\"{tag_path}\", \"v{version}\");\n")
}

fn assert_aa(ack: &[u8]) {
    assert_eq!(
        field(ack, "MSA", 1),
        "AA",
        "{}",
        String::from_utf8_lossy(ack)
    );
}

/// Scripts and a plugin are rewritten several times (once broken) while 400 messages flow
/// over one connection: every message arrives once, its two steps come from the same
/// version, versions only move forward, and the connection is never dropped.
#[test]
fn steps_reload_while_messages_flow() {
    build_plugins();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (_emr, emr) = standin("emr", &out, 0, &[]);
    let (a, b) = (dir.path().join("a.rhai"), dir.path().join("b.rhai"));
    std::fs::write(&a, script("MSH-8", 1)).unwrap();
    std::fs::write(&b, script("PID-2", 1)).unwrap();
    let wasm_dir = repo().join("target/wasm-plugins/wasm32-wasip2/release");
    let plugin = dir.path().join("plugin.wasm");
    std::fs::copy(wasm_dir.join("test_filter.wasm"), &plugin).unwrap();
    let config = format!(
        r#"
[engine]
reload_debounce = "200ms"

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "emr"
address = "{emr}"

[[route]]
name = "tagged"
destinations = ["emr"]
[[route.step]]
script = "a.rhai"
[[route.step]]
wasm = "plugin.wasm"
settings = {{ pattern = "TEST*" }}
[[route.step]]
script = "b.rhai"
"#
    );
    let (engine, addr) = start_engine(dir.path(), &config, "in");

    const N: usize = 400;
    let (tx, rx) = mpsc::channel::<usize>();
    let sender = std::thread::spawn(move || {
        // One connection for the whole run: a reload must not drop it.
        let mut c = Mllp::connect(addr);
        for i in 0..N {
            let ack = c.request(&adt(&format!("R{i:04}")));
            assert_aa(&ack);
            let _ = tx.send(i);
            std::thread::sleep(Duration::from_millis(8));
        }
    });
    let sent_at_least = |n: usize| {
        let deadline = Instant::now() + WAIT;
        let mut last = 0;
        while last + 1 < n {
            last = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the sender keeps going");
        }
    };

    // Reloads while the sender runs: versions 2 and 3, a refused broken change (a valid a
    // and a broken b saved together: neither is taken), then version 4 with a new plugin.
    sent_at_least(50);
    replace(&a, script("MSH-8", 2).as_bytes());
    replace(&b, script("PID-2", 2).as_bytes());
    wait_count(&engine, "reloaded; new messages take the new version", 1);
    sent_at_least(130);
    replace(&a, script("MSH-8", 3).as_bytes());
    replace(&b, script("PID-2", 3).as_bytes());
    wait_count(&engine, "reloaded; new messages take the new version", 2);
    sent_at_least(210);
    replace(&a, script("MSH-8", 99).as_bytes());
    replace(&b, b"msg.set(\"PID-2\", \"v99\"  // a syntax error\n");
    let refused = wait_count(
        &engine,
        "reload refused; the running version keeps serving",
        1,
    );
    let why = refused["error"].as_str().unwrap();
    assert!(why.contains("b.rhai"), "the refusal names the file: {why}");
    sent_at_least(260);
    // A half-written plugin is refused too.
    std::fs::write(&plugin, b"\0asm\x0d\0\x01\0 truncated").unwrap();
    wait_count(
        &engine,
        "reload refused; the running version keeps serving",
        2,
    );
    sent_at_least(300);
    replace(&a, script("MSH-8", 4).as_bytes());
    replace(&b, script("PID-2", 4).as_bytes());
    replace(
        &plugin,
        &std::fs::read(wasm_dir.join("test_filter.wasm")).unwrap(),
    );
    wait_count(&engine, "reloaded; new messages take the new version", 3);
    sender
        .join()
        .expect("every message got AA on one connection");

    let files = wait_files(&out, N, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let files = if files.len() == N {
        wait_files(&out, N, WAIT)
    } else {
        files
    };
    assert_eq!(files.len(), N, "no message lost, none duplicated");
    let mut by_id = BTreeMap::new();
    for f in &files {
        let id = field(f, "MSH", 10);
        let (ta, tb) = (field(f, "MSH", 8), field(f, "PID", 2));
        assert_eq!(ta, tb, "{id}: both steps of one message from one version");
        assert_ne!(ta, "v99", "{id}: the refused change was never used");
        assert!(
            by_id.insert(id.clone(), ta).is_none(),
            "{id} delivered twice"
        );
    }
    let ids: BTreeSet<String> = (0..N).map(|i| format!("R{i:04}")).collect();
    assert_eq!(by_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    // Sent one after another, so the versions they took only move forward.
    let versions: Vec<u32> = by_id
        .values()
        .map(|t| t.trim_start_matches('v').parse().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "versions go back: {versions:?}"
    );
    let seen: BTreeSet<u32> = versions.iter().copied().collect();
    assert_eq!(seen, BTreeSet::from([1, 2, 3, 4]), "every version served");
    assert_eq!(count(&engine, "listener changed; it is bound again"), 0);
}

/// A config change adds a listener, a destination and a route, changes a listener's ACK
/// policy in place, then removes the first destination and the new listener; a connection to
/// the unchanged listener stays open throughout, and a broken config is refused.
#[test]
fn config_reload_changes_routes_listeners_and_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let (out_x, out_y) = (dir.path().join("x"), dir.path().join("y"));
    let (_x, x) = standin("x", &out_x, 0, &[]);
    let (_y, y) = standin("y", &out_y, 0, &[]);
    let base = |extra: &str, dests: &str, routes: &str| {
        format!(
            r#"
[engine]
reload_debounce = "150ms"

[[listener]]
name = "a"
bind = "127.0.0.1:0"
unrouted = "reject"
{extra}
{dests}
{routes}
"#
        )
    };
    let dest = |name: &str, addr: SocketAddr| {
        format!("[[destination]]\nname = \"{name}\"\naddress = \"{addr}\"\n")
    };
    let route = |name: &str, listener: &str, to: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nlisteners = [\"{listener}\"]\ndestinations = [\"{to}\"]\n"
        )
    };
    let v1 = base("", &dest("x", x), &route("to-x", "a", "x"));
    let (engine, addr_a) = start_engine(dir.path(), &v1, "a");
    let path = dir.path().join("courier.toml");
    let mut conn = Mllp::connect(addr_a);
    assert_aa(&conn.request(&adt("C1")));
    wait_files(&out_x, 1, WAIT);

    // v2: listener b, destination y, a route a -> y, and a's unrouted policy relaxed.
    let v2 = base(
        "\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nunrouted = \"reject\"\n",
        &(dest("x", x) + &dest("y", y)),
        &(route("to-x", "a", "x") + &route("a-to-y", "a", "y") + &route("b-to-y", "b", "y")),
    );
    replace(&path, v2.as_bytes());
    wait_count(&engine, "reloaded; new messages take the new version", 1);
    let addr_b: SocketAddr = engine.wait_line(WAIT, |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["message"] == "listening" && v["listener"] == "b")
            .then(|| v["addr"].as_str().unwrap().parse().unwrap())
    });
    assert_aa(&conn.request(&adt("C2")));
    wait_files(&out_x, 2, WAIT);
    wait_files(&out_y, 1, WAIT);
    let mut conn_b = Mllp::connect(addr_b);
    assert_aa(&conn_b.request(&adt("C3")));
    wait_files(&out_y, 2, WAIT);

    // A broken config (an unknown key) is refused with file, line and key; all keeps running.
    replace(
        &path,
        format!("{v2}\n[[route]]\nname = \"oops\"\ndestinations = [\"y\"]\ncolour = \"red\"\n")
            .as_bytes(),
    );
    let refused = wait_count(
        &engine,
        "reload refused; the running version keeps serving",
        1,
    );
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains("courier.toml") && why.contains("colour"),
        "{why}"
    );
    assert_aa(&conn.request(&adt("C4")));
    wait_files(&out_x, 3, WAIT);
    wait_files(&out_y, 3, WAIT);

    // v3: x and listener b are gone; a -> y only. Connection a is untouched; b is closed.
    let v3 = base("", &dest("y", y), &route("a-to-y", "a", "y"));
    replace(&path, v3.as_bytes());
    wait_count(&engine, "reloaded; new messages take the new version", 2);
    assert_aa(&conn.request(&adt("C5")));
    let ys = wait_files(&out_y, 4, WAIT);
    assert_eq!(field(ys.last().unwrap(), "MSH", 10), "C5");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_dir(&out_x).unwrap().count(),
        3,
        "x got nothing after it was removed"
    );
    conn_b.send(&adt("C6"));
    assert!(
        conn_b.recv(Duration::from_secs(5)).is_none(),
        "listener b is closed"
    );
    assert!(
        std::net::TcpStream::connect(addr_b).is_err(),
        "b no longer listens"
    );
    // Unrouted messages on a are still refused (its settings came through every reload).
    let mut orm = adt("C7");
    let text = String::from_utf8(orm.clone())
        .unwrap()
        .replace("ADT^A04^ADT_A01", "ORM^O01");
    orm = text.into_bytes();
    let v4 = base(
        "",
        &dest("y", y),
        &route("a-to-y-adt", "a", "y")
            .replace("destinations", "message_types = [\"ADT\"]\ndestinations"),
    );
    replace(&path, v4.as_bytes());
    wait_count(&engine, "reloaded; new messages take the new version", 3);
    let ack = conn.request(&orm);
    assert_eq!(
        field(&ack, "MSA", 1),
        "AR",
        "{}",
        String::from_utf8_lossy(&ack)
    );
}
