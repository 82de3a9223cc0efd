//! A minimal tracing subscriber that records every event and span as `name=value` text, for
//! tests that check what is logged (and that no payload is).
//!
//! It is installed once as the global subscriber and records into the calling thread's
//! buffer, if one is set. (A per-thread `set_default` subscriber per test races with other test
//! threads over tracing's per-callsite interest cache, and sometimes missed lines.)

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub text: String,
}

/// Records every event and span as `name=value` text into the thread's buffer.
#[derive(Default)]
struct Capture {
    next_span: std::sync::atomic::AtomicU64,
}

thread_local! {
    static BUFFER: std::cell::RefCell<Option<Arc<Mutex<Vec<Line>>>>> =
        const { std::cell::RefCell::new(None) };
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl Capture {
    fn push(&self, level: Level, text: String) {
        BUFFER.with(|b| {
            if let Some(lines) = &*b.borrow() {
                lines.lock().unwrap().push(Line { level, text });
            }
        });
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut fields);
        self.push(*attrs.metadata().level(), fields.0);
        Id::from_u64(
            1 + self
                .next_span
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        )
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut fields = Fields("record".to_owned());
        values.record(&mut fields);
        self.push(Level::TRACE, fields.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.push(*event.metadata().level(), fields.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Captures everything logged on this thread (tests run on a current-thread runtime, so
/// that includes the server's tasks) until the guard drops.
pub fn capture() -> (Arc<Mutex<Vec<Line>>>, Guard) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Capture::default()).expect("no other subscriber");
    });
    let lines = Arc::new(Mutex::new(Vec::new()));
    BUFFER.with(|b| *b.borrow_mut() = Some(Arc::clone(&lines)));
    (lines, Guard)
}

/// Stops recording on this thread when dropped.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        BUFFER.with(|b| *b.borrow_mut() = None);
    }
}

pub fn find(lines: &Mutex<Vec<Line>>, level: Level, needles: &[&str]) -> bool {
    lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.level == level && needles.iter().all(|n| l.text.contains(n)))
}
