//! MLLP over TLS end to end, with the real `courier` binary and certificates made at test
//! time: a sender with a client certificate reaches the engine over mutual TLS, and the
//! engine delivers over mutual TLS to a `courier listen --tls-*` receiver; a sender without
//! TLS is refused; a config naming a missing key file is refused at `check`, naming the key.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use support::*;

/// A CA that signs leaf certificates, all written as PEM files under `dir`.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(dir: &Path) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Riverside test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca { params, key }
    }

    /// Writes `name.pem` and `name.key`: a certificate for `names` signed by this CA.
    fn issue(&self, dir: &Path, name: &str, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn send(file: &Path, to: std::net::SocketAddr, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("send")
        .arg(file)
        .args(["--to", &to.to_string(), "--timeout", "10s"])
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

#[test]
fn a_message_over_mutual_tls_is_delivered_over_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new(&certs);
    ca.issue(&certs, "engine", &["localhost", "127.0.0.1"]);
    ca.issue(&certs, "emr", &["emr.riverside.test"]);
    ca.issue(&certs, "frontdesk", &["frontdesk.riverside.test"]);
    let cert = |name: &str| certs.join(name).to_str().unwrap().to_owned();

    // The EMR stand-in speaks mutual TLS only.
    let rx_dir = tmp.path().join("emr");
    let (_emr, emr_addr) = standin(
        "emr",
        &rx_dir,
        0,
        &[
            "--tls-cert",
            &cert("emr.pem"),
            "--tls-key",
            &cert("emr.key"),
            "--tls-client-ca",
            &cert("ca.pem"),
        ],
    );

    // Relative paths: resolved against the config file's directory.
    let config = format!(
        r#"
[store]
enabled = false

[[listener]]
name = "clinic"
bind = "127.0.0.1:0"
allow = ["127.0.0.1/32", "::1"]
tls = {{ cert = "certs/engine.pem", key = "certs/engine.key", client_ca = "certs/ca.pem" }}

[[destination]]
name = "emr"
address = "{emr_addr}"
retry = {{ initial = "100ms", max = "500ms" }}
tls = {{ ca = "certs/ca.pem", cert = "certs/engine.pem", key = "certs/engine.key", server_name = "emr.riverside.test" }}

[[route]]
name = "all"
destinations = ["emr"]
"#
    );
    let (_engine, addr) = start_engine(tmp.path(), &config, "clinic");

    let msg = tmp.path().join("a04.hl7");
    std::fs::write(&msg, adt("TLS0001")).unwrap();
    let out = send(
        &msg,
        addr,
        &[
            "--tls-ca",
            &cert("ca.pem"),
            "--tls-cert",
            &cert("frontdesk.pem"),
            "--tls-key",
            &cert("frontdesk.key"),
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("TLS0001\tAA"));
    let delivered = wait_files(&rx_dir, 1, Duration::from_secs(20));
    assert_eq!(field(&delivered[0], "MSH", 10), "TLS0001");

    // Without a client certificate, or without TLS at all, nothing gets through.
    let out = send(&msg, addr, &["--tls-ca", &cert("ca.pem")]);
    assert!(!out.status.success());
    let out = send(&msg, addr, &[]);
    assert!(!out.status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wait_files(&rx_dir, 1, Duration::from_secs(1)).len(), 1);
}

#[test]
fn a_missing_key_file_is_a_config_error_naming_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new(&certs);
    ca.issue(&certs, "engine", &["localhost"]);
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\n\
         tls = { cert = \"certs/engine.pem\", key = \"certs/missing.key\" }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:4: listener[0].tls.key"),
        "{stderr}"
    );
    assert!(stderr.contains("certs/missing.key"), "{stderr}");

    // The same at `run`: the engine does not start.
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["run", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listener[0].tls.key"), "{stderr}");
}

#[test]
fn a_sender_outside_the_allow_list_gets_nothing_and_is_logged() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"
[store]
enabled = false

[[listener]]
name = "lab-only"
bind = "127.0.0.1:0"
allow = ["10.20.0.0/16"]
"#;
    let (engine, addr) = start_engine(tmp.path(), config, "lab-only");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = vec![0x0B];
    frame.extend(adt("OUTSIDE1"));
    frame.extend([0x1C, 0x0D]);
    let _ = stream.write_all(&frame);
    let mut buf = [0u8; 256];
    // Closed without an answer (end of stream, or a reset for the unread bytes).
    assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    engine.wait_line(Duration::from_secs(10), |l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let m = v["message"].as_str()?;
        (v["level"] == "WARN"
            && m.contains("not in listener lab-only's allow list")
            && v["peer"].as_str()?.starts_with("127.0.0.1:"))
        .then_some(())
    });
    assert!(!engine.stderr_text().contains("OUTSIDE1"));
}

/// HTTPS both ways: an engine's HTTP destination posts over mutual TLS to another engine's
/// HTTPS listener, which files the message.
#[test]
fn https_destination_to_https_listener_with_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new(&certs);
    ca.issue(&certs, "portal", &["portal.riverside.test"]);
    ca.issue(&certs, "courier", &["courier.riverside.test"]);
    let cert = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let out = b.join("out");

    let portal = format!(
        r#"
[[listener]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"
tls = {{ cert = "{}", key = "{}", client_ca = "{}" }}

[[destination]]
name = "drop"
kind = "file"
directory = "out"
name_pattern = "{{control_id}}.hl7"

[[route]]
name = "all"
destinations = ["drop"]
"#,
        cert("portal.pem"),
        cert("portal.key"),
        cert("ca.pem")
    );
    let (_portal, portal_addr) = start_engine(&b, &portal, "web");
    let sender = format!(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[destination]]
name = "portal"
kind = "http"
url = "https://127.0.0.1:{}/hl7"
tls = {{ ca = "{}", cert = "{}", key = "{}", server_name = "portal.riverside.test" }}
retry = {{ initial = "100ms", max = "500ms" }}

[[route]]
name = "all"
destinations = ["portal"]
"#,
        portal_addr.port(),
        cert("ca.pem"),
        cert("courier.pem"),
        cert("courier.key")
    );
    let (sender, addr) = start_engine(&a, &sender, "in");
    let ack = Mllp::connect(addr).request(&adt("TLS0001"));
    assert_eq!(field(&ack, "MSA", 1), "AA");
    let files = wait_files(&out, 1, Duration::from_secs(60));
    assert_eq!(files[0], adt("TLS0001"));
    sender.wait_line(Duration::from_secs(60), |l| {
        l.contains("\"delivered\"").then_some(())
    });
}
