//! What one call's store holds and how it is fenced in: the WASI context that grants nothing
//! unless the route says so, the memory limiter that remembers what it refused, the bounded
//! capture of the guest's stdout/stderr and log lines, and the clock overrides that keep a
//! sleeping guest from holding a host thread past its deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{
    Deterministic, FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder,
    WasiCtxView, WasiView,
};

use super::bindings::host;
use super::{Grants, WasmLimits};
use crate::step::Tables;

/// Log lines a plugin may write per call through the host; further ones are counted only.
pub(crate) const MAX_LOG_LINES: usize = 100;
/// Bytes kept of one log line (cut at a character boundary).
pub(crate) const MAX_LOG_LINE: usize = 2048;
/// Bytes kept of each of stdout and stderr per call.
pub(crate) const MAX_OUTPUT: usize = 16 * 1024;
/// Table elements a store may grow to: generous for Rust and C guests, bounded for hostile
/// ones (tables live outside the linear memory the memory cap counts).
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The WASI version wasmtime-wasi 48 registers its interfaces under; the overrides below must
/// use the same name to replace its functions.
const WASI_CLOCKS: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Severity of a plugin's log line, as the WIT `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLevel {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// The host's `log` function.
    Host,
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr (panic messages land here).
    Stderr,
    /// The engine itself, e.g. how many lines were dropped.
    Engine,
}

/// One line a plugin logged during a call, already redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// Where it came from.
    pub source: LogSource,
    /// The text with the message's patient identifiers replaced by `[redacted]`.
    pub text: String,
}

/// The data of one call's store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    settings: Arc<serde_json::Map<String, serde_json::Value>>,
    tables: Arc<Tables>,
    pub(crate) logs: Vec<(LogLevel, String)>,
    pub(crate) logs_dropped: u64,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    /// When the call started and how long it may sleep in all: the deadline plus two epoch
    /// ticks, so that a guest woken at the end is past its epoch deadline and stops at once.
    started: Instant,
    sleep_limit: Duration,
    clock_granted: bool,
}

impl HostState {
    /// A store's data for one call with these limits and grants. Fails only when a granted
    /// directory cannot be opened.
    pub(crate) fn new(
        limits: &WasmLimits,
        tick: Duration,
        settings: Arc<serde_json::Map<String, serde_json::Value>>,
        tables: Arc<Tables>,
    ) -> Result<HostState, String> {
        let stdout = Capture::new(MAX_OUTPUT);
        let stderr = Capture::new(MAX_OUTPUT);
        let wasi = wasi_ctx(&limits.grants, &stdout, &stderr)?;
        Ok(HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory),
            settings,
            tables,
            logs: Vec::new(),
            logs_dropped: 0,
            stdout,
            stderr,
            started: Instant::now(),
            sleep_limit: limits.deadline.saturating_add(tick.saturating_mul(2)),
            clock_granted: limits.grants.clock,
        })
    }

    /// Makes a kept store ready for its next call (`WasmLimits::reuse_instance`): that call's
    /// settings and tables, a sleep budget counted from now, and no refusal left over from
    /// the call before (log lines and output were taken when that call ended).
    pub(crate) fn begin_call(
        &mut self,
        settings: Arc<serde_json::Map<String, serde_json::Value>>,
        tables: Arc<Tables>,
    ) {
        self.settings = settings;
        self.tables = tables;
        self.started = Instant::now();
        self.limiter.refused = None;
        self.logs.clear();
        self.logs_dropped = 0;
    }

    /// How long a guest may sleep now: nothing without the clock grant (its clock is frozen,
    /// so waiting could never end), otherwise what is left of the deadline (and a little more),
    /// after which the epoch deadline stops it as soon as it runs again.
    fn sleep_budget(&self) -> Duration {
        if !self.clock_granted {
            return Duration::ZERO;
        }
        self.sleep_limit.saturating_sub(self.started.elapsed())
    }
}

impl HostState {
    /// The panic message the guest printed to stderr, if any (Rust prints
    /// `thread '…' panicked at file:line:col:` and the message on the next line).
    pub(crate) fn stderr_peek_panic(&self) -> Option<String> {
        let b = self.stderr.buf.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&b.bytes);
        let mut lines = text.lines();
        lines.find(|l| l.contains("panicked at"))?;
        let message = lines.next().unwrap_or_default().trim().to_owned();
        Some(cut(format!("panicked: {message}"), 512))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, text: String) {
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs_dropped += 1;
            return;
        }
        let level = match level {
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        self.logs.push((level, cut(text, MAX_LOG_LINE)));
    }

    fn setting(&mut self, name: String) -> Option<String> {
        self.settings.get(&name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    fn lookup(&mut self, table: String, key: String) -> Option<String> {
        self.tables.get(&table)?.get(&key).cloned()
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub(crate) fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" [cut]");
    }
    text
}

/// The WASI context of one call: nothing granted unless `grants` says so.
fn wasi_ctx(grants: &Grants, stdout: &Capture, stderr: &Capture) -> Result<WasiCtx, String> {
    let mut b = WasiCtxBuilder::new();
    // Stdin stays closed; stdout/stderr go to the bounded captures, never the engine's own.
    b.stdout(stdout.clone()).stderr(stderr.clone());
    for (k, v) in &grants.env {
        b.env(k, v);
    }
    for dir in &grants.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
            format!(
                "granted directory {} could not be opened: {e}",
                dir.host.display()
            )
        })?;
    }
    if !grants.clock {
        b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    if !grants.random {
        // A fixed sequence: the same in every call, so it carries nothing between messages.
        b.secure_random(Deterministic::new(vec![0x5a, 0xc3, 0x96, 0x3c]))
            .insecure_random(Deterministic::new(vec![0x3c, 0x96, 0xc3, 0x5a]))
            .insecure_random_seed(0);
    }
    // No sockets whatever the address, and no name lookups (the address check denies all by
    // default too; both say so explicitly).
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    Ok(b.build())
}

/// The clock of a plugin without the clock grant: always the Unix epoch, never advancing.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Replaces wasmtime-wasi's `subscribe-duration` and `subscribe-instant` so that no sleep
/// outlasts the call's deadline: the epoch deadline stops a guest only while it runs wasm, and
/// a guest blocked in the host's `poll` does not run wasm.
pub(crate) fn cap_sleeps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clocks = linker.instance(WASI_CLOCKS)?;
    clocks.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, HostState>, (nanos,): (u64,)| {
            let wanted = Duration::from_nanos(nanos);
            let budget = store.data().sleep_budget();
            cut_short(&mut store, wanted, budget);
            subscribe(store.data_mut(), wanted.min(budget))
        },
    )?;
    clocks.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, HostState>, (when,): (u64,)| {
            let budget = store.data().sleep_budget();
            let now = monotonic_clock::Host::now(&mut store.data_mut().clocks())?;
            let wanted = Duration::from_nanos(when.saturating_sub(now));
            cut_short(&mut store, wanted, budget);
            subscribe(store.data_mut(), wanted.min(budget))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A wait cut at the deadline means the call is out of time: the epoch deadline is brought to
/// now, so the guest stops the moment it runs again, however late the epoch thread is
/// ticking on a loaded machine. (Without the clock grant a wait just returns at once: the
/// frozen clock makes it meaningless, not overdue.)
fn cut_short(store: &mut StoreContextMut<'_, HostState>, wanted: Duration, budget: Duration) {
    if store.data().clock_granted && wanted > budget {
        store.set_epoch_deadline(0);
    }
}

fn subscribe(data: &mut HostState, wait: Duration) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
    let mut view = data.clocks();
    monotonic_clock::Host::subscribe_duration(&mut view, nanos).map(|p| (p,))
}

/// Caps the store's linear memory in total (all memories together) and remembers whether it
/// refused a growth, so that a trap that follows is reported as the memory limit it is.
pub(crate) struct Limiter {
    limit: usize,
    used: usize,
    /// The total the guest asked for when refused.
    pub(crate) refused: Option<usize>,
}

impl Limiter {
    fn new(limit: u64) -> Limiter {
        Limiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            refused: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        if maximum.is_some_and(|m| desired > m) {
            // The module's own maximum: its business, not our limit.
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Allowed by us but refused below (the pool's slot size): still the memory limit.
        self.refused.get_or_insert(self.used);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|m| desired <= m))
    }
}

/// A bounded capture of a guest's stdout or stderr: the first `cap` bytes are kept, the rest
/// counted and dropped. Writes never fail, so a chatty guest is not made to panic by its own
/// `println!`.
#[derive(Clone)]
pub(crate) struct Capture {
    cap: usize,
    buf: Arc<Mutex<CaptureBuf>>,
}

#[derive(Default)]
struct CaptureBuf {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Capture {
    fn new(cap: usize) -> Capture {
        Capture {
            cap,
            buf: Arc::default(),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(b.bytes.len());
        let keep = room.min(data.len());
        b.bytes.extend_from_slice(&data[..keep]);
        b.dropped += (data.len() - keep) as u64;
    }

    /// What was kept, and how many bytes were dropped.
    pub(crate) fn take(&self) -> (Vec<u8>, u64) {
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut b.bytes), std::mem::take(&mut b.dropped))
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: what goes past the cap is dropped, not refused.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
