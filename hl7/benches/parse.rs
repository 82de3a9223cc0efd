//! Benchmarks of the message model on the example messages: parsing (indexing) side by side
//! with hl7-parser, reading five typical paths, and set + encode.
//!
//! Run with `cargo bench -p courier-hl7 --bench parse`; the default run takes well under a
//! minute (1 s warm-up, 3 s measurement per benchmark). Parse figures are reported as
//! throughput (bytes of message per second) so the two parsers sit side by side.

use bytes::Bytes;
use courier_hl7::{Message, Path};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const MESSAGES: [&str; 2] = ["adt_a01_admit.hl7", "oru_r01_results.hl7"];

fn load(name: &str) -> Bytes {
    let path = format!("{}/../examples/messages/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for name in MESSAGES {
        let bytes = load(name);
        let text = std::str::from_utf8(&bytes)
            .expect("examples are UTF-8")
            .to_owned();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("courier/{name}"), |b| {
            b.iter(|| Message::parse(black_box(bytes.clone())).expect("parses"))
        });
        group.bench_function(format!("hl7-parser/{name}"), |b| {
            b.iter(|| {
                let m = hl7_parser::parse_message(black_box(&text)).expect("parses");
                black_box(m.segments.len())
            })
        });
    }
    group.finish();
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    let msg = Message::parse(load("adt_a01_admit.hl7")).expect("parses");
    let paths: Vec<Path> = ["MSH-10", "PID-3[1].1", "PID-5.1", "PV1-3.1", "AL1-3.2"]
        .iter()
        .map(|p| Path::parse(p).expect("valid path"))
        .collect();
    for p in &paths {
        assert!(msg.get(p).is_some_and(|v| !v.is_empty()), "{p} is valued");
    }
    group.throughput(Throughput::Elements(paths.len() as u64));
    group.bench_function("5 paths/adt_a01_admit.hl7", |b| {
        b.iter(|| {
            for p in &paths {
                black_box(msg.get(black_box(p)));
            }
        })
    });
    group.bench_function("5 paths as text/adt_a01_admit.hl7", |b| {
        b.iter(|| {
            for p in ["MSH-10", "PID-3[1].1", "PID-5.1", "PV1-3.1", "AL1-3.2"] {
                black_box(msg.get_str(black_box(p)).expect("valid path"));
            }
        })
    });
    group.finish();
}

fn set_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("set+encode");
    for (name, path) in [
        ("adt_a01_admit.hl7", "PID-5.1"),
        ("oru_r01_results.hl7", "OBX[5]-5"),
    ] {
        let msg = Message::parse(load(name)).expect("parses");
        let path = Path::parse(path).expect("valid path");
        group.throughput(Throughput::Bytes(msg.encode().len() as u64));
        group.bench_function(format!("{path}/{name}"), |b| {
            b.iter_batched(
                || msg.clone(),
                |mut m| {
                    m.set(&path, "O'Brien^Jr|x").expect("set");
                    m.encode()
                },
                BatchSize::SmallInput,
            )
        });
    }
    // What the lab-codes plugin does to a result report: each OBX-3's code, text and coding
    // system moved to components 4-6 (which the message does not have yet) and replaced.
    let msg = Message::parse(load("oru_r01_results.hl7")).expect("parses");
    let obx = msg.segment_occurrences("OBX");
    let at = |n: usize, c: usize| Path::parse(&format!("OBX[{n}]-3.{c}")).expect("valid path");
    group.throughput(Throughput::Elements(5 * obx as u64));
    group.bench_function("lab codes: 5 sets on each OBX-3/oru_r01_results.hl7", |b| {
        b.iter_batched(
            || msg.clone(),
            |mut m| {
                for n in 1..=obx {
                    m.set(&at(n, 4), "WBC").expect("set");
                    m.set(&at(n, 5), "Leukocytes").expect("set");
                    m.set(&at(n, 6), "L").expect("set");
                    m.set(&at(n, 1), "6690-2").expect("set");
                    m.set(&at(n, 3), "LN").expect("set");
                }
                m.encode()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse, get, set_encode
}
criterion_main!(benches);
