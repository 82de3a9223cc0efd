//! Per-message cost of a Rhai step: `examples/scripts/adt_emr.rhai` (the ~10-line ADT
//! mapping for the EMR) on Sarah's A04, beside the same mapping written natively against
//! courier-hl7. Both include cloning the parsed message (as the engine hands each step its
//! own), so the difference is what the script costs. Target: ≤ 20 µs per message.

use std::path::Path;
use std::sync::Arc;

use courier_hl7::{Message, ParseOptions, Path as HlPath};
use courier_plugin::{Outcome, ScriptLimits, ScriptStep, Step, StepContext};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn context() -> StepContext {
    let serde_json::Value::Object(settings) = json!({
        "mrn_authority": "RIVERSIDE",
        "emr_application": "EMR",
        "emr_facility": "RIVERSIDE_EMR",
    }) else {
        unreachable!()
    };
    StepContext {
        route: "registration-to-emr".into(),
        control_id: "REG20261124083012001".into(),
        settings: Arc::new(settings),
        tables: Arc::default(),
    }
}

fn path(p: &str) -> HlPath {
    HlPath::parse(p).expect("valid path")
}

/// adt_emr.rhai, line for line, in Rust.
fn native(msg: &mut Message, ctx: &StepContext) -> Result<Outcome, String> {
    let authority = ctx.setting("mrn_authority").unwrap_or_default();
    let mut mrn = None;
    for r in 1..=msg.repetition_count(&path("PID-3")) {
        if msg.get(&path(&format!("PID-3[{r}].4"))).as_deref() == Some(authority.as_str()) {
            mrn = msg.element(&path(&format!("PID-3[{r}]"))).map(|e| e.er7());
            break;
        }
    }
    let mrn = mrn.ok_or_else(|| format!("no PID-3 identifier from {authority}"))?;
    msg.set_raw(&path("PID-3"), &mrn)
        .map_err(|e| e.to_string())?;
    if let Some(names) = msg.element(&path("PID-5")).map(|e| e.er7()) {
        msg.set_raw(&path("PID-5"), &names.to_uppercase())
            .map_err(|e| e.to_string())?;
    }
    let app = ctx.setting("emr_application").unwrap_or_default();
    let facility = ctx.setting("emr_facility").unwrap_or_default();
    msg.set(&path("MSH-5"), &app).map_err(|e| e.to_string())?;
    msg.set(&path("MSH-6"), &facility)
        .map_err(|e| e.to_string())?;
    Ok(Outcome::Keep)
}

fn bench(c: &mut Criterion) {
    let bytes = std::fs::read(examples().join("messages/adt_a04_sarah.hl7")).expect("message");
    let msg = Message::parse_with(bytes, &ParseOptions::lenient()).expect("parses");
    let step = ScriptStep::load(
        &examples().join("scripts/adt_emr.rhai"),
        ScriptLimits::default(),
    )
    .expect("script loads");
    let ctx = context();

    // Both do the same thing.
    let (mut a, mut b) = (msg.clone(), msg.clone());
    assert_eq!(step.run(&mut a, &ctx), Ok(Outcome::Keep));
    assert_eq!(native(&mut b, &ctx), Ok(Outcome::Keep));
    assert_eq!(a.encode(), b.encode());

    let mut group = c.benchmark_group("adt_emr");
    group.bench_function("rhai", |bench| {
        bench.iter_batched(
            || msg.clone(),
            |mut m| step.run(&mut m, &ctx),
            BatchSize::SmallInput,
        )
    });
    // The fixed cost of any script step: a fresh scope and runtime, nothing done.
    let empty = ScriptStep::from_source("empty.rhai", "", ScriptLimits::default()).expect("empty");
    group.bench_function("rhai_empty_script", |bench| {
        bench.iter_batched(
            || msg.clone(),
            |mut m| empty.run(&mut m, &ctx),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("native", |bench| {
        bench.iter_batched(
            || msg.clone(),
            |mut m| native(&mut m, &ctx),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
