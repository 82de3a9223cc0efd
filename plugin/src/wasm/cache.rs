//! The on-disk cache of compiled plugins: compiling a component with Cranelift takes tens or
//! hundreds of milliseconds, loading the compiled artefact takes about one, which matters at
//! start-up and on every hot reload.
//!
//! An artefact is named `<sha256 of the .wasm>-<engine compatibility hash>.cwasm`, so a changed
//! plugin or a changed engine (wasmtime version, compiler settings, CPU features) simply misses
//! and compiles afresh. Artefacts are written to a temporary file and renamed into place, so a
//! reader never sees a partly written one, and a file once in place is never modified.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

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
    config: &Config,
    bytes: &[u8],
    content_hash: &str,
    cache_dir: Option<&Path>,
    compat: u64,
) -> wasmtime::Result<(Component, bool)> {
    let Some(dir) = cache_dir else {
        return Ok((compile(engine, config, bytes)?.0, false));
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
    let (component, artefact) = compile(engine, config, bytes)?;
    if let Err(e) = store(dir, &path, &artefact) {
        tracing::warn!(cache_dir = %dir.display(), error = %e, "could not store the compiled plugin in the cache");
    }
    Ok((component, false))
}

/// Compiles a component in an engine of its own, made from the same settings and dropped as
/// soon as it has serialized the code, then loads that code into `engine`; returns the
/// component and its artefact (for the cache).
///
/// An engine keeps Cranelift's compile contexts (buffers sized for the largest function it
/// compiled) as long as it lives, and glibc keeps what the compiler freed: compiling the
/// example clinic's plugins in the engine itself left it at 44 MiB resident for good, against
/// 26 MiB when the same plugins came from this cache.
fn compile(
    engine: &Engine,
    config: &Config,
    bytes: &[u8],
) -> wasmtime::Result<(Component, Vec<u8>)> {
    let in_place = || -> wasmtime::Result<(Component, Vec<u8>)> {
        let component = Component::from_binary(engine, bytes)?;
        let artefact = component.serialize()?;
        Ok((component, artefact))
    };
    let apart = match Engine::new(config) {
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
    // made just above, in this process, by an engine built from the very `Config` `engine` was
    // built from, and never left memory. wasmtime checks the header (version and settings) all
    // the same; a mismatch is handled below by compiling in `engine` itself.
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
