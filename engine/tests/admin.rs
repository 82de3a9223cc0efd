//! The admin HTTP server over real HTTP against the real binary: authentication (and what is
//! refused before a body is read), metrics that move as messages flow, the JSON API (routes,
//! destinations, search, detail, resend, pause and resume, retry, reload) and the audit log.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn config(dest: SocketAddr) -> String {
    format!(
        r#"
[engine]
shutdown_grace = "5s"

[admin]
bind = "127.0.0.1:0"
max_body = 1024

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "emr"
address = "{dest}"
ack_timeout = "2s"
retry = {{ initial = "100ms", max = "400ms" }}

[[route]]
name = "adt"
message_types = ["ADT^*"]
destinations = ["emr"]
"#
    )
}

fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, Some(ADMIN_TOKEN), b"");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, Some(ADMIN_TOKEN), body.as_bytes());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The value of one sample in the metrics text, 0 if absent.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn metrics(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", Some(ADMIN_TOKEN), b"");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn without_the_token_nothing_but_health_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (_emr, dest) = standin("emr", &tmp.path().join("emr"), 0, &[]);
    let (engine, _) = start_engine(tmp.path(), &config(dest), "in");
    let admin = admin_addr(&engine);

    let (status, body) = http(admin, "GET", "/health", None, b"");
    assert_eq!(status, 200, "{body}");
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/api/routes"),
        ("GET", "/api/messages"),
        ("GET", "/api/messages/1"),
        ("POST", "/api/messages/1/resend"),
        ("POST", "/api/reload"),
    ] {
        let (status, _) = http(admin, method, path, None, b"");
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = http(admin, method, path, Some("wrong-token-0123456789"), b"");
        assert_eq!(status, 401, "{method} {path} with a wrong token");
        let (status, _) = http(
            admin,
            method,
            path,
            Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
            b"",
        );
        assert_eq!(status, 401, "{method} {path} with a prefix of the token");
    }

    // A huge body that never comes: refused at once, without waiting to read it.
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /api/messages/1/resend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{{"
    )
    .unwrap();
    let started = Instant::now();
    let (status, _) = read_response(stream);
    assert_eq!(status, 401);
    assert!(started.elapsed() < Duration::from_secs(5));

    // With the token, a body over max_body is refused too (413), not read whole.
    let big = format!("{{\"to\": \"{}\"}}", "x".repeat(4096));
    let (status, _) = http(
        admin,
        "POST",
        "/api/messages/1/resend",
        Some(ADMIN_TOKEN),
        big.as_bytes(),
    );
    assert_eq!(status, 413);

    engine.wait_line(Duration::from_secs(5), |l| {
        (l.contains("admin request refused") && l.contains("wrong token")).then_some(())
    });
    assert!(
        !engine.stderr_text().contains(ADMIN_TOKEN),
        "the token is never logged"
    );
}

#[test]
fn api_metrics_and_audit_follow_the_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("emr");
    std::fs::create_dir_all(&out).unwrap();
    let (_emr, dest) = standin("emr", &out, 0, &[]);
    let (engine, addr) = start_engine(tmp.path(), &config(dest), "in");
    let admin = admin_addr(&engine);

    let before = metrics(admin);
    assert_eq!(
        sample(&before, "courier_received_total{listener=\"in\"}"),
        0.0
    );

    let mut c = Mllp::connect(addr);
    for i in 1..=3 {
        assert_eq!(field(&c.request(&adt(&format!("API{i}"))), "MSA", 1), "AA");
    }
    // Not routed (ORU): counted as received and acknowledged all the same.
    let oru = String::from_utf8(adt("API-ORU"))
        .unwrap()
        .replace("ADT^A04^ADT_A01", "ORU^R01");
    assert_eq!(field(&c.request(oru.as_bytes()), "MSA", 1), "AA");
    wait_files(&out, 3, Duration::from_secs(20));
    wait_for("the delivered count", Duration::from_secs(10), || {
        sample(
            &metrics(admin),
            "courier_deliveries_total{destination=\"emr\",outcome=\"delivered\"}",
        ) >= 3.0
    });
    let m = metrics(admin);
    assert_eq!(sample(&m, "courier_received_total{listener=\"in\"}"), 4.0);
    assert_eq!(
        sample(&m, "courier_acks_total{listener=\"in\",code=\"AA\"}"),
        4.0
    );
    assert_eq!(
        sample(
            &m,
            "courier_route_messages_total{route=\"adt\",outcome=\"sent\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(&m, "courier_ack_seconds_count{listener=\"in\"}"),
        4.0
    );
    assert_eq!(
        sample(&m, "courier_delivery_seconds_count{destination=\"emr\"}"),
        3.0
    );
    assert!(sample(&m, "courier_store_bytes") > 0.0, "{m}");
    // Four messages journaled and three deliveries claimed and settled: at least seven write
    // requests, in at least one commit and no more commits than requests.
    let (commits, writes) = (
        sample(&m, "courier_store_commits_total"),
        sample(&m, "courier_store_writes_total"),
    );
    assert!(writes >= 7.0 && commits >= 1.0 && commits <= writes, "{m}");
    // Nothing failed, so no batch had to run again job by job.
    assert!(
        m.lines().any(|l| l == "courier_store_batch_reruns_total 0"),
        "{m}"
    );

    // Routes and destinations.
    let routes = get(admin, "/api/routes");
    assert_eq!(routes["routes"][0]["name"], "adt");
    assert_eq!(routes["routes"][0]["destinations"][0], "emr");
    let dests = get(admin, "/api/destinations");
    assert_eq!(dests["destinations"][0]["name"], "emr");
    assert_eq!(dests["destinations"][0]["paused"], false);

    // Search, detail, resend. The counter above moves when the receiver acknowledges; the
    // store records the outcome in the worker's next commit, a moment later.
    let mut found = Value::Null;
    wait_for(
        "API2 recorded as delivered",
        Duration::from_secs(10),
        || {
            found = get(admin, "/api/messages?control_id=API2");
            found["messages"][0]["deliveries"]["delivered"] == 1
        },
    );
    let list = found["messages"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{found}");
    let id = list[0]["id"].as_i64().unwrap();
    let by_patient = get(admin, "/api/messages?patient_id=100234&type=ADT");
    assert_eq!(by_patient["messages"].as_array().unwrap().len(), 3);
    let (status, body) = http(
        admin,
        "GET",
        "/api/messages?status=bogus",
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("status"), "{body}");

    let detail = get(admin, &format!("/api/messages/{id}"));
    assert!(detail["raw"].as_str().unwrap().contains("|API2|"));
    assert_eq!(detail["deliveries"][0]["status"], "delivered");
    let (status, resent) = post(admin, &format!("/api/messages/{id}/resend"), "");
    assert_eq!(status, 200, "{resent}");
    assert_eq!(resent["deliveries"].as_array().unwrap().len(), 1);
    wait_files(&out, 4, Duration::from_secs(20));
    let (status, _) = post(
        admin,
        &format!("/api/messages/{id}/resend"),
        r#"{"to": "nowhere"}"#,
    );
    assert_eq!(status, 409);
    let (status, _) = post(admin, "/api/messages/999999/resend", "");
    assert_eq!(status, 404);

    // Pause holds deliveries back; resume lets them go.
    let (status, paused) = post(admin, "/api/destinations/emr/pause", "");
    assert_eq!((status, &paused["paused"]), (200, &Value::Bool(true)));
    assert_eq!(field(&c.request(&adt("API-PAUSED")), "MSA", 1), "AA");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        4,
        "held while paused"
    );
    let dests = get(admin, "/api/destinations");
    assert_eq!(dests["destinations"][0]["paused"], true);
    assert_eq!(dests["destinations"][0]["queued"], 1);
    let (status, _) = post(admin, "/api/destinations/emr/resume", "");
    assert_eq!(status, 200);
    wait_files(&out, 5, Duration::from_secs(20));
    let (status, _) = post(admin, "/api/destinations/nowhere/pause", "");
    assert_eq!(status, 404);

    // Reload answers with the new version.
    let (status, reloaded) = post(admin, "/api/reload", "");
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["version"], 2);

    // The audit log: who did what to which message, in the store and the log.
    let audit = get(admin, "/api/audit");
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["view", "resend", "pause", "resume", "reload", "search"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(
        entries
            .iter()
            .all(|e| e["actor"].as_str().unwrap() == "admin@127.0.0.1")
    );
    let about = get(admin, &format!("/api/audit?message={id}"));
    let about: Vec<&str> = about["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(about, ["resend", "view"]);
    let log = engine.stderr_text();
    let audit_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"admin action\""))
        .collect();
    assert!(audit_lines.len() >= 6, "{audit_lines:?}");
    for l in audit_lines {
        assert!(
            !l.contains("100234") && !l.contains("Johnson"),
            "patient data in the audit log: {l}"
        );
    }

    // The dashboard page itself is served without the token (it holds no data).
    let (status, page) = http(admin, "GET", "/", None, b"");
    assert_eq!(status, 200);
    assert!(page.contains("<title>Courier</title>"));
}

/// Routes that run the same deterministic steps (the same script with the same settings) on a
/// message run them once: the step is timed once, under the first route, yet each route has
/// its step records and each destination gets the changed message. A route that only starts
/// with those steps takes them over and runs the rest itself; the same script with other
/// settings runs on its own.
#[test]
fn routes_with_the_same_steps_run_them_once_per_message() {
    let tmp = tempfile::tempdir().unwrap();
    let outs: Vec<_> = ["emr", "billing", "lab", "research"]
        .iter()
        .map(|n| {
            let d = tmp.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let (_emr, emr) = standin("emr", &outs[0], 0, &[]);
    let (_billing, billing) = standin("billing", &outs[1], 0, &[]);
    let (_lab, lab) = standin("lab", &outs[2], 0, &[]);
    let (_research, research) = standin("research", &outs[3], 0, &[]);
    std::fs::write(
        tmp.path().join("tag.rhai"),
        "msg.set(\"PID-2\", settings.tag);\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("mark.rhai"),
        "msg.set(\"PID-4\", \"MARK\");\n",
    )
    .unwrap();
    let config = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "emr"
address = "{emr}"

[[destination]]
name = "billing"
address = "{billing}"

[[destination]]
name = "lab"
address = "{lab}"

[[destination]]
name = "research"
address = "{research}"

[[route]]
name = "chart"
destinations = ["emr"]
[[route.step]]
script = "tag.rhai"
settings = {{ tag = "SAME" }}

[[route]]
name = "bill"
destinations = ["billing"]
[[route.step]]
script = "tag.rhai"
settings = {{ tag = "SAME" }}

[[route]]
name = "lab"
destinations = ["lab"]
[[route.step]]
script = "tag.rhai"
settings = {{ tag = "OTHER" }}

[[route]]
name = "research"
destinations = ["research"]
[[route.step]]
script = "tag.rhai"
settings = {{ tag = "SAME" }}
[[route.step]]
script = "mark.rhai"
"#
    );
    let (engine, addr) = start_engine(tmp.path(), &config, "in");
    let admin = admin_addr(&engine);
    let mut c = Mllp::connect(addr);
    for i in 1..=3 {
        assert_eq!(field(&c.request(&adt(&format!("SH{i}"))), "MSA", 1), "AA");
    }
    for (dir, tag) in outs.iter().zip(["SAME", "SAME", "OTHER", "SAME"]) {
        for got in wait_files(dir, 3, Duration::from_secs(20)) {
            assert_eq!(field(&got, "PID", 2), tag, "{}", dir.display());
            let mark = if dir == &outs[3] { "MARK" } else { "" };
            assert_eq!(field(&got, "PID", 4), mark, "{}", dir.display());
        }
    }

    let m = metrics(admin);
    let runs = |route: &str, step: &str| {
        sample(
            &m,
            &format!(
                "courier_step_seconds_count{{route=\"{route}\",step=\"{step}\",kind=\"rhai\"}}"
            ),
        )
    };
    assert_eq!(
        [
            runs("chart", "tag.rhai"),
            runs("bill", "tag.rhai"),
            runs("lab", "tag.rhai"),
            runs("research", "tag.rhai"),
            runs("research", "mark.rhai"),
        ],
        [3.0, 0.0, 3.0, 0.0, 3.0],
        "{m}"
    );
    for route in ["chart", "bill", "lab", "research"] {
        assert_eq!(
            sample(
                &m,
                &format!("courier_route_messages_total{{route=\"{route}\",outcome=\"sent\"}}")
            ),
            3.0,
            "{route}: {m}"
        );
    }

    let found = get(admin, "/api/messages?control_id=SH2");
    let id = found["messages"][0]["id"].as_i64().unwrap();
    let detail = get(admin, &format!("/api/messages/{id}"));
    let steps = detail["steps"].as_array().unwrap();
    let by_route = |route: &str| {
        steps
            .iter()
            .find(|s| s["route"] == route)
            .unwrap_or_else(|| panic!("no step record for {route}: {detail}"))
    };
    let (chart, bill, lab) = (by_route("chart"), by_route("bill"), by_route("lab"));
    assert_eq!(steps.len(), 5, "{detail}");
    let research: Vec<&Value> = steps.iter().filter(|s| s["route"] == "research").collect();
    assert_eq!(research.len(), 2, "{detail}");
    assert_eq!(research[0]["step"], "tag.rhai");
    assert_eq!(research[0]["output"], chart["output"]);
    assert_eq!(research[1]["step"], "mark.rhai");
    assert!(
        research[1]["output"].as_str().unwrap().contains("|MARK|"),
        "{detail}"
    );
    assert_eq!(chart["outcome"], "changed");
    assert_eq!(bill["outcome"], "changed");
    assert_eq!(bill["output"], chart["output"]);
    assert_eq!(bill["content_hash"], chart["content_hash"]);
    assert!(
        lab["output"].as_str().unwrap().contains("|OTHER|"),
        "{detail}"
    );
}
