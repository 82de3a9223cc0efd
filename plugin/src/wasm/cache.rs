//! The on-disk cache of compiled plugins: compiling a component with Cranelift takes tens or
//! hundreds of milliseconds, loading the compiled artefact takes about one, which matters at
//! start-up and on every hot reload.
//!
//! An artefact is named `<sha256 of the .wasm>-<engine compatibility hash>.cwasm`, so a changed
//! plugin or a changed engine (wasmtime version, compiler settings, CPU features) simply misses
//! and compiles afresh. Artefacts are written to a temporary file and renamed into place, so a
//! reader never sees a partly written one, and a file once in place is never modified.

use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A stable-per-build digest of everything that makes compiled code compatible with `engine`.
pub(crate) fn compatibility_hash(engine: &Engine) -> u64 {
    // DefaultHasher is deterministic within one build of the standard library; a different
    // toolchain may hash differently, which only costs a recompilation.
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Where the artefact for these source bytes lives.
pub(crate) fn artefact_path(dir: &Path, content_hash: &str, compat: u64) -> PathBuf {
    dir.join(format!("{content_hash}-{compat:016x}.cwasm"))
}

/// The component from the cache when there is a usable artefact (`true`), otherwise compiled
/// from `bytes` and, when there is a cache directory, stored for next time (`false`).
/// Cache trouble (unreadable directory, stale or corrupt artefact, full disk) never fails a
/// load: it is logged and the component is compiled instead.
pub(crate) fn load_or_compile(
    engine: &Engine,
    settings: Settings,
    bytes: &[u8],
    content_hash: &str,
    cache_dir: Option<&Path>,
    compat: u64,
) -> wasmtime::Result<(Component, bool)> {
    let Some(dir) = cache_dir else {
        return Ok((compile(engine, settings, bytes)?.0, false));
    };
    let path = artefact_path(dir, content_hash, compat);
    if let Ok(artefact) = std::fs::read(&path) {
        // SAFETY: `deserialize` runs the artefact's machine code, so it must hold what
        // `Component::serialize` wrote for a compatible engine, untampered. It does: the only
        // writer of this directory is `store` below (through an atomic rename, so no file is
        // ever seen half written), the directory is the engine's own data directory (whoever
        // can write there can as well replace the engine's binary or config), the name carries
        // the SHA-256 of the source and the engine's compatibility hash, and wasmtime itself
        // checks the artefact's header (version and engine settings) and refuses a mismatch
        // with an error, handled below by recompiling.
        //
        // The file is read into memory rather than mapped (`deserialize_file`): a mapped
        // artefact truncated or rewritten later by someone else would fault (SIGBUS) in the
        // middle of a call; a copy cannot change under the engine.
        #[allow(unsafe_code)]
        let cached = unsafe { Component::deserialize(engine, &artefact) };
        match cached {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(artefact = %path.display(), error = %e, "compiled plugin in the cache is unusable; recompiling");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let (component, artefact) = compile(engine, settings, bytes)?;
    if let Err(e) = store(dir, &path, &artefact) {
        tracing::warn!(cache_dir = %dir.display(), error = %e, "could not store the compiled plugin in the cache");
    }
    Ok((component, false))
}

/// Compiles a component and loads the code into `engine`; returns the component and its
/// artefact (for the cache).
///
/// Where the process has set up a compiler child ([`compile_in_child`]), the compile runs
/// there; otherwise in an engine of its own in this process, made from the same settings and
/// dropped as soon as it has serialized the code.
///
/// Both keep the compiler's memory out of the engine: an engine keeps Cranelift's compile
/// contexts (buffers sized for the largest function it compiled) as long as it lives, and
/// glibc keeps what the compiler freed. Compiling the example clinic's plugins in the engine
/// itself left it at 44 MiB resident for good, in a throwaway engine at 35 MiB (9 MiB of it
/// the compiler's own code, paged in from the binary), in the child at 26 MiB: the same as
/// when the plugins come from this cache.
fn compile(
    engine: &Engine,
    settings: Settings,
    bytes: &[u8],
) -> wasmtime::Result<(Component, Vec<u8>)> {
    if let Some(child) = CHILD.get() {
        match child.compile(settings, bytes) {
            Ok(artefact) => {
                // SAFETY: `deserialize` runs the artefact's machine code, so it must be what
                // `precompile_component` wrote for a compatible engine, untampered. It is:
                // the child is this program (the executable the process was started from,
                // which whoever could replace could as well replace the engine), it made
                // its engine with the same `new_engine` from the same settings, and the
                // bytes came straight from its stdout. wasmtime checks the header (version
                // and settings) all the same; a mismatch falls through to compiling here.
                #[allow(unsafe_code)]
                let loaded = unsafe { Component::deserialize(engine, &artefact) };
                match loaded {
                    Ok(component) => return Ok((component, artefact)),
                    Err(e) => {
                        tracing::warn!(error = %e, "a plugin compiled by the compiler child does not load; compiling it in this process")
                    }
                }
            }
            Err(ChildError::Refused(message)) => return Err(wasmtime::Error::msg(message)),
            Err(ChildError::Unavailable(why)) => {
                tracing::warn!(error = %why, "the plugin compiler child did not run; compiling the plugin in this process");
            }
        }
    }
    let in_place = || -> wasmtime::Result<(Component, Vec<u8>)> {
        let component = Component::from_binary(engine, bytes)?;
        let artefact = component.serialize()?;
        Ok((component, artefact))
    };
    let apart = match super::new_engine(settings) {
        Ok(apart) => apart,
        Err(e) => {
            // A second engine reserves its own instance pool (address space only); where that
            // is refused, compiling in place costs memory, not the plugin.
            tracing::warn!(error = %e, "cannot make an engine to compile the plugin apart; compiling it in the engine");
            return in_place();
        }
    };
    let artefact = apart.precompile_component(bytes);
    drop(apart);
    crate::memory::release_freed();
    let artefact = artefact?;
    // SAFETY: `deserialize` runs the artefact's machine code, so it must be what
    // `precompile_component` wrote for a compatible engine, untampered. It is: the bytes were
    // made just above, in this process, by an engine built by `new_engine` from the same
    // settings as `engine`, and never left memory. wasmtime checks the header (version and
    // settings) all the same; a mismatch is handled below by compiling in `engine` itself.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize(engine, &artefact) };
    match loaded {
        Ok(component) => Ok((component, artefact)),
        Err(e) => {
            tracing::warn!(error = %e, "a plugin compiled apart does not load; compiling it in the engine");
            in_place()
        }
    }
}

fn store(dir: &Path, path: &Path, serialized: &[u8]) -> Result<(), String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artefact"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, serialized).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// What makes a runtime's engine, for the compiler child to make the same one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) max_instances: u32,
    pub(crate) max_memory: u64,
    pub(crate) keep_resident: usize,
}

/// The compiler child of this process, once [`compile_in_child`] has set it.
static CHILD: OnceLock<Child> = OnceLock::new();

struct Child {
    program: PathBuf,
    args: Vec<OsString>,
}

/// How a compile in the child went wrong.
enum ChildError {
    /// The child ran and refused the plugin (not a component, invalid code): the plugin's
    /// error, as wasmtime put it.
    Refused(String),
    /// The child could not be started or could not make an engine: say why and compile in
    /// this process instead.
    Unavailable(String),
}

/// Exit status of the compiler child when the plugin cannot be compiled (its error on
/// stderr).
const EXIT_REFUSED: u8 = 2;
/// Exit status of the compiler child when it could not do its work (bad arguments, no
/// engine, I/O): the parent compiles in its own process instead.
const EXIT_UNAVAILABLE: u8 = 3;

/// Makes every runtime in this process compile plugins in a child process: `program` run with
/// `args` followed by three settings, which must call [`compile_child_main`] with those
/// settings. The `courier` binary does this with itself and a hidden subcommand, so the
/// compiler's code and memory are never part of the engine; a library user that sets nothing
/// compiles in process. Only the first call counts.
///
/// A child that cannot be started (the executable gone after an upgrade, a process limit)
/// is logged and the plugin is compiled in this process instead; a plugin the child refuses
/// fails to load with the child's error, as it would in process.
pub fn compile_in_child(program: PathBuf, args: Vec<OsString>) {
    let _ = CHILD.set(Child { program, args });
}

impl Child {
    fn compile(&self, settings: Settings, bytes: &[u8]) -> Result<Vec<u8>, ChildError> {
        let unavailable = |what: &str, e: std::io::Error| {
            ChildError::Unavailable(format!("{what} {}: {e}", self.program.display()))
        };
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .arg(settings.max_instances.to_string())
            .arg(settings.max_memory.to_string())
            .arg(settings.keep_resident.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| unavailable("cannot start", e))?;
        // The child reads all of its input before it writes anything, so writing it all
        // first cannot deadlock; a child that exits early shows in its status below.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(bytes);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| unavailable("lost the compiler child", e))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            Some(0) => Ok(out.stdout),
            Some(c) if c == i32::from(EXIT_REFUSED) => Err(ChildError::Refused(stderr)),
            Some(c) if c == i32::from(EXIT_UNAVAILABLE) => Err(ChildError::Unavailable(stderr)),
            // Anything else (a crash, a signal, another program at that path) is not a
            // verdict on the plugin that compiling here could trust: the same compiler could
            // take the engine down with it. Refuse the plugin, saying what happened.
            _ => Err(ChildError::Refused(format!(
                "the plugin compiler ({}) stopped without compiling it: {}{}{stderr}",
                self.program.display(),
                out.status,
                if stderr.is_empty() { "" } else { ": " },
            ))),
        }
    }
}

/// The compiler child's side of [`compile_in_child`]: `args` are the three settings the parent
/// appended (max instances, max memory, keep-resident bytes); the component's bytes come on
/// stdin, the compiled artefact goes to stdout. Exits 0 when compiled, 2 when the plugin is
/// refused and 3 when the child itself could not work, with the reason on stderr.
pub fn compile_child_main(args: &[String]) -> ExitCode {
    let fail = |code: u8, message: String| {
        let _ = writeln!(std::io::stderr(), "{message}");
        ExitCode::from(code)
    };
    let [instances, memory, keep] = args else {
        return fail(
            EXIT_UNAVAILABLE,
            format!("expected 3 settings, got {args:?}"),
        );
    };
    let (Ok(n), Ok(max_memory), Ok(keep_resident)) =
        (instances.parse(), memory.parse(), keep.parse())
    else {
        return fail(
            EXIT_UNAVAILABLE,
            format!("settings are numbers, got {args:?}"),
        );
    };
    let settings = Settings {
        max_instances: n,
        max_memory,
        keep_resident,
    };
    let engine = match super::new_engine(settings) {
        Ok(engine) => engine,
        Err(e) => return fail(EXIT_UNAVAILABLE, format!("cannot make an engine: {e}")),
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        return fail(EXIT_UNAVAILABLE, format!("cannot read the plugin: {e}"));
    }
    let artefact = match engine.precompile_component(&bytes) {
        Ok(a) => a,
        Err(e) => return fail(EXIT_REFUSED, format!("{e:#}")),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&artefact).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            EXIT_UNAVAILABLE,
            format!("cannot write the compiled plugin: {e}"),
        ),
    }
}
