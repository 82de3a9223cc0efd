//! `courier test`: the example clinic's route tests pass through the real binary, the real
//! WASM plugins and Rhai scripts; a wrong expectation fails with a diff naming the route, the
//! path, the expected and the actual value; a malformed test file is refused with its file,
//! line and key.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

fn courier_test(args: &[&str]) -> (Option<i32>, String, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("test")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("courier runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- stdout\n{stdout}--- stderr\n{stderr}");
    (out.status.code(), stdout, stderr)
}

fn clinic() -> String {
    repo()
        .join("examples/clinic.toml")
        .to_string_lossy()
        .into_owned()
}

/// examples/tests/NAME with its message paths made absolute, so a changed copy can live in a
/// temporary directory.
fn example_tests(name: &str) -> String {
    let messages = repo().join("examples/messages");
    std::fs::read_to_string(repo().join("examples/tests").join(name))
        .unwrap()
        .replace(
            "\"../messages/",
            &format!("\"{}/", messages.to_string_lossy()),
        )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_clinic_routes_pass_their_tests() {
    build_plugins();
    let (code, stdout, _) = courier_test(&[&clinic()]);
    assert_eq!(code, Some(0));
    // Every case of every file in examples/tests/ ran and passed.
    let mut cases = 0;
    for entry in std::fs::read_dir(repo().join("examples/tests")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        cases += text.lines().filter(|l| l.trim() == "[[case]]").count();
    }
    assert!(cases >= 10, "only {cases} cases in examples/tests");
    let ok = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(ok, cases, "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert!(
        stdout.contains(&format!("ok: {cases} passed, 0 failed")),
        "{stdout}"
    );
    let (code, json, _) = courier_test(&[&clinic(), "--format", "json"]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["passed"], cases);
    assert_eq!(doc["failed"], 0);
    // Every route of the clinic is exercised, and each of send, drop and error occurs.
    let mut seen = std::collections::BTreeSet::new();
    for case in doc["cases"].as_array().unwrap() {
        for r in case["routes"].as_array().unwrap() {
            seen.insert((
                r["route"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for (route, outcome) in [
        ("registration-to-emr", "send"),
        ("registration-to-emr", "drop"),
        ("registration-to-emr", "error"),
        ("registration-to-billing", "send"),
        ("orders-to-lab", "send"),
        ("orders-to-lab", "drop"),
        ("results-to-chart", "send"),
        ("research-feed", "send"),
        ("research-feed", "drop"),
    ] {
        assert!(
            seen.contains(&(route.to_owned(), outcome.to_owned())),
            "no case where {route} does {outcome}: {seen:?}"
        );
    }
}

#[test]
fn a_wrong_value_fails_with_a_diff() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let text = example_tests("registration.toml");
    assert!(text.contains("\"PID-5[1].1\" = \"JOHNSON\""));
    let file = write(
        tmp.path(),
        "registration.toml",
        &text.replace(
            "\"PID-5[1].1\" = \"JOHNSON\"",
            "\"PID-5[1].1\" = \"Johnson\"",
        ),
    );
    let (code, stdout, _) = courier_test(&[&clinic(), file.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    let failed: Vec<_> = stdout
        .lines()
        .filter(|l| l.starts_with("FAILED "))
        .collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(
        failed[0].contains("registration.toml:5  Sarah's A04 goes to the EMR"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "route registration-to-emr: PID-5[1].1: expected \"Johnson\", got \"JOHNSON\""
        ),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED: "), "{stdout}");
    assert!(stdout.contains(" 1 failed "), "{stdout}");

    // The same failure in JSON.
    let (code, json, _) = courier_test(&[&clinic(), file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, Some(1));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let failures: Vec<_> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["failures"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        failures,
        [serde_json::json!({
            "kind": "value",
            "route": "registration-to-emr",
            "path": "PID-5[1].1",
            "expected": "Johnson",
            "actual": "JOHNSON",
        })]
    );
}

#[test]
fn expected_drop_but_sent_is_reported_with_the_outcomes() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let messages = repo().join("examples/messages");
    let file = write(
        tmp.path(),
        "drop.toml",
        &format!(
            r#"[[case]]
name = "Sarah is no test patient"
message = "{}/adt_a04_sarah.hl7"

  [case.route.registration-to-emr]
  outcome = "drop"
  reason = "test message"

[[case]]
name = "a test patient is dropped"
hl7 = '''
MSH|^~\&|REGADT|RIVERSIDE_FD|COURIER|RIVERSIDE|20261124090000||ADT^A04^ADT_A01|T1|P|2.5.1
PID|1||900001^^^RIVERSIDE^MR||TESTPATIENT^Alpha
'''

  [case.route.registration-to-emr]
  outcome = "send"
"#,
            messages.to_string_lossy()
        ),
    );
    let (code, stdout, _) = courier_test(&[&clinic(), file.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("route registration-to-emr: expected drop, got send\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "route registration-to-emr: expected send, got drop (test_filter.wasm: test message: PID-5.1 matches \"TEST*\")"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "(matched: registration-to-emr drop, registration-to-billing send, research-feed drop)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED: 0 passed, 2 failed"), "{stdout}");

    // --filter picks cases by name.
    let (code, stdout, _) = courier_test(&[
        &clinic(),
        file.to_str().unwrap(),
        "--filter",
        "no test patient",
    ]);
    assert_eq!(code, Some(1));
    assert!(stdout.contains("FAILED: 0 passed, 1 failed"), "{stdout}");
    let (code, _, stderr) =
        courier_test(&[&clinic(), file.to_str().unwrap(), "--filter", "nothing"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("no case name contains `nothing`"),
        "{stderr}"
    );
}

#[test]
fn unusable_test_files_exit_2_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    // An unknown key.
    let text = example_tests("lab.toml").replacen("routes = [", "rotues = [", 1);
    let line = text.lines().position(|l| l.starts_with("rotues")).unwrap() + 1;
    let file = write(tmp.path(), "typo.toml", &text);
    let (code, stdout, stderr) = courier_test(&[&clinic(), file.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{}:{line}:1: unknown field `rotues`",
            file.display()
        )),
        "{stderr}"
    );

    // A route the config does not have.
    let file = write(
        tmp.path(),
        "route.toml",
        "[[case]]\nname = \"x\"\nmessage = \"m.hl7\"\n\n[case.route.registration-to-ehr]\n",
    );
    write(
        tmp.path(),
        "m.hl7",
        "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1\n",
    );
    let (code, _, stderr) = courier_test(&[&clinic(), file.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!(
            "{}:5: case[0].route.registration-to-ehr: no route named `registration-to-ehr`",
            file.display()
        )),
        "{stderr}"
    );

    // A message file that is not there.
    let file = write(
        tmp.path(),
        "missing.toml",
        "[[case]]\nname = \"x\"\nmessage = \"nowhere.hl7\"\nunrouted = true\n",
    );
    let (code, _, stderr) = courier_test(&[&clinic(), file.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("{}:3: case[0].message: reading ", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("nowhere.hl7"), "{stderr}");

    // A config without tests beside it.
    let config = write(
        tmp.path(),
        "bare.toml",
        "[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\n",
    );
    let (code, _, stderr) = courier_test(&[config.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no test directory"), "{stderr}");
}
