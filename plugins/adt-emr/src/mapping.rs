//! The ADT → EMR mapping as plain Rust over `courier-hl7`, with no plugin machinery: the
//! `adt-emr` component calls it, and the engine's benchmark (`plugin/benches/step.rs`)
//! includes this very file to run the same mapping natively for comparison.
//!
//! What the EMR wants, and so what this does:
//! - PID-3 holds the clinic's medical record number only: the repetition whose assigning
//!   authority (CX-4.1) is the clinic's and whose identifier type (CX-5) is `MR` becomes the
//!   only one (`other_identifiers = "drop"`, the default: the EMR files every PID-3 repetition
//!   as an MRN, and an SSN or a payer's member id must not land there), or the first one with
//!   the others after it (`"keep"`). No such repetition is an error: the EMR would create a
//!   duplicate chart.
//! - Names (PID-5, every repetition; family, given and middle name) trimmed and upper-cased.
//! - Phone numbers (PID-13, PID-14, every repetition that is a phone, not an e-mail address)
//!   written to XTN-1 as `(217)555-0142` (`phone_format = "us"`, the default) or
//!   `+12175550142` (`"e164"`), read from XTN-1 or else from XTN-5/6/7. Only ten-digit North
//!   American numbers are rewritten; others are left as they are, with a warning that names
//!   the field, not the number.
//! - MSH-5/MSH-6 set to `receiving_application` / `receiving_facility` when given.
//!
//! Errors and warnings name fields and settings, never values: they go to the engine's log.

use courier_hl7::{Message, Path};

/// How phone numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneFormat {
    /// `(217)555-0142`
    Us,
    /// `+12175550142`
    E164,
}

/// What happens to the PID-3 repetitions that are not the clinic's MRN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherIdentifiers {
    /// Removed: PID-3 holds the MRN only.
    Drop,
    /// Kept after the MRN.
    Keep,
}

/// The step's settings, read once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// CX-4.1 of the clinic's MRN, e.g. `RIVERSIDE`.
    pub assigning_authority: String,
    /// CX-5 of the clinic's MRN; default `MR`.
    pub identifier_type: String,
    /// Default [`OtherIdentifiers::Drop`].
    pub other_identifiers: OtherIdentifiers,
    /// Default [`PhoneFormat::Us`].
    pub phone_format: PhoneFormat,
    /// MSH-5, when given.
    pub receiving_application: Option<String>,
    /// MSH-6, when given.
    pub receiving_facility: Option<String>,
}

impl Settings {
    /// Reads the settings through `get` (the step context's `setting`).
    pub fn from_settings(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let assigning_authority = get("assigning_authority")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or("the setting `assigning_authority` is missing (e.g. \"RIVERSIDE\")")?;
        let identifier_type = get("identifier_type")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "MR".to_owned());
        let other_identifiers = match get("other_identifiers").as_deref().map(str::trim) {
            None | Some("drop") => OtherIdentifiers::Drop,
            Some("keep") => OtherIdentifiers::Keep,
            Some(other) => {
                return Err(format!(
                    "the setting `other_identifiers` is \"drop\" or \"keep\", not {other:?}"
                ));
            }
        };
        let phone_format = match get("phone_format").as_deref().map(str::trim) {
            None | Some("us") => PhoneFormat::Us,
            Some("e164") => PhoneFormat::E164,
            Some(other) => {
                return Err(format!(
                    "the setting `phone_format` is \"us\" or \"e164\", not {other:?}"
                ));
            }
        };
        Ok(Settings {
            assigning_authority,
            identifier_type,
            other_identifiers,
            phone_format,
            receiving_application: get("receiving_application"),
            receiving_facility: get("receiving_facility"),
        })
    }
}

/// Applies the mapping; `warn` receives lines for the log (field names, never values).
pub fn apply(msg: &mut Message, s: &Settings, warn: &mut dyn FnMut(&str)) -> Result<(), String> {
    if msg.segment("PID", 1).is_none() {
        return Err("the message has no PID segment".to_owned());
    }
    choose_mrn(msg, s)?;
    normalise_names(msg)?;
    for field in [13, 14] {
        normalise_phones(msg, field, s.phone_format, warn)?;
    }
    if let Some(app) = &s.receiving_application {
        set_if_changed(msg, &Path::new("MSH").with_field(5), app)?;
    }
    if let Some(facility) = &s.receiving_facility {
        set_if_changed(msg, &Path::new("MSH").with_field(6), facility)?;
    }
    Ok(())
}

fn choose_mrn(msg: &mut Message, s: &Settings) -> Result<(), String> {
    let pid3 = Path::new("PID").with_field(3);
    let reps: Vec<(bool, String)> = match msg.element(&pid3) {
        Some(field) if !field.is_empty() => field
            .repetitions()
            .map(|rep| {
                let authority = rep
                    .component(4)
                    .and_then(|c| c.subcomponent(1))
                    .map(|e| e.value())
                    .unwrap_or_default();
                let kind = rep.component(5).map(|e| e.value()).unwrap_or_default();
                let mine = authority
                    .trim()
                    .eq_ignore_ascii_case(&s.assigning_authority)
                    && kind.trim().eq_ignore_ascii_case(&s.identifier_type);
                (mine, rep.er7())
            })
            .collect(),
        _ => Vec::new(),
    };
    let Some(index) = reps.iter().position(|(mine, _)| *mine) else {
        return Err(format!(
            "PID-3 has no identifier of type {} assigned by {}",
            s.identifier_type, s.assigning_authority
        ));
    };
    let sep = char::from(msg.delimiters().repetition);
    let mut field = reps[index].1.clone();
    if s.other_identifiers == OtherIdentifiers::Keep {
        for (k, (_, er7)) in reps.iter().enumerate() {
            if k != index {
                field.push(sep);
                field.push_str(er7);
            }
        }
    }
    let current = msg.get(&pid3).unwrap_or_default();
    if current != field {
        msg.set_raw(&pid3, &field).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn normalise_names(msg: &mut Message) -> Result<(), String> {
    let count = msg.repetition_count(&Path::new("PID").with_field(5));
    for rep in 1..=count {
        for component in 1..=3 {
            let path = Path::new("PID")
                .with_field(5)
                .with_repetition(rep)
                .with_component(component);
            let subs = msg.element(&path).map_or(0, |c| c.subcomponents().count());
            for sub in 1..=subs {
                let leaf = if subs == 1 {
                    path.clone()
                } else {
                    path.clone().with_subcomponent(sub)
                };
                if let Some(value) = msg.get(&leaf) {
                    let normal = value.trim().to_uppercase();
                    if normal != value {
                        msg.set(&leaf, &normal).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn normalise_phones(
    msg: &mut Message,
    field: usize,
    format: PhoneFormat,
    warn: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let count = msg.repetition_count(&Path::new("PID").with_field(field));
    for rep in 1..=count {
        let base = Path::new("PID").with_field(field).with_repetition(rep);
        let part = |c: usize| {
            msg.get(&base.clone().with_component(c))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let equipment = part(3);
        if equipment.eq_ignore_ascii_case("Internet") || equipment.eq_ignore_ascii_case("X.400") {
            continue;
        }
        let written = part(1);
        let source = if written.is_empty() {
            format!("{}{}{}", part(5), part(6), part(7))
        } else {
            written.clone()
        };
        if source.is_empty() {
            continue;
        }
        let Some(formatted) = format_phone(&source, format) else {
            warn(&format!(
                "PID-{field}[{rep}]: phone number in an unrecognised form, left as it is"
            ));
            continue;
        };
        if formatted != written {
            msg.set(&base.with_component(1), &formatted)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// A North American number (ten digits, optionally after country code 1) in `format`; `None`
/// for anything else.
pub fn format_phone(text: &str, format: PhoneFormat) -> Option<String> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let national = match digits.len() {
        10 => digits.as_str(),
        11 if digits.starts_with('1') => &digits[1..],
        _ => return None,
    };
    let (area, exchange, line) = (&national[..3], &national[3..6], &national[6..]);
    Some(match format {
        PhoneFormat::Us => format!("({area}){exchange}-{line}"),
        PhoneFormat::E164 => format!("+1{area}{exchange}{line}"),
    })
}

fn set_if_changed(msg: &mut Message, path: &Path, value: &str) -> Result<(), String> {
    if msg.get(path).as_deref() != Some(value) {
        msg.set(path, value).map_err(|e| e.to_string())?;
    }
    Ok(())
}
