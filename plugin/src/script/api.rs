//! What a Rhai script can call: the message API (`msg.get(path)`, `msg.set(path, value)`,
//! segment views, ...), `lookup`, the `log_*` functions, `drop` and `fail`, plus the
//! whitelisted parts of Rhai's standard library. Everything here is built once into one
//! immutable [`Module`] shared by every script step; per-message state lives in a [`Run`]
//! that the step creates for each message and drops afterwards.
//!
//! The script never holds the engine's `&mut Message`: the step clones it into the run (a
//! cheap clone — unchanged segments stay in the shared buffer), the handles edit that copy
//! under a mutex (the `sync` feature needs `Send + Sync` values, so no `Rc<RefCell<..>>`), and
//! the step moves the copy back only when the script ends normally. A failing or dropping
//! script therefore leaves the engine's message as it was.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use courier_hl7::{EditError, Message, Path, PathError};
use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage,
    BasicMathPackage, BasicStringPackage, BitFieldPackage, LogicPackage, MoreStringPackage,
    Package,
};
use rhai::{
    Array, Dynamic, EvalAltResult, FuncRegistration, INT, ImmutableString, Map, Module,
    NativeCallContext, Position, Shared,
};

use crate::step::{StepContext, Tables, redact};

/// The tracing target of every line a script logs (`print`, `debug`, `log_*`).
pub const LOG_TARGET: &str = "courier::script";

/// Why a script stopped early on purpose, carried through Rhai as the token of an
/// `ErrorTerminated` — an error no `try`/`catch` in the script can swallow.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    /// `drop(reason)`.
    Drop { reason: String },
    /// `fail(reason)`.
    Fail { reason: String, pos: Position },
    /// The wall-clock deadline passed (raised by the progress callback).
    Deadline,
    /// A Courier limit (not one of Rhai's own), e.g. `max_edit_bytes = 4194304`.
    Limit(String),
}

fn stop(s: Stop, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(Dynamic::from(s), pos))
}

/// A catchable runtime error (the script may `try`/`catch` it; its value is the text). Bad
/// paths and refused edits end up here, and so does `throw`: both become
/// `StepErrorKind::Failed` when nothing catches them.
fn runtime(text: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(text),
        Position::NONE,
    ))
}

/// Per-message caps that are Courier's, not Rhai's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunLimits {
    /// Bytes a script may write into the message in one run (values and segments, summed).
    pub max_edit_bytes: usize,
    /// Bytes of log text a script may emit in one run; later lines are suppressed.
    pub max_log_bytes: usize,
}

/// One message's run: the working copy and everything the script's functions need. Created
/// per message, dropped after it, so nothing in it outlives the message.
pub(crate) struct Run {
    work: Mutex<Work>,
    route: Arc<str>,
    control_id: Arc<str>,
    step: Arc<str>,
    tables: Arc<Tables>,
    limits: RunLimits,
}

struct Work {
    /// The message as the script sees it.
    current: Message,
    /// The message before the first edit, kept so that log text is redacted against the
    /// patient values as they arrived too (a script may log `Johnson` after upper-casing it).
    original: Option<Message>,
    edited: bool,
    edit_bytes: usize,
    log_bytes: usize,
    log_suppressed: bool,
}

impl Run {
    pub(crate) fn new(msg: Message, ctx: &StepContext, step: Arc<str>, limits: RunLimits) -> Run {
        Run {
            work: Mutex::new(Work {
                current: msg,
                original: None,
                edited: false,
                edit_bytes: 0,
                log_bytes: 0,
                log_suppressed: false,
            }),
            route: ctx.route.clone(),
            control_id: ctx.control_id.clone(),
            step,
            tables: ctx.tables.clone(),
            limits,
        }
    }

    fn work(&self) -> MutexGuard<'_, Work> {
        // A panic while the lock was held cannot leave the message half-edited (edits are
        // all-or-nothing in courier-hl7), so a poisoned lock is still usable.
        self.work.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The edited message, if the script changed it. Called once the script has ended and
    /// every handle is gone.
    pub(crate) fn into_edited(self: Arc<Self>) -> Option<Message> {
        match Arc::try_unwrap(self) {
            Ok(run) => {
                let work = run
                    .work
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                work.edited.then_some(work.current)
            }
            // Cannot happen (the engine and scope holding handles are dropped first), but a
            // clone is the safe answer if it ever does.
            Err(shared) => {
                let work = shared.work();
                work.edited.then(|| work.current.clone())
            }
        }
    }

    /// `text` with every patient value of the message — as it is now and as it arrived —
    /// replaced by `[redacted]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let work = self.work();
        let once = redact(text, &work.current);
        match &work.original {
            Some(original) => redact(&once, original),
            None => once,
        }
    }

    /// Logs one line of script output at `level`, redacted, within the run's log budget.
    pub(crate) fn log(&self, level: tracing::Level, source: &'static str, text: &str) {
        let budget = self.limits.max_log_bytes;
        let room = {
            let mut work = self.work();
            if work.log_bytes >= budget {
                if !work.log_suppressed {
                    work.log_suppressed = true;
                    drop(work);
                    tracing::warn!(
                        target: LOG_TARGET,
                        route = %self.route,
                        control_id = %self.control_id,
                        step = %self.step,
                        "script log output over max_log_bytes = {budget}; further lines of this message are suppressed"
                    );
                }
                return;
            }
            let room = budget - work.log_bytes;
            work.log_bytes += text.len();
            room
        };
        // Redact the whole line before cutting it, so a cut never leaves half a name behind.
        let mut line = self.redact(text);
        truncate(&mut line, room);
        let (route, control_id, step) = (&*self.route, &*self.control_id, &*self.step);
        match level {
            tracing::Level::ERROR | tracing::Level::WARN => {
                tracing::warn!(target: LOG_TARGET, route, control_id, step, source, "{line}");
            }
            tracing::Level::INFO => {
                tracing::info!(target: LOG_TARGET, route, control_id, step, source, "{line}");
            }
            _ => {
                tracing::debug!(target: LOG_TARGET, route, control_id, step, source, "{line}");
            }
        }
    }

    fn read<R>(&self, f: impl FnOnce(&Message) -> R) -> R {
        f(&self.work().current)
    }

    /// Applies one edit of `bytes` new bytes, charging it to the run's edit budget.
    fn edit(
        &self,
        call: impl FnOnce() -> String,
        bytes: usize,
        f: impl FnOnce(&mut Message) -> Result<(), EditError>,
    ) -> Result<(), Box<EvalAltResult>> {
        let mut work = self.work();
        let limit = self.limits.max_edit_bytes;
        if work.edit_bytes.saturating_add(bytes) > limit {
            return Err(stop(
                Stop::Limit(format!("max_edit_bytes = {limit}")),
                Position::NONE,
            ));
        }
        if work.original.is_none() {
            work.original = Some(work.current.clone());
        }
        f(&mut work.current).map_err(|e| runtime(format!("{}: {e}", call())))?;
        work.edit_bytes += bytes;
        work.edited = true;
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("…[truncated]");
    }
}

/// The script's `msg`: a handle on the run's working copy of the message. Cloning it (passing
/// `msg` to a script function) shares the same message.
#[derive(Clone)]
pub(crate) struct MessageHandle(pub(crate) Arc<Run>);

impl MessageHandle {
    /// `Message(ADT^A04, 8 segments)`: the shape, no patient data.
    fn describe(&self) -> String {
        self.0.read(|msg| {
            format!(
                "Message({}, {} segments)",
                msg.message_type(),
                msg.segment_count()
            )
        })
    }
}

/// One segment of the message as `msg.segments()` listed it: its ID, its occurrence among the
/// segments with that ID, and its 0-based position. Paths given to its methods start at the
/// field (`"3.1"`), so `obx.get("3.1")` reads `OBX[n]-3.1`.
#[derive(Clone)]
pub(crate) struct SegmentView {
    run: Arc<Run>,
    id: ImmutableString,
    occurrence: usize,
    index: usize,
}

impl SegmentView {
    /// `Segment(OBX[3])`.
    fn describe(&self) -> String {
        format!("Segment({}[{}])", self.id, self.occurrence)
    }

    /// The full path of `field_path` inside this segment.
    fn path(&self, call: &str, field_path: &str) -> Result<String, Box<EvalAltResult>> {
        if !field_path.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(runtime(format!(
                "{call}({field_path:?}): a segment's paths start at the field number, e.g. \
                 \"3.1\" for {}[{}]-3.1",
                self.id, self.occurrence
            )));
        }
        Ok(format!("{}[{}]-{field_path}", self.id, self.occurrence))
    }
}

fn parse_path(call: &str, path: &str) -> Result<Path, Box<EvalAltResult>> {
    Path::parse(path).map_err(|e: PathError| runtime(format!("{call}({path:?}): {e}")))
}

fn usize_arg(call: &str, what: &str, n: INT) -> Result<usize, Box<EvalAltResult>> {
    usize::try_from(n).map_err(|_| runtime(format!("{call}: {what} {n} is negative")))
}

/// A value to write: text as it is; numbers, booleans and characters as text; anything else
/// (notably `()`, what `msg.get` gives for an absent field) is refused rather than guessed.
fn value_text(
    call: &str,
    path: &str,
    value: &Dynamic,
) -> Result<ImmutableString, Box<EvalAltResult>> {
    if let Ok(s) = value.as_immutable_string_ref() {
        return Ok(s.clone());
    }
    if value.is_int() || value.is_float() || value.is_bool() || value.is_char() {
        return Ok(value.to_string().into());
    }
    let what = if value.is_unit() {
        "() (nothing; use msg.delete to empty a field)".to_string()
    } else {
        format!("a value of type {}", value.type_name())
    };
    Err(runtime(format!(
        "{call}({path:?}): the value must be text or a number, not {what}"
    )))
}

fn text_or_unit(value: Option<String>) -> Dynamic {
    value.map_or(Dynamic::UNIT, Dynamic::from)
}

fn get(run: &Run, call: &str, path: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    Ok(text_or_unit(run.read(|m| m.get(&p))))
}

/// The ER7 text at `path` as written, escapes kept (a bare segment path: the segment).
fn get_raw(run: &Run, call: &str, path: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    Ok(text_or_unit(run.read(|m| match m.element(&p) {
        Some(el) => Some(el.er7()),
        None => m.get(&p),
    })))
}

fn exists(run: &Run, call: &str, path: &str) -> Result<bool, Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    Ok(run.read(|m| m.raw(&p).is_some()))
}

fn set(run: &Run, call: &str, path: &str, value: &Dynamic) -> Result<(), Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    let text = value_text(call, path, value)?;
    run.edit(
        || format!("{call}({path:?})"),
        text.len(),
        |m| m.set(&p, &text),
    )
}

fn set_raw(run: &Run, call: &str, path: &str, er7: &str) -> Result<(), Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    run.edit(
        || format!("{call}({path:?})"),
        er7.len(),
        |m| m.set_raw(&p, er7),
    )
}

fn delete(run: &Run, call: &str, path: &str) -> Result<(), Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    run.edit(|| format!("{call}({path:?})"), 0, |m| m.delete(&p))
}

fn insert_repetition(
    run: &Run,
    call: &str,
    path: &str,
    value: &Dynamic,
) -> Result<(), Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    if p.repetition.is_none() || p.component.is_some() {
        return Err(runtime(format!(
            "{call}({path:?}): the path must name a repetition, e.g. \"PID-3[2]\""
        )));
    }
    let text = value_text(call, path, value)?;
    run.edit(
        || format!("{call}({path:?})"),
        text.len(),
        |m| m.insert_repetition(&p, &text),
    )
}

fn repetitions(run: &Run, call: &str, path: &str) -> Result<INT, Box<EvalAltResult>> {
    let p = parse_path(call, path)?;
    if p.field.is_none() {
        return Err(runtime(format!(
            "{call}({path:?}): the path must name a field, e.g. \"PID-3\""
        )));
    }
    Ok(run.read(|m| m.repetition_count(&p)) as INT)
}

/// Checks that `id` is a bare segment ID such as `OBX`.
fn segment_id(call: &str, id: &str) -> Result<(), Box<EvalAltResult>> {
    let p = parse_path(call, id)?;
    if p.field.is_some() || p.occurrence.is_some() {
        return Err(runtime(format!(
            "{call}({id:?}): expects a segment ID such as \"OBX\", not a path"
        )));
    }
    Ok(())
}

fn segments(run: &Arc<Run>, only: Option<&str>) -> Array {
    run.read(|m| {
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let mut out = Array::new();
        for seg in m.segments() {
            let id = seg.id();
            let occurrence = match seen.iter_mut().find(|(s, _)| *s == id) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((id, 1));
                    1
                }
            };
            if only.is_none_or(|o| o == id) {
                out.push(Dynamic::from(SegmentView {
                    run: run.clone(),
                    id: id.into(),
                    occurrence,
                    index: seg.index(),
                }));
            }
        }
        out
    })
}

/// The run behind the native call: every run sets itself as its engine's default tag.
fn run_of(ctx: &NativeCallContext) -> Result<Arc<Run>, Box<EvalAltResult>> {
    ctx.tag()
        .and_then(|t| t.read_lock::<MessageHandle>())
        .map(|h| h.0.clone())
        .ok_or_else(|| runtime("internal: no message is being processed".into()))
}

/// A value as log or reason text: strings as they are, Courier's handles by their shape
/// (never the message's contents), anything else as Rhai displays it.
fn dynamic_text(value: &Dynamic) -> String {
    if let Ok(s) = value.as_immutable_string_ref() {
        return s.to_string();
    }
    if let Some(m) = value.read_lock::<MessageHandle>() {
        return m.describe();
    }
    if let Some(s) = value.read_lock::<SegmentView>() {
        return s.describe();
    }
    value.to_string()
}

/// The settings of a step as a Rhai map (JSON null becomes `()`).
pub(crate) fn settings_map(settings: &serde_json::Map<String, serde_json::Value>) -> Map {
    settings
        .iter()
        .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
        .collect()
}

fn json_to_dynamic(value: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => Dynamic::from_array(items.iter().map(json_to_dynamic).collect()),
        Value::Object(map) => Dynamic::from_map(settings_map(map)),
    }
}

/// The one module every script step runs with: a whitelist of Rhai's standard packages plus
/// Courier's functions. Left out on purpose: `LanguageCorePackage` (its `sleep` would block a
/// worker thread past any deadline; `exit` and the reflection helpers are not needed),
/// `BasicTimePackage` (clock access; route tests must be deterministic) and
/// `BasicBlobPackage` (raw bytes have no use in a mapping). Rhai has no file, network or
/// environment functions, and imports are refused, so none exist for scripts.
pub(crate) fn sandbox_module() -> Shared<Module> {
    static MODULE: OnceLock<Shared<Module>> = OnceLock::new();
    MODULE
        .get_or_init(|| SandboxPackage::new().as_shared_module())
        .clone()
}

rhai::def_package! {
    /// Rhai's safe standard library plus Courier's script API.
    SandboxPackage(lib):
        ArithmeticPackage,
        LogicPackage,
        BasicStringPackage,
        MoreStringPackage,
        BasicIteratorPackage,
        BasicFnPackage,
        BasicArrayPackage,
        BasicMapPackage,
        BasicMathPackage,
        BitFieldPackage
    {
        register(lib);
    }
}

/// Registers a function in the global namespace. Volatile, so that no optimisation level
/// ever evaluates a call at compile time (these functions read per-message state).
macro_rules! reg {
    ($lib:expr, $name:expr, $f:expr) => {
        FuncRegistration::new($name)
            .in_global_namespace()
            .with_volatility(true)
            .set_into_module($lib, $f)
    };
}

fn register(lib: &mut Module) {
    lib.set_custom_type::<MessageHandle>("Message");
    lib.set_custom_type::<SegmentView>("Segment");

    // ----- msg -----
    reg!(lib, "get", |m: &mut MessageHandle, path: &str| get(
        &m.0, "msg.get", path
    ));
    reg!(lib, "get_raw", |m: &mut MessageHandle, path: &str| {
        get_raw(&m.0, "msg.get_raw", path)
    });
    reg!(lib, "exists", |m: &mut MessageHandle, path: &str| {
        exists(&m.0, "msg.exists", path)
    });
    reg!(lib, "set", |m: &mut MessageHandle,
                      path: &str,
                      value: Dynamic| {
        set(&m.0, "msg.set", path, &value)
    });
    reg!(lib, "set_raw", |m: &mut MessageHandle,
                          path: &str,
                          er7: &str| {
        set_raw(&m.0, "msg.set_raw", path, er7)
    });
    reg!(lib, "delete", |m: &mut MessageHandle, path: &str| {
        delete(&m.0, "msg.delete", path)
    });
    reg!(
        lib,
        "insert_repetition",
        |m: &mut MessageHandle, path: &str, value: Dynamic| {
            insert_repetition(&m.0, "msg.insert_repetition", path, &value)
        }
    );
    reg!(lib, "repetitions", |m: &mut MessageHandle, path: &str| {
        repetitions(&m.0, "msg.repetitions", path)
    });
    reg!(lib, "count", |m: &mut MessageHandle,
                        id: &str|
     -> Result<INT, Box<EvalAltResult>> {
        segment_id("msg.count", id)?;
        Ok(m.0.read(|msg| msg.segment_occurrences(id)) as INT)
    });
    reg!(lib, "segments", |m: &mut MessageHandle| segments(
        &m.0, None
    ));
    reg!(lib, "segments", |m: &mut MessageHandle,
                           id: &str|
     -> Result<Array, Box<EvalAltResult>> {
        segment_id("msg.segments", id)?;
        Ok(segments(&m.0, Some(id)))
    });
    reg!(
        lib,
        "insert_segment",
        |m: &mut MessageHandle, index: INT, er7: &str| {
            let i = usize_arg("msg.insert_segment", "index", index)?;
            m.0.edit(
                || "msg.insert_segment".into(),
                er7.len(),
                |msg| msg.insert_segment(i, er7),
            )
        }
    );
    reg!(lib, "append_segment", |m: &mut MessageHandle, er7: &str| {
        m.0.edit(
            || "msg.append_segment".into(),
            er7.len(),
            |msg| msg.append_segment(er7),
        )
    });
    reg!(
        lib,
        "remove_segment",
        |m: &mut MessageHandle, id: &str, occurrence: INT| {
            let call = "msg.remove_segment";
            segment_id(call, id)?;
            let occurrence = usize_arg(call, "occurrence", occurrence)?;
            if occurrence == 0 {
                return Err(runtime(format!(
                    "{call}({id:?}, 0): occurrences are 1-based"
                )));
            }
            let p = Path::new(id).with_occurrence(occurrence);
            m.0.edit(
                || format!("{call}({id:?}, {occurrence})"),
                0,
                |msg| msg.delete(&p),
            )
        }
    );
    lib.set_getter_fn("type", |m: &mut MessageHandle| {
        Ok(m.0.read(|msg| msg.message_type().to_string()))
    });
    lib.set_getter_fn("control_id", |m: &mut MessageHandle| {
        Ok(m.0.read(|msg| msg.control_id().unwrap_or_default()))
    });
    lib.set_indexer_get_fn(|m: &mut MessageHandle, path: &str| get(&m.0, "msg[]", path));
    lib.set_indexer_set_fn(|m: &mut MessageHandle, path: &str, value: Dynamic| {
        set(&m.0, "msg[]", path, &value)
    });
    // Printing a message shows its shape, never its contents.
    for name in ["to_string", "to_debug", "print", "debug"] {
        reg!(lib, name, |m: &mut MessageHandle| m.describe());
        reg!(lib, name, |s: &mut SegmentView| s.describe());
    }

    // ----- segment views -----
    lib.set_getter_fn("id", |s: &mut SegmentView| Ok(s.id.clone()));
    lib.set_getter_fn("occurrence", |s: &mut SegmentView| Ok(s.occurrence as INT));
    lib.set_getter_fn("index", |s: &mut SegmentView| Ok(s.index as INT));
    reg!(lib, "get", |s: &mut SegmentView, p: &str| {
        let path = s.path("segment.get", p)?;
        get(&s.run, "segment.get", &path)
    });
    reg!(lib, "get_raw", |s: &mut SegmentView, p: &str| {
        let path = s.path("segment.get_raw", p)?;
        get_raw(&s.run, "segment.get_raw", &path)
    });
    reg!(lib, "exists", |s: &mut SegmentView, p: &str| {
        let path = s.path("segment.exists", p)?;
        exists(&s.run, "segment.exists", &path)
    });
    reg!(lib, "set", |s: &mut SegmentView,
                      p: &str,
                      value: Dynamic| {
        let path = s.path("segment.set", p)?;
        set(&s.run, "segment.set", &path, &value)
    });
    reg!(lib, "set_raw", |s: &mut SegmentView, p: &str, er7: &str| {
        let path = s.path("segment.set_raw", p)?;
        set_raw(&s.run, "segment.set_raw", &path, er7)
    });
    reg!(lib, "delete", |s: &mut SegmentView, p: &str| {
        let path = s.path("segment.delete", p)?;
        delete(&s.run, "segment.delete", &path)
    });
    reg!(lib, "repetitions", |s: &mut SegmentView, p: &str| {
        let path = s.path("segment.repetitions", p)?;
        repetitions(&s.run, "segment.repetitions", &path)
    });

    // ----- context -----
    reg!(lib, "lookup", |ctx: NativeCallContext,
                         table: &str,
                         key: Dynamic| {
        let run = run_of(&ctx)?;
        if key.is_unit() {
            return Ok(Dynamic::UNIT);
        }
        let key = dynamic_text(&key);
        Ok::<_, Box<EvalAltResult>>(text_or_unit(
            run.tables.get(table).and_then(|t| t.get(&key)).cloned(),
        ))
    });
    for (name, level) in [
        ("log_info", tracing::Level::INFO),
        ("log_warn", tracing::Level::WARN),
        ("log_debug", tracing::Level::DEBUG),
    ] {
        reg!(lib, name, move |ctx: NativeCallContext, text: Dynamic| {
            run_of(&ctx)?.log(level, name, &dynamic_text(&text));
            Ok::<_, Box<EvalAltResult>>(())
        });
    }
    reg!(lib, "drop", |ctx: NativeCallContext, reason: Dynamic| {
        Err::<(), _>(stop(
            Stop::Drop {
                reason: dynamic_text(&reason),
            },
            ctx.call_position(),
        ))
    });
    reg!(lib, "fail", |ctx: NativeCallContext, reason: Dynamic| {
        Err::<(), _>(stop(
            Stop::Fail {
                reason: dynamic_text(&reason),
                pos: ctx.call_position(),
            },
            ctx.call_position(),
        ))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_rhai_values() {
        let serde_json::Value::Object(settings) = serde_json::json!({
            "s": "x", "i": 7, "f": 1.5, "b": true, "n": null, "a": [1, "two"], "o": {"k": "v"}
        }) else {
            unreachable!()
        };
        let map = settings_map(&settings);
        assert_eq!(map["s"].clone().into_string().unwrap(), "x");
        assert_eq!(map["i"].as_int().unwrap(), 7);
        assert_eq!(map["f"].as_float().unwrap(), 1.5);
        assert!(map["b"].as_bool().unwrap());
        assert!(map["n"].is_unit());
        assert_eq!(map["a"].clone().into_array().unwrap().len(), 2);
        let o = map["o"].clone().try_cast::<Map>().unwrap();
        assert_eq!(o["k"].clone().into_string().unwrap(), "v");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let mut s = "ééé".to_string();
        truncate(&mut s, 3);
        assert_eq!(s, "é…[truncated]");
        let mut s = "short".to_string();
        truncate(&mut s, 10);
        assert_eq!(s, "short");
    }

    #[test]
    fn values_to_write() {
        assert_eq!(value_text("c", "P", &Dynamic::from("x")).unwrap(), "x");
        assert_eq!(value_text("c", "P", &Dynamic::from_int(12)).unwrap(), "12");
        assert_eq!(
            value_text("c", "P", &Dynamic::from_bool(true)).unwrap(),
            "true"
        );
        let err = value_text("msg.set", "PID-5", &Dynamic::UNIT).unwrap_err();
        assert!(err.to_string().contains("msg.set(\"PID-5\")"), "{err}");
        assert!(value_text("c", "P", &Dynamic::from_array(vec![])).is_err());
    }
}
