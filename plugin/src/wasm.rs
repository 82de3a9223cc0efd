//! WASM component steps: the host side of `wit/plugin.wit`, on wasmtime 48.
//!
//! One [`WasmRuntime`] per engine holds the shared `wasmtime::Engine` (pooling allocator,
//! epoch interruption), the linker (WASI preview 2 plus Courier's `host` interface) and the
//! thread that ticks the epoch. [`WasmRuntime::load`] compiles a plugin once (or takes it from
//! the on-disk cache), checks that it is a Courier transform or filter, and pre-links it
//! (`InstancePre`). Each message then gets a fresh store and instance with a CPU deadline and
//! a memory cap ([`WasmLimits`]), and nothing of the store outlives the call.
//!
//! The message crosses as its ER7 bytes (see `docs/plugins.md` for why): copied in once and
//! parsed by the guest with the same `courier-hl7` code. Only a change comes back: a
//! `transform-pieces` answer names the runs of the input it kept and carries the bytes it
//! wrote; a `transform` built for 0.1.0 sends the whole changed message.
//!
//! Submodules: `bindings` (generated from the WIT), `sandbox` (store data, WASI context,
//! limiter, output capture), `cache` (compiled artefacts on disk).

mod bindings;
mod cache;
mod sandbox;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use courier_hl7::{Message, Span};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentType, Func, HasSelf, Linker, Lower};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
};

use crate::step::{Outcome, Step, StepContext, StepError, StepErrorKind, redact};
use bindings::{filter, host, pieces, transform};
pub use cache::{compile_child_main, compile_in_child};
use sandbox::HostState;
pub use sandbox::{LogLevel, LogLine, LogSource};

/// The versions of Courier's plugin interface (`package courier:plugin@X.Y.Z;` in
/// wit/plugin.wit) this host links. A component built for one of these, or for an earlier
/// version semver-compatible with one (the same major version; for 0.x, the same minor),
/// loads; any other is refused at load with [`LoadError::UnsupportedWit`].
pub const SUPPORTED_WIT: &[&str] = &["0.1.1"];

/// Whether this host can run a plugin built for `courier:plugin@wanted`; the error says
/// which versions it supports.
pub fn check_wit(wanted: &str) -> Result<(), String> {
    check_wit_against(wanted, SUPPORTED_WIT)
}

fn check_wit_against(wanted: &str, supported: &[&str]) -> Result<(), String> {
    let Ok(v) = semver::Version::parse(wanted) else {
        return Err(format!("`{wanted}` is not a WIT package version"));
    };
    let compatible = supported.iter().any(|s| {
        let s = semver::Version::parse(s).expect("SUPPORTED_WIT holds versions");
        v.major == s.major && (s.major > 0 || v.minor == s.minor) && v <= s
    });
    if compatible {
        return Ok(());
    }
    let supported: Vec<String> = supported
        .iter()
        .map(|v| format!("courier:plugin@{v}"))
        .collect();
    Err(format!(
        "built for courier:plugin@{wanted}, which this engine does not support: it supports {} and earlier compatible versions; rebuild the plugin with this Courier's SDK, or run a Courier that supports it",
        supported.join(", ")
    ))
}

/// How the shared runtime is set up; one per engine.
#[derive(Debug, Clone)]
pub struct WasmRuntimeConfig {
    /// Where compiled plugins are kept between runs (e.g. `<data dir>/plugin-cache`); `None`
    /// compiles every plugin at every load. The directory must be the engine's own: its files
    /// are loaded as machine code.
    pub cache_dir: Option<PathBuf>,
    /// How often the epoch ticks: the granularity of plugin deadlines. Default 5 ms.
    pub epoch_tick: Duration,
    /// How many plugin instances may exist at once, over all plugins: the size of the pooling
    /// allocator's pool (virtual address space is reserved for each). A call beyond it fails
    /// with an error naming this limit. Default 256.
    pub max_instances: u32,
    /// The largest memory cap a plugin may be given (each pool slot's size). Default 1 GiB.
    pub max_memory: u64,
    /// Bytes at the start of each plugin memory and table that a finished instance resets in
    /// place (on Linux 6.7+ only the pages it touched, found with the `PAGEMAP_SCAN` ioctl),
    /// so the next instance in that pool slot finds them resident; the rest is handed back to
    /// the kernel (`madvise`) and faulted in again on use. What an ordinary message touches
    /// fits in the default, 256 KiB: a call is as fast as with 1 MiB and a third faster than
    /// with `0`, which hands everything back. What a large message dirtied within it stays
    /// resident in its slot after the call, so the default is kept small (the measurements
    /// are in `docs/plugins.md`). Only on Linux; ignored elsewhere.
    pub keep_resident: usize,
}

impl Default for WasmRuntimeConfig {
    fn default() -> Self {
        WasmRuntimeConfig {
            cache_dir: None,
            epoch_tick: Duration::from_millis(5),
            max_instances: 256,
            max_memory: 1 << 30,
            keep_resident: 256 << 10,
        }
    }
}

/// What a plugin may do during one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmLimits {
    /// CPU deadline per call (checked at every loop and call in the guest). Default 100 ms.
    pub deadline: Duration,
    /// Linear memory cap per instance, in bytes. Default 64 MiB.
    pub memory: u64,
    /// Capabilities granted beyond the Courier interface; none by default.
    pub grants: Grants,
    /// Keep instances between messages instead of starting a fresh one for each (default
    /// `false`). Each thread running the step at the same time keeps one instance (and its
    /// pool slot, counted against `max_instances`) and calls it again for the next message,
    /// which saves the instantiation and the plugin's start-up on every call.
    ///
    /// The trade-off: the plugin's memory, statics and WASI state survive from one message
    /// to the next, so what one patient's message left behind is visible to the next. Only
    /// for trusted plugins. The deadline and memory cap still hold on every call (the memory
    /// cap counts what the instance has grown to in all), and a call that traps, times out
    /// or hits the memory cap discards its instance: the next message gets a fresh one.
    pub reuse_instance: bool,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            deadline: Duration::from_millis(100),
            memory: 64 << 20,
            grants: Grants::default(),
            reuse_instance: false,
        }
    }
}

/// WASI capabilities a route grants a plugin. The default grants nothing: no environment, no
/// directories, a clock frozen at the Unix epoch, a fixed "random" sequence, no network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the plugin sees (only these; the engine's own are never passed).
    pub env: Vec<(String, String)>,
    /// Host directories the plugin may open.
    pub dirs: Vec<DirGrant>,
    /// The real wall and monotonic clocks (and sleeping up to the deadline).
    pub clock: bool,
    /// Real randomness.
    pub random: bool,
    /// Sockets. Refused at load: the plugin host does no network I/O.
    pub network: bool,
}

/// A host directory made visible to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the plugin may only read.
    pub read_only: bool,
}

/// Why the runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("the WASM plugin runtime could not be set up: {message}")]
pub struct RuntimeError {
    /// What failed.
    pub message: String,
}

/// Why a plugin was refused at load; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {file}: cannot read it: {source}")]
    Read {
        /// The plugin file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all (or was half written).
    #[error("plugin {file}: not a WebAssembly file")]
    NotWasm {
        /// The plugin file.
        file: PathBuf,
    },
    /// A core WebAssembly module: plugins must be components (build with
    /// `--target wasm32-wasip2`).
    #[error(
        "plugin {file}: a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2` against courier-plugin-sdk"
    )]
    NotAComponent {
        /// The plugin file.
        file: PathBuf,
    },
    /// The component did not compile (invalid or unsupported WebAssembly).
    #[error("plugin {file}: does not compile: {message}")]
    Compile {
        /// The plugin file.
        file: PathBuf,
        /// The compiler's reason.
        message: String,
    },
    /// The component imports something Courier does not provide (another WIT, or a newer
    /// version of Courier's).
    #[error("plugin {file}: needs imports Courier does not provide: {message}")]
    Link {
        /// The plugin file.
        file: PathBuf,
        /// What is missing.
        message: String,
    },
    /// The component exports none of Courier's `transform`, `transform-pieces` or `filter`.
    #[error(
        "plugin {file}: does not implement courier:plugin (expected an export `transform-pieces`, `transform` or `filter`; it exports {exports})"
    )]
    WrongInterface {
        /// The plugin file.
        file: PathBuf,
        /// What it exports instead, comma-separated.
        exports: String,
    },
    /// The component was built for a version of Courier's interface this host does not link.
    #[error("plugin {file}: {message}")]
    UnsupportedWit {
        /// The plugin file.
        file: PathBuf,
        /// Which version it wants and which ones are supported.
        message: String,
    },
    /// The component failed to instantiate (e.g. it traps in its start function).
    #[error("plugin {file}: fails to start: {message}")]
    Instantiate {
        /// The plugin file.
        file: PathBuf,
        /// Why.
        message: String,
    },
    /// The limits or grants asked for cannot be given.
    #[error("plugin {file}: {message}")]
    Limits {
        /// The plugin file.
        file: PathBuf,
        /// Which limit or grant, and why.
        message: String,
    },
}

/// The shared WASM runtime: one engine, one linker and one epoch ticker for all plugins.
/// Cheap to clone; the ticker stops when the runtime and every plugin loaded from it are gone.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    compat: u64,
    tick: Duration,
    /// What the engine was made from (`new_engine`), for the engines plugins are
    /// compiled in, in the compiler child or a throwaway one (`cache::load_or_compile`).
    settings: cache::Settings,
    ticker: Option<Ticker>,
}

struct Ticker {
    /// Dropping the sender wakes the thread and ends it.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        if let Some(t) = &mut self.ticker {
            t.stop.take();
            if let Some(thread) = t.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("cache_dir", &self.inner.cache_dir)
            .field("epoch_tick", &self.inner.tick)
            .field("max_instances", &self.inner.settings.max_instances)
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// Sets up the engine, the linker and the epoch ticker.
    pub fn new(config: WasmRuntimeConfig) -> Result<WasmRuntime, RuntimeError> {
        let err = |message: String| RuntimeError { message };
        if config.epoch_tick.is_zero() {
            return Err(err("epoch_tick must be more than zero".into()));
        }
        let settings = cache::Settings {
            max_instances: config.max_instances.max(1),
            max_memory: config.max_memory,
            keep_resident: config.keep_resident,
        };
        let engine = new_engine(settings).map_err(err)?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| err(format!("{e:#}")))?;
        sandbox::cap_sleeps(&mut linker).map_err(|e| err(format!("{e:#}")))?;
        host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| err(format!("{e:#}")))?;

        let ticker = start_ticker(&engine, config.epoch_tick).map_err(err)?;
        Ok(WasmRuntime {
            inner: Arc::new(RuntimeInner {
                compat: cache::compatibility_hash(&engine),
                engine,
                linker,
                cache_dir: config.cache_dir,
                tick: config.epoch_tick,
                settings,
                ticker: Some(ticker),
            }),
        })
    }

    /// Loads a plugin: see [`WasmPlugin::load`].
    pub fn load(&self, path: &Path, limits: WasmLimits) -> Result<WasmPlugin, LoadError> {
        WasmPlugin::load(self, path, limits)
    }

    /// The shared wasmtime engine (pooling allocator, epoch interruption), e.g. for metrics or
    /// for benchmarks that link components of their own.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Where `bytes` would be cached, if there is a cache directory (for tests and tooling).
    pub fn cache_path_for(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.inner.cache_dir.as_deref()?;
        Some(cache::artefact_path(
            dir,
            &hex(&sha256(bytes)),
            self.inner.compat,
        ))
    }
}

/// An engine with a runtime's settings: `WasmRuntime::new`, the throwaway compile engine and
/// the plugin compiler child (`compile_child_main`) all make theirs here, so that what one
/// compiles loads in the runtime (wasmtime refuses code compiled under other settings).
fn new_engine(settings: cache::Settings) -> Result<Engine, String> {
    let cache::Settings {
        max_instances: n,
        max_memory,
        keep_resident,
    } = settings;
    let max_memory_bytes =
        usize::try_from(max_memory).map_err(|_| format!("max_memory {max_memory} is too large"))?;
    let mut pool = PoolingAllocationConfig::new();
    // A Rust component is a handful of core instances (the program, the canonical-ABI
    // shims) with one memory and a few tables.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_memory_size(max_memory_bytes)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(keep_resident)
        // Where the kernel offers it (Linux 6.7+), reset only the pages the instance
        // dirtied within `keep_resident`, not all of it.
        .pagemap_scan(Enabled::Auto);
    let mut cfg = Config::new();
    cfg.epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .wasm_component_model(true);
    Engine::new(&cfg).map_err(|e| format!("{e:#}"))
}

fn start_ticker(engine: &Engine, tick: Duration) -> Result<Ticker, String> {
    let (stop, stopped) = mpsc::channel::<()>();
    // A weak handle, so the ticker never keeps the engine alive on its own.
    let weak = engine.weak();
    let thread = std::thread::Builder::new()
        .name("courier-wasm-epoch".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
    Ok(Ticker {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Whether a plugin is a transform or a filter (which world it implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Exports `transform-pieces` or `transform`: may change or drop the message.
    Transform,
    /// Exports `filter`: keeps or drops the message, never changes it.
    Filter,
}

enum Pre {
    /// `transform-step`: answers with the whole changed message.
    Transform(transform::TransformStepPre<HostState>),
    /// `transform-pieces-step`: answers with what it kept and what it wrote.
    Pieces(pieces::TransformPiecesStepPre<HostState>),
    Filter(filter::FilterStepPre<HostState>),
}

/// A live instance of the plugin, in the store it was instantiated in: its one export.
enum Instance {
    Transform(Func),
    Pieces(Func),
    Filter(Func),
}

/// The message as it goes into a plugin: `hl7-message` of wit/plugin.wit, borrowed. The
/// generated `Hl7Message` owns its bytes, so calling through it copied the whole message once
/// more on the host before lowering it into the guest (1 MiB more at the peak for a 1 MiB
/// report, at every step); this record is lowered straight from the message's own bytes.
#[derive(ComponentType, Lower)]
#[component(record)]
struct MessageIn<'a> {
    bytes: &'a [u8],
    #[component(name = "default-charset")]
    default_charset: &'a str,
}

/// What a call answered, before a changed message is read from it.
enum Answer {
    Keep,
    Drop(String),
    /// The changed message, whole (`transform-step`).
    Whole(Vec<u8>),
    /// The changed message as runs of the input and new bytes (`transform-pieces-step`).
    Pieces(Vec<pieces::courier::plugin::types::Piece>),
}

/// An instance kept between messages ([`WasmLimits::reuse_instance`]) with its store.
struct Warm {
    store: Store<HostState>,
    instance: Instance,
}

/// A compiled, pre-linked plugin, ready to run once per message on a fresh instance.
pub struct WasmPlugin {
    name: String,
    hash: [u8; 32],
    hash_hex: String,
    pre: Pre,
    limits: WasmLimits,
    /// The component's import names, e.g. `courier:plugin/host@0.1.0`.
    imports: Vec<String>,
    deadline_ticks: u64,
    from_cache: bool,
    /// Idle instances kept for the next message when `limits.reuse_instance` is set: as many
    /// as threads have run the step at once. Always empty otherwise.
    warm: Mutex<Vec<Warm>>,
    runtime: Arc<RuntimeInner>,
}

impl fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.name)
            .field("content_hash", &self.hash_hex)
            .field("kind", &self.kind())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What one call did: the step's result and the lines it logged (already redacted).
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The step's result, as [`Step::run`] returns it.
    pub result: Result<Outcome, StepError>,
    /// Log lines from the host log, stdout and stderr, redacted and bounded.
    pub logs: Vec<LogLine>,
}

impl WasmPlugin {
    /// Reads, checks, compiles (or takes from the runtime's cache) and pre-links the plugin at
    /// `path`, and instantiates it once to prove it starts.
    ///
    /// Refused, with the file named: an unreadable file, anything but a WebAssembly component,
    /// a component that imports what Courier does not provide or exports neither `transform`
    /// nor `filter`, one that traps while starting, limits above the runtime's maximum, and a
    /// network grant.
    pub fn load(
        runtime: &WasmRuntime,
        path: &Path,
        limits: WasmLimits,
    ) -> Result<WasmPlugin, LoadError> {
        let rt = &runtime.inner;
        let file = path.to_path_buf();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            file: file.clone(),
            source,
        })?;
        check_header(&bytes, &file)?;
        let limit_err = |message: String| LoadError::Limits {
            file: file.clone(),
            message,
        };
        if limits.grants.network {
            return Err(limit_err(
                "network access cannot be granted: the plugin host does no network I/O".into(),
            ));
        }
        if limits.memory > rt.settings.max_memory {
            return Err(limit_err(format!(
                "memory limit {} bytes is above the runtime's max_memory = {}",
                limits.memory, rt.settings.max_memory
            )));
        }
        if limits.deadline.is_zero() {
            return Err(limit_err("the deadline must be more than zero".into()));
        }

        let hash = sha256(&bytes);
        let hash_hex = hex(&hash);
        let (component, from_cache) = cache::load_or_compile(
            &rt.engine,
            rt.settings,
            &bytes,
            &hash_hex,
            rt.cache_dir.as_deref(),
            rt.compat,
        )
        .map_err(|e| LoadError::Compile {
            file: file.clone(),
            message: format!("{e:#}"),
        })?;

        // Name the interface version before linking: "needs imports Courier does not
        // provide" would be true but less helpful.
        for import in component.component_type().imports(&rt.engine) {
            if let Some((_, version)) = import
                .0
                .strip_prefix("courier:plugin/")
                .and_then(|i| i.split_once('@'))
                && let Err(message) = check_wit(version)
            {
                return Err(LoadError::UnsupportedWit { file, message });
            }
        }
        let instance_pre = rt
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                file: file.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = if let Ok(p) = pieces::TransformPiecesStepPre::new(instance_pre.clone()) {
            Pre::Pieces(p)
        } else if let Ok(p) = transform::TransformStepPre::new(instance_pre.clone()) {
            Pre::Transform(p)
        } else if let Ok(p) = filter::FilterStepPre::new(instance_pre) {
            Pre::Filter(p)
        } else {
            return Err(LoadError::WrongInterface {
                file,
                exports: export_names(&rt.engine, &component),
            });
        };

        // Ticks until the deadline: rounded up, plus one because the current tick may be about
        // to end. A call is stopped between `deadline` and `deadline + tick`.
        let tick = rt.tick.as_nanos().max(1);
        let deadline_ticks =
            u64::try_from(limits.deadline.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2) + 1;
        let imports = component
            .component_type()
            .imports(&rt.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let plugin = WasmPlugin {
            imports,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            hash,
            hash_hex,
            pre,
            limits,
            deadline_ticks,
            from_cache,
            warm: Mutex::new(Vec::new()),
            runtime: Arc::clone(rt),
        };
        let started = plugin
            .smoke_instantiate()
            .map_err(|message| LoadError::Instantiate {
                file: file.clone(),
                message,
            })?;
        if plugin.limits.reuse_instance {
            // The instance that proved the plugin starts serves the first message.
            plugin.keep_warm(started);
        }
        Ok(plugin)
    }

    /// The plugin's file name, for logs and the store.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the plugin's bytes (the hex form is [`Step::content_hash`]).
    pub fn bytes_hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// What the component imports, by name (e.g. `courier:plugin/host@0.1.0`,
    /// `wasi:clocks/wall-clock@0.2.6`).
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// The version of Courier's interface the component was built for, read from its
    /// `courier:plugin/...@VERSION` imports; `None` when it imports none of them.
    pub fn courier_wit_version(&self) -> Option<&str> {
        self.imports
            .iter()
            .find_map(|i| i.strip_prefix("courier:plugin/")?.split_once('@'))
            .map(|(_, v)| v)
    }

    /// Transform or filter.
    pub fn kind(&self) -> PluginKind {
        match self.pre {
            Pre::Transform(_) | Pre::Pieces(_) => PluginKind::Transform,
            Pre::Filter(_) => PluginKind::Filter,
        }
    }

    /// Whether the compiled code came from the cache (no compilation at this load).
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The limits and grants every call runs under.
    pub fn limits(&self) -> &WasmLimits {
        &self.limits
    }

    /// Runs the plugin on one message, like [`Step::run`], and also returns what it logged
    /// (redacted) instead of sending it to `tracing`.
    pub fn run_with_logs(&self, msg: &mut Message, ctx: &StepContext) -> CallReport {
        let (mut store, instance) = match self.take_warm(ctx) {
            Some(warm) => (warm.store, Some(warm.instance)),
            None => match self.new_store(ctx) {
                Ok(s) => (s, None),
                Err(message) => {
                    return CallReport {
                        result: Err(self.error(StepErrorKind::Failed, message)),
                        logs: Vec::new(),
                    };
                }
            },
        };
        let input = msg.encode();
        let (answer, instance) = self.call(&mut store, instance, msg, &input);
        let mut logs = collect_logs(store.data_mut());
        // The plugin's memory goes back before a changed message is read from its answer:
        // for a large message, the two would otherwise be held at once.
        match instance {
            Some(instance) if self.limits.reuse_instance => {
                self.keep_warm(Warm { store, instance });
            }
            _ => drop(store),
        }
        let (result, output) = match answer {
            Ok(answer) => self.read_answer(answer, msg, input),
            Err(e) => (Err(e), None),
        };
        // Redact against the message as it came in and, if the plugin changed it, as it goes
        // out (a plugin that upper-cases a name may log the upper-cased form).
        let redact_all = |text: &str| {
            let once = redact(text, msg);
            match &output {
                Some(out) => redact(&once, out),
                None => once,
            }
        };
        let result = result.map_err(|mut e| {
            e.message = redact_all(&e.message);
            e
        });
        let result = match result {
            Ok(Outcome::Drop { reason }) => Ok(Outcome::Drop {
                reason: redact_all(&reason),
            }),
            other => other,
        };
        for line in &mut logs {
            line.text = redact_all(&line.text);
        }
        if let (Ok(_), Some(out)) = (&result, output) {
            *msg = out;
        }
        CallReport { result, logs }
    }

    fn new_store(&self, ctx: &StepContext) -> Result<Store<HostState>, String> {
        let data = HostState::new(
            &self.limits,
            self.runtime.tick,
            Arc::clone(&ctx.settings),
            Arc::clone(&ctx.tables),
        )?;
        let mut store = Store::new(&self.runtime.engine, data);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// An idle kept instance, made ready for this call: the call's context, fresh log
    /// buffers, the deadline counted from now.
    fn take_warm(&self, ctx: &StepContext) -> Option<Warm> {
        if !self.limits.reuse_instance {
            return None;
        }
        let mut warm = self
            .warm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()?;
        warm.store
            .data_mut()
            .begin_call(Arc::clone(&ctx.settings), Arc::clone(&ctx.tables));
        warm.store.set_epoch_deadline(self.deadline_ticks);
        Some(warm)
    }

    fn keep_warm(&self, warm: Warm) {
        self.warm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(warm);
    }

    /// One instantiation without a call, at load: proves the component links and starts.
    fn smoke_instantiate(&self) -> Result<Warm, String> {
        let mut store = self.new_store(&StepContext::default())?;
        match self.instantiate(&mut store) {
            Ok(instance) => Ok(Warm { store, instance }),
            Err(e) => Err(self.classify(&e, &store).1),
        }
    }

    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match &self.pre {
            Pre::Transform(pre) => {
                let instance = pre.instance_pre().instantiate(&mut *store)?;
                Instance::Transform(export(store, &instance, "transform")?)
            }
            Pre::Pieces(pre) => {
                let instance = pre.instance_pre().instantiate(&mut *store)?;
                Instance::Pieces(export(store, &instance, "transform-pieces")?)
            }
            Pre::Filter(pre) => {
                let instance = pre.instance_pre().instantiate(&mut *store)?;
                Instance::Filter(export(store, &instance, "filter")?)
            }
        })
    }

    /// Calls the plugin on `msg`, whose bytes are `input` (instantiating it first unless
    /// `instance` is a kept one): what it answered, and the instance if it may serve again
    /// (not after a trap, a timeout or the memory cap).
    fn call(
        &self,
        store: &mut Store<HostState>,
        instance: Option<Instance>,
        msg: &Message,
        input: &[u8],
    ) -> (Result<Answer, StepError>, Option<Instance>) {
        let instance = match instance {
            Some(i) => i,
            None => match self.instantiate(store) {
                Ok(i) => i,
                Err(e) => return (Err(self.trapped(&e, store)), None),
            },
        };
        let input = (MessageIn {
            bytes: input,
            default_charset: msg.charset().hl7_name(),
        },);
        let answer = match &instance {
            Instance::Transform(func) => {
                use transform::courier::plugin::types::Outcome as Wit;
                self.call_export(store, func, input, |outcome| match outcome {
                    Wit::Drop(reason) => Answer::Drop(reason),
                    Wit::Keep(None) => Answer::Keep,
                    Wit::Keep(Some(bytes)) => Answer::Whole(bytes),
                })
            }
            Instance::Pieces(func) => {
                use pieces::courier::plugin::types::PiecesOutcome as Wit;
                self.call_export(store, func, input, |outcome| match outcome {
                    Wit::Drop(reason) => Answer::Drop(reason),
                    Wit::Keep(None) => Answer::Keep,
                    Wit::Keep(Some(pieces)) => Answer::Pieces(pieces),
                })
            }
            Instance::Filter(func) => {
                use filter::courier::plugin::types::Verdict;
                self.call_export(store, func, input, |verdict| match verdict {
                    Verdict::Keep => Answer::Keep,
                    Verdict::Drop(reason) => Answer::Drop(reason),
                })
            }
        };
        match answer {
            // A trap, a timeout or the memory cap: the instance does not serve again.
            Err(trapped) => (Err(trapped), None),
            Ok(answer) => (answer, Some(instance)),
        }
    }

    /// Calls one of the worlds' exports, `func(message) -> result<T, string>`, and reads `T`
    /// with `read`. The outer error is a trap (the instance is done); the inner one is the
    /// plugin's own `error` result.
    fn call_export<T>(
        &self,
        store: &mut Store<HostState>,
        func: &Func,
        input: (MessageIn<'_>,),
        read: impl FnOnce(T) -> Answer,
    ) -> Result<Result<Answer, StepError>, StepError>
    where
        (Result<T, String>,): wasmtime::component::ComponentNamedList + wasmtime::component::Lift,
    {
        let called = func
            .typed::<(MessageIn<'_>,), (Result<T, String>,)>(&*store)
            .and_then(|f| f.call(&mut *store, input));
        match called {
            Err(e) => Err(self.trapped(&e, store)),
            Ok((Err(reason),)) => Ok(Err(self.error(StepErrorKind::Failed, reason))),
            Ok((Ok(value),)) => Ok(Ok(read(value))),
        }
    }

    /// The step's result from the plugin's answer, and the changed message if it changed
    /// `msg` (whose bytes, as the plugin was given them, are `input`).
    fn read_answer(
        &self,
        answer: Answer,
        msg: &Message,
        input: bytes::Bytes,
    ) -> (Result<Outcome, StepError>, Option<Message>) {
        let bytes = match answer {
            Answer::Keep => return (Ok(Outcome::Keep), None),
            Answer::Drop(reason) => return (Ok(Outcome::Drop { reason }), None),
            Answer::Whole(bytes) => bytes,
            Answer::Pieces(pieces) => {
                let (spans, len) = match spans_of(pieces, input.len(), self.limits.memory) {
                    Ok(spans) => spans,
                    Err(message) => {
                        return (Err(self.error(StepErrorKind::BadOutput, message)), None);
                    }
                };
                // A large answer is built over the input's buffer, never joined: the message
                // costs the segments the plugin wrote. Shapes `splice` does not build are
                // joined and parsed below, which gives the same message or names the error.
                if len >= courier_hl7::LARGE_MESSAGE {
                    let out = if msg.is_modified() {
                        Message::parse_with(input.clone(), msg.options())
                            .ok()
                            .and_then(|base| base.splice(&spans))
                    } else {
                        msg.splice(&spans)
                    };
                    if let Some(out) = out {
                        return (Ok(Outcome::Keep), Some(out));
                    }
                }
                // In range: `spans_of` checked every kept span against the input.
                Span::join(&spans, &input)
            }
        };
        drop(input);
        match Message::parse_with(bytes, msg.options()) {
            // A large message comes back whole even when the plugin changed a few fields:
            // what it did not change is taken from the input's buffer, and the bytes read
            // back are freed here.
            Ok(out) if out.encoded_len() >= courier_hl7::LARGE_MESSAGE => {
                (Ok(Outcome::Keep), Some(out.share_unchanged(msg)))
            }
            Ok(out) => (Ok(Outcome::Keep), Some(out)),
            Err(e) => (
                Err(self.error(
                    StepErrorKind::BadOutput,
                    format!("the plugin returned bytes that are not an HL7 message: {e}"),
                )),
                None,
            ),
        }
    }

    fn trapped(&self, e: &wasmtime::Error, store: &Store<HostState>) -> StepError {
        let (kind, message) = self.classify(e, store);
        self.error(kind, message)
    }

    /// Names what stopped a call: the limiter's and the trap's own state first, text last.
    fn classify(&self, e: &wasmtime::Error, store: &Store<HostState>) -> (StepErrorKind, String) {
        let trap = e.downcast_ref::<Trap>().copied();
        if trap == Some(Trap::Interrupt) {
            return (
                StepErrorKind::Timeout {
                    limit: self.limits.deadline,
                },
                format!(
                    "the plugin ran past its deadline of {} ms",
                    self.limits.deadline.as_millis()
                ),
            );
        }
        if let Some(asked) = store.data().limiter.refused {
            return (
                StepErrorKind::MemoryLimit {
                    limit: self.limits.memory,
                },
                format!(
                    "the plugin needed more memory than its limit of {} bytes (it asked for {asked} in all)",
                    self.limits.memory
                ),
            );
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return (
                StepErrorKind::Trap,
                format!("the plugin exited with status {}", exit.0),
            );
        }
        if e.is::<wasmtime::PoolConcurrencyLimitError>() {
            return (
                StepErrorKind::Failed,
                format!(
                    "too many plugin instances at once (max_instances = {})",
                    self.runtime.settings.max_instances
                ),
            );
        }
        match trap {
            Some(Trap::StackOverflow) => (
                StepErrorKind::Trap,
                "the plugin overflowed its stack (wasm trap: call stack exhausted)".into(),
            ),
            Some(trap) => {
                let panic = store
                    .data()
                    .stderr_peek_panic()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default();
                (StepErrorKind::Trap, format!("{trap}{panic}"))
            }
            None => (StepErrorKind::Trap, format!("{e}")),
        }
    }

    fn error(&self, kind: StepErrorKind, message: String) -> StepError {
        StepError {
            step: self.name.clone(),
            kind,
            message,
        }
    }
}

impl Step for WasmPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn content_hash(&self) -> &str {
        &self.hash_hex
    }

    /// Without the clock and random grants, its clock is frozen and its random numbers fixed
    /// (see `sandbox`); without directories or a kept instance, nothing of a call outlives it.
    fn deterministic(&self) -> bool {
        let Grants {
            env: _,
            dirs,
            clock,
            random,
            network,
        } = &self.limits.grants;
        !(*clock || *random || *network || !dirs.is_empty() || self.limits.reuse_instance)
    }

    fn run(&self, msg: &mut Message, ctx: &StepContext) -> Result<Outcome, StepError> {
        let started = Instant::now();
        let report = self.run_with_logs(msg, ctx);
        for line in &report.logs {
            emit(self, ctx, line);
        }
        tracing::debug!(
            route = %ctx.route,
            control_id = %ctx.control_id,
            plugin = %self.name,
            elapsed_us = started.elapsed().as_micros() as u64,
            ok = report.result.is_ok(),
            "wasm step"
        );
        report.result
    }
}

fn emit(plugin: &WasmPlugin, ctx: &StepContext, line: &LogLine) {
    let source = match line.source {
        LogSource::Host => "log",
        LogSource::Stdout => "stdout",
        LogSource::Stderr => "stderr",
        LogSource::Engine => "engine",
    };
    macro_rules! at {
        ($level:ident) => {
            tracing::$level!(
                route = %ctx.route,
                control_id = %ctx.control_id,
                plugin = %plugin.name,
                source,
                "{}",
                line.text
            )
        };
    }
    match line.level {
        LogLevel::Debug => at!(debug),
        LogLevel::Info => at!(info),
        LogLevel::Warn => at!(warn),
        LogLevel::Error => at!(error),
    }
}

/// A `transform-pieces` answer as spans of the input (`input_len` bytes) and written bytes,
/// and the length of the message they make. Refused when a span reaches past the end of the
/// input, or when they add up to more than `limit` (the plugin's memory cap: a plugin could
/// not have returned more as whole bytes).
fn spans_of(
    pieces: Vec<pieces::courier::plugin::types::Piece>,
    input_len: usize,
    limit: u64,
) -> Result<(Vec<Span>, usize), String> {
    use pieces::courier::plugin::types::Piece;
    let mut total: u64 = 0;
    let mut spans = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let span = match piece {
            Piece::Kept(kept) => {
                let end = u64::from(kept.start) + u64::from(kept.len);
                if end > input_len as u64 {
                    return Err(format!(
                        "the plugin kept bytes {}..{end} of a message of {input_len} bytes",
                        kept.start
                    ));
                }
                Span::Kept(kept.start as usize..end as usize)
            }
            Piece::Written(bytes) => Span::Written(bytes),
        };
        total += span.len() as u64;
        if total > limit {
            return Err(format!(
                "the plugin's pieces make a message of more than its memory limit of {limit} bytes"
            ));
        }
        spans.push(span);
    }
    Ok((spans, total as usize))
}

/// The call's log lines, stdout and stderr as [`LogLine`]s (not yet redacted: the caller
/// redacts them against the message in and out), with a note of what the bounds dropped.
fn collect_logs(data: &mut HostState) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = std::mem::take(&mut data.logs)
        .into_iter()
        .map(|(level, text)| LogLine {
            level,
            source: LogSource::Host,
            text,
        })
        .collect();
    if data.logs_dropped > 0 {
        out.push(LogLine {
            level: LogLevel::Warn,
            source: LogSource::Engine,
            text: format!(
                "{} more log lines dropped (at most {} per call)",
                data.logs_dropped,
                sandbox::MAX_LOG_LINES
            ),
        });
    }
    for (capture, source, level) in [
        (&data.stdout, LogSource::Stdout, LogLevel::Info),
        (&data.stderr, LogSource::Stderr, LogLevel::Warn),
    ] {
        let (bytes, dropped) = capture.take();
        let text = String::from_utf8_lossy(&bytes);
        for l in text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(sandbox::MAX_LOG_LINES)
        {
            out.push(LogLine {
                level,
                source,
                text: sandbox::cut(l.to_owned(), sandbox::MAX_LOG_LINE),
            });
        }
        if dropped > 0 {
            out.push(LogLine {
                level: LogLevel::Warn,
                source: LogSource::Engine,
                text: format!(
                    "{dropped} more bytes of {} dropped (at most {} per call)",
                    if source == LogSource::Stdout {
                        "stdout"
                    } else {
                        "stderr"
                    },
                    sandbox::MAX_OUTPUT
                ),
            });
        }
    }
    out
}

fn check_header(bytes: &[u8], file: &Path) -> Result<(), LoadError> {
    // `\0asm`, then a version word: 1 for core modules, 0x0001000d for components.
    let Some(version) = bytes.strip_prefix(b"\0asm").and_then(|r| r.get(..4)) else {
        return Err(LoadError::NotWasm {
            file: file.to_path_buf(),
        });
    };
    if version == [1, 0, 0, 0] {
        return Err(LoadError::NotAComponent {
            file: file.to_path_buf(),
        });
    }
    Ok(())
}

/// The function a fresh instance exports as `name` (checked by the bindings at load).
fn export(
    store: &mut Store<HostState>,
    instance: &wasmtime::component::Instance,
    name: &str,
) -> wasmtime::Result<Func> {
    instance
        .get_func(&mut *store, name)
        .ok_or_else(|| wasmtime::Error::msg(format!("the plugin has no `{name}` export")))
}

fn export_names(engine: &Engine, component: &Component) -> String {
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn compatible_wit_versions_load_and_others_are_named() {
        super::check_wit("0.1.0").unwrap();
        super::check_wit("0.1.1").unwrap();
        let e = super::check_wit("0.1.2").unwrap_err();
        assert!(
            e.contains("courier:plugin@0.1.2") && e.contains("supports courier:plugin@0.1.1"),
            "{e}"
        );
        let e = super::check_wit("0.2.0").unwrap_err();
        assert!(
            e.contains("courier:plugin@0.2.0") && e.contains("supports courier:plugin@0.1.1"),
            "{e}"
        );
        super::check_wit("0.0.9").unwrap_err();
        super::check_wit("1.0.0").unwrap_err();
        // Once the engine moves on, plugins built for an earlier compatible version keep
        // loading; a newer or an incompatible one does not.
        let later = ["0.1.3", "1.4.0"];
        for ok in ["0.1.0", "0.1.3", "1.0.0", "1.4.0"] {
            super::check_wit_against(ok, &later).unwrap();
        }
        for bad in ["0.1.4", "0.2.0", "1.5.0", "2.0.0", "0.0.1"] {
            let e = super::check_wit_against(bad, &later).unwrap_err();
            assert!(e.contains(&format!("courier:plugin@{bad}")), "{e}");
        }
    }
}
