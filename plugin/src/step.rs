//! The contract every route step implements, and what a step is given.
//!
//! Steps are compiled once (at load or hot reload) and run once per message with a fresh
//! instance or scope, so nothing from one patient's message is visible to the next.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_hl7::Message;

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

impl StepErrorKind {
    /// One word for the kind, for metrics and logs: `failed`, `trap`, `timeout`, `memory`,
    /// `script_limit`, `bad_output`.
    pub fn word(&self) -> &'static str {
        match self {
            StepErrorKind::Failed => "failed",
            StepErrorKind::Trap => "trap",
            StepErrorKind::Timeout { .. } => "timeout",
            StepErrorKind::MemoryLimit { .. } => "memory",
            StepErrorKind::ScriptLimit { .. } => "script_limit",
            StepErrorKind::BadOutput => "bad_output",
        }
    }
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
    /// Whether [`Step::run`] always makes the same result of the same message, settings and
    /// tables, with no effect outside the message: no clock, no randomness, no files, no
    /// state kept from one call to the next. The engine then runs a chain of such steps once
    /// for routes that share it. `false` unless a step says otherwise.
    fn deterministic(&self) -> bool {
        false
    }
}

/// Which components of a PHI field are patient data.
#[derive(Clone, Copy)]
enum Parts {
    /// The whole field: every component and sub-component of every repetition.
    All,
    /// Only these components (1-based) of every repetition, with their sub-components: the
    /// rest of the field names who issued a value or what kind it is (CX-4 assigning
    /// authority, CX-5 identifier type code, XTN-2/3 use and equipment codes, XAD-7 address
    /// type), which is not patient data and would redact ordinary words such as `MR`.
    Only(&'static [usize]),
}

/// CX (extended composite id): CX-1, the identifier itself. CX-2/3 (check digit and scheme),
/// CX-4 (assigning authority), CX-5 (identifier type code), CX-6 (assigning facility) and the
/// dates after them name the identifier's issuer and kind, not the patient.
const CX: Parts = Parts::Only(&[1]);
/// XPN (person name): family, given, middle, suffix, prefix, degree; not XPN-7 (name type
/// code) and the codes after it.
const XPN: Parts = Parts::Only(&[1, 2, 3, 4, 5, 6]);
/// XAD (address): street, other designation, city, state, zip, other geographic designation,
/// county; not XAD-6 (country) or XAD-7 (address type code).
const XAD: Parts = Parts::Only(&[1, 2, 3, 4, 5, 8, 9]);
/// XTN (telecom number): the number as text, e-mail, country/area/local number, extension,
/// free text, unformatted number; not XTN-2 (use code, `PRN`) or XTN-3 (equipment, `PH`).
const XTN: Parts = Parts::Only(&[1, 4, 5, 6, 7, 8, 9, 12]);
/// DLN (driver's license): DLN-1, the number; not the issuing state or the expiry date.
const DLN: Parts = Parts::Only(&[1]);

/// Fields that identify a patient or next of kin (segment, field, which parts). A step's log
/// text has every value found there in the current message replaced by `[redacted]`, so a
/// plugin that logs "no MRN for Johnson" does not put the name into the engine's log.
const PHI_FIELDS: &[(&str, usize, Parts)] = &[
    ("PID", 2, CX),          // patient id (v2.3 and earlier)
    ("PID", 3, CX),          // patient identifier list: MRN, SSN, payer ids
    ("PID", 4, CX),          // alternate patient id
    ("PID", 5, XPN),         // patient name
    ("PID", 6, XPN),         // mother's maiden name
    ("PID", 7, Parts::All),  // date/time of birth
    ("PID", 9, XPN),         // patient alias
    ("PID", 11, XAD),        // patient address
    ("PID", 13, XTN),        // home phone
    ("PID", 14, XTN),        // business phone
    ("PID", 18, CX),         // patient account number
    ("PID", 19, Parts::All), // SSN (ST)
    ("PID", 20, DLN),        // driver's license
    ("NK1", 2, XPN),         // next of kin name
    ("NK1", 4, XAD),         // next of kin address
    ("NK1", 5, XTN),         // next of kin phone
    ("NK1", 6, XTN),         // next of kin business phone
    ("GT1", 3, XPN),         // guarantor name
    ("GT1", 5, XAD),         // guarantor address
    ("GT1", 6, XTN),         // guarantor home phone
    ("IN1", 16, XPN),        // name of insured
    ("IN1", 19, XAD),        // insured's address
    ("IN1", 36, Parts::All), // policy number (ST)
    ("IN2", 2, Parts::All),  // insured's SSN (ST)
];

/// Replaces every patient-identifying value of `msg` found in `text` with `[redacted]`: the
/// parts of [`PHI_FIELDS`] that are patient data (names, identifiers, birth date, addresses,
/// phone numbers), over every occurrence and repetition, each component and sub-component on
/// its own. Values shorter than 3 characters are left alone (they would redact ordinary
/// words and digits).
pub fn redact(text: &str, msg: &Message) -> String {
    let mut values: Vec<String> = Vec::new();
    for &(seg, field, parts) in PHI_FIELDS {
        for occurrence in 1..=msg.segment_occurrences(seg) {
            let Some(field) = msg.segment(seg, occurrence).and_then(|s| s.field(field)) else {
                continue;
            };
            for rep in field.repetitions() {
                for (n, comp) in rep.components().enumerate() {
                    if let Parts::Only(wanted) = parts
                        && !wanted.contains(&(n + 1))
                    {
                        continue;
                    }
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
    values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
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

    fn adt(pid: &str) -> Message {
        Message::parse(format!("MSH|^~\\&|A|B|C|D|1||ADT^A04|X|P|2.5\r{pid}\r").into_bytes())
            .unwrap()
    }

    #[test]
    fn identifiers_are_redacted_but_not_their_authority_or_type() {
        let msg = adt(
            "PID|1|P00017^^^OLDSYS^PI|100234^^^RIVERSIDE&2.16.840.1.113883.3.1&ISO^MR~123456789^^^USSSA^SS|ALT555^^^CLINIC^PI|Johnson^Sarah||19780412|F||||||||||ACC8812^^^RIVERSIDE^AN|987-65-4320|S1234567^IL^20300101",
        );
        let text = "MRN 100234 (MR from RIVERSIDE, 2.16.840.1.113883.3.1 ISO); SSN 123456789 (SS, USSSA); \
                    old P00017 (PI, OLDSYS); alt ALT555 at CLINIC; account ACC8812 (AN); \
                    ssn 987-65-4320; licence S1234567 (IL, 20300101)";
        assert_eq!(
            redact(text, &msg),
            "MRN [redacted] (MR from RIVERSIDE, 2.16.840.1.113883.3.1 ISO); SSN [redacted] (SS, USSSA); \
             old [redacted] (PI, OLDSYS); alt [redacted] at CLINIC; account [redacted] (AN); \
             ssn [redacted]; licence [redacted] (IL, 20300101)"
        );
        // The whole identifier as ER7 loses its id, keeps the rest.
        assert_eq!(
            redact("PID-3 was 100234^^^RIVERSIDE^MR", &msg),
            "PID-3 was [redacted]^^^RIVERSIDE^MR"
        );
    }

    #[test]
    fn phone_and_address_codes_are_not_redacted() {
        let msg = adt(
            "PID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah^Anne^^^^L||19780412|F|||12 Elm St^Apt 4^Springfield^IL^62704^USA^H||(217)555-0142^PRN^PH^^1^217^5550142~^NET^Internet^sarah.j@example.org",
        );
        let text = "Johnson Sarah Anne at 12 Elm St, Apt 4, Springfield 62704 (H, USA); \
                    PRN PH (217)555-0142 217 5550142; NET Internet sarah.j@example.org";
        assert_eq!(
            redact(text, &msg),
            "[redacted] [redacted] [redacted] at [redacted], [redacted], [redacted] [redacted] (H, USA); \
             PRN PH [redacted] [redacted] [redacted]; NET Internet [redacted]"
        );
    }

    #[test]
    fn every_repetition_and_occurrence_is_covered() {
        let msg = Message::parse(
            b"MSH|^~\\&|A|B|C|D|1||ADT^A04|X|P|2.5\rPID|1||111222^^^A^MR~333444^^^B^PI\rNK1|1|Doe^Jane\rNK1|2|Roe^Richard|||555-0101^PRN^PH\r"
                .to_vec(),
        )
        .unwrap();
        assert_eq!(
            redact("111222 333444 Doe Jane Roe Richard 555-0101 PRN", &msg),
            "[redacted] [redacted] [redacted] [redacted] [redacted] [redacted] [redacted] PRN"
        );
    }
}
