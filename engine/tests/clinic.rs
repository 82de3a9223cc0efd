//! The example clinic end to end: stand-in EMR, LIS and billing (`courier listen`), the
//! engine on examples/clinic.toml (moved to free ports), and `courier send` — real
//! processes over real MLLP on 127.0.0.1.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// The example clinic in `dir`: the EMR, LIS, billing and research stand-ins (writing to the
/// directories returned, in that order), and the engine with its listener's address.
fn clinic(
    dir: &std::path::Path,
) -> (
    Vec<std::path::PathBuf>,
    Vec<(Proc, std::net::SocketAddr)>,
    Proc,
    std::net::SocketAddr,
) {
    let names = ["emr", "lis", "billing", "research"];
    let dirs: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let standins: Vec<_> = names
        .iter()
        .zip(&dirs)
        .map(|(n, d)| standin(n, d, 0, &[]))
        .collect();
    let addrs = [0, 1, 2, 3].map(|i| standins[i].1);
    let (engine, addr) = start_engine(dir, &clinic_config(addrs), "clinic");
    (dirs, standins, engine, addr)
}

#[test]
fn clinic_flow_delivers_each_message_to_the_right_systems() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let (dirs, _standins, engine, addr) = clinic(tmp.path());

    let files = [
        "adt_a04_sarah.hl7",
        "orm_o01_labs.hl7",
        "oru_r01_results.hl7",
        "adt_a01_admit.hl7",
    ];
    let paths: Vec<String> = files
        .iter()
        .map(|f| {
            repo()
                .join("examples/messages")
                .join(f)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("send")
        .args(&paths)
        .args(["--to", &addr.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "courier send failed");
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (line, control_id) in lines.iter().zip([
        "REG20261124083012001",
        "EMR20261124084510113",
        "LIS20261124143022551",
        "REG20261124101544007",
    ]) {
        let cols: Vec<_> = line.split('\t').collect();
        assert_eq!(cols[1], control_id, "{line}");
        assert_eq!(cols[2], "AA", "{line}");
    }

    // Billing gets the registrations exactly as sent, in order.
    let billing = wait_files(&dirs[2], 2, Duration::from_secs(30));
    assert_eq!(
        billing,
        [example("adt_a04_sarah.hl7"), example("adt_a01_admit.hl7")]
    );
    // The EMR gets them mapped (its MRN only, names upper-cased, its MSH-5/6), and the
    // results with LOINC codes, in the order sent.
    let emr = wait_files(&dirs[0], 3, Duration::from_secs(30));
    let a04 = String::from_utf8_lossy(&emr[0]).to_string();
    assert_eq!(field(&emr[0], "MSH", 10), "REG20261124083012001");
    assert_eq!(field(&emr[0], "MSH", 5), "RIVERSIDE_EMR");
    assert_eq!(field(&emr[0], "PID", 3), "100234^^^RIVERSIDE^MR", "{a04}");
    assert!(
        field(&emr[0], "PID", 5).starts_with("JOHNSON^SARAH^ANNE"),
        "{a04}"
    );
    assert!(field(&emr[0], "PV1", 3).starts_with("FAMILY-MED^"), "{a04}");
    assert_eq!(field(&emr[1], "MSH", 10), "LIS20261124143022551");
    assert!(
        field(&emr[1], "OBX", 3).starts_with("6690-2^"),
        "WBC as LOINC"
    );
    assert!(field(&emr[1], "OBX", 3).contains("^LN"), "coding system LN");
    assert_eq!(field(&emr[2], "MSH", 10), "REG20261124101544007");
    // The LIS gets the order with LOINC codes.
    let lis = wait_files(&dirs[1], 1, Duration::from_secs(30));
    assert!(
        field(&lis[0], "OBR", 4).starts_with("58410-2^"),
        "CBC as LOINC"
    );
    // Research gets no names, no MRN, birth year only.
    let research = wait_files(&dirs[3], 3, Duration::from_secs(30));
    for m in &research {
        let text = String::from_utf8_lossy(m);
        for phi in [
            "Johnson",
            "JOHNSON",
            "Okafor",
            "100234",
            "100871",
            "Elm Street",
            "555-23-4411",
        ] {
            assert!(
                !text.contains(phi),
                "research feed contains `{phi}`: {text}"
            );
        }
    }
    assert_eq!(field(&research[0], "PID", 7), "1978");
    // Nothing extra arrives anywhere.
    std::thread::sleep(Duration::from_millis(300));
    for (d, n) in dirs.iter().zip([3, 1, 2, 3]) {
        assert_eq!(std::fs::read_dir(d).unwrap().count(), n, "{}", d.display());
    }

    // No patient data in the engine's logs at the default level.
    let logs = engine.stderr_text();
    for phi in [
        "Johnson",
        "JOHNSON",
        "100234",
        "Elm Street",
        "19780412",
        "555-23-4411",
    ] {
        assert!(!logs.contains(phi), "engine log contains `{phi}`");
    }
    assert!(
        logs.contains("REG20261124083012001"),
        "control ids are logged"
    );
    // The plugins were compiled by the compiler child, not in the engine's own process.
    assert!(!logs.contains("in this process"), "{logs}");

    // The store records each step with its plugin's content hash.
    let shown = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["messages", "--config"])
        .arg(tmp.path().join("courier.toml"))
        .args(["show", "1"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("registration-to-emr adt_emr.wasm (wasm "),
        "{shown}"
    );
    assert!(shown.contains("-> changed"), "{shown}");
    assert!(shown.contains("pv1_location.rhai (rhai "), "{shown}");
}

#[test]
fn every_example_config_passes_check() {
    build_plugins();
    // clinic-tls.toml names certificates that are made, never committed.
    let made = Command::new("bash")
        .arg(repo().join("examples/make-certs.sh"))
        .status()
        .expect("examples/make-certs.sh runs");
    assert!(made.success(), "examples/make-certs.sh failed");
    let mut configs: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    configs.sort();
    assert!(!configs.is_empty());
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("check")
        .args(&configs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), configs.len(), "{stdout}");
}

#[test]
fn check_names_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\n\n[[destination]]\nname = \"emr\"\naddress = \"127.0.0.1:2576\"\n\n[[route]]\nname = \"r\"\ndestinations = [\"emr\", \"lab\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:11: route[0].destinations[1]: no destination named `lab`"),
        "{stderr}"
    );

    std::fs::write(
        &bad,
        "[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\nmax_conections = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4:"), "{stderr}");
    assert!(stderr.contains("max_conections"), "{stderr}");
}

#[test]
fn parse_prints_values_at_paths() {
    let file = repo().join("examples/messages/adt_a04_sarah.hl7");
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["parse", file.to_str().unwrap()])
        .args([
            "--path",
            "PID-5.1",
            "--path",
            "PID-3[2].1",
            "--path",
            "MSH.9.2",
            "--path",
            "PID-99",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PID-5.1\tJohnson\nPID-3[2].1\t555-23-4411\nMSH-9.2\tA04\nPID-99\t(absent)\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["parse", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.to_string().contains("Johnson"));
}

/// The lab drop and the portal webhook: the analyzer's batch file (two ORUs) dropped in the
/// clinic's folder reaches the EMR with LOINC codes and the portal as JSON (the stand-in
/// writes it back as ER7), and the file moves to processed/.
#[test]
fn clinic_lab_drop_feeds_the_chart_and_the_portal_webhook() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let names = ["emr", "lis", "billing", "research", "portal"];
    let dirs: Vec<_> = names.iter().map(|n| tmp.path().join(n)).collect();
    let standins: Vec<_> = names
        .iter()
        .zip(&dirs)
        .map(|(n, d)| {
            let extra: &[&str] = if *n == "portal" { &["--http"] } else { &[] };
            standin(n, d, 0, extra)
        })
        .collect();
    let addrs = [0, 1, 2, 3].map(|i| standins[i].1);
    let config = clinic_config(addrs);
    // clinic_config closed the portal's port: point it at the stand-in instead.
    let portal_url = with_portal_at(&config, standins[4].1);
    let (engine, _) = start_engine(tmp.path(), &portal_url, "clinic");
    engine.wait_line(Duration::from_secs(60), |l| {
        (l.contains("\"watching\"") && l.contains("lab-drop")).then_some(())
    });

    let drop = tmp.path().join("data/lab-drop");
    let run = std::fs::read(repo().join("examples/lab-drop/hematology_run.hl7")).unwrap();
    std::fs::write(drop.join(".run.part"), &run).unwrap();
    std::fs::rename(drop.join(".run.part"), drop.join("hematology_run.hl7")).unwrap();

    let emr = wait_files(&dirs[0], 2, Duration::from_secs(60));
    assert_eq!(field(&emr[0], "MSH", 10), "LIS20261124160510601");
    assert_eq!(field(&emr[1], "MSH", 10), "LIS20261124160512602");
    assert!(
        field(&emr[0], "OBX", 3).starts_with("718-7^"),
        "HGB as LOINC"
    );
    let portal = wait_files(&dirs[4], 2, Duration::from_secs(60));
    assert_eq!(field(&portal[0], "MSH", 10), "LIS20261124160510601");
    assert_eq!(
        portal[0], emr[0],
        "the portal gets the same mapped result, via JSON"
    );
    assert!(
        field(&portal[1], "OBX", 3).starts_with("6690-2^"),
        "WBC as LOINC"
    );
    wait_for("the run in processed/", Duration::from_secs(60), || {
        drop.join("processed/hematology_run.hl7").exists()
    });
    assert!(
        std::fs::read_dir(drop.join("error"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// The config with the portal webhook's URL at `addr`.
fn with_portal_at(config: &str, addr: std::net::SocketAddr) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("url = \"http://127.0.0.1:") {
                format!("url = \"http://{addr}/hl7\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The README's run command: examples/clinic.sh (here with `--once`, the binary under test
/// and a temporary data directory) runs the clinic on its real ports and delivers the six
/// copies of the four example messages.
#[test]
fn readme_clinic_script_runs_the_clinic() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("examples/clinic.sh"))
        .arg("--once")
        .current_dir(repo())
        .env("COURIER_BIN", env!("CARGO_BIN_EXE_courier"))
        .env("COURIER_DATA", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert_eq!(stdout.matches("\tAA").count(), 4, "four AA ACKs");
    for sys in ["emr", "lis", "billing", "research", "portal"] {
        assert!(
            tmp.path().join(sys).read_dir().unwrap().count() > 0,
            "{sys}"
        );
    }
}

/// The plugin compiler child on its own, as the engine runs it: a component in, its compiled
/// code out; a file that is not a component refused with wasmtime's reason (exit 2); settings
/// it cannot use answered with exit 3, on which the engine compiles in process instead.
#[test]
fn compile_plugin_child_compiles_refuses_and_reports() {
    build_plugins();
    let run = |settings: &[&str], input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("compile-plugin")
            .args(settings)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A child refusing its settings exits before reading: a broken pipe here.
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input);
        child.wait_with_output().unwrap()
    };
    let settings = ["256", "1073741824", "1048576"];
    let wasm =
        std::fs::read(repo().join("target/wasm-plugins/wasm32-wasip2/release/lab_codes.wasm"))
            .unwrap();
    let out = run(&settings, &wasm);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // wasmtime's compiled artefacts are ELF images.
    assert_eq!(out.stdout.get(..4), Some(&b"\x7fELF"[..]));
    assert!(out.stderr.is_empty());

    // A component header with nothing valid after it.
    let out = run(&settings, b"\0asm\x0d\0\x01\0not a component");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());

    let out = run(&["many", "1073741824", "1048576"], &wasm);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("settings are numbers"));
}

/// `msg` with MSH-10 `from` replaced by `to` and `segment` added at its end.
fn larger(msg: &[u8], from: &str, to: &str, segment: &str) -> Vec<u8> {
    let mut text = String::from_utf8(msg.to_vec()).unwrap();
    assert!(text.contains(from));
    text = text.replacen(from, to, 1);
    if !text.ends_with('\r') {
        text.push('\r');
    }
    text.push_str(segment);
    text.push('\r');
    text.into_bytes()
}

/// Large messages (past the size from which changed versions share the received buffer)
/// come out of each route as the same message would at a small size: the WASM plugins' and
/// the Rhai script's changes, and the large segment byte for byte.
#[test]
fn large_messages_come_out_of_every_route_as_small_ones_do() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let (dirs, _standins, _engine, addr) = clinic(tmp.path());

    // A PDF report (base64) of 384 KiB in an OBX at the end of each message.
    let pdf: String = (0..384 * 1024)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64] as char
        })
        .collect();
    let obx = format!("OBX|99|ED|PDF^Report^L||^AP^PDF^Base64^{pdf}||||||F");
    let (adt, oru) = (example("adt_a04_sarah.hl7"), example("oru_r01_results.hl7"));
    let (adt_id, big_adt_id) = ("REG20261124083012001", "REG20261124083012999");
    let (oru_id, big_oru_id) = ("LIS20261124143022551", "LIS20261124143022999");
    let big_adt = larger(&adt, adt_id, big_adt_id, &obx);
    let big_oru = larger(&oru, oru_id, big_oru_id, &obx);
    let mut client = Mllp::connect(addr);
    for m in [&adt, &big_adt, &oru, &big_oru] {
        let ack = client.request(m);
        assert_eq!(
            field(&ack, "MSA", 1),
            "AA",
            "{}",
            String::from_utf8_lossy(&ack)
        );
    }

    // Each large copy is its small counterpart with the large segment at its end.
    let check = |dir: &std::path::Path, n: usize, pairs: &[(usize, usize, &str, &str)]| {
        let got = wait_files(dir, n, Duration::from_secs(60));
        for &(small, big, from, to) in pairs {
            let expected = larger(&got[small], from, to, &obx);
            assert!(
                got[big] == expected,
                "{}: copy {big} is not copy {small} with the large segment ({} bytes against {})",
                dir.display(),
                got[big].len(),
                expected.len()
            );
        }
        got
    };
    // The EMR: adt_emr.wasm then pv1_location.rhai; lab_codes.wasm.
    let emr = check(
        &dirs[0],
        4,
        &[(0, 1, adt_id, big_adt_id), (2, 3, oru_id, big_oru_id)],
    );
    assert_eq!(field(&emr[1], "MSH", 5), "RIVERSIDE_EMR");
    assert!(field(&emr[1], "PV1", 3).starts_with("FAMILY-MED^"));
    assert!(field(&emr[3], "OBX", 3).starts_with("6690-2^"));
    // Billing: as received.
    let billing = wait_files(&dirs[2], 2, Duration::from_secs(60));
    assert!(
        billing[1] == big_adt,
        "billing's copy is not the message as sent"
    );
    // Research: test_filter.wasm then deidentify.wasm.
    let research = check(
        &dirs[3],
        4,
        &[(0, 1, adt_id, big_adt_id), (2, 3, oru_id, big_oru_id)],
    );
    assert_eq!(field(&research[1], "PID", 7), "1978");
}
