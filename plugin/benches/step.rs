//! Per-message overhead of a WASM step with a fresh instance, beside the same mapping as
//! native Rust, on the example clinic's ~1.4 KB ADT^A04.
//!
//! - `adt-emr/native`: the `adt-emr` mapping (`plugins/adt-emr/src/mapping.rs`, included
//!   below — the very file the component is built from) on a clone of the parsed message.
//! - `adt-emr/wasm`: the `adt-emr` component through `Step::run`: a fresh store and instance,
//!   the message copied in as bytes, parsed by the guest, mapped, encoded, copied back and
//!   parsed by the host.
//! - `adt-emr/wasm-keep-resident-0` and `-256k`: the same on a runtime with `keep_resident`
//!   0 (every page of a finished instance handed back to the kernel and faulted in again)
//!   and 256 KiB.
//! - `adt-emr/floor-filter`: the fixed cost of a call — the `test-filter` component (fresh
//!   instance, message in and parsed, one read, a verdict out).
//! - `adt-emr/wasm-reuse` and `adt-emr/floor-filter-reuse`: the same two with
//!   `WasmLimits::reuse_instance`: one kept instance called again for every message.
//! - `lab-codes/orm` and `lab-codes/oru`: the `lab-codes` component (the WASM step of
//!   `bench/e2e.sh`'s one-route pipeline) on the example order and result, with the example
//!   clinic's LOINC table. `lab-codes/oru-cold` times the same call after 8 MiB of other
//!   memory traffic, as if the engine's other threads had run in between. In the engine the
//!   step costs more than twice its figure here; evicting caches this way does not reproduce
//!   that, running it just after its thread was woken does (`cargo bench -p courier --bench
//!   steps_handoff`; docs/performance.md, 2026-12-04 night).
//! - `twelve-ops/bytes` and `twelve-ops/resource`: the measurement behind the interface
//!   decision (`docs/plugins.md`): 7 reads and 5 writes, once on a message that crosses as
//!   bytes, once through host calls on a message the host keeps as a WIT resource.
//!
//! Run with `cargo bench -p courier-plugin --bench step`. The plugins are built first
//! (`plugins/`, for wasm32-wasip2), as the tests do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use courier_hl7::{Message, ParseOptions};
use courier_plugin::wasm::{WasmLimits, WasmRuntime, WasmRuntimeConfig};
use courier_plugin::{Outcome, Step, StepContext};
use criterion::{Criterion, criterion_group, criterion_main};

#[allow(dead_code)]
#[path = "../../plugins/adt-emr/src/mapping.rs"]
mod adt_mapping;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository")
        .to_path_buf()
}

fn build_plugins() -> PathBuf {
    let target = repo().join("target/wasm-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
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
    assert!(status.success(), "building plugins/ failed");
    target.join("wasm32-wasip2/release")
}

fn sarah() -> Message {
    let bytes = std::fs::read(repo().join("examples/messages/adt_a04_sarah.hl7")).expect("sample");
    Message::parse_with(bytes, &ParseOptions::lenient()).expect("parses")
}

fn settings() -> [(&'static str, &'static str); 3] {
    [
        ("assigning_authority", "RIVERSIDE"),
        ("receiving_application", "EPIC"),
        ("receiving_facility", "RIVERSIDE_EMR"),
    ]
}

fn step_context() -> StepContext {
    StepContext {
        route: "bench".into(),
        control_id: "REG20261124083012001".into(),
        settings: Arc::new(
            settings()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
                .collect(),
        ),
        tables: Arc::default(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = build_plugins();
    let runtime = WasmRuntime::new(WasmRuntimeConfig::default()).expect("runtime");
    let msg = sarah();
    let ctx = step_context();

    let mut group = c.benchmark_group("adt-emr");
    group.bench_function("native", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            let s = adt_mapping::Settings::from_settings(|n| ctx.setting(n)).expect("settings");
            adt_mapping::apply(&mut m, &s, &mut |_| {}).expect("maps");
            m
        })
    });
    let adt = runtime
        .load(&dir.join("adt_emr.wasm"), WasmLimits::default())
        .expect("adt_emr loads");
    group.bench_function("wasm", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            assert_eq!(adt.run(&mut m, &ctx), Ok(Outcome::Keep));
            m
        })
    });
    // The same with less of a finished instance's memory reset in place: none (every page
    // handed back to the kernel and faulted in again) and a quarter of the default.
    for (name, keep_resident) in [
        ("wasm-keep-resident-0", 0),
        ("wasm-keep-resident-256k", 256 << 10),
    ] {
        let other = WasmRuntime::new(WasmRuntimeConfig {
            keep_resident,
            ..WasmRuntimeConfig::default()
        })
        .expect("runtime");
        let plugin = other
            .load(&dir.join("adt_emr.wasm"), WasmLimits::default())
            .expect("adt_emr loads");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut m = msg.clone();
                assert_eq!(plugin.run(&mut m, &ctx), Ok(Outcome::Keep));
                m
            })
        });
    }
    // The floor: a fresh instance, the message in, parsed, one read, a verdict out.
    let filter = runtime
        .load(&dir.join("test_filter.wasm"), WasmLimits::default())
        .expect("test_filter loads");
    group.bench_function("floor-filter", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            assert_eq!(filter.run(&mut m, &ctx), Ok(Outcome::Keep));
            m
        })
    });
    // The same two with `reuse_instance`: one kept instance called again for every message.
    let reuse = WasmLimits {
        reuse_instance: true,
        ..WasmLimits::default()
    };
    let adt_reuse = runtime
        .load(&dir.join("adt_emr.wasm"), reuse.clone())
        .expect("adt_emr loads");
    group.bench_function("wasm-reuse", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            assert_eq!(adt_reuse.run(&mut m, &ctx), Ok(Outcome::Keep));
            m
        })
    });
    let filter_reuse = runtime
        .load(&dir.join("test_filter.wasm"), reuse)
        .expect("test_filter loads");
    group.bench_function("floor-filter-reuse", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            assert_eq!(filter_reuse.run(&mut m, &ctx), Ok(Outcome::Keep));
            m
        })
    });
    group.finish();

    lab_codes(c, &runtime, &dir);

    let mut group = c.benchmark_group("twelve-ops");
    let bytes = runtime
        .load(&dir.join("bench_bytes_ops.wasm"), WasmLimits::default())
        .expect("bench_bytes_ops loads");
    group.bench_function("bytes", |b| {
        b.iter(|| {
            let mut m = msg.clone();
            assert_eq!(bytes.run(&mut m, &ctx), Ok(Outcome::Keep));
            m
        })
    });
    let resource = resource::Harness::new(&runtime, &dir.join("bench_resource_ops.wasm"));
    group.bench_function("resource", |b| b.iter(|| resource.run(msg.clone())));
    group.finish();
}

/// The example clinic's `[tables.loinc]` (local code = "LOINC" lines).
fn clinic_loinc() -> courier_plugin::Tables {
    let config = std::fs::read_to_string(repo().join("examples/clinic.toml")).expect("clinic");
    let loinc = config
        .lines()
        .skip_while(|l| l.trim() != "[tables.loinc]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            Some((
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect();
    courier_plugin::Tables::from([("loinc".to_owned(), loinc)])
}

fn lab_codes(c: &mut Criterion, runtime: &WasmRuntime, dir: &Path) {
    let plugin = runtime
        .load(&dir.join("lab_codes.wasm"), WasmLimits::default())
        .expect("lab_codes loads");
    let tables = clinic_loinc();
    assert!(tables["loinc"].len() > 10, "the clinic's LOINC table");
    let ctx = StepContext {
        route: "results-to-chart".into(),
        control_id: "LAB20261124143022".into(),
        settings: Arc::new(
            [("table", "loinc"), ("direction", "to_loinc")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
                .collect(),
        ),
        tables: Arc::new(tables),
    };
    let example = |name: &str| {
        let bytes = std::fs::read(repo().join("examples/messages").join(name)).expect("sample");
        Message::parse_with(bytes, &ParseOptions::lenient()).expect("parses")
    };
    let (orm, oru) = (example("orm_o01_labs.hl7"), example("oru_r01_results.hl7"));
    let mut group = c.benchmark_group("lab-codes");
    for (name, msg) in [("orm", &orm), ("oru", &oru)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut m = msg.clone();
                assert_eq!(plugin.run(&mut m, &ctx), Ok(Outcome::Keep));
                assert_ne!(m.encode(), msg.encode(), "codes mapped");
                m
            })
        });
    }
    // Only the call is timed; before it, 8 MiB are written (more than this machine's caches).
    let mut other = vec![0u8; 8 << 20];
    group.bench_function("oru-cold", |b| {
        b.iter_custom(|n| {
            let mut timed = Duration::ZERO;
            for i in 0..n {
                for byte in other.iter_mut().step_by(64) {
                    *byte = byte.wrapping_add(i as u8);
                }
                let mut m = oru.clone();
                let started = std::time::Instant::now();
                let outcome = plugin.run(&mut m, &ctx);
                timed += started.elapsed();
                assert_eq!(outcome, Ok(Outcome::Keep));
                std::hint::black_box(m);
            }
            timed
        })
    });
    group.finish();
}

/// A minimal host for `bench-resource-ops`: the message stays on the host as a resource and
/// every `get`/`set` is a host call. (Leaner than the real host: no log capture, no
/// redaction; WASI with nothing granted.)
mod resource {
    #![allow(unsafe_code, missing_docs)]

    use std::path::Path;

    use courier_hl7::Message as Hl7Message;
    use courier_plugin::wasm::WasmRuntime;
    use wasmtime::Store;
    use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({
        inline: "
            package courier:bench;

            interface hl7 {
                resource message {
                    get: func(path: string) -> option<string>;
                    set: func(path: string, value: string) -> result<_, string>;
                }
            }

            world resource-step {
                import hl7;
                use hl7.{message};
                export transform: func(message: borrow<message>) -> result<_, string>;
            }
        ",
        with: { "courier:bench/hl7.message": HostMessage },
    });

    /// The message as the host keeps it.
    pub struct HostMessage(Hl7Message);

    pub struct State {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl courier::bench::hl7::Host for State {}

    impl courier::bench::hl7::HostMessage for State {
        fn get(&mut self, m: Resource<HostMessage>, path: String) -> Option<String> {
            let msg = &self.table.get(&m).ok()?.0;
            msg.get_str(&path).ok().flatten()
        }

        fn set(
            &mut self,
            m: Resource<HostMessage>,
            path: String,
            value: String,
        ) -> Result<(), String> {
            let msg = &mut self.table.get_mut(&m).map_err(|e| e.to_string())?.0;
            let path = courier_hl7::Path::parse(&path).map_err(|e| e.to_string())?;
            msg.set(&path, &value).map_err(|e| e.to_string())
        }

        fn drop(&mut self, m: Resource<HostMessage>) -> wasmtime::Result<()> {
            self.table.delete(m)?;
            Ok(())
        }
    }

    pub struct Harness {
        engine: wasmtime::Engine,
        pre: ResourceStepPre<State>,
    }

    impl Harness {
        pub fn new(runtime: &WasmRuntime, path: &Path) -> Harness {
            let engine = runtime.engine().clone();
            let mut linker: Linker<State> = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
            courier::bench::hl7::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
                .expect("hl7");
            let component = Component::from_file(&engine, path).expect("compiles");
            let pre = ResourceStepPre::new(linker.instantiate_pre(&component).expect("links"))
                .expect("exports transform");
            Harness { engine, pre }
        }

        /// One message, fresh store and instance, as the real host does.
        pub fn run(&self, msg: Hl7Message) -> Hl7Message {
            let mut store = Store::new(
                &self.engine,
                State {
                    wasi: WasiCtx::builder().build(),
                    table: ResourceTable::new(),
                },
            );
            store.set_epoch_deadline(100);
            let handle = store
                .data_mut()
                .table
                .push(HostMessage(msg))
                .expect("table");
            let borrowed = Resource::new_borrow(handle.rep());
            let plugin = self.pre.instantiate(&mut store).expect("instantiates");
            plugin
                .call_transform(&mut store, borrowed)
                .expect("runs")
                .expect("maps");
            store.data_mut().table.delete(handle).expect("message").0
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
