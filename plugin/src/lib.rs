//! Courier's route steps: sandboxed WASM components ([`wasm`]) and Rhai scripts
//! ([`script`]), both behind the one [`Step`] contract in [`step`].
//!
//! A step gets the message (the `courier-hl7` model, shared with the plugin SDK) and a
//! [`StepContext`] (its settings, the route's lookup tables, a log that redacts patient data)
//! and says keep (possibly changed) or drop with a reason; anything else is a [`StepError`]
//! naming the plugin and the limit or fault. This crate does no network I/O and never sees
//! the store: the engine records what a step did.

pub mod memory;
pub mod script;
pub mod step;
pub mod wasm;

pub use script::{LoadError as ScriptLoadError, ScriptLimits, ScriptStep};
pub use step::{Outcome, Step, StepContext, StepError, StepErrorKind, Tables, redact};
pub use wasm::{
    DirGrant, Grants, LoadError as WasmLoadError, WasmLimits, WasmPlugin, WasmRuntime,
    WasmRuntimeConfig,
};
