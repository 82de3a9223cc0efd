//! Write a Courier route step in Rust: one function, compiled to a WebAssembly component.
//!
//! A plugin is a crate of type `cdylib` that depends on this crate and marks one function with
//! [`transform`] (may change the message, or drop it) or [`filter`] (keeps or drops it). The
//! function gets the message as the engine's own HL7 model ([`Message`], the very code the
//! engine runs, so a path like `PID-3[2].1` means the same here and in the route config) and a
//! [`Context`] with the step's settings, the route's lookup tables and a log.
//!
//! ```
//! use courier_plugin_sdk::{Context, Error, Message, MessageExt, Outcome, transform};
//!
//! /// Sets the receiving application the EMR expects.
//! #[transform]
//! fn to_emr(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
//!     let app = ctx.setting("receiving_application").unwrap_or_else(|| "EMR".into());
//!     msg.set_str("MSH-5", &app)?;
//!     Ok(Outcome::Keep)
//! }
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and name the `.wasm` file in
//! a route step. The crate's `Cargo.toml` needs:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! courier-plugin-sdk = { path = "…/plugin-sdk" }
//! ```
//!
//! # What the engine guarantees, and what it refuses
//!
//! - A fresh instance per message: statics, caches and the heap start empty every time, so
//!   nothing of one patient's message can be seen while processing the next.
//! - A CPU deadline (default 100 ms) and a memory cap (default 64 MiB) per call. Going over
//!   either, or panicking, fails that message on that route only.
//! - No files, environment, clock, randomness or network unless the route grants them: the
//!   standard library's `std::fs`, `std::env`, `std::net` calls return errors (the clock reads
//!   the Unix epoch and randomness is a fixed sequence).
//! - The log ([`Context::info`] and friends, and anything printed to stdout/stderr) goes
//!   through the engine, which redacts the message's patient identifiers and bounds its size.
//!
//! # Testing a plugin on the host
//!
//! The function is plain Rust: call it in a `#[test]` with a [`Context::for_test`], which
//! holds settings and tables in memory and records log lines.
//!
//! ```
//! use courier_plugin_sdk::{Context, Message};
//!
//! let msg = Message::parse(&b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1\rPID|1||42^^^RIVERSIDE^MR\r"[..])?;
//! let ctx = Context::for_test().with_setting("assigning_authority", "RIVERSIDE");
//! assert_eq!(ctx.setting("assigning_authority").as_deref(), Some("RIVERSIDE"));
//! assert_eq!(msg.get_str("PID-3.4")?.as_deref(), Some("RIVERSIDE"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

pub use courier_hl7 as hl7;
pub use courier_hl7::{Element, Message, Path, SegmentRef};

/// Marks the plugin's transform, the one function of a transform plugin:
/// `fn(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error>`.
///
/// The message arrives parsed (segments ending in `\r`, `\n` or `\r\n`). Edit it in place and
/// return [`Outcome::Keep`] to pass it on — the engine gets new bytes only if something was
/// changed — or [`Outcome::Drop`] to filter it out. An [`Error`] fails the message on this
/// route (the sender gets a negative acknowledgement where the route waits for processing).
///
/// ```
/// use courier_plugin_sdk::{Context, Error, Message, MessageExt, Outcome, transform};
///
/// #[transform]
/// fn upper_family_name(msg: &mut Message, _ctx: &Context) -> Result<Outcome, Error> {
///     if let Some(name) = msg.get_str("PID-5.1")? {
///         msg.set_str("PID-5.1", &name.to_uppercase())?;
///     }
///     Ok(Outcome::Keep)
/// }
/// # fn main() {}
/// ```
///
/// Misuse is a compile error naming the problem:
///
/// ```compile_fail
/// use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};
///
/// #[transform]
/// async fn map(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> { // async: refused
///     Ok(Outcome::Keep)
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};
///
/// #[transform]
/// fn map(msg: &Message, ctx: &Context) -> Result<Outcome, Error> { // needs &mut Message
///     Ok(Outcome::Keep)
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};
///
/// #[transform]
/// fn map<T>(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> { // generic: refused
///     Ok(Outcome::Keep)
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use courier_plugin_sdk::{Context, Error, Message, transform};
///
/// #[transform]
/// fn map(msg: &mut Message, ctx: &Context) -> Result<bool, Error> { // wrong result type
///     Ok(true)
/// }
/// # fn main() {}
/// ```
///
/// One entry point per plugin crate: a second [`transform`] or [`filter`] in the same crate is
/// a compile error. The plugin crate may not `forbid(unsafe_code)`: the generated component
/// bindings are unsafe code (they `allow` it locally, which `forbid` would refuse).
pub use courier_plugin_sdk_macros::transform;

/// Marks the plugin's filter, the one function of a filter plugin:
/// `fn(msg: &Message, ctx: &Context) -> Result<bool, Error>`.
///
/// `Ok(true)` keeps the message, `Ok(false)` drops it with the reason
/// `dropped by filter <function name>`. To give a reason of your own, return
/// `Result<Outcome, Error>` instead ([`Outcome::Drop`] with the reason). A filter cannot
/// change the message: the engine does not even read one back.
///
/// ```
/// use courier_plugin_sdk::{Context, Error, Message, filter};
///
/// #[filter]
/// fn production_only(msg: &Message, _ctx: &Context) -> Result<bool, Error> {
///     Ok(msg.get_str("MSH-11")?.as_deref() == Some("P"))
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use courier_plugin_sdk::{Context, Error, Message, filter};
///
/// #[filter]
/// fn keep(msg: &mut Message, ctx: &Context) -> Result<bool, Error> { // a filter reads only
///     Ok(true)
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use courier_plugin_sdk::{Context, Error, Message, filter};
///
/// #[filter]
/// fn keep(msg: &Message) -> Result<bool, Error> { // the context is missing
///     Ok(true)
/// }
/// # fn main() {}
/// ```
pub use courier_plugin_sdk_macros::filter;

/// The guest bindings of the plugin interface's imports (`courier:plugin/host`), generated
/// from `wit/plugin.wit`. The exports are generated in the plugin crate by [`transform`] and
/// [`filter`], each for its own world, so that a plugin's component declares exactly the one
/// export it implements.
#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: "
            package courier:plugin-sdk;
            world imports {
                import courier:plugin/host@0.1.1;
            }
        ",
        path: "../wit",
        world: "imports",
        generate_all,
    });
}

use bindings::courier::plugin::host as wit_host;

/// What a transform decided (a filter may return it too, to give its own drop reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Keep the message (with any changes made to it) and go on to the route's next step.
    Keep,
    /// Drop the message: it goes to none of the route's destinations. The reason is logged and
    /// stored; it must not contain patient data (the engine redacts it anyway).
    Drop(String),
}

/// A plugin's failure: the message errors on this route, with this reason in the log. The
/// reason must not contain patient data (the engine redacts it anyway).
///
/// The model's own errors convert with `?`:
///
/// ```
/// use courier_plugin_sdk::{Error, Message};
///
/// fn family_name(msg: &Message) -> Result<String, Error> {
///     msg.get_str("PID-5.1")?.ok_or_else(|| Error::new("PID-5.1 is empty"))
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this reason.
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }

    /// The reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::new(message)
    }
}

impl From<courier_hl7::PathError> for Error {
    fn from(e: courier_hl7::PathError) -> Error {
        Error::new(e.to_string())
    }
}

impl From<courier_hl7::EditError> for Error {
    fn from(e: courier_hl7::EditError) -> Error {
        Error::new(e.to_string())
    }
}

impl From<courier_hl7::ParseError> for Error {
    fn from(e: courier_hl7::ParseError) -> Error {
        Error::new(e.to_string())
    }
}

/// What a [`filter`] function may return inside its `Result`: `bool` (keep or drop) or
/// [`Outcome`] (keep, or drop with a reason of your own).
#[diagnostic::on_unimplemented(
    message = "a #[filter] function returns Result<bool, Error> or Result<Outcome, Error>, not Result<{Self}, Error>"
)]
pub trait IntoVerdict {
    /// `None` to keep the message, `Some(reason)` to drop it; `filter` names the function, for
    /// the default reason.
    fn into_drop_reason(self, filter: &str) -> Option<String>;
}

impl IntoVerdict for bool {
    fn into_drop_reason(self, filter: &str) -> Option<String> {
        (!self).then(|| format!("dropped by filter {filter}"))
    }
}

impl IntoVerdict for Outcome {
    fn into_drop_reason(self, _filter: &str) -> Option<String> {
        match self {
            Outcome::Keep => None,
            Outcome::Drop(reason) => Some(reason),
        }
    }
}

/// Log severity, for [`Context::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Detail for whoever debugs the mapping.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin worked around.
    Warn,
    /// Something that went wrong.
    Error,
}

/// What the step is given besides the message: its settings, the route's lookup tables and
/// the engine's log.
///
/// Inside the engine every call goes to the host. [`Context::for_test`] makes one that holds
/// everything in memory, for unit tests run on the build machine.
pub struct Context {
    inner: Inner,
}

enum Inner {
    Host,
    Test(Box<TestData>),
}

#[derive(Default)]
struct TestData {
    settings: HashMap<String, String>,
    tables: HashMap<String, HashMap<String, String>>,
    logs: RefCell<Vec<(Level, String)>>,
}

impl Context {
    /// The context of a real call (used by the code [`transform`] and [`filter`] generate).
    #[doc(hidden)]
    pub fn __host() -> Context {
        Context { inner: Inner::Host }
    }

    /// A context for tests: no settings, no tables, and log lines kept for
    /// [`Context::logged`].
    pub fn for_test() -> Context {
        Context {
            inner: Inner::Test(Box::default()),
        }
    }

    /// This test context with a setting added. (On a real context this does nothing.)
    pub fn with_setting(mut self, name: &str, value: &str) -> Context {
        if let Inner::Test(data) = &mut self.inner {
            data.settings.insert(name.to_owned(), value.to_owned());
        }
        self
    }

    /// This test context with a table entry added. (On a real context this does nothing.)
    pub fn with_lookup(mut self, table: &str, key: &str, value: &str) -> Context {
        if let Inner::Test(data) = &mut self.inner {
            data.tables
                .entry(table.to_owned())
                .or_default()
                .insert(key.to_owned(), value.to_owned());
        }
        self
    }

    /// The lines logged so far through a test context (empty on a real context, whose lines
    /// go to the engine).
    pub fn logged(&self) -> Vec<(Level, String)> {
        match &self.inner {
            Inner::Host => Vec::new(),
            Inner::Test(data) => data.logs.borrow().clone(),
        }
    }

    /// The step's setting `name` from the route config: strings as written, numbers and
    /// booleans as their JSON text; `None` when absent.
    pub fn setting(&self, name: &str) -> Option<String> {
        match &self.inner {
            Inner::Host => wit_host::setting(name),
            Inner::Test(data) => data.settings.get(name).cloned(),
        }
    }

    /// The setting `name`, or an [`Error`] naming it when it is absent.
    pub fn required_setting(&self, name: &str) -> Result<String, Error> {
        self.setting(name)
            .ok_or_else(|| Error::new(format!("the step's setting `{name}` is missing")))
    }

    /// A list setting, written in the config either as an array of strings
    /// (`hash = ["PID-3.1", "NK1-2"]`) or as comma-separated text (`hash = "PID-3.1, NK1-2"`);
    /// items are trimmed and empty ones skipped, so items cannot contain commas. `None` when
    /// the setting is absent.
    ///
    /// ```
    /// use courier_plugin_sdk::Context;
    ///
    /// let ctx = Context::for_test()
    ///     .with_setting("a", r#"["PID-3.1", "NK1-2"]"#)
    ///     .with_setting("b", "PID-3.1, NK1-2");
    /// assert_eq!(ctx.setting_list("a"), ctx.setting_list("b"));
    /// assert_eq!(ctx.setting_list("a").unwrap(), ["PID-3.1", "NK1-2"]);
    /// ```
    pub fn setting_list(&self, name: &str) -> Option<Vec<String>> {
        Some(split_list(&self.setting(name)?))
    }

    /// `key` in the route's lookup table `table`; `None` when the table or the key is absent.
    pub fn lookup(&self, table: &str, key: &str) -> Option<String> {
        match &self.inner {
            Inner::Host => wit_host::lookup(table, key),
            Inner::Test(data) => data.tables.get(table)?.get(key).cloned(),
        }
    }

    /// Writes a line to the engine's log. The engine redacts the message's patient identifiers
    /// in it and bounds how much one call may log.
    pub fn log(&self, level: Level, text: &str) {
        match &self.inner {
            Inner::Host => {
                let level = match level {
                    Level::Debug => wit_host::Level::Debug,
                    Level::Info => wit_host::Level::Info,
                    Level::Warn => wit_host::Level::Warn,
                    Level::Error => wit_host::Level::Error,
                };
                wit_host::log(level, text);
            }
            Inner::Test(data) => data.logs.borrow_mut().push((level, text.to_owned())),
        }
    }

    /// [`Context::log`] at debug level.
    pub fn debug(&self, text: &str) {
        self.log(Level::Debug, text);
    }

    /// [`Context::log`] at info level.
    pub fn info(&self, text: &str) {
        self.log(Level::Info, text);
    }

    /// [`Context::log`] at warn level.
    pub fn warn(&self, text: &str) {
        self.log(Level::Warn, text);
    }

    /// [`Context::log`] at error level.
    pub fn error(&self, text: &str) {
        self.log(Level::Error, text);
    }
}

/// A JSON array of strings (as the host renders a non-string setting) or comma-separated text.
fn split_list(text: &str) -> Vec<String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(t);
    inner
        .split(',')
        .map(|item| item.trim().trim_matches('"').trim())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Host => "host",
            Inner::Test(_) => "test",
        };
        f.debug_struct("Context").field("kind", &kind).finish()
    }
}

/// Convenience on [`Message`] for plugin code: paths given as text.
pub trait MessageExt {
    /// Sets the value at a path given as text, e.g. `msg.set_str("MSH-5", "EMR")`.
    fn set_str(&mut self, path: &str, value: &str) -> Result<(), Error>;
    /// Deletes what a path given as text names (see [`Message::delete`]).
    fn delete_str(&mut self, path: &str) -> Result<(), Error>;
}

impl MessageExt for Message {
    fn set_str(&mut self, path: &str, value: &str) -> Result<(), Error> {
        Ok(self.set(&Path::parse(path)?, value)?)
    }

    fn delete_str(&mut self, path: &str) -> Result<(), Error> {
        Ok(self.delete(&Path::parse(path)?)?)
    }
}

/// Used by the code [`transform`] and [`filter`] generate; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::{Context, Error, IntoVerdict, Message, Outcome};
    use courier_hl7::{Charset, ParseOptions};

    pub use crate::bindings::courier::plugin::host;
    pub use wit_bindgen;

    /// A transform's answer before it is turned into the world's generated type.
    pub enum Reply {
        /// Keep; when the message was changed, its new bytes as runs of the bytes the plugin
        /// was given and the bytes edits wrote.
        Keep(Option<Vec<courier_hl7::Span>>),
        /// Drop, with the reason.
        Drop(String),
    }

    fn parse(bytes: Vec<u8>, default_charset: &str) -> Result<Message, String> {
        // The host read this message under its listener's segment and field limits, which
        // may be above the defaults: the guest must not refuse what the host accepted.
        let opts = ParseOptions {
            default_charset: Charset::from_hl7(default_charset).unwrap_or_default(),
            ..ParseOptions::lenient().unlimited()
        };
        Message::parse_with(bytes, &opts)
            .map_err(|e| format!("the plugin could not read the message: {e}"))
    }

    /// Parses, calls the author's transform, and answers what changed only if something did:
    /// the segments it did not touch go back as positions in the bytes it was given, not
    /// copied (a large report with a few fields changed costs those fields, not a second copy
    /// of the report in the plugin's memory and a third in the engine's).
    pub fn run_transform(
        bytes: Vec<u8>,
        default_charset: &str,
        f: fn(&mut Message, &Context) -> Result<Outcome, Error>,
    ) -> Result<Reply, String> {
        let mut msg = parse(bytes, default_charset)?;
        match f(&mut msg, &Context::__host()) {
            Ok(Outcome::Keep) => Ok(Reply::Keep(msg.is_modified().then(|| msg.spans()))),
            Ok(Outcome::Drop(reason)) => Ok(Reply::Drop(reason)),
            Err(e) => Err(e.message),
        }
    }

    /// Parses and calls the author's filter: `None` keeps, `Some(reason)` drops.
    pub fn run_filter<V: IntoVerdict>(
        bytes: Vec<u8>,
        default_charset: &str,
        name: &str,
        f: fn(&Message, &Context) -> Result<V, Error>,
    ) -> Result<Option<String>, String> {
        let msg = parse(bytes, default_charset)?;
        match f(&msg, &Context::__host()) {
            Ok(v) => Ok(v.into_drop_reason(name)),
            Err(e) => Err(e.message),
        }
    }
}
