//! Rhai script steps: an integrator's per-route mapping written as a `.rhai` file.
//!
//! A [`ScriptStep`] compiles its script once, at load or hot reload, with a locked-down
//! engine (no `eval`, no `import`, strict variables, depth limits) and runs the AST once per
//! message with a fresh [`Scope`] and a fresh runtime engine, so nothing from one patient's
//! message can be seen while processing the next. The script sees the message as `msg`, the
//! step's settings as `settings`, and the functions of the `api` submodule; each limit of
//! [`ScriptLimits`] stops it with an error naming that limit and its value.
//!
//! The runtime engine is rebuilt per message because its callbacks (`print`, `debug`, the
//! deadline check) must see that message's state: `Engine::new_raw` is a constant, and the
//! standard library and Courier's API are one shared, immutable module, so this costs a few
//! small allocations, not a re-registration.

mod api;
mod audit;

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_hl7::Message;
use rhai::module_resolvers::DummyModuleResolver;
use rhai::{
    AST, Dynamic, Engine, EvalAltResult, LexError, OptimizationLevel, ParseError, ParseErrorType,
    Position, Scope,
};
use sha2::{Digest, Sha256};

use crate::step::{Outcome, Step, StepContext, StepError, StepErrorKind};
use api::{MessageHandle, Run, RunLimits, Stop};

pub use api::LOG_TARGET;

/// The limits a script runs under, per message. Every limit hit stops the script with
/// [`StepErrorKind::ScriptLimit`] (or [`StepErrorKind::Timeout`] for the deadline) naming the
/// limit and its value, e.g. `max_operations = 1000000`. None may be 0 (Rhai would read 0 as
/// "unlimited"); [`ScriptStep::load`] refuses that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Rhai operations (roughly: expressions evaluated, loop iterations, calls) per message.
    pub max_operations: u64,
    /// Length in bytes of any string, and of all strings inside one array or map together.
    pub max_string_size: usize,
    /// Elements of any array (nested arrays count in full).
    pub max_array_size: usize,
    /// Properties of any object map (nested maps count in full).
    pub max_map_size: usize,
    /// How deeply arrays and maps may nest inside one another. Rhai clones, compares,
    /// prints and drops nested values recursively, so without this a script nesting an
    /// array a few hundred levels deep could overflow the thread's stack.
    pub max_nesting: usize,
    /// Depth of nested script function calls (recursion).
    pub max_call_levels: usize,
    /// Nesting depth of an expression at the top level, checked at load.
    pub max_expr_depth: usize,
    /// Nesting depth of an expression inside a function body, checked at load.
    pub max_function_expr_depth: usize,
    /// Wall-clock time per message, checked every few operations.
    pub deadline: Duration,
    /// Bytes a script may write into the message per run (every value, raw value and
    /// segment it sets or inserts, summed), so that a loop of edits cannot grow the message
    /// without bound.
    pub max_edit_bytes: usize,
    /// Bytes of log output (`print`, `debug`, `log_*`) per message; later lines are dropped
    /// with one warning, so a chatty script cannot flood the log.
    pub max_log_bytes: usize,
}

impl Default for ScriptLimits {
    fn default() -> ScriptLimits {
        ScriptLimits {
            max_operations: 1_000_000,
            max_string_size: 1024 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_nesting: 32,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            deadline: Duration::from_millis(100),
            max_edit_bytes: 4 * 1024 * 1024,
            max_log_bytes: 64 * 1024,
        }
    }
}

impl ScriptLimits {
    /// The first limit that is 0, by name.
    fn zero(&self) -> Option<&'static str> {
        [
            ("max_operations", self.max_operations == 0),
            ("max_string_size", self.max_string_size == 0),
            ("max_array_size", self.max_array_size == 0),
            ("max_map_size", self.max_map_size == 0),
            ("max_nesting", self.max_nesting == 0),
            ("max_call_levels", self.max_call_levels == 0),
            ("max_expr_depth", self.max_expr_depth == 0),
            ("max_function_expr_depth", self.max_function_expr_depth == 0),
            ("deadline", self.deadline.is_zero()),
            ("max_edit_bytes", self.max_edit_bytes == 0),
            ("max_log_bytes", self.max_log_bytes == 0),
        ]
        .into_iter()
        .find_map(|(name, zero)| zero.then_some(name))
    }
}

/// Why a script could not be loaded. The old version of a hot-reloaded script keeps running.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read (or is not UTF-8).
    #[error("cannot read script {file}: {source}")]
    Read {
        /// The script's path.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The script does not compile: a syntax error, an unknown variable, a refused keyword
    /// (`eval`, `import`), or an expression nested past `max_expr_depth`.
    #[error("{file}:{line}:{column}: {message}")]
    Compile {
        /// The script's path (or name, for [`ScriptStep::from_source`]).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A limit is 0, which Rhai would read as "unlimited".
    #[error("script {file}: {limit} must be above 0")]
    InvalidLimit {
        /// The script's path.
        file: String,
        /// The limit's name, e.g. `max_operations`.
        limit: &'static str,
    },
}

/// A compiled Rhai script, ready to run once per message.
pub struct ScriptStep {
    /// Shared with every run's log lines, so a run does not copy it.
    name: Arc<str>,
    hash: String,
    ast: AST,
    limits: ScriptLimits,
}

impl std::fmt::Debug for ScriptStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptStep")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Keywords refused at load: `eval` runs text as code, `import`/`export` load modules, and
/// `this` (script-defined methods) would let a value grow without its variable ever being
/// read, out of sight of the size and nesting audit (see `audit`). Functions take the message
/// as a parameter instead: `fn f(m) { .. } f(msg);`.
const DISABLED: [&str; 4] = ["eval", "import", "export", "this"];

/// The variables a script is given; known at compile time so that strict variables catch
/// typos at load.
const MSG: &str = "msg";
const SETTINGS: &str = "settings";

impl ScriptStep {
    /// Reads and compiles the script at `path`. The step's name is the file name.
    pub fn load(path: &Path, limits: ScriptLimits) -> Result<ScriptStep, LoadError> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            file: file.clone(),
            source,
        })?;
        let name = path
            .file_name()
            .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
        ScriptStep::compile(name, &file, &source, limits)
    }

    /// Compiles `source` as the script `name` (for tests and scripts kept in the config).
    pub fn from_source(
        name: &str,
        source: &str,
        limits: ScriptLimits,
    ) -> Result<ScriptStep, LoadError> {
        ScriptStep::compile(name.to_string(), name, source, limits)
    }

    fn compile(
        name: String,
        file: &str,
        source: &str,
        limits: ScriptLimits,
    ) -> Result<ScriptStep, LoadError> {
        if let Some(limit) = limits.zero() {
            return Err(LoadError::InvalidLimit {
                file: file.to_string(),
                limit,
            });
        }
        let mut engine = base_engine(&limits);
        for keyword in DISABLED {
            engine.disable_symbol(keyword);
        }
        // Declared for strict variables, but as plain variables: the optimiser would fold a
        // constant's compile-time placeholder into the AST in place of the real settings.
        let mut scope = Scope::new();
        scope.push(MSG, ());
        scope.push(SETTINGS, ());
        let ast = engine
            .compile_with_scope(&scope, source)
            .map_err(|e| compile_error(file, &e, &limits))?;
        Ok(ScriptStep {
            name: name.into(),
            hash: format!("{:x}", Sha256::digest(source.as_bytes())),
            ast,
            limits,
        })
    }

    /// The limits the step runs under.
    pub fn limits(&self) -> &ScriptLimits {
        &self.limits
    }

    fn data_limits(&self) -> audit::DataLimits {
        audit::DataLimits {
            max_string_size: self.limits.max_string_size,
            max_array_size: self.limits.max_array_size,
            max_map_size: self.limits.max_map_size,
            max_nesting: self.limits.max_nesting,
        }
    }

    /// The engine for one run: the shared module, the limits, and callbacks bound to `run`.
    fn run_engine(&self, run: &Arc<Run>, deadline: Instant) -> Engine {
        let mut engine = base_engine(&self.limits);
        engine.set_default_tag(Dynamic::from(MessageHandle(run.clone())));
        let r = run.clone();
        engine.on_print(move |text| r.log(tracing::Level::INFO, "print", text));
        let r = run.clone();
        engine.on_debug(move |text, _, _| r.log(tracing::Level::DEBUG, "debug", text));
        let limits = self.data_limits();
        #[allow(
            deprecated,
            reason = "Rhai marks `on_var` volatile (may change), not deprecated; it is the only \
                      hook that sees a variable before the script reads it"
        )]
        engine.on_var(move |name, _, ctx| audit::on_var(&limits, name, &ctx));
        engine.on_progress(move |ops| {
            // Reading the clock costs more than a cheap operation, so look every 64.
            (ops % 64 == 0 && Instant::now() >= deadline).then(|| Dynamic::from(Stop::Deadline))
        });
        engine
    }

    fn error(&self, err: EvalAltResult, run: &Run) -> Result<Outcome, StepError> {
        // Errors inside script functions arrive wrapped once per call level; the innermost
        // one says what happened, the wrappers where it was called from.
        let mut err = err;
        let mut calls = String::new();
        while let EvalAltResult::ErrorInFunctionCall(name, _, inner, pos) = err {
            let _ = write!(calls, " (in fn {name} called at {})", at(pos));
            err = *inner;
        }
        let pos = err.position();
        let fail = |kind: StepErrorKind, text: String| {
            let mut message = run.redact(&format!("{}: {text}{calls}", at(pos)));
            api::truncate(&mut message, 1024);
            Err(StepError {
                step: self.name.to_string(),
                kind,
                message,
            })
        };
        let limits = &self.limits;
        let limit = |name: String| {
            fail(
                StepErrorKind::ScriptLimit {
                    limit: name.clone(),
                },
                format!("script stopped: {name} reached"),
            )
        };
        match err {
            EvalAltResult::ErrorTerminated(token, _) => match token.try_cast::<Stop>() {
                Some(Stop::Drop { reason }) => Ok(Outcome::Drop {
                    reason: run.redact(&reason),
                }),
                Some(Stop::Fail { reason, pos }) => {
                    let mut message = run.redact(&format!("{}: fail: {reason}{calls}", at(pos)));
                    api::truncate(&mut message, 1024);
                    Err(StepError {
                        step: self.name.to_string(),
                        kind: StepErrorKind::Failed,
                        message,
                    })
                }
                Some(Stop::Deadline) => fail(
                    StepErrorKind::Timeout {
                        limit: limits.deadline,
                    },
                    format!("script stopped: deadline = {:?} passed", limits.deadline),
                ),
                Some(Stop::Limit(name)) => limit(name),
                None => fail(StepErrorKind::Trap, "script terminated".into()),
            },
            EvalAltResult::ErrorTooManyOperations(_) => {
                limit(format!("max_operations = {}", limits.max_operations))
            }
            EvalAltResult::ErrorStackOverflow(_) => {
                limit(format!("max_call_levels = {}", limits.max_call_levels))
            }
            EvalAltResult::ErrorDataTooLarge(what, _) => limit(if what.contains("string") {
                format!("max_string_size = {}", limits.max_string_size)
            } else if what.contains("map") {
                format!("max_map_size = {}", limits.max_map_size)
            } else {
                format!("max_array_size = {}", limits.max_array_size)
            }),
            EvalAltResult::ErrorRuntime(value, _) => {
                // `throw` and the message API's refusals (bad path, refused edit).
                let text = match value.as_immutable_string_ref() {
                    Ok(s) => s.to_string(),
                    Err(_) => value.to_string(),
                };
                fail(StepErrorKind::Failed, text)
            }
            mut other => {
                other.clear_position();
                fail(StepErrorKind::Trap, other.to_string())
            }
        }
    }
}

impl Step for ScriptStep {
    fn name(&self) -> &str {
        &self.name
    }

    fn content_hash(&self) -> &str {
        &self.hash
    }

    /// A script sees the message, its settings and the lookup tables only: the engine has
    /// no clock, no random numbers and no file access, and a run's variables end with it.
    fn deterministic(&self) -> bool {
        true
    }

    fn run(&self, msg: &mut Message, ctx: &StepContext) -> Result<Outcome, StepError> {
        on_script_stack(|| self.run_here(msg, ctx))
    }
}

impl ScriptStep {
    /// [`Step::run`] on the current thread.
    fn run_here(&self, msg: &mut Message, ctx: &StepContext) -> Result<Outcome, StepError> {
        let deadline = Instant::now() + self.limits.deadline;
        let run = Arc::new(Run::new(
            msg.clone(),
            ctx,
            self.name.clone(),
            RunLimits {
                max_edit_bytes: self.limits.max_edit_bytes,
                max_log_bytes: self.limits.max_log_bytes,
            },
        ));
        // Rhai has a few reachable `unreachable!()`s (e.g. `const X = ""; X += "a";` under
        // constant folding); a script must not be able to take the worker thread down with
        // one, so a panic is this message's trap like any other.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let engine = self.run_engine(&run, deadline);
            let mut scope = Scope::new();
            scope.push(MSG, MessageHandle(run.clone()));
            scope.push_constant(SETTINGS, api::settings_map(&ctx.settings));
            engine.run_ast_with_scope(&mut scope, &self.ast)
            // The engine and scope (and with them every handle on the run) end here.
        }));
        match result {
            Ok(Ok(())) => {
                if let Some(edited) = run.into_edited() {
                    *msg = edited;
                }
                Ok(Outcome::Keep)
            }
            Ok(Err(err)) => self.error(*err, &run),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let mut message = run.redact(&format!("internal error in the Rhai engine: {what}"));
                api::truncate(&mut message, 1024);
                Err(StepError {
                    step: self.name.to_string(),
                    kind: StepErrorKind::Trap,
                    message,
                })
            }
        }
    }
}

/// The stack a script runs on in a debug build.
///
/// Rhai's evaluator recurses: each script function call level, and each level of a nested
/// array or map that is cloned, compared, printed or dropped, is several native frames. In a
/// release build `max_call_levels = 32` and `max_nesting = 32` (and a temporary nested about
/// 7 × 32 deep by a recursive function) fit well within the 2 MiB a worker thread has by
/// default (tokio's blocking pool, Rust's spawned threads); an unoptimised build's frames are
/// several times larger and would overflow it — an abort of the whole engine, not an error.
#[cfg(debug_assertions)]
const DEBUG_SCRIPT_STACK: usize = 16 << 20;

/// Runs `f` where a script's recursion hits its limits before the native stack runs out: on
/// the calling thread in a release build, on a thread of its own with [`DEBUG_SCRIPT_STACK`]
/// in a debug build (the caller's tracing subscriber and span go along, so log lines land
/// where they would have). Everything deep — the engine, the scope, an error's value — is
/// created and dropped inside `f`; only plain strings come back.
fn on_script_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(debug_assertions)]
    {
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let span = tracing::Span::current();
        let mut f = Some(f);
        let outcome = std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new()
                .name("courier-script".into())
                .stack_size(DEBUG_SCRIPT_STACK)
                .spawn_scoped(scope, || {
                    let f = f.take()?;
                    Some(tracing::dispatcher::with_default(&dispatch, || {
                        span.in_scope(f)
                    }))
                });
            match spawned {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had (resource limits): run here, as a release build does.
                Err(_) => None,
            }
        });
        match (outcome, f) {
            (Some(r), _) => r,
            (None, Some(f)) => f(),
            (None, None) => unreachable!("the script thread took the closure and returned"),
        }
    }
    #[cfg(not(debug_assertions))]
    f()
}

/// The settings common to the compile engine and the per-run engines.
fn base_engine(limits: &ScriptLimits) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(api::sandbox_module());
    engine.set_module_resolver(DummyModuleResolver::new());
    engine.set_max_modules(0);
    engine.set_max_operations(limits.max_operations);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth);
    engine.set_strict_variables(true);
    // `Simple` folds constants but never calls a function at compile time; `Full` could
    // evaluate a call such as `lookup(..)` once, at load, against no message at all.
    engine.set_optimization_level(OptimizationLevel::Simple);
    engine
}

/// `line 3, column 9`, or `unknown position`.
fn at(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(column)) => format!("line {line}, column {column}"),
        (Some(line), None) => format!("line {line}"),
        _ => "unknown position".into(),
    }
}

fn compile_error(file: &str, err: &ParseError, limits: &ScriptLimits) -> LoadError {
    let ParseError(kind, pos) = err;
    let message = match kind.as_ref() {
        ParseErrorType::Reserved(word)
        | ParseErrorType::BadInput(LexError::ImproperSymbol(word, _))
            if DISABLED.contains(&word.as_str()) =>
        {
            format!("`{word}` is not available in Courier scripts")
        }
        ParseErrorType::ExprTooDeep => format!(
            "expression nested too deeply (max_expr_depth = {}, max_function_expr_depth = {})",
            limits.max_expr_depth, limits.max_function_expr_depth
        ),
        ParseErrorType::LiteralTooLarge(what, _) => format!(
            "{what} too large (max_string_size = {}, max_array_size = {}, max_map_size = {})",
            limits.max_string_size, limits.max_array_size, limits.max_map_size
        ),
        other => other.to_string(),
    };
    LoadError::Compile {
        file: file.to_string(),
        line: pos.line().unwrap_or(0),
        column: pos.position().unwrap_or(0),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_the_documented_ones() {
        let l = ScriptLimits::default();
        assert_eq!(l.max_operations, 1_000_000);
        assert_eq!(l.max_string_size, 1 << 20);
        assert_eq!((l.max_array_size, l.max_map_size), (10_000, 10_000));
        assert_eq!((l.max_call_levels, l.max_nesting), (32, 32));
        assert_eq!((l.max_expr_depth, l.max_function_expr_depth), (64, 32));
        assert_eq!(l.deadline, Duration::from_millis(100));
        assert_eq!(l.zero(), None);
        let l = ScriptLimits {
            max_nesting: 0,
            ..ScriptLimits::default()
        };
        assert_eq!(l.zero(), Some("max_nesting"));
    }

    #[test]
    fn positions_read_as_line_and_column() {
        assert_eq!(at(Position::new(3, 9)), "line 3, column 9");
        assert_eq!(at(Position::NONE), "unknown position");
    }

    #[test]
    fn refused_keywords_get_a_plain_message() {
        for (source, word) in [
            ("let x = eval(\"1\");", "eval"),
            ("import \"m\" as m;", "import"),
            ("fn f() { this }", "this"),
        ] {
            let err = ScriptStep::from_source("k.rhai", source, ScriptLimits::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("k.rhai:1:") && err.contains(&format!("`{word}` is not available")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_hash_is_of_the_source() {
        let step =
            ScriptStep::from_source("h.rhai", "let x = 1;", ScriptLimits::default()).unwrap();
        assert_eq!(
            step.content_hash(),
            format!("{:x}", Sha256::digest(b"let x = 1;"))
        );
        assert_eq!(step.name(), "h.rhai");
    }
}
