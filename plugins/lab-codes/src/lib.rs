//! `lab-codes`: maps the codes of orders (OBR-4) and results (OBX-3) between the clinic's
//! local codes and LOINC, through a lookup table of the route.
//!
//! Settings:
//! - `table` (required): the route's lookup table, keyed by the code to replace. For
//!   `to_loinc` it maps local codes to LOINC (`CBC = "58410-2"`), for `to_local` LOINC to local
//!   codes (a second table, `"58410-2" = "CBC"`): a lookup table is one-way.
//! - `direction`: `to_loinc` (default) or `to_local`. Codes already in the target system
//!   (coding system `LN`, resp. anything but `LN`) are left alone; the coding system
//!   (component 3) becomes `LN` or `L`.
//! - `keep_original`: `true` (default) moves the replaced code, text and coding system to the
//!   alternate identifier (components 4–6), as HL7's CWE intends, so the receiver sees both.
//! - `on_unknown`: `keep` (default: leave the code, log a warning naming the code and
//!   position) or `error` (fail the message).
//!
//! Lab codes are not patient data, so log lines and errors may name them.

use courier_plugin_sdk::{Context, Error, Message, Outcome, Path, transform};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToLoinc,
    ToLocal,
}

struct Settings {
    table: String,
    direction: Direction,
    keep_original: bool,
    error_on_unknown: bool,
}

fn settings(ctx: &Context) -> Result<Settings, Error> {
    let table = ctx.required_setting("table")?;
    let direction = match ctx.setting("direction").as_deref().map(str::trim) {
        None | Some("to_loinc") => Direction::ToLoinc,
        Some("to_local") => Direction::ToLocal,
        Some(other) => {
            return Err(Error::new(format!(
                "the setting `direction` is \"to_loinc\" or \"to_local\", not {other:?}"
            )));
        }
    };
    let keep_original = match ctx.setting("keep_original").as_deref().map(str::trim) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(Error::new(format!(
                "the setting `keep_original` is true or false, not {other:?}"
            )));
        }
    };
    let error_on_unknown = match ctx.setting("on_unknown").as_deref().map(str::trim) {
        None | Some("keep") => false,
        Some("error") => true,
        Some(other) => {
            return Err(Error::new(format!(
                "the setting `on_unknown` is \"keep\" or \"error\", not {other:?}"
            )));
        }
    };
    Ok(Settings {
        table,
        direction,
        keep_original,
        error_on_unknown,
    })
}

#[transform]
fn lab_codes(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let s = settings(ctx)?;
    for (segment, field) in [("OBR", 4), ("OBX", 3)] {
        for occurrence in 1..=msg.segment_occurrences(segment) {
            map_code(msg, ctx, &s, segment, occurrence, field)?;
        }
    }
    Ok(Outcome::Keep)
}

fn map_code(
    msg: &mut Message,
    ctx: &Context,
    s: &Settings,
    segment: &str,
    occurrence: usize,
    field: usize,
) -> Result<(), Error> {
    let at = |c: usize| {
        Path::new(segment)
            .with_occurrence(occurrence)
            .with_field(field)
            .with_component(c)
    };
    let code = msg.get(&at(1)).unwrap_or_default();
    if code.trim().is_empty() {
        return Ok(());
    }
    let system = msg.get(&at(3)).unwrap_or_default();
    let is_loinc = system.trim().eq_ignore_ascii_case("LN");
    let (already, target_system) = match s.direction {
        Direction::ToLoinc => (is_loinc, "LN"),
        Direction::ToLocal => (!is_loinc, "L"),
    };
    if already {
        return Ok(());
    }
    let position = format!("{segment}[{occurrence}]-{field}");
    let Some(mapped) = ctx.lookup(&s.table, code.trim()) else {
        let what = match s.direction {
            Direction::ToLoinc => "no LOINC code for local code",
            Direction::ToLocal => "no local code for LOINC code",
        };
        let line = format!("{position}: {what} {} (table {})", code.trim(), s.table);
        if s.error_on_unknown {
            return Err(Error::new(line));
        }
        ctx.warn(&format!("{line}; left as it is"));
        return Ok(());
    };
    if s.keep_original {
        let text = msg.get(&at(2)).unwrap_or_default();
        msg.set(&at(4), &code)?;
        msg.set(&at(5), &text)?;
        msg.set(&at(6), &system)?;
    }
    msg.set(&at(1), &mapped)?;
    msg.set(&at(3), target_system)?;
    Ok(())
}
