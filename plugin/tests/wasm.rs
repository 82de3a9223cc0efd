//! The WASM host against real components: the example plugins on the example clinic's
//! messages, and hostile plugins that must be stopped by the sandbox while the same loaded
//! plugin keeps serving.
//!
//! The plugins are built from source (`plugins/`, its own workspace) once per test process;
//! cargo's own lock serialises parallel test binaries doing the same. All tests share one
//! runtime whose compiled-plugin cache lives in a temporary directory, so a plugin loaded
//! under different limits compiles only once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use courier_hl7::{Message, Span};
use courier_plugin::wasm::{
    DirGrant, Grants, LoadError, LogSource, PluginKind, WasmLimits, WasmPlugin, WasmRuntime,
    WasmRuntimeConfig,
};
use courier_plugin::{Outcome, Step, StepContext, StepErrorKind, Tables};

/// The ADT mapping as plain Rust: the very file the `adt-emr` component is built from.
#[allow(dead_code)]
#[path = "../../plugins/adt-emr/src/mapping.rs"]
mod adt_mapping;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the plugin crate sits in the repository")
}

/// Builds `plugins/` for wasm32-wasip2 once per process; returns where the .wasm files are.
fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = repo().join("target/wasm-plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // A fresh machine may lack the target (RUSTUP_AUTO_INSTALL=0 installs nothing by
        // itself); add it when rustup is there, else the build below says what is missing.
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(repo().join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building plugins/ for wasm32-wasip2 failed"
        );
        target.join("wasm32-wasip2/release")
    })
}

fn wasm(name: &str) -> PathBuf {
    plugins_dir().join(format!("{name}.wasm"))
}

fn runtime() -> &'static WasmRuntime {
    static RT: OnceLock<(WasmRuntime, tempfile::TempDir)> = OnceLock::new();
    &RT.get_or_init(|| {
        let cache = tempfile::tempdir().expect("temp dir");
        let rt = WasmRuntime::new(WasmRuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..WasmRuntimeConfig::default()
        })
        .expect("runtime");
        (rt, cache)
    })
    .0
}

fn load(name: &str, limits: WasmLimits) -> WasmPlugin {
    runtime()
        .load(&wasm(name), limits)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn sample(name: &str) -> Message {
    let bytes = std::fs::read(repo().join("examples/messages").join(name)).expect("sample");
    Message::parse_with(bytes, &courier_hl7::ParseOptions::lenient()).expect("sample parses")
}

fn ctx(settings: &[(&str, &str)]) -> StepContext {
    ctx_with_tables(settings, Tables::new())
}

fn ctx_with_tables(settings: &[(&str, &str)], tables: Tables) -> StepContext {
    let map: serde_json::Map<String, serde_json::Value> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
        .collect();
    StepContext {
        route: "test-route".into(),
        control_id: "CTRL1".into(),
        settings: Arc::new(map),
        tables: Arc::new(tables),
    }
}

fn get(msg: &Message, path: &str) -> String {
    msg.get_str(path).expect("path").unwrap_or_default()
}

// ----- example plugins -----

#[test]
fn adt_emr_keeps_the_clinic_mrn_and_normalises_names_and_phones() {
    let plugin = load("adt_emr", WasmLimits::default());
    assert_eq!(plugin.kind(), PluginKind::Transform);
    let mut msg = sample("adt_a04_sarah.hl7");
    let pv1_before = get(&msg, "PV1");
    let c = ctx(&[
        ("assigning_authority", "RIVERSIDE"),
        ("receiving_application", "EPIC"),
        ("receiving_facility", "RIVERSIDE_EMR"),
    ]);
    assert_eq!(plugin.run(&mut msg, &c), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PID-3"), "100234^^^RIVERSIDE^MR");
    assert_eq!(get(&msg, "PID-5[1].1"), "JOHNSON");
    assert_eq!(get(&msg, "PID-5[1].2"), "SARAH");
    assert_eq!(get(&msg, "PID-5[1].3"), "ANNE");
    assert_eq!(get(&msg, "PID-5[2].1"), "MILLER");
    assert_eq!(get(&msg, "PID-13[1].1"), "(217)555-0142");
    assert_eq!(get(&msg, "PID-13[2].4"), "sarah.johnson@example.org");
    assert_eq!(get(&msg, "PID-13[2].1"), "");
    assert_eq!(get(&msg, "PID-14.1"), "(217)555-0199");
    assert_eq!(get(&msg, "MSH-5"), "EPIC");
    assert_eq!(get(&msg, "MSH-6"), "RIVERSIDE_EMR");
    assert_eq!(get(&msg, "PV1"), pv1_before, "other segments untouched");
    assert_eq!(get(&msg, "MSH-10"), "REG20261124083012001");
}

#[test]
fn adt_emr_other_identifiers_kept_after_the_mrn_and_e164_phones() {
    let plugin = load("adt_emr", WasmLimits::default());
    let mut msg = sample("adt_a01_admit.hl7");
    let c = ctx(&[
        ("assigning_authority", "RIVERSIDE"),
        ("other_identifiers", "keep"),
        ("phone_format", "e164"),
    ]);
    assert_eq!(plugin.run(&mut msg, &c), Ok(Outcome::Keep));
    assert_eq!(
        get(&msg, "PID-3"),
        "100871^^^RIVERSIDE^MR~612-40-7781^^^USSSA^SS"
    );
    assert_eq!(get(&msg, "PID-5.1"), "OKAFOR");
    assert_eq!(get(&msg, "PID-13.1"), "+12175550177");
    assert_eq!(get(&msg, "PID-14.1"), "+12175550120");
    // No receiving_* settings: MSH-5/6 as they were.
    assert_eq!(get(&msg, "MSH-5"), "COURIER");
}

#[test]
fn adt_emr_without_the_clinic_mrn_fails_naming_the_rule_not_the_patient() {
    let plugin = load("adt_emr", WasmLimits::default());
    let mut msg = sample("adt_a04_sarah.hl7");
    let before = msg.encode();
    let err = plugin
        .run(&mut msg, &ctx(&[("assigning_authority", "ELSEWHERE")]))
        .expect_err("no MRN from ELSEWHERE");
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert_eq!(err.step, "adt_emr.wasm");
    assert!(err.message.contains("ELSEWHERE"), "{}", err.message);
    assert_eq!(
        msg.encode(),
        before,
        "a failed step leaves the message alone"
    );
    let err = plugin
        .run(&mut msg, &ctx(&[]))
        .expect_err("assigning_authority is required");
    assert!(
        err.message.contains("assigning_authority"),
        "{}",
        err.message
    );
}

#[test]
fn adt_emr_component_and_native_mapping_agree() {
    let plugin = load("adt_emr", WasmLimits::default());
    for file in ["adt_a04_sarah.hl7", "adt_a01_admit.hl7"] {
        let settings = [
            ("assigning_authority", "RIVERSIDE"),
            ("receiving_application", "EPIC"),
        ];
        let mut in_wasm = sample(file);
        plugin.run(&mut in_wasm, &ctx(&settings)).expect("wasm");
        let mut native = sample(file);
        let s = adt_mapping::Settings::from_settings(|n| {
            settings
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("settings");
        adt_mapping::apply(&mut native, &s, &mut |_| {}).expect("native");
        assert_eq!(in_wasm.encode(), native.encode(), "{file}");
    }
}

fn lab_table() -> Tables {
    let to_loinc: HashMap<String, String> = [
        ("CBC", "58410-2"),
        ("LIPID", "57698-3"),
        ("WBC", "6690-2"),
        ("RBC", "789-8"),
        ("HGB", "718-7"),
        ("HCT", "4544-3"),
        ("MCV", "787-2"),
        ("MCH", "785-6"),
        ("MCHC", "786-4"),
        ("RDW", "788-0"),
        ("PLT", "777-3"),
        ("CHOL", "2093-3"),
        ("TRIG", "2571-8"),
        ("HDL", "2085-9"),
        ("LDL", "13457-7"),
        ("NONHDL", "43396-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let to_local = to_loinc
        .iter()
        .map(|(k, v)| (v.clone(), k.clone()))
        .collect();
    Tables::from([
        ("lab-loinc".to_owned(), to_loinc),
        ("loinc-lab".to_owned(), to_local),
    ])
}

#[test]
fn lab_codes_maps_orders_and_results_to_loinc_keeping_the_local_code() {
    let plugin = load("lab_codes", WasmLimits::default());
    let mut orm = sample("orm_o01_labs.hl7");
    let c = ctx_with_tables(&[("table", "lab-loinc")], lab_table());
    assert_eq!(plugin.run(&mut orm, &c), Ok(Outcome::Keep));
    assert_eq!(
        get(&orm, "OBR[1]-4"),
        "58410-2^Complete blood count^LN^CBC^Complete blood count^L"
    );
    assert_eq!(get(&orm, "OBR[2]-4.1"), "57698-3");

    let mut oru = sample("oru_r01_results.hl7");
    let report = plugin.run_with_logs(&mut oru, &c);
    assert_eq!(report.result, Ok(Outcome::Keep));
    assert_eq!(
        get(&oru, "OBX[3]-3"),
        "718-7^Hemoglobin^LN^HGB^Hemoglobin^L"
    );
    assert_eq!(get(&oru, "OBX[3]-5"), "13.6", "values untouched");
    // OBX[15] (COMMENT) has no LOINC in the table: kept as it is, with a warning.
    assert_eq!(get(&oru, "OBX[15]-3.1"), "COMMENT");
    assert_eq!(get(&oru, "OBX[15]-3.3"), "L");
    assert!(
        report.logs.iter().any(|l| l
            .text
            .contains("OBX[15]-3: no LOINC code for local code COMMENT")),
        "{:?}",
        report.logs
    );
}

#[test]
fn lab_codes_unknown_code_errors_when_asked_and_maps_back_to_local() {
    let plugin = load("lab_codes", WasmLimits::default());
    let mut oru = sample("oru_r01_results.hl7");
    let err = plugin
        .run(
            &mut oru,
            &ctx_with_tables(
                &[("table", "lab-loinc"), ("on_unknown", "error")],
                lab_table(),
            ),
        )
        .expect_err("COMMENT is unknown");
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert!(err.message.contains("COMMENT"), "{}", err.message);

    // to_loinc then back with the reverse table: the codes are the clinic's again.
    let mut orm = sample("orm_o01_labs.hl7");
    let tables = lab_table();
    let there = ctx_with_tables(
        &[("table", "lab-loinc"), ("keep_original", "false")],
        tables.clone(),
    );
    let back = ctx_with_tables(
        &[
            ("table", "loinc-lab"),
            ("direction", "to_local"),
            ("keep_original", "false"),
        ],
        tables,
    );
    plugin.run(&mut orm, &there).expect("to loinc");
    assert_eq!(get(&orm, "OBR[1]-4"), "58410-2^Complete blood count^LN");
    plugin.run(&mut orm, &back).expect("to local");
    assert_eq!(get(&orm, "OBR[1]-4"), "CBC^Complete blood count^L");
    assert_eq!(get(&orm, "OBR[2]-4"), "LIPID^Lipid panel^L");
}

#[test]
fn test_filter_drops_test_patients_without_naming_them() {
    let plugin = load("test_filter", WasmLimits::default());
    assert_eq!(plugin.kind(), PluginKind::Filter);
    let mut sarah = sample("adt_a04_sarah.hl7");
    assert_eq!(plugin.run(&mut sarah, &ctx(&[])), Ok(Outcome::Keep));

    let text = String::from_utf8(sample("adt_a04_sarah.hl7").encode().to_vec())
        .expect("utf-8")
        .replace("Johnson^Sarah", "Testpatient^Sarah");
    let mut test = Message::parse(text.into_bytes()).expect("parses");
    let before = test.encode();
    match plugin.run(&mut test, &ctx(&[])) {
        Ok(Outcome::Drop { reason }) => {
            assert!(reason.contains("PID-5.1"), "{reason}");
            assert!(!reason.to_lowercase().contains("testpatient"), "{reason}");
        }
        other => panic!("expected a drop, got {other:?}"),
    }
    assert_eq!(test.encode(), before, "a filter never changes the message");

    // Another rule: processing id T (training/test traffic).
    let rule = ctx(&[("field", "MSH-11"), ("pattern", "T")]);
    let mut production = sample("adt_a01_admit.hl7");
    assert_eq!(plugin.run(&mut production, &rule), Ok(Outcome::Keep));
    let text = String::from_utf8(sample("adt_a01_admit.hl7").encode().to_vec())
        .expect("utf-8")
        .replace("|P|2.5.1|", "|T|2.5.1|");
    let mut training = Message::parse(text.into_bytes()).expect("parses");
    assert!(matches!(
        plugin.run(&mut training, &rule),
        Ok(Outcome::Drop { .. })
    ));
}

#[test]
fn deidentify_removes_hashes_and_truncates_identifiers() {
    let plugin = load("deidentify", WasmLimits::default());
    let salt = [("salt", "research-feed-salt-2026")];
    let mut a = sample("adt_a01_admit.hl7");
    assert_eq!(plugin.run(&mut a, &ctx(&salt)), Ok(Outcome::Keep));
    let pseudonym = get(&a, "PID-3[1].1");
    assert_eq!(pseudonym.len(), 32);
    assert!(pseudonym.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(pseudonym, "100871");
    assert_eq!(get(&a, "PID-3[1].4"), "RIVERSIDE", "the authority stays");
    assert_ne!(get(&a, "PID-3[2].1"), "612-40-7781");
    assert_eq!(get(&a, "PID-5"), "");
    assert_eq!(get(&a, "PID-7"), "1952");
    assert_eq!(get(&a, "PID-8"), "M", "not listed: kept");
    for removed in ["PID-11", "PID-13", "PID-14", "PID-19"] {
        assert_eq!(get(&a, removed), "", "{removed}");
    }
    for seg in ["NK1", "IN1"] {
        assert_eq!(a.segment_occurrences(seg), 0, "{seg}");
    }
    assert_eq!(a.segment_occurrences("PV1"), 1);
    let text = String::from_utf8(a.encode().to_vec()).expect("utf-8");
    for secret in [
        "Okafor",
        "Daniel",
        "100871",
        "612-40-7781",
        "19520918",
        "River Road",
    ] {
        assert!(!text.contains(secret), "{secret} left in the output");
    }

    // Stable per patient and salt (linkable), different under another salt.
    let mut b = sample("adt_a01_admit.hl7");
    plugin.run(&mut b, &ctx(&salt)).expect("again");
    assert_eq!(get(&b, "PID-3[1].1"), pseudonym);
    let mut c = sample("adt_a01_admit.hl7");
    plugin
        .run(&mut c, &ctx(&[("salt", "another-salt-of-the-route")]))
        .expect("other salt");
    assert_ne!(get(&c, "PID-3[1].1"), pseudonym);

    let err = plugin
        .run(&mut sample("adt_a01_admit.hl7"), &ctx(&[]))
        .expect_err("no salt");
    assert!(err.message.contains("salt"), "{}", err.message);
}

// ----- isolation between messages -----

#[test]
fn every_message_gets_a_fresh_instance() {
    let plugin = load("hostile_state_leak", WasmLimits::default());
    for file in [
        "adt_a04_sarah.hl7",
        "adt_a01_admit.hl7",
        "oru_r01_results.hl7",
    ] {
        let mut msg = sample(file);
        plugin.run(&mut msg, &ctx(&[])).expect("runs");
        assert_eq!(get(&msg, "ZST"), "ZST|1|0", "{file}: statics carried over");
    }
}

#[test]
fn reuse_instance_keeps_one_instance_and_a_trap_discards_it() {
    let reuse = WasmLimits {
        reuse_instance: true,
        ..WasmLimits::default()
    };
    let plugin = load("hostile_state_leak", reuse);
    let run = |settings: &[(&str, &str)]| {
        let mut msg = sample("adt_a04_sarah.hl7");
        let result = plugin.run(&mut msg, &ctx(settings));
        (result, get(&msg, "ZST"))
    };
    // The same instance serves message after message: its statics carry over (the
    // trade-off `reuse_instance` documents).
    assert_eq!(run(&[]), (Ok(Outcome::Keep), "ZST|1|0".to_owned()));
    assert_eq!(run(&[]), (Ok(Outcome::Keep), "ZST|2|1".to_owned()));
    assert_eq!(run(&[]), (Ok(Outcome::Keep), "ZST|3|2".to_owned()));
    // A trap discards it: the next message starts from a fresh instance.
    let (result, _) = run(&[("panic", "true")]);
    let err = result.expect_err("the plugin panicked");
    assert_eq!(err.kind, StepErrorKind::Trap, "{}", err.message);
    assert_eq!(run(&[]), (Ok(Outcome::Keep), "ZST|1|0".to_owned()));
    assert_eq!(run(&[]), (Ok(Outcome::Keep), "ZST|2|1".to_owned()));

    // The default stays a fresh instance per message, whatever ran before.
    let fresh = load("hostile_state_leak", WasmLimits::default());
    for _ in 0..3 {
        let mut msg = sample("adt_a04_sarah.hl7");
        assert_eq!(fresh.run(&mut msg, &ctx(&[])), Ok(Outcome::Keep));
        assert_eq!(get(&msg, "ZST"), "ZST|1|0");
    }
}

#[test]
fn reuse_instance_still_enforces_the_deadline_and_the_memory_cap() {
    // The deadline is counted from each call, not from when the instance started: a kept
    // instance idle for several deadlines still serves.
    let deadline = Duration::from_millis(20);
    let plugin = load(
        "adt_emr",
        WasmLimits {
            deadline,
            reuse_instance: true,
            ..WasmLimits::default()
        },
    );
    let settings = [("assigning_authority", "RIVERSIDE")];
    for _ in 0..3 {
        let mut msg = sample("adt_a04_sarah.hl7");
        assert_eq!(plugin.run(&mut msg, &ctx(&settings)), Ok(Outcome::Keep));
        std::thread::sleep(deadline * 3);
    }

    let looping = load(
        "hostile_infinite_loop",
        WasmLimits {
            deadline,
            reuse_instance: true,
            ..WasmLimits::default()
        },
    );
    serves_again(&looping);
    for _ in 0..2 {
        let err = looping
            .run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]))
            .expect_err("stopped");
        assert_eq!(err.kind, StepErrorKind::Timeout { limit: deadline });
        serves_again(&looping);
    }

    let limit = 16 << 20;
    let bomb = load(
        "hostile_memory_bomb",
        WasmLimits {
            memory: limit,
            reuse_instance: true,
            ..WasmLimits::default()
        },
    );
    serves_again(&bomb);
    for _ in 0..2 {
        let err = bomb
            .run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]))
            .expect_err("stopped");
        assert_eq!(err.kind, StepErrorKind::MemoryLimit { limit });
        serves_again(&bomb);
    }
    // The cap counts what the kept instance holds in all: allocations that stay within it
    // call after call keep working.
    for _ in 0..3 {
        let mut msg = sample("adt_a04_sarah.hl7");
        assert_eq!(
            bomb.run(&mut msg, &ctx(&[("mode", "try")])),
            Ok(Outcome::Keep)
        );
        let got: u64 = get(&msg, "ZMB-1").parse().expect("a number");
        assert!((1..16).contains(&got), "got {got} MiB under a 16 MiB cap");
    }
}

#[test]
fn the_same_plugin_serves_concurrent_calls() {
    let plugin = Arc::new(load("adt_emr", WasmLimits::default()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let plugin = Arc::clone(&plugin);
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let mut msg = sample("adt_a04_sarah.hl7");
                    let c = ctx(&[("assigning_authority", "RIVERSIDE")]);
                    assert_eq!(plugin.run(&mut msg, &c), Ok(Outcome::Keep));
                    assert_eq!(get(&msg, "PID-5.1"), "JOHNSON");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

// ----- hostile plugins: stopped within their limits, then serving again -----

/// After a failure, the same loaded plugin serves a normal call.
fn serves_again(plugin: &WasmPlugin) {
    let mut msg = sample("adt_a04_sarah.hl7");
    assert_eq!(
        plugin.run(&mut msg, &ctx(&[("behave", "true")])),
        Ok(Outcome::Keep),
        "{} did not serve after its failure",
        plugin.name()
    );
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let deadline = Duration::from_millis(50);
    let plugin = load(
        "hostile_infinite_loop",
        WasmLimits {
            deadline,
            ..WasmLimits::default()
        },
    );
    let started = Instant::now();
    let err = plugin
        .run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]))
        .expect_err("stopped");
    let took = started.elapsed();
    assert_eq!(err.kind, StepErrorKind::Timeout { limit: deadline });
    assert!(err.message.contains("50 ms"), "{}", err.message);
    assert!(took >= deadline, "stopped early: {took:?}");
    // Stopped, not left to loop: the bound is loose because test machines are shared.
    assert!(took < deadline + Duration::from_secs(10), "took {took:?}");
    serves_again(&plugin);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let limit = 16 << 20;
    let plugin = load(
        "hostile_memory_bomb",
        WasmLimits {
            memory: limit,
            ..WasmLimits::default()
        },
    );
    let err = plugin
        .run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]))
        .expect_err("stopped");
    assert_eq!(err.kind, StepErrorKind::MemoryLimit { limit });
    assert!(err.message.contains("16777216"), "{}", err.message);
    serves_again(&plugin);

    // A plugin that copes with a refused allocation is not failed for it.
    let mut msg = sample("adt_a04_sarah.hl7");
    assert_eq!(
        plugin.run(&mut msg, &ctx(&[("mode", "try")])),
        Ok(Outcome::Keep)
    );
    let got: u64 = get(&msg, "ZMB-1").parse().expect("a number");
    assert!((1..16).contains(&got), "got {got} MiB under a 16 MiB cap");
}

#[test]
fn deep_recursion_traps() {
    let plugin = load("hostile_deep_recursion", WasmLimits::default());
    let err = plugin
        .run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]))
        .expect_err("stopped");
    assert_eq!(err.kind, StepErrorKind::Trap, "{}", err.message);
    serves_again(&plugin);
}

#[test]
fn a_panic_traps_and_its_message_is_redacted() {
    let plugin = load("hostile_panic", WasmLimits::default());
    let report = plugin.run_with_logs(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]));
    let err = report.result.expect_err("trapped");
    assert_eq!(err.kind, StepErrorKind::Trap);
    assert!(err.message.contains("panicked"), "{}", err.message);
    let mut all = err.message.clone();
    for l in &report.logs {
        all.push('\n');
        all.push_str(&l.text);
    }
    assert!(all.contains("[redacted]"), "{all}");
    for secret in ["Johnson", "Sarah", "100234"] {
        assert!(!all.contains(secret), "{secret} leaked: {all}");
    }
    serves_again(&plugin);
}

#[test]
fn output_that_is_not_hl7_is_refused_and_the_message_kept() {
    let plugin = load("hostile_bad_output", WasmLimits::default());
    let mut msg = sample("adt_a04_sarah.hl7");
    let before = msg.encode();
    let err = plugin.run(&mut msg, &ctx(&[])).expect_err("bad output");
    assert_eq!(err.kind, StepErrorKind::BadOutput);
    assert_eq!(msg.encode(), before);
}

#[test]
fn pieces_outside_the_message_are_refused_and_the_message_kept() {
    let plugin = load("hostile_bad_pieces", WasmLimits::default());
    assert_eq!(plugin.kind(), PluginKind::Transform);
    for (mode, expected) in [
        ("past-end", "the plugin kept bytes 1.."),
        ("huge", "more than its memory limit of 67108864 bytes"),
        ("not-hl7", "not an HL7 message"),
    ] {
        let mut msg = sample("adt_a04_sarah.hl7");
        let before = msg.encode();
        let err = plugin
            .run(&mut msg, &ctx(&[("mode", mode)]))
            .expect_err(mode);
        assert_eq!(err.kind, StepErrorKind::BadOutput, "{mode}: {err}");
        assert!(err.message.contains(expected), "{mode}: {err}");
        assert_eq!(msg.encode(), before, "{mode}");
    }
    // The same plugin answering correctly, in two pieces: the message as it was.
    let mut msg = sample("adt_a04_sarah.hl7");
    let before = msg.encode();
    assert_eq!(plugin.run(&mut msg, &ctx(&[])), Ok(Outcome::Keep));
    assert_eq!(msg.encode(), before);
}

/// A 1 MiB ORU (a PDF report in OBX-5) built on the example clinic's results message.
fn large_oru() -> Message {
    let text = std::fs::read_to_string(repo().join("examples/messages/oru_r01_results.hl7"))
        .expect("sample");
    let pdf = "JVBERi0x".repeat(1 << 17);
    let text = format!(
        "{}\rOBX|99|ED|PDF^Report^L||^AP^PDF^Base64^{pdf}||||||F\r",
        text.trim_end()
    );
    Message::parse_with(text.into_bytes(), &courier_hl7::ParseOptions::lenient()).expect("parses")
}

/// Whether the large OBX of `out` is still in the buffer of `input` (not copied back out of
/// the plugin), and `out` holds nothing message-sized of its own.
fn shares_the_report(out: &Message, input: &bytes::Bytes) -> bool {
    let inside = |p: &bytes::Bytes| {
        let (a, b) = (input.as_ptr() as usize, p.as_ptr() as usize);
        b >= a && b + p.len() <= a + input.len()
    };
    let pieces = out.pieces();
    pieces.iter().any(|p| p.len() >= 1 << 20 && inside(p))
        && pieces.iter().all(|p| inside(p) || p.len() < 64 << 10)
}

#[test]
fn a_large_message_changed_in_a_few_fields_shares_the_buffer_it_came_in() {
    // The SDK's plugins answer with pieces.
    let plugin = load("lab_codes", WasmLimits::default());
    let c = ctx_with_tables(&[("table", "lab-loinc")], lab_table());
    let mut msg = large_oru();
    let input = msg.encode();
    assert_eq!(plugin.run(&mut msg, &c), Ok(Outcome::Keep));
    assert_eq!(
        get(&msg, "OBX[3]-3"),
        "718-7^Hemoglobin^LN^HGB^Hemoglobin^L"
    );
    let mut expected = Message::parse_with(input.clone(), msg.options()).unwrap();
    assert_eq!(plugin.run(&mut expected, &c), Ok(Outcome::Keep));
    assert_eq!(msg.encode(), expected.encode());
    assert!(shares_the_report(&msg, &input), "{:?}", msg.pieces().len());

    // Edited on the host before the step (a script step before it, say): the plugin is given
    // the edited message's bytes, and what it keeps of them is shared with those.
    let mut msg = large_oru();
    msg.set(&courier_hl7::Path::parse("MSH-3").unwrap(), "EDITED")
        .unwrap();
    let input = msg.encode();
    let mut expected = Message::parse_with(input.clone(), msg.options()).unwrap();
    assert_eq!(plugin.run(&mut msg, &c), Ok(Outcome::Keep));
    assert_eq!(plugin.run(&mut expected, &c), Ok(Outcome::Keep));
    assert_eq!(msg.encode(), expected.encode());
    assert_eq!(get(&msg, "MSH-3"), "EDITED");
    // (Each encode of an edited message is a new buffer, so the host's is not `input`.)
    let spans = msg.spans();
    assert!(
        spans
            .iter()
            .any(|s| matches!(s, Span::Kept(r) if r.len() >= 1 << 20)),
        "the report is not kept"
    );
    assert!(
        spans
            .iter()
            .filter(|s| matches!(s, Span::Written(_)))
            .map(Span::len)
            .sum::<usize>()
            < 64 << 10,
        "the report was copied"
    );

    // Small messages come back whole, as before.
    let mut small = sample("oru_r01_results.hl7");
    assert_eq!(plugin.run(&mut small, &c), Ok(Outcome::Keep));
    assert_eq!(small.pieces().len(), 1);
}

#[test]
fn a_transform_built_for_the_first_interface_version_still_runs() {
    let plugin = load("compat_whole_message", WasmLimits::default());
    assert_eq!(plugin.kind(), PluginKind::Transform);
    assert_eq!(plugin.courier_wit_version(), Some("0.1.0"));
    let mut msg = sample("adt_a04_sarah.hl7");
    assert_eq!(plugin.run(&mut msg, &ctx(&[])), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PID-5.1"), "JOHNSON");
    assert_eq!(get(&msg, "MSH-5"), "COMPAT");

    // Its whole answer for a large message is shared with the input's buffer all the same.
    let mut msg = large_oru();
    let input = msg.encode();
    let mut expected = msg.clone();
    let family = get(&expected, "PID-5.1").to_uppercase();
    let path = |p: &str| courier_hl7::Path::parse(p).unwrap();
    expected.set(&path("PID-5.1"), &family).unwrap();
    expected.set(&path("MSH-5"), "COMPAT").unwrap();
    assert_eq!(plugin.run(&mut msg, &ctx(&[])), Ok(Outcome::Keep));
    assert_eq!(msg.encode(), expected.encode());
    assert!(shares_the_report(&msg, &input));
}

#[test]
fn a_log_flood_is_bounded_and_redacted() {
    let plugin = load(
        "hostile_log_flood",
        WasmLimits {
            deadline: Duration::from_secs(5),
            ..WasmLimits::default()
        },
    );
    let report = plugin.run_with_logs(&mut sample("adt_a04_sarah.hl7"), &ctx(&[]));
    assert_eq!(report.result, Ok(Outcome::Keep));
    let total: usize = report.logs.iter().map(|l| l.text.len()).sum();
    assert!(report.logs.len() <= 320, "{} lines", report.logs.len());
    assert!(total < 400 * 1024, "{total} bytes of log");
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.source == LogSource::Engine && l.text.contains("more log lines dropped")),
    );
    assert_eq!(
        report.logs[0].text,
        "mapping patient [redacted], [redacted] (MRN [redacted], born [redacted])"
    );
    for source in [LogSource::Stdout, LogSource::Stderr] {
        let first = report
            .logs
            .iter()
            .find(|l| l.source == source)
            .expect("captured");
        assert!(first.text.contains("[redacted]"), "{first:?}");
    }
    for l in &report.logs {
        for secret in ["Johnson", "Sarah", "100234", "19780412"] {
            assert!(!l.text.contains(secret), "{secret} leaked: {l:?}");
        }
    }
}

/// A `tracing` writer that keeps everything written, for asserting on the real log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn patient_data_in_plugin_logs_never_reaches_the_engine_log() {
    let plugin = load("hostile_log_flood", WasmLimits::default());
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut msg = sample("adt_a04_sarah.hl7");
        plugin
            .run(&mut msg, &ctx(&[("flood", "false")]))
            .expect("runs");
    });
    let log = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(log.contains("mapping patient [redacted]"), "{log}");
    assert!(log.contains("route=test-route"), "{log}");
    assert!(log.contains("control_id=CTRL1"), "{log}");
    assert!(log.contains("plugin=hostile_log_flood.wasm"), "{log}");
    for secret in ["Johnson", "Sarah", "100234", "19780412"] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

// ----- capabilities: denied by default, granted explicitly -----

fn probe(plugin: &WasmPlugin, settings: &[(&str, &str)]) -> HashMap<String, String> {
    let mut msg = sample("adt_a04_sarah.hl7");
    plugin.run(&mut msg, &ctx(settings)).expect("probe runs");
    get(&msg, "ZPR")
        .split('|')
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn files_environment_sockets_clock_and_randomness_are_denied_by_default() {
    // PATH is in the engine's own environment; the plugin must not see it.
    let plugin = load("hostile_sandbox_probe", WasmLimits::default());
    let seen = probe(&plugin, &[("env_var", "PATH")]);
    assert!(seen["file"].starts_with("denied:"), "{seen:?}");
    assert!(seen["dir"].starts_with("denied:"), "{seen:?}");
    assert_eq!(seen["env"], "absent", "{seen:?}");
    assert_eq!(seen["envcount"], "0", "{seen:?}");
    assert!(seen["tcp"].starts_with("denied:"), "{seen:?}");
    assert!(seen["dns"].starts_with("denied:"), "{seen:?}");
    assert_eq!(
        seen["clock"], "0",
        "the clock is frozen at the epoch: {seen:?}"
    );
    let again = probe(&plugin, &[("env_var", "PATH")]);
    assert_eq!(
        seen["random"], again["random"],
        "randomness is a fixed sequence, carrying nothing between calls"
    );
}

#[test]
fn granted_environment_directories_clock_and_randomness_are_visible() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("codes.csv"), "CBC,58410-2\n").expect("write");
    let plugin = load(
        "hostile_sandbox_probe",
        WasmLimits {
            grants: Grants {
                env: vec![("COURIER_PROBE".into(), "granted".into())],
                dirs: vec![DirGrant {
                    host: dir.path().to_path_buf(),
                    guest: "/data".into(),
                    read_only: true,
                }],
                clock: true,
                random: true,
                network: false,
            },
            ..WasmLimits::default()
        },
    );
    let settings = [("file", "/data/codes.csv"), ("dir", "/data")];
    let seen = probe(&plugin, &settings);
    assert_eq!(seen["env"], "value:granted", "{seen:?}");
    assert_eq!(seen["envcount"], "1", "{seen:?}");
    assert_eq!(seen["file"], "read:12", "{seen:?}");
    assert_eq!(seen["dir"], "listed:1", "{seen:?}");
    assert!(
        seen["tcp"].starts_with("denied:"),
        "no network grant: {seen:?}"
    );
    let clock: u64 = seen["clock"].parse().expect("seconds");
    assert!(clock > 1_700_000_000, "{seen:?}");
    let again = probe(&plugin, &settings);
    assert_ne!(seen["random"], again["random"], "real randomness");
}

#[test]
fn a_sleep_cannot_outlast_the_deadline() {
    // Without the clock grant a sleep returns at once (the clock is frozen).
    let plugin = load("hostile_sandbox_probe", WasmLimits::default());
    let started = Instant::now();
    let seen = probe(&plugin, &[("sleep_ms", "30000")]);
    assert!(started.elapsed() < Duration::from_secs(15), "{seen:?}");

    // With it, the sleep is cut at the deadline and the call stops there.
    let deadline = Duration::from_millis(100);
    let plugin = load(
        "hostile_sandbox_probe",
        WasmLimits {
            deadline,
            grants: Grants {
                clock: true,
                ..Grants::default()
            },
            ..WasmLimits::default()
        },
    );
    let started = Instant::now();
    let result = plugin.run(
        &mut sample("adt_a04_sarah.hl7"),
        &ctx(&[("sleep_ms", "30000")]),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "slept {took:?}");
    let err = result.expect_err("stopped");
    assert_eq!(err.kind, StepErrorKind::Timeout { limit: deadline });
}

// ----- refused at load -----

#[test]
fn wrong_files_are_refused_at_load_with_the_file_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let core = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let err = runtime()
        .load(&core, WasmLimits::default())
        .expect_err("a core module");
    assert!(matches!(err, LoadError::NotAComponent { .. }), "{err}");
    assert!(err.to_string().contains("core.wasm"), "{err}");

    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, b"not wasm at all").expect("write");
    let err = runtime()
        .load(&text, WasmLimits::default())
        .expect_err("not wasm");
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");

    let half = dir.path().join("half.wasm");
    let bytes = std::fs::read(wasm("adt_emr")).expect("read");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).expect("write");
    let err = runtime()
        .load(&half, WasmLimits::default())
        .expect_err("half written");
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    assert!(err.to_string().contains("half.wasm"), "{err}");

    let err = runtime()
        .load(&wasm("hostile_wrong_world"), WasmLimits::default())
        .expect_err("another interface");
    match &err {
        LoadError::WrongInterface { file, exports } => {
            assert!(file.ends_with("hostile_wrong_world.wasm"));
            assert!(exports.contains("hello"), "{exports}");
        }
        other => panic!("expected WrongInterface, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("expected an export `transform-pieces`, `transform` or `filter`"),
        "{err}"
    );

    let err = runtime()
        .load(
            &wasm("adt_emr"),
            WasmLimits {
                grants: Grants {
                    network: true,
                    ..Grants::default()
                },
                ..WasmLimits::default()
            },
        )
        .expect_err("no network grant");
    assert!(matches!(err, LoadError::Limits { .. }), "{err}");

    let err = runtime()
        .load(&dir.path().join("missing.wasm"), WasmLimits::default())
        .expect_err("missing");
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
}

// ----- the compiled-plugin cache -----

#[test]
fn a_second_load_takes_the_compiled_plugin_from_the_cache() {
    let cache = tempfile::tempdir().expect("temp dir");
    let config = WasmRuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..WasmRuntimeConfig::default()
    };
    let path = wasm("test_filter");
    let bytes = std::fs::read(&path).expect("read");

    let first = WasmRuntime::new(config.clone()).expect("runtime");
    let artefact = first.cache_path_for(&bytes).expect("a cache dir");
    let plugin = first.load(&path, WasmLimits::default()).expect("load");
    assert!(!plugin.from_cache());
    assert!(artefact.is_file(), "{} not written", artefact.display());
    let hash = plugin.content_hash().to_owned();
    drop(plugin);
    drop(first);

    // A new runtime (as after a restart) with the same configuration.
    let second = WasmRuntime::new(config.clone()).expect("runtime");
    let plugin = second.load(&path, WasmLimits::default()).expect("load");
    assert!(plugin.from_cache());
    assert_eq!(plugin.content_hash(), hash);
    assert_eq!(
        plugin.run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[])),
        Ok(Outcome::Keep)
    );

    // A damaged artefact is recompiled, not trusted.
    std::fs::write(&artefact, b"garbage").expect("write");
    let plugin = second.load(&path, WasmLimits::default()).expect("load");
    assert!(!plugin.from_cache());
    assert_eq!(
        plugin.run(&mut sample("adt_a04_sarah.hl7"), &ctx(&[])),
        Ok(Outcome::Keep)
    );
}

#[test]
fn dropping_the_runtime_stops_its_epoch_thread() {
    let rt = WasmRuntime::new(WasmRuntimeConfig::default()).expect("runtime");
    let started = Instant::now();
    drop(rt);
    assert!(started.elapsed() < Duration::from_secs(10));
}
