//! The example clinic end to end: stand-in EMR, LIS and billing (`courier listen`), the
//! engine on examples/clinic.toml (moved to free ports), and `courier send` — real
//! processes over real MLLP on 127.0.0.1.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn clinic_flow_delivers_each_message_to_the_right_systems() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["emr", "lis", "billing"]
        .iter()
        .map(|n| {
            let d = tmp.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let (_emr, emr) = standin("emr", &dirs[0], 0, &[]);
    let (_lis, lis) = standin("lis", &dirs[1], 0, &[]);
    let (_billing, billing) = standin("billing", &dirs[2], 0, &[]);

    let config = std::fs::read_to_string(repo().join("examples/clinic.toml"))
        .unwrap()
        .replace("127.0.0.1:2575", "127.0.0.1:0")
        .replace("127.0.0.1:2576", &emr.to_string())
        .replace("127.0.0.1:2577", &lis.to_string())
        .replace("127.0.0.1:2578", &billing.to_string());
    let (engine, addr) = start_engine(tmp.path(), &config, "clinic");

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

    // Each system gets exactly its messages, byte for byte, in the order sent.
    let emr_got = wait_files(&dirs[0], 3, Duration::from_secs(20));
    assert_eq!(
        emr_got,
        [
            example("adt_a04_sarah.hl7"),
            example("oru_r01_results.hl7"),
            example("adt_a01_admit.hl7")
        ]
    );
    let billing_got = wait_files(&dirs[2], 2, Duration::from_secs(20));
    assert_eq!(
        billing_got,
        [example("adt_a04_sarah.hl7"), example("adt_a01_admit.hl7")]
    );
    let lis_got = wait_files(&dirs[1], 1, Duration::from_secs(20));
    assert_eq!(lis_got, [example("orm_o01_labs.hl7")]);
    // Nothing extra arrives.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_dir(&dirs[1]).unwrap().count(), 1);

    // No patient data in the engine's logs at the default level.
    let logs = engine.stderr_text();
    for phi in ["Johnson", "100234", "Elm Street", "19780412", "555-23-4411"] {
        assert!(!logs.contains(phi), "engine log contains `{phi}`");
    }
    assert!(
        logs.contains("REG20261124083012001"),
        "control ids are logged"
    );
}

#[test]
fn every_example_config_passes_check() {
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

/// The README's run command: examples/clinic.sh (here with `--once`, the binary under test
/// and a temporary data directory) runs the clinic on its real ports and delivers the six
/// copies of the four example messages.
#[test]
fn readme_clinic_script_runs_the_clinic() {
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
    for sys in ["emr", "lis", "billing"] {
        assert!(
            tmp.path().join(sys).read_dir().unwrap().count() > 0,
            "{sys}"
        );
    }
}
