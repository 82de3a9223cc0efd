//! `deidentify`: strips a message down for a research feed. The EMR, the lab and billing get
//! the real message on their own routes; only the research destination's route runs this.
//!
//! Settings (lists are arrays of paths or comma-separated text):
//! - `hash` (default `["PID-3.1"]`): each value is replaced by a pseudonym, the first 32 hex
//!   digits of SHA-256(salt, value), so the research team can link a patient's messages
//!   without knowing who it is.
//! - `salt` (required when `hash` is not empty): a secret of the route, at least 16 characters;
//!   without it a pseudonym of a known MRN could be recomputed.
//! - `remove` (default `["PID-5", "PID-6", "PID-11", "PID-13", "PID-14", "PID-18", "PID-19",
//!   "PID-20"]`): emptied.
//! - `year_only` (default `["PID-7"]`): a date or timestamp cut to its year (`19780412` →
//!   `1978`); a value that does not start with a year is emptied.
//! - `remove_segments` (default `["NK1", "GT1", "IN1", "IN2"]`): every such segment removed
//!   (next of kin, guarantor and insured persons are identifiers too).
//!
//! A path without a segment occurrence applies to every occurrence (`NTE-3`: every NTE), and
//! one without a repetition to every repetition of its field (`PID-3.1`: the id of every
//! identifier). Free text (NTE, OBX-5 of type TX/FT) is not scanned: list it if a feed needs it.
//! The defaults are a starting point, not a legal de-identification standard.

use courier_plugin_sdk::{Context, Error, Message, Outcome, Path, transform};
use sha2::{Digest, Sha256};

const DEFAULT_HASH: &[&str] = &["PID-3.1"];
const DEFAULT_REMOVE: &[&str] = &[
    "PID-5", "PID-6", "PID-11", "PID-13", "PID-14", "PID-18", "PID-19", "PID-20",
];
const DEFAULT_YEAR_ONLY: &[&str] = &["PID-7"];
const DEFAULT_REMOVE_SEGMENTS: &[&str] = &["NK1", "GT1", "IN1", "IN2"];
const MIN_SALT_LEN: usize = 16;

fn list(ctx: &Context, name: &str, default: &[&str]) -> Vec<String> {
    ctx.setting_list(name)
        .unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
}

fn paths(ctx: &Context, name: &str, default: &[&str]) -> Result<Vec<Path>, Error> {
    list(ctx, name, default)
        .iter()
        .map(|p| Path::parse(p).map_err(|e| Error::new(format!("the setting `{name}`: {e}"))))
        .collect()
}

#[transform]
fn deidentify(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let hash = paths(ctx, "hash", DEFAULT_HASH)?;
    let remove = paths(ctx, "remove", DEFAULT_REMOVE)?;
    let year_only = paths(ctx, "year_only", DEFAULT_YEAR_ONLY)?;
    let segments = list(ctx, "remove_segments", DEFAULT_REMOVE_SEGMENTS);
    let salt = ctx.setting("salt").unwrap_or_default();
    if !hash.is_empty() && salt.chars().count() < MIN_SALT_LEN {
        return Err(Error::new(format!(
            "the setting `salt` must be at least {MIN_SALT_LEN} characters when `hash` lists paths"
        )));
    }
    for path in &hash {
        for leaf in leaves(msg, path, "hash")? {
            if let Some(value) = msg.get(&leaf).filter(|v| !v.is_empty()) {
                msg.set(&leaf, &pseudonym(&salt, &value))?;
            }
        }
    }
    for path in &year_only {
        for leaf in leaves(msg, path, "year_only")? {
            if let Some(value) = msg.get(&leaf).filter(|v| !v.is_empty()) {
                let year: String = value.chars().take(4).collect();
                let year = if year.len() == 4 && year.chars().all(|c| c.is_ascii_digit()) {
                    year
                } else {
                    String::new()
                };
                msg.set(&leaf, &year)?;
            }
        }
    }
    for path in &remove {
        if path.field.is_none() {
            return Err(Error::new(format!(
                "the setting `remove` lists {path}, a segment: use `remove_segments`"
            )));
        }
        for occurrence in occurrences(msg, path) {
            msg.delete(&path.clone().with_occurrence(occurrence))?;
        }
    }
    for id in &segments {
        let doomed: Vec<usize> = msg
            .segments()
            .filter(|s| s.id() == id.as_str())
            .map(|s| s.index())
            .collect();
        for index in doomed.into_iter().rev() {
            msg.remove_segment(index)?;
        }
    }
    Ok(Outcome::Keep)
}

/// The occurrences a path applies to: its own, or every one of its segment.
fn occurrences(msg: &Message, path: &Path) -> Vec<usize> {
    match path.occurrence {
        Some(o) => vec![o],
        None => (1..=msg.segment_occurrences(&path.segment)).collect(),
    }
}

/// Every (occurrence, repetition) a value path applies to, as explicit paths.
fn leaves(msg: &Message, path: &Path, setting: &str) -> Result<Vec<Path>, Error> {
    let Some(field) = path.field else {
        return Err(Error::new(format!(
            "the setting `{setting}` lists {path}: it needs a field, e.g. {}-3",
            path.segment
        )));
    };
    let mut out = Vec::new();
    for occurrence in occurrences(msg, path) {
        let at = path.clone().with_occurrence(occurrence);
        let reps: Vec<usize> = match path.repetition {
            Some(r) => vec![r],
            None => {
                let field_path = Path::new(&path.segment)
                    .with_occurrence(occurrence)
                    .with_field(field);
                (1..=msg.repetition_count(&field_path)).collect()
            }
        };
        out.extend(reps.into_iter().map(|r| at.clone().with_repetition(r)));
    }
    Ok(out)
}

/// The first 32 hex digits of SHA-256(salt ‖ 0 ‖ value).
fn pseudonym(salt: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}
