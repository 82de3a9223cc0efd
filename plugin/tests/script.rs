//! Rhai script steps end to end: the example scripts of examples/scripts on the example
//! clinic's messages (field by field), drop and fail, the message API, hostile scripts stopped
//! by each limit (after which the same step serves a normal message), no state carried from
//! one message to the next, redacted log output, and load errors naming file:line:column.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_hl7::{Message, ParseOptions};
use courier_plugin::script::{LOG_TARGET, LoadError};
use courier_plugin::{
    Outcome, ScriptLimits, ScriptStep, Step, StepContext, StepError, StepErrorKind, Tables,
};
use serde_json::json;

// ----- helpers -----

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn message(name: &str) -> Message {
    let bytes = std::fs::read(examples().join("messages").join(name)).expect("example message");
    Message::parse_with(bytes, &ParseOptions::lenient()).expect("example message parses")
}

fn example_step(name: &str) -> ScriptStep {
    ScriptStep::load(&examples().join("scripts").join(name), slow_clock())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Default limits with a deadline long enough that the behaviour under test, not the clock,
/// stops the script (debug builds are slow).
fn slow_clock() -> ScriptLimits {
    ScriptLimits {
        deadline: Duration::from_secs(20),
        ..ScriptLimits::default()
    }
}

fn step(source: &str) -> ScriptStep {
    step_with(source, slow_clock())
}

fn step_with(source: &str, limits: ScriptLimits) -> ScriptStep {
    ScriptStep::from_source("test.rhai", source, limits).unwrap_or_else(|e| panic!("{e}"))
}

fn ctx(settings: serde_json::Value, tables: &[(&str, &[(&str, &str)])]) -> StepContext {
    let serde_json::Value::Object(settings) = settings else {
        panic!("settings must be an object")
    };
    let tables: Tables = tables
        .iter()
        .map(|(name, rows)| {
            let rows = rows
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (name.to_string(), rows)
        })
        .collect();
    StepContext {
        route: "test-route".into(),
        control_id: "CTRL1".into(),
        settings: Arc::new(settings),
        tables: Arc::new(tables),
    }
}

fn no_ctx() -> StepContext {
    ctx(json!({}), &[])
}

fn get(msg: &Message, path: &str) -> Option<String> {
    msg.get_str(path).expect("valid path")
}

fn sarah() -> Message {
    message("adt_a04_sarah.hl7")
}

/// Runs `source` on Sarah's A04 with no settings; the message after the run.
fn keep(source: &str) -> Message {
    let mut msg = sarah();
    let out = step(source).run(&mut msg, &no_ctx());
    assert_eq!(out, Ok(Outcome::Keep), "{source}");
    msg
}

fn error(source: &str) -> StepError {
    error_with(source, slow_clock())
}

fn error_with(source: &str, limits: ScriptLimits) -> StepError {
    let mut msg = sarah();
    match step_with(source, limits).run(&mut msg, &no_ctx()) {
        Err(e) => e,
        Ok(o) => panic!("expected an error, got {o:?} for {source}"),
    }
}

fn compile_error(source: &str) -> (usize, usize, String) {
    match ScriptStep::from_source("test.rhai", source, ScriptLimits::default()) {
        Err(LoadError::Compile {
            line,
            column,
            message,
            ..
        }) => (line, column, message),
        other => panic!("expected a compile error, got {other:?}"),
    }
}

// ----- the example scripts -----

#[test]
fn every_example_script_compiles() {
    let dir = examples().join("scripts");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            ScriptStep::load(&path, ScriptLimits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 4, "found {n} scripts");
}

#[test]
fn pv1_location_maps_the_unit_and_leaves_the_rest() {
    let step = example_step("pv1_location.rhai");
    let units: &[(&str, &str)] = &[("RFM", "FAMMED"), ("MED", "MEDWARD")];
    let ctx = ctx(json!({}), &[("units", units)]);

    let mut msg = sarah();
    assert_eq!(step.run(&mut msg, &ctx), Ok(Outcome::Keep));
    assert_eq!(
        get(&msg, "PV1-3").as_deref(),
        Some("FAMMED^EXAM2^01^RIVERSIDE^^^^^Riverside Family Medicine")
    );
    assert_eq!(get(&msg, "PV1-2").as_deref(), Some("O"));
    assert_eq!(
        get(&msg, "PID-5").as_deref(),
        get(&sarah(), "PID-5").as_deref()
    );

    let mut msg = message("adt_a01_admit.hl7");
    assert_eq!(step.run(&mut msg, &ctx), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PV1-3.1").as_deref(), Some("MEDWARD"));
    assert_eq!(get(&msg, "PV1-3.2").as_deref(), Some("204"));
    assert_eq!(get(&msg, "PV1-3.3").as_deref(), Some("B"));
}

#[test]
fn pv1_location_trims_and_upper_cases() {
    let step = example_step("pv1_location.rhai");
    let mut msg = sarah();
    msg.set_raw(&"PV1-3".parse().unwrap(), " rfm ^exam 2 ^ b1")
        .unwrap();
    // No `units` table: only trimming and upper case.
    assert_eq!(step.run(&mut msg, &no_ctx()), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PV1-3").as_deref(), Some("RFM^EXAM 2^B1"));
}

#[test]
fn pv1_location_leaves_a_clean_message_byte_for_byte() {
    let step = example_step("pv1_location.rhai");
    let mut msg = sarah();
    let before = msg.encode();
    assert_eq!(step.run(&mut msg, &no_ctx()), Ok(Outcome::Keep));
    assert_eq!(msg.encode(), before);
    assert!(!msg.is_modified());
}

#[test]
fn route_by_facility_keeps_listed_and_drops_others() {
    let step = example_step("route_by_facility.rhai");
    let listed = ctx(json!({"facilities": ["RIVERSIDE", "RIVERSIDE_FD"]}), &[]);
    let mut msg = sarah();
    assert_eq!(step.run(&mut msg, &listed), Ok(Outcome::Keep));

    let other = ctx(json!({"facilities": ["NORTHSIDE"]}), &[]);
    let mut msg = sarah();
    msg.set(&"MSH-4".parse().unwrap(), "EASTGATE").unwrap();
    assert_eq!(
        step.run(&mut msg, &other),
        Ok(Outcome::Drop {
            reason: "sending facility 'EASTGATE' is not routed here".into()
        })
    );
    // Drop reasons go through redaction, which takes identifiers (PID-3.1), not their
    // assigning authority (PID-3.4): `RIVERSIDE`, Sarah's MRN authority, is not patient data.
    let mut msg = sarah();
    let Ok(Outcome::Drop { reason }) = step.run(&mut msg, &other) else {
        panic!("not dropped")
    };
    assert_eq!(
        reason, "sending facility 'RIVERSIDE_FD' is not routed here",
        "{reason}"
    );
    // The lab's results come from RIVERSIDE_LAB.
    let mut msg = message("oru_r01_results.hl7");
    assert!(matches!(
        step.run(&mut msg, &listed),
        Ok(Outcome::Drop { .. })
    ));
}

#[test]
fn route_by_facility_fails_without_its_setting() {
    let step = example_step("route_by_facility.rhai");
    let err = step.run(&mut sarah(), &no_ctx()).unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert_eq!(err.step, "route_by_facility.rhai");
    assert!(err.message.contains("`facilities`"), "{}", err.message);
}

const LOINC: &[(&str, &str)] = &[
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
];

#[test]
fn lab_codes_maps_obx_codes_to_loinc() {
    let step = example_step("lab_codes.rhai");
    let ctx = ctx(json!({}), &[("loinc", LOINC)]);
    let mut msg = message("oru_r01_results.hl7");
    let (lines, out) = capture::run(|| step.run(&mut msg, &ctx));
    assert_eq!(out, Ok(Outcome::Keep));

    assert_eq!(
        get(&msg, "OBX[1]-3").as_deref(),
        Some("6690-2^Leukocytes^LN")
    );
    assert_eq!(get(&msg, "OBX[9]-3").as_deref(), Some("777-3^Platelets^LN"));
    assert_eq!(
        get(&msg, "OBX[13]-3").as_deref(),
        Some("13457-7^LDL cholesterol, calculated^LN")
    );
    // Not in the table: unchanged, and named in one warning.
    assert_eq!(
        get(&msg, "OBX[14]-3").as_deref(),
        Some("NONHDL^Non-HDL cholesterol^L")
    );
    assert_eq!(
        get(&msg, "OBX[15]-3").as_deref(),
        Some("COMMENT^Lab comment^L")
    );
    let warnings: Vec<_> = lines
        .iter()
        .filter(|l| l.level == tracing::Level::WARN)
        .collect();
    assert_eq!(warnings.len(), 1, "{lines:?}");
    assert!(warnings[0].message.contains("2 local code(s)"));
    assert!(warnings[0].message.contains("NONHDL") && warnings[0].message.contains("COMMENT"));
    // Values and everything else untouched.
    assert_eq!(get(&msg, "OBX[1]-5").as_deref(), Some("6.8"));
    assert_eq!(
        get(&msg, "OBX[15]-5"),
        get(&message("oru_r01_results.hl7"), "OBX[15]-5")
    );
    assert_eq!(
        msg.segment_count(),
        message("oru_r01_results.hl7").segment_count()
    );
}

#[test]
fn lab_codes_leaves_an_order_without_obx_alone() {
    let step = example_step("lab_codes.rhai");
    let mut msg = message("orm_o01_labs.hl7");
    let ctx = ctx(json!({}), &[("loinc", LOINC)]);
    assert_eq!(step.run(&mut msg, &ctx), Ok(Outcome::Keep));
    assert!(!msg.is_modified());
}

fn emr_settings() -> StepContext {
    ctx(
        json!({"mrn_authority": "RIVERSIDE", "emr_application": "EMR", "emr_facility": "RIVERSIDE_EMR"}),
        &[],
    )
}

#[test]
fn adt_emr_maps_sarah() {
    let step = example_step("adt_emr.rhai");
    let mut msg = sarah();
    assert_eq!(step.run(&mut msg, &emr_settings()), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PID-3").as_deref(), Some("100234^^^RIVERSIDE^MR"));
    assert_eq!(
        get(&msg, "PID-5").as_deref(),
        Some("JOHNSON^SARAH^ANNE^^^^L~MILLER^SARAH^^^^^M")
    );
    assert_eq!(get(&msg, "MSH-5").as_deref(), Some("EMR"));
    assert_eq!(get(&msg, "MSH-6").as_deref(), Some("RIVERSIDE_EMR"));
    // Untouched: the rest of PID, the other segments.
    let orig = sarah();
    for p in [
        "MSH-3", "MSH-4", "MSH-9", "MSH-10", "PID-7", "PID-11", "PID-13", "NK1", "PV1", "IN1",
    ] {
        assert_eq!(get(&msg, p), get(&orig, p), "{p}");
    }
}

#[test]
fn adt_emr_keeps_escaped_names_intact() {
    let step = example_step("adt_emr.rhai");
    let mut msg = sarah();
    msg.set(&"PID-5.1".parse().unwrap(), "Smith&Jones|Jr")
        .unwrap();
    assert_eq!(step.run(&mut msg, &emr_settings()), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PID-5.1").as_deref(), Some("SMITH&JONES|JR"));
    assert_eq!(get(&msg, "PID-5.2").as_deref(), Some("SARAH"));
}

#[test]
fn adt_emr_maps_the_admit_and_fails_without_an_mrn() {
    let step = example_step("adt_emr.rhai");
    let mut msg = message("adt_a01_admit.hl7");
    assert_eq!(step.run(&mut msg, &emr_settings()), Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PID-3").as_deref(), Some("100871^^^RIVERSIDE^MR"));
    assert_eq!(
        get(&msg, "PID-5").as_deref(),
        Some("OKAFOR^DANIEL^CHIDI^^^^L")
    );

    let other = ctx(
        json!({"mrn_authority": "NORTHSIDE", "emr_application": "EMR", "emr_facility": "X"}),
        &[],
    );
    let mut msg = sarah();
    let err = step.run(&mut msg, &other).unwrap_err();
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert!(
        err.message
            .contains("fail: no PID-3 identifier from NORTHSIDE"),
        "{}",
        err.message
    );
    assert!(
        err.message.starts_with("line 11, column 16"),
        "{}",
        err.message
    );
    // A failed step leaves the message as it was.
    assert!(!msg.is_modified());
}

// ----- drop, fail and the outcome -----

#[test]
fn drop_ends_the_script_and_discards_its_edits() {
    let mut msg = sarah();
    let out = step(r#"msg.set("MSH-5", "X"); drop("test patient"); msg.set("MSH-6", "Y");"#)
        .run(&mut msg, &no_ctx());
    assert_eq!(
        out,
        Ok(Outcome::Drop {
            reason: "test patient".into()
        })
    );
    assert_eq!(get(&msg, "MSH-5").as_deref(), Some("COURIER"));
}

#[test]
fn fail_names_its_line_and_column() {
    let err = error("let x = 1;\nif x == 1 {\n    fail(\"no visit number\");\n}\n");
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert_eq!(err.step, "test.rhai");
    assert_eq!(err.message, "line 3, column 5: fail: no visit number");
}

#[test]
fn drop_and_fail_cannot_be_caught() {
    let mut msg = sarah();
    let out = step(r#"try { drop("filtered"); } catch { }"#).run(&mut msg, &no_ctx());
    assert_eq!(
        out,
        Ok(Outcome::Drop {
            reason: "filtered".into()
        })
    );
    let err = error(r#"try { fail("bad"); } catch (e) { }"#);
    assert_eq!(err.kind, StepErrorKind::Failed);
}

#[test]
fn drop_and_fail_work_inside_functions() {
    let err =
        error("fn check(m) {\n  if m.get(\"PV1-19\") != () { fail(\"visit\"); }\n}\ncheck(msg);");
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert!(
        err.message.starts_with("line 2, column 30: fail: visit"),
        "{}",
        err.message
    );
}

#[test]
fn the_last_value_is_ignored() {
    let msg = keep(r#""drop"; 42"#);
    assert!(!msg.is_modified());
}

#[test]
fn throw_fails_and_runtime_errors_trap() {
    let err = error(r#"throw "unexpected order status""#);
    assert_eq!(err.kind, StepErrorKind::Failed);
    assert_eq!(err.message, "line 1, column 1: unexpected order status");

    let err = error("let a = [1, 2];\nlet b = a[5];");
    assert_eq!(err.kind, StepErrorKind::Trap);
    assert!(err.message.starts_with("line 2, column"), "{}", err.message);

    let err = error("let x = 1 / 0;");
    assert_eq!(err.kind, StepErrorKind::Trap);
    assert!(err.message.contains("Division by zero"), "{}", err.message);
}

// ----- the message API -----

#[test]
fn get_set_delete_exists() {
    let msg = keep(
        r#"
        if msg.get("PID-5.1") != "Johnson" { throw "get"; }
        if msg.get("PID.5.2") != "Sarah" { throw "alias"; }
        if msg.get("PID-3[2].1") != "555-23-4411" { throw "repetition"; }
        if msg.get("PID-99") != () { throw "absent is ()"; }
        if !msg.exists("PV2-3") || msg.exists("ZZZ") { throw "exists"; }
        if msg["MSH-9.2"] != "A04" { throw "indexer"; }
        if msg.get_raw("PID-5[2]") != "Miller^Sarah^^^^^M" || msg.get_raw("PID-99") != () { throw "raw"; }
        if msg.get_raw("PV2").sub_string(0, 7) != "PV2|||Z" { throw "raw segment"; }
        msg.set("PID-5.1", "Johnson-Smith");
        msg["PV1-2"] = "I";
        msg.set("PV1-44", 20261124);
        msg.set_raw("PID-6", "Miller^Anne");
        msg.set("PID-8", "F^M");            // escaped: a value, not two components
        msg.delete("PID-3[2]");
        msg.insert_repetition("PID-3[1]", "X1");
        "#,
    );
    assert_eq!(get(&msg, "PID-5.1").as_deref(), Some("Johnson-Smith"));
    assert_eq!(get(&msg, "PV1-2").as_deref(), Some("I"));
    assert_eq!(get(&msg, "PV1-44").as_deref(), Some("20261124"));
    assert_eq!(get(&msg, "PID-6").as_deref(), Some("Miller^Anne"));
    assert_eq!(get(&msg, "PID-8").as_deref(), Some("F^M"));
    assert!(msg.encode().windows(8).any(|w| w == b"F\\S\\M|||"));
    assert_eq!(get(&msg, "PID-3[1]").as_deref(), Some("X1"));
    assert_eq!(get(&msg, "PID-3[3].1").as_deref(), Some("RS48821"));
    assert_eq!(msg.repetition_count(&"PID-3".parse().unwrap()), 3);
}

#[test]
fn type_control_id_count_repetitions() {
    let mut msg = message("oru_r01_results.hl7");
    let out = step(
        r#"
        if msg.type != "ORU^R01" { throw msg.type; }
        if msg.control_id != "LIS20261124143022551" { throw "control id"; }
        if msg.count("OBX") != 15 || msg.count("ZZZ") != 0 { throw "count"; }
        if msg.repetitions("PID-3") != 2 || msg.repetitions("PID-2") != 0 { throw "reps"; }
        let codes = [];
        for i in 1..=msg.count("OBX") { codes.push(msg.get(`OBX[${i}]-3.1`)); }
        msg.set("NTE-3", codes[0] + "," + codes[14]);
        let ids = [];
        for r in 1..=msg.repetitions("PID-3") { ids.push(msg.get(`PID-3[${r}].4`)); }
        msg.set("NTE-4", ids[0] + "," + ids[1]);
        "#,
    )
    .run(&mut msg, &no_ctx());
    assert_eq!(out, Ok(Outcome::Keep));
    assert_eq!(get(&msg, "NTE-3").as_deref(), Some("WBC,COMMENT"));
    assert_eq!(get(&msg, "NTE-4").as_deref(), Some("RIVERSIDE,USSSA"));
}

#[test]
fn segment_views() {
    let mut msg = message("oru_r01_results.hl7");
    let out = step(
        r#"
        let all = msg.segments();
        if all[0].id != "MSH" || all[0].index != 0 || all.len() != msg.segments().len() { throw "all"; }
        for obx in msg.segments("OBX") {
            if obx.get("2") == "NM" && obx.exists("8") && obx.get("8") != "N" {
                obx.set("8", "ABN");                     // flag high values
                obx.set("5.2", `#${obx.occurrence}`);
            }
        }
        let obr = msg.segments("OBR")[1];
        if obr.occurrence != 2 { throw "occurrence"; }
        if obr.repetitions("4") != 1 { throw "repetitions"; }
        obr.delete("13");
        "#,
    )
    .run(&mut msg, &no_ctx());
    assert_eq!(out, Ok(Outcome::Keep));
    assert_eq!(get(&msg, "OBX[10]-8").as_deref(), Some("ABN"));
    assert_eq!(get(&msg, "OBX[10]-5").as_deref(), Some("212^#10"));
    assert_eq!(get(&msg, "OBX[11]-8").as_deref(), Some("N"));
    assert_eq!(get(&msg, "OBR[2]-13").as_deref(), Some(""));
}

#[test]
fn segments_can_be_inserted_appended_and_removed() {
    let msg = keep(
        r#"
        let pid = msg.segments("PID")[0];
        msg.insert_segment(pid.index + 1, "ZPI|1|courier");
        msg.append_segment("ZTR|end");
        msg.remove_segment("PV2", 1);
        "#,
    );
    let ids: Vec<String> = msg.segments().map(|s| s.id().to_string()).collect();
    assert_eq!(
        ids,
        [
            "MSH", "EVN", "PID", "ZPI", "PD1", "NK1", "PV1", "IN1", "ZTR"
        ]
    );
    assert_eq!(get(&msg, "ZPI-2").as_deref(), Some("courier"));
}

#[test]
fn settings_and_lookup() {
    let mut msg = sarah();
    let ctx = ctx(
        json!({"code": "X1", "n": 3, "ratio": 0.5, "on": true, "list": ["a", "b"], "nested": {"k": "v"}, "none": null}),
        &[("sex", &[("F", "female")])],
    );
    let out = step(
        r#"
        if settings.n + 1 != 4 || !settings.on || settings.ratio != 0.5 { throw "scalars"; }
        if settings.list.len() != 2 || settings.nested.k != "v" || settings.none != () { throw "nested"; }
        if settings.missing != () { throw "missing"; }
        if lookup("sex", "M") != () || lookup("nope", "F") != () || lookup("sex", ()) != () { throw "absent"; }
        msg.set("PID-8", lookup("sex", msg.get("PID-8")));
        msg.set("PID-2", settings.code);
        "#,
    )
    .run(&mut msg, &ctx);
    assert_eq!(out, Ok(Outcome::Keep));
    assert_eq!(get(&msg, "PID-8").as_deref(), Some("female"));
    assert_eq!(get(&msg, "PID-2").as_deref(), Some("X1"));
}

#[test]
fn settings_cannot_be_replaced_and_changes_do_not_carry() {
    let err = error(r#"settings = #{};"#);
    assert_eq!(err.kind, StepErrorKind::Trap);
    assert!(err.message.contains("constant"), "{}", err.message);
    // Its properties can be changed, but only in this message's copy.
    let step = step(r#"if settings.seen != () { throw "carried"; } settings.seen = 1;"#);
    let ctx = ctx(json!({"a": 1}), &[]);
    for _ in 0..2 {
        assert_eq!(step.run(&mut sarah(), &ctx), Ok(Outcome::Keep));
    }
    assert_eq!(ctx.settings.len(), 1);
}

#[test]
fn bad_paths_and_refused_edits_fail_naming_the_path() {
    let cases = [
        (r#"msg.get("pid-5")"#, "msg.get(\"pid-5\")", "upper case"),
        (
            r#"msg.set("PID-3[0]", "x")"#,
            "msg.set(\"PID-3[0]\")",
            "1 or more",
        ),
        (
            r#"msg.set("ZZZ-1", "x")"#,
            "msg.set(\"ZZZ-1\")",
            "no segment ZZZ[1]",
        ),
        (
            r#"msg.set("MSH-2", "x")"#,
            "msg.set(\"MSH-2\")",
            "unsupported",
        ),
        (
            r#"msg.set("PID-5", msg.get("PID-99"))"#,
            "msg.set(\"PID-5\")",
            "not ()",
        ),
        (
            r#"msg.set_raw("PID-5.1", "a|b")"#,
            "msg.set_raw(\"PID-5.1\")",
            "PID-5.1",
        ),
        (
            r#"msg.count("OBX-3")"#,
            "msg.count(\"OBX-3\")",
            "segment ID",
        ),
        (
            r#"msg.repetitions("PID")"#,
            "msg.repetitions(\"PID\")",
            "field",
        ),
        (
            r#"msg.remove_segment("MSH", 1)"#,
            "msg.remove_segment",
            "MSH",
        ),
        (
            r#"msg.remove_segment("OBX", 1)"#,
            "msg.remove_segment",
            "no segment OBX[1]",
        ),
        (
            r#"msg.insert_segment(0, "ZZZ|1")"#,
            "msg.insert_segment",
            "",
        ),
        (
            r#"msg.append_segment("not a segment")"#,
            "msg.append_segment",
            "invalid segment",
        ),
        (
            r#"msg.segments("PID")[0].get("PID-3")"#,
            "segment.get(\"PID-3\")",
            "field number",
        ),
    ];
    for (source, names, reason) in cases {
        let err = error(&format!("let x = 1;\n{source};"));
        assert_eq!(err.kind, StepErrorKind::Failed, "{source}: {}", err.message);
        assert!(
            err.message.starts_with("line 2, column "),
            "{source}: {}",
            err.message
        );
        assert!(err.message.contains(names), "{source}: {}", err.message);
        assert!(err.message.contains(reason), "{source}: {}", err.message);
    }
}

#[test]
fn api_errors_can_be_caught() {
    let msg = keep(
        r#"
        try { msg.set("ZZZ-1", "x"); } catch (e) { msg.set("PID-2", if e.contains("ZZZ") { "caught" } else { e }); }
        "#,
    );
    assert_eq!(get(&msg, "PID-2").as_deref(), Some("caught"));
}

#[test]
fn a_message_prints_its_shape_not_its_contents() {
    let msg = keep(
        r#"
        msg.set("PID-2", msg.to_string() + " " + msg.segments("PID")[0].to_string());
        "#,
    );
    assert_eq!(
        get(&msg, "PID-2").as_deref(),
        Some("Message(ADT^A04, 8 segments) Segment(PID[1])")
    );
}

#[test]
fn msg_passed_to_functions_is_the_same_message() {
    let msg = keep(
        r#"
        fn upper_family(m) { m.set("PID-5.1", m.get("PID-5.1").to_upper()); }
        fn tag_receiver(m, app) { m.set("MSH-5", app); }
        upper_family(msg);
        tag_receiver(msg, "EMR");
        "#,
    );
    assert_eq!(get(&msg, "PID-5.1").as_deref(), Some("JOHNSON"));
    assert_eq!(get(&msg, "MSH-5").as_deref(), Some("EMR"));
}

#[test]
fn this_is_refused() {
    let (line, column, message) =
        compile_error("fn tag() {\n  this.set(\"MSH-5\", \"EMR\");\n}\nmsg.tag();");
    assert_eq!((line, column), (2, 3));
    assert!(message.contains("`this` is not available"), "{message}");
}

// ----- hostile scripts: each stopped by its limit, then the same step serves a message -----

/// Runs `attack` inside `if settings.attack { .. }`, expects `kind`, then runs the same step
/// on a normal message.
fn stopped(attack: &str, limits: ScriptLimits, kind: StepErrorKind) -> StepError {
    stopped_after("", attack, limits, kind)
}

/// [`stopped`], with `functions` defined before the attack (functions must be global).
fn stopped_after(
    functions: &str,
    attack: &str,
    limits: ScriptLimits,
    kind: StepErrorKind,
) -> StepError {
    let source =
        format!("{functions}\nif settings.attack {{\n{attack}\n}}\nmsg.set(\"MSH-5\", \"OK\");");
    let step = step_with(&source, limits);
    let mut msg = sarah();
    let started = Instant::now();
    let err = step
        .run(&mut msg, &ctx(json!({"attack": true}), &[]))
        .expect_err(attack);
    assert!(started.elapsed() < Duration::from_secs(25), "{attack}");
    assert_eq!(err.kind, kind, "{attack}: {}", err.message);
    assert!(!msg.is_modified());

    let mut msg = sarah();
    assert_eq!(
        step.run(&mut msg, &ctx(json!({"attack": false}), &[])),
        Ok(Outcome::Keep)
    );
    assert_eq!(get(&msg, "MSH-5").as_deref(), Some("OK"));
    err
}

fn limit(name: &str) -> StepErrorKind {
    StepErrorKind::ScriptLimit { limit: name.into() }
}

#[test]
fn an_infinite_loop_hits_max_operations() {
    let err = stopped("loop { }", slow_clock(), limit("max_operations = 1000000"));
    assert!(
        err.message.contains("max_operations = 1000000"),
        "{}",
        err.message
    );
    assert!(err.message.starts_with("line 3, column"), "{}", err.message);
    // Catching does not help.
    stopped(
        "try { while true { } } catch { }",
        slow_clock(),
        limit("max_operations = 1000000"),
    );
}

#[test]
fn cheap_operations_hit_the_deadline() {
    let limits = ScriptLimits {
        max_operations: u64::MAX,
        deadline: Duration::from_millis(50),
        ..ScriptLimits::default()
    };
    let started = Instant::now();
    let err = stopped(
        "let x = 0; loop { x += 1; }",
        limits,
        StepErrorKind::Timeout {
            limit: Duration::from_millis(50),
        },
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(err.message.contains("deadline = 50ms"), "{}", err.message);
}

#[test]
fn a_huge_string_hits_max_string_size() {
    let err = stopped(
        r#"let s = "0123456789abcdef"; loop { s += s; }"#,
        slow_clock(),
        limit("max_string_size = 1048576"),
    );
    assert!(
        err.message.contains("max_string_size = 1048576"),
        "{}",
        err.message
    );
    stopped(
        r#"let s = "x"; s.pad(10000000, 'y');"#,
        slow_clock(),
        limit("max_string_size = 1048576"),
    );
    // Many strings held in one array count together.
    stopped(
        r#"let s = "0123456789abcdef"; for i in 0..16 { s += s; } let a = []; loop { a.push(s); }"#,
        slow_clock(),
        limit("max_string_size = 1048576"),
    );
}

#[test]
fn huge_arrays_and_maps_hit_their_limits() {
    // Rhai measures an array after each change (quadratic in a debug build): a smaller limit.
    stopped(
        "let a = []; loop { a.push(1); }",
        ScriptLimits {
            max_array_size: 500,
            ..slow_clock()
        },
        limit("max_array_size = 500"),
    );
    stopped(
        "let a = [1]; loop { a = [a, a]; }",
        slow_clock(),
        limit("max_array_size = 10000"),
    );
    stopped(
        "let a = []; a.pad(100000000, 0);",
        slow_clock(),
        limit("max_array_size = 10000"),
    );
    // An index assignment adds a map entry without Rhai's own check; the step's audit of
    // the variable catches it (smaller limit: the audit is quadratic in a debug build).
    let small_maps = ScriptLimits {
        max_map_size: 500,
        ..slow_clock()
    };
    stopped(
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        small_maps.clone(),
        limit("max_map_size = 500"),
    );
    stopped(
        "let m = #{}; m.a = #{}; let i = 0; loop { m.a[`k${i}`] = i; i += 1; }",
        small_maps,
        limit("max_map_size = 500"),
    );
}

#[test]
fn deep_nesting_hits_max_nesting() {
    // Without a bound these overflow the thread's stack in Rhai's recursive clone and drop.
    for attack in [
        "let a = []; loop { a = [a]; }",
        "let a = #{}; loop { a = #{x: a}; }",
        "let m = #{}; loop { let n = #{}; n[\"x\"] = m; m = n; }",
        "let a = []; let grow = || { loop { a = [a]; } }; grow.call();",
        "let a = []; loop { a = [[[[[[[[[[a]]]]]]]]]]; }",
    ] {
        let err = stopped(attack, slow_clock(), limit("max_nesting = 32"));
        assert!(err.message.contains("max_nesting = 32"), "{}", err.message);
    }
    // Ordinary nesting is fine.
    keep("let a = #{codes: [[1, 2], [3]], name: #{family: \"x\"}}; let b = a.codes[0][1];");
}

#[test]
fn maps_filled_by_index_assignment_are_measured() {
    // Rhai does not check a map after `m[key] = value`; without the step's audit this keeps
    // a new 100 KB string per iteration until the deadline.
    for attack in [
        "let s = \"x\"; s.pad(100000, 'y'); let m = #{}; let i = 0; loop { m[`k${i}`] = s + i; i += 1; }",
        "let s = \"x\"; s.pad(100000, 'y'); let m = #{}; let peek = || m.len(); let i = 0; loop { m[`k${i}`] = s + i; i += 1; }",
        "let s = \"x\"; s.pad(100000, 'y'); let m = #{}; let i = 0; let fill = || { loop { m[`k${i}`] = s + i; i += 1; } }; fill.call();",
    ] {
        stopped(attack, slow_clock(), limit("max_string_size = 1048576"));
    }
}

#[test]
fn deep_recursion_hits_max_call_levels() {
    let err = stopped_after(
        "fn down(n) { down(n + 1) }",
        "down(0);",
        slow_clock(),
        limit("max_call_levels = 32"),
    );
    assert!(
        err.message.contains("max_call_levels = 32"),
        "{}",
        err.message
    );
    // Mutual recursion, recursion through a function pointer, and a closure calling itself.
    stopped_after(
        "fn a(n) { b(n) } fn b(n) { a(n) }",
        "a(0);",
        slow_clock(),
        limit("max_call_levels = 32"),
    );
    stopped_after(
        "fn f(g) { call(g, g) }",
        "f(Fn(\"f\"));",
        slow_clock(),
        limit("max_call_levels = 32"),
    );
    stopped(
        "let f = |g| g.call(g); f.call(f);",
        slow_clock(),
        limit("max_call_levels = 32"),
    );
}

/// A recursive function that returns an array nested 7 levels per call: at 30 calls (under
/// `max_call_levels = 32`) a temporary about 210 levels deep that Rhai clones, compares,
/// prints and drops recursively, never held in a variable (so `max_nesting` does not see it).
const DEEP: &str = "fn deep(n) { if n == 0 { [] } else { [[[[[[[deep(n - 1)]]]]]]] } }";

#[test]
fn hostile_deep_recursion_hits_its_limits_before_the_stack_runs_out() {
    // On a thread with the 2 MiB stack a worker thread gets by default (tokio's blocking
    // pool, std::thread::spawn), in whatever build the tests run: in a debug build the step
    // moves the script to a thread with a stack of its own; without that, Rhai's unoptimised
    // frames overflow this one and abort the test process.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            for (functions, attack) in [
                ("fn down(n) { down(n + 1) }", "down(0);"),
                (DEEP, "deep(100);"),
                (DEEP, "let x = [deep(40)];"),
            ] {
                let err = stopped_after(
                    functions,
                    attack,
                    slow_clock(),
                    limit("max_call_levels = 32"),
                );
                assert!(
                    err.message.contains("max_call_levels = 32"),
                    "{}",
                    err.message
                );
            }
            // Held in a variable, the nesting limit stops it.
            stopped_after(
                DEEP,
                "let x = deep(30); x.len();",
                slow_clock(),
                limit("max_nesting = 32"),
            );
            // As temporaries within the limits: built, printed, compared, thrown and dropped.
            let step = step(&format!(
                "{DEEP}\nprint(deep(30));\nif deep(30) == deep(29) {{ fail(\"equal\"); }}\n\
                 let s = `${{deep(30)}}`;\nthrow deep(30);"
            ));
            let err = step
                .run(&mut sarah(), &no_ctx())
                .expect_err("the script throws");
            assert_eq!(err.kind, StepErrorKind::Failed, "{}", err.message);
            assert!(err.message.contains("[[[[[[[[[[[[[[[["), "{}", err.message);
        })
        .expect("thread starts")
        .join()
        .expect("no overflow, no failed assertion");
}

#[test]
fn a_growing_message_hits_max_edit_bytes() {
    let err = stopped(
        r#"let s = "0123456789abcdef"; for i in 0..14 { s += s; } let n = 1; loop { msg.set(`ZZZ-${n}`, s); n += 1; }"#,
        slow_clock(),
        // ZZZ does not exist: the very first set fails before anything grows.
        StepErrorKind::Failed,
    );
    assert!(err.message.contains("no segment ZZZ[1]"), "{}", err.message);
    stopped(
        r#"let s = "0123456789abcdef"; for i in 0..14 { s += s; } let n = 1; loop { msg.set(`PV1-${n}`, s); n += 1; }"#,
        slow_clock(),
        limit("max_edit_bytes = 4194304"),
    );
}

#[test]
fn eval_is_refused() {
    let (line, column, message) = compile_error("let x = 1;\nlet y = eval(\"x + 1\");");
    assert_eq!((line, column), (2, 9));
    assert!(message.contains("`eval` is not available"), "{message}");
    // Not reachable through a function pointer either.
    for attack in [
        r#"call(Fn("eval"), "1");"#,
        r#"Fn("eval").call("1");"#,
        r#"let f = Fn("ev" + "al"); f.call("msg");"#,
        r#"let f = "eval"; call(Fn(f), "1");"#,
    ] {
        let err = stopped(attack, slow_clock(), StepErrorKind::Trap);
        assert!(
            err.message.contains("eval") || err.message.contains("not found"),
            "{attack}: {}",
            err.message
        );
    }
}

#[test]
fn imports_are_refused() {
    let (line, column, message) = compile_error("import \"x\" as x;\nx::f();");
    assert_eq!((line, column), (1, 1));
    assert!(message.contains("`import` is not available"), "{message}");
    let (_, _, message) = compile_error("let x = 1;\nexport x;");
    assert!(message.contains("`export` is not available"), "{message}");
}

#[test]
fn no_file_network_environment_clock_or_sleep() {
    for attack in [
        r#"open("/etc/passwd")"#,
        r#"read_file("/etc/passwd")"#,
        r#"env("HOME")"#,
        r#"getenv("HOME")"#,
        r#"system("ls")"#,
        r#"exec("ls")"#,
        r#"connect("127.0.0.1:80")"#,
        r#"http_get("http://example.com")"#,
        r#"timestamp()"#,
        r#"sleep(100)"#,
        r#"exit()"#,
        r#"parse_json("{}")"#,
    ] {
        let err = stopped(attack, slow_clock(), StepErrorKind::Trap);
        assert!(
            err.message.contains("Function not found"),
            "{attack}: {}",
            err.message
        );
    }
    // No modules exist to call into: a qualified name is refused at load.
    let (_, _, message) = compile_error(r#"let f = File::open("/etc/passwd");"#);
    assert!(message.contains("Undefined module"), "{message}");
}

#[test]
fn deeply_nested_expressions_are_refused_at_load() {
    let deep = format!("let x = {}1{};", "(".repeat(80), ")".repeat(80));
    let (line, _, message) = compile_error(&deep);
    assert_eq!(line, 1);
    assert!(message.contains("max_expr_depth = 64"), "{message}");
}

// ----- no state from one message to the next -----

#[test]
fn every_message_gets_a_fresh_scope() {
    let step = step(
        r#"
        let seen = if is_def_var("counter") { "leaked" } else { "fresh" };
        let counter = 0;
        counter += 1;
        const LIST = [];
        let copy = LIST;
        copy.push(msg.get("PID-5.1"));
        fn remember(x) { let cache = []; cache.push(x); cache.len() }
        let closure = |x| { counter += x; counter };
        closure.call(10);
        msg.set("ZTS-1", `${seen} ${counter} ${copy.len()} ${remember(msg.control_id)}`);
        "#,
    );
    for _ in 0..3 {
        let mut msg = sarah();
        msg.append_segment("ZTS").unwrap();
        assert_eq!(step.run(&mut msg, &no_ctx()), Ok(Outcome::Keep));
        assert_eq!(get(&msg, "ZTS-1").as_deref(), Some("fresh 11 1 1"));
    }
}

#[test]
fn constants_cannot_be_mutated_to_carry_data() {
    let (_, _, message) = compile_error("const X = \"\";\nX += \"a\";");
    assert!(message.contains("constant X"), "{message}");
    for attack in [
        "const X = []; X.push(1);",
        "const X = #{}; X.a = 1;",
        "const X = \"\"; fn f() { global::X += \"a\"; } f();",
    ] {
        let err = error(attack);
        assert_eq!(err.kind, StepErrorKind::Trap, "{attack}: {}", err.message);
        assert!(
            err.message.contains("constant") || err.message.contains("internal error"),
            "{attack}: {}",
            err.message
        );
    }
}

#[test]
fn a_shared_closure_sees_nothing_of_the_previous_message() {
    let step = step(
        r#"
        let names = [];
        let add = |n| names.push(n);     // captures `names` as a shared value
        add.call(msg.get("PID-5.1"));
        if names.len() != 1 { throw `saw ${names.len()} names`; }
        "#,
    );
    let mut first = sarah();
    assert_eq!(step.run(&mut first, &no_ctx()), Ok(Outcome::Keep));
    let mut second = message("adt_a01_admit.hl7");
    assert_eq!(step.run(&mut second, &no_ctx()), Ok(Outcome::Keep));
}

#[test]
fn runs_on_many_threads_do_not_see_each_other() {
    let step = Arc::new(step_with(
        r#"
        let mine = msg.get("MSH-10");
        for i in 0..200 { msg.set("ZTS-1", mine); if msg.get("ZTS-1") != mine { throw "crossed"; } }
        "#,
        slow_clock(),
    ));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let step = step.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let mut msg = sarah();
                    msg.set(&"MSH-10".parse().unwrap(), &format!("T{t}-{i}"))
                        .unwrap();
                    msg.append_segment("ZTS").unwrap();
                    assert_eq!(step.run(&mut msg, &no_ctx()), Ok(Outcome::Keep));
                    assert_eq!(get(&msg, "ZTS-1"), Some(format!("T{t}-{i}")));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

// ----- log output is redacted -----

mod capture {
    //! A tracing subscriber that records the events of one closure, for assertions.
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Metadata, Subscriber, span};

    #[derive(Debug, Clone)]
    pub struct Line {
        pub target: String,
        pub level: Level,
        pub message: String,
        pub fields: Vec<(String, String)>,
    }

    impl Line {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Line>>>);

    struct Fields<'a>(&'a mut Line);

    impl Visit for Fields<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.fields.push((field.name().into(), value.into()));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            let text = format!("{value:?}");
            if field.name() == "message" {
                self.0.message = text;
            } else {
                self.0.fields.push((field.name().into(), text));
            }
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line {
                target: event.metadata().target().into(),
                level: *event.metadata().level(),
                message: String::new(),
                fields: Vec::new(),
            };
            event.record(&mut Fields(&mut line));
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    /// Runs `f` with a capturing subscriber on this thread; the lines it logged.
    pub fn run<R>(f: impl FnOnce() -> R) -> (Vec<Line>, R) {
        let capture = Capture::default();
        let out = tracing::subscriber::with_default(capture.clone(), f);
        let lines = capture.0.lock().unwrap().clone();
        (lines, out)
    }
}

#[test]
fn print_debug_and_log_are_redacted() {
    let step = step(
        r#"
        let family = msg.get("PID-5.1");
        print(`print: ${family}, born ${msg.get("PID-7")}`);
        debug(`debug ${msg.get("PID-5")}`);
        log_info("info: " + msg.get("PID-3[1].1") + " at " + msg.get("PID-11.1"));
        msg.set("PID-5.1", family.to_upper());
        log_warn(`warn: was ${family}, now ${msg.get("PID-5.1")}`);
        log_debug(`debug: ${msg.get("NK1-2")} phone ${msg.get("PID-13[1].7")}`);
        log_info(msg);
        log_info(42);
        "#,
    );
    let mut msg = sarah();
    let (lines, out) = capture::run(|| step.run(&mut msg, &emr_settings()));
    assert_eq!(out, Ok(Outcome::Keep));
    let script: Vec<_> = lines.iter().filter(|l| l.target == LOG_TARGET).collect();
    assert_eq!(script.len(), 7, "{lines:#?}");
    for line in &script {
        for secret in [
            "Johnson", "JOHNSON", "Sarah", "19780412", "100234", "412 Elm", "Mark", "5550142",
        ] {
            assert!(!line.message.contains(secret), "{secret} in {line:?}");
        }
        assert_eq!(line.field("route"), Some("test-route"));
        assert_eq!(line.field("control_id"), Some("CTRL1"));
        assert_eq!(line.field("step"), Some("test.rhai"));
    }
    let messages: Vec<&str> = script.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(messages[0], "print: [redacted], born [redacted]");
    assert_eq!(script[0].level, tracing::Level::INFO);
    // `debug` shows the debug form of its argument: a string in quotes.
    // Each name component on its own: the name type codes (`L`, `M`) are not patient data.
    assert_eq!(
        messages[1],
        "\"debug [redacted]^[redacted]^[redacted]^^^^L~[redacted]^[redacted]^^^^^M\""
    );
    assert_eq!(script[1].level, tracing::Level::DEBUG);
    assert!(
        messages[2].starts_with("info: [redacted] at [redacted]"),
        "{}",
        messages[2]
    );
    assert_eq!(messages[3], "warn: was [redacted], now [redacted]");
    assert_eq!(script[3].level, tracing::Level::WARN);
    assert_eq!(messages[5], "Message(ADT^A04, 8 segments)");
    assert_eq!(messages[6], "42");
}

#[test]
fn error_and_drop_texts_are_redacted() {
    for source in [
        r#"fail("no visit for " + msg.get("PID-5.1"))"#,
        r#"throw msg.get("PID-5")"#,
        r#"let n = parse_int(msg.get("PID-5.1"));"#,
    ] {
        let err = error(source);
        assert!(
            !err.message.contains("Johnson"),
            "{source}: {}",
            err.message
        );
        assert!(
            err.message.contains("[redacted]"),
            "{source}: {}",
            err.message
        );
    }
    let mut msg = sarah();
    let out = step(r#"drop("test patient " + msg.get("PID-5.1"))"#).run(&mut msg, &no_ctx());
    assert_eq!(
        out,
        Ok(Outcome::Drop {
            reason: "test patient [redacted]".into()
        })
    );
}

#[test]
fn chatty_scripts_hit_max_log_bytes() {
    let limits = ScriptLimits {
        max_log_bytes: 1000,
        ..slow_clock()
    };
    let step = step_with(
        r#"for i in 0..1000 { print(`line ${i} of many`); }"#,
        limits,
    );
    let mut msg = sarah();
    let (lines, out) = capture::run(|| step.run(&mut msg, &no_ctx()));
    assert_eq!(out, Ok(Outcome::Keep));
    let total: usize = lines.iter().map(|l| l.message.len()).sum();
    assert!(lines.len() < 100, "{}", lines.len());
    assert!(total < 1300, "{total}");
    let last = lines.last().unwrap();
    assert_eq!(last.level, tracing::Level::WARN);
    assert!(
        last.message.contains("max_log_bytes = 1000"),
        "{}",
        last.message
    );
}

// ----- loading -----

#[test]
fn a_compile_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.rhai");
    std::fs::write(&path, "let a = 1;\nlet b = a +;\n").unwrap();
    let err = ScriptStep::load(&path, ScriptLimits::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:2:", path.display())),
        "{text}"
    );
    assert!(
        matches!(
            err,
            LoadError::Compile {
                line: 2,
                column: 12,
                ..
            }
        ),
        "{err:?}"
    );

    // Strict variables: a typo is a load error, not a runtime surprise.
    let (line, column, message) = compile_error("let mrn = 1;\nmsg.set(\"PID-2\", mnr);");
    assert_eq!((line, column), (2, 18));
    assert!(message.contains("mnr"), "{message}");

    let err =
        ScriptStep::load(&dir.path().join("missing.rhai"), ScriptLimits::default()).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.rhai"));
}

#[test]
fn name_and_content_hash() {
    use sha2::{Digest, Sha256};
    let path = examples().join("scripts/adt_emr.rhai");
    let step = ScriptStep::load(&path, ScriptLimits::default()).unwrap();
    assert_eq!(step.name(), "adt_emr.rhai");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(step.content_hash(), format!("{:x}", Sha256::digest(&bytes)));
    assert_eq!(step.content_hash().len(), 64);
}

#[test]
fn zero_limits_are_refused() {
    let limits = ScriptLimits {
        max_operations: 0,
        ..ScriptLimits::default()
    };
    let err = ScriptStep::from_source("z.rhai", "1", limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "script z.rhai: max_operations must be above 0"
    );
}
