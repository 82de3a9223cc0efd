//! The contract every route step implements, and what a step is given.
//!
//! Steps are compiled once (at load or hot reload) and run once per message with a fresh
//! instance or scope, so nothing from one patient's message is visible to the next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_hl7::{Message, Path};

/// What a step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Keep the message (it may have been changed in place) and go on to the next step.
    Keep,
    /// Drop the message (filtered): it goes to no destination of this route.
    Drop {
        /// Why, for the store and the log (must not contain patient data).
        reason: String,
    },
}

/// Why a step failed; the message errors on this route only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepErrorKind {
    /// The step returned an error of its own.
    Failed,
    /// WASM trap or Rhai runtime error.
    Trap,
    /// The CPU / wall-clock deadline was hit.
    Timeout {
        /// The deadline.
        limit: Duration,
    },
    /// The memory cap was hit.
    MemoryLimit {
        /// The cap in bytes.
        limit: u64,
    },
    /// A Rhai limit (operations, string/array/map size, call depth) was hit.
    ScriptLimit {
        /// Which limit, e.g. `max_operations = 1000000`.
        limit: String,
    },
    /// The step produced something the engine cannot use (e.g. bytes that do not parse).
    BadOutput,
}

/// A step's failure: which step, what kind, and a message without patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {step}: {message}")]
pub struct StepError {
    /// The step's name (file name of the plugin or script).
    pub step: String,
    /// What kind of failure.
    pub kind: StepErrorKind,
    /// Human-readable reason, naming the limit and its value where one was hit.
    pub message: String,
}

/// Lookup tables declared in the route config: table name → key → value.
pub type Tables = HashMap<String, HashMap<String, String>>;

/// What a step is given besides the message.
#[derive(Debug, Clone, Default)]
pub struct StepContext {
    /// The route running the step (for logs).
    pub route: Arc<str>,
    /// MSH-10 of the message (for logs; not patient data).
    pub control_id: Arc<str>,
    /// The step's settings from the config (a JSON object; strings stay strings).
    pub settings: Arc<serde_json::Map<String, serde_json::Value>>,
    /// The route's lookup tables.
    pub tables: Arc<Tables>,
}

impl StepContext {
    /// A setting as text: strings as they are, other values as JSON.
    pub fn setting(&self, name: &str) -> Option<String> {
        self.settings.get(name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// `tables[table][key]`.
    pub fn lookup(&self, table: &str, key: &str) -> Option<String> {
        self.tables.get(table)?.get(key).cloned()
    }
}

/// A compiled step, ready to run once per message.
pub trait Step: Send + Sync {
    /// The step's name (its file name), for logs and the store.
    fn name(&self) -> &str;
    /// Hex SHA-256 of the plugin or script bytes, recorded with every message it touches.
    fn content_hash(&self) -> &str;
    /// Runs the step on one message. Blocking and CPU-bound: the engine calls it off the
    /// async runtime's worker threads.
    fn run(&self, msg: &mut Message, ctx: &StepContext) -> Result<Outcome, StepError>;
}

/// Fields that identify a patient or next of kin. A step's log text has every value found
/// at these paths in the current message replaced by `[redacted]`, so a plugin that logs
/// "no MRN for Johnson" does not put the name into the engine's log.
const PHI_PATHS: &[&str] = &[
    "PID-2", "PID-3", "PID-4", "PID-5", "PID-6", "PID-7", "PID-9", "PID-11", "PID-13", "PID-14",
    "PID-18", "PID-19", "PID-20", "NK1-2", "NK1-4", "NK1-5", "NK1-6", "GT1-3", "GT1-5", "GT1-6",
    "IN1-16", "IN1-19", "IN1-36", "IN2-2",
];

/// Replaces every patient-identifying value of `msg` (names, identifiers, birth date,
/// addresses, phone numbers — each component of [`PHI_PATHS`] over every occurrence and
/// repetition) found in `text` with `[redacted]`. Values shorter than 3 characters are left
/// alone (they would redact ordinary words and digits).
pub fn redact(text: &str, msg: &Message) -> String {
    let mut values: Vec<String> = Vec::new();
    for p in PHI_PATHS {
        let Ok(path) = Path::parse(p) else { continue };
        let seg = path.segment.as_str();
        for occurrence in 1..=msg.segment_occurrences(seg) {
            let Some(segment) = msg.segment(seg, occurrence) else {
                continue;
            };
            let Some(field) = path.field.and_then(|f| segment.field(f)) else {
                continue;
            };
            for rep in field.repetitions() {
                let whole = rep.value();
                values.push(whole);
                for comp in rep.components() {
                    values.push(comp.value());
                    for sub in comp.subcomponents() {
                        values.push(sub.value());
                    }
                }
            }
        }
    }
    // Longest first, so "Sarah Anne" goes before "Sarah".
    values.retain(|v| v.chars().count() >= 3);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    let mut out = text.to_owned();
    for v in &values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_patient_values_but_not_other_text() {
        let msg = Message::parse(
            b"MSH|^~\\&|A|B|C|D|1||ADT^A04|X|P|2.5\rPID|1||100234^^^CLINIC^MR||Johnson^Sarah||19780412|F|||12 Elm St^^Springfield\r".to_vec(),
        )
        .unwrap();
        let text = "no MRN 100234 for Johnson, Sarah (born 19780412) at 12 Elm St; route adt";
        assert_eq!(
            redact(text, &msg),
            "no MRN [redacted] for [redacted], [redacted] (born [redacted]) at [redacted]; route adt"
        );
    }
}
