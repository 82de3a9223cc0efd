//! Differential: our parser against the `hl7-parser` crate (0.3) on any UTF-8 input both
//! accept. For the segments hl7-parser read, the segment IDs, the raw bytes of every segment,
//! field, repetition, component and sub-component, and the decoded value of every leaf both
//! decode alike must be equal.
//!
//! What is excluded, and why (documented in docs/fuzzing.md too):
//! - hl7-parser stops reading, without error, at the first segment it cannot read (no field
//!   separator after the ID, an empty line, a segment ID of Unicode letters): only the segments
//!   it read are compared, and those must be a prefix of ours.
//! - hl7-parser reads MSH-2 as exactly four characters; ours takes 2 to 5 (a fifth is the v2.7
//!   truncation character). Only messages whose MSH-2 is exactly four characters are compared.
//! - Line endings: both are run strict (`\r` only). Our strict mode refuses a `\n`; hl7-parser
//!   reads it as data, so inputs holding `\n` are never accepted by both.
//! - Escapes: hl7-parser decodes `\.br\` to `\r` (ours `\n`), decodes only `\X0A\`/`\X0D\` of
//!   the hex escapes, and indexes its decoding by character, garbling non-ASCII text before an
//!   escape; decoded values are compared only for ASCII leaves whose escapes are all among
//!   `\F\ \S\ \T\ \R\ \E\` (as hl7/tests/differential.rs does).
//! - MSH-1 and MSH-2 are compared raw only (neither parser splits them).
#![no_main]

use bytes::Bytes;
use courier_hl7::Message;
use libfuzzer_sys::fuzz_target;

/// Whether every escape sequence in `raw` is one of `F S T R E`, and `raw` is ASCII.
fn simple_escapes(raw: &str, escape: char) -> bool {
    if !raw.is_ascii() {
        return false;
    }
    let parts: Vec<&str> = raw.split(escape).collect();
    parts.len() % 2 == 1
        && parts
            .iter()
            .skip(1)
            .step_by(2)
            .all(|s| matches!(*s, "F" | "S" | "T" | "R" | "E"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ours) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let d = *ours.delimiters();
    if d.escape.is_none() || !d.has_subcomponents() || d.truncation.is_some() {
        return;
    }
    let Ok(theirs) = hl7_parser::parse_message(text) else {
        return;
    };
    let esc = char::from(d.escape.unwrap_or(b'\\'));
    let seps = theirs.separators;
    assert!(!theirs.segments.is_empty());
    assert!(theirs.segments.len() <= ours.segment_count());
    for (seg, tseg) in ours.segments().zip(&theirs.segments) {
        assert_eq!(seg.id(), tseg.name);
        assert_eq!(seg.raw(), tseg.raw_value().as_bytes());
        assert_eq!(seg.field_count(), tseg.fields.len(), "{}", seg.id());
        for (n, tf) in (1..).zip(&tseg.fields) {
            let f = seg.field(n).unwrap();
            assert_eq!(f.raw(), tf.raw_value().as_bytes(), "{}-{n}", seg.id());
            if seg.is_msh() && n <= 2 {
                continue;
            }
            let reps: Vec<_> = f.repetitions().collect();
            assert_eq!(reps.len(), tf.repeats.len(), "{}-{n}", seg.id());
            for (rep, trep) in reps.iter().zip(&tf.repeats) {
                assert_eq!(rep.raw(), trep.raw_value().as_bytes());
                let comps: Vec<_> = rep.components().collect();
                assert_eq!(comps.len(), trep.components.len(), "{}-{n}", seg.id());
                for (comp, tcomp) in comps.iter().zip(&trep.components) {
                    assert_eq!(comp.raw(), tcomp.raw_value().as_bytes());
                    let subs: Vec<_> = comp.subcomponents().collect();
                    assert_eq!(subs.len(), tcomp.subcomponents.len());
                    for (sub, tsub) in subs.iter().zip(&tcomp.subcomponents) {
                        assert_eq!(sub.raw(), tsub.raw_value().as_bytes());
                        if simple_escapes(tsub.raw_value(), esc) {
                            let decoded = tsub.display(&seps).to_string();
                            assert_eq!(sub.value(), decoded, "{}-{n}", seg.id());
                        }
                    }
                }
            }
        }
    }
});
