//! Differential tests against hl7-parser: on the example messages and on generated simple
//! messages, every segment, field, repetition, component and sub-component hl7-parser reads
//! equals ours — raw, and decoded where both decode alike.
//!
//! Known, deliberate differences that are not compared: hl7-parser decodes `\.br\` to `\r`
//! (we give `\n`, as the standard means a line break), decodes only `\X0A\`/`\X0D\` of the hex
//! escapes, and indexes its escape decoding by character rather than byte, so it garbles
//! non-ASCII text before an escape. Decoded values are therefore compared only for ASCII text
//! whose escapes are all among `\F\ \S\ \T\ \R\ \E\`. hl7-parser also stops reading (without
//! error) at a segment that has no field separator; only the segments it read are compared.

mod common;

use bytes::Bytes;
use common::{Escapes, config, message, simple_escapes};
use courier_hl7::Message;
use proptest::prelude::*;

/// Compares everything both parsers read; returns how many leaves were compared decoded.
fn compare(input: &str) -> Result<usize, TestCaseError> {
    let ours = Message::parse(Bytes::copy_from_slice(input.as_bytes()))
        .map_err(|e| TestCaseError::fail(format!("ours: {e}")))?;
    let theirs = hl7_parser::parse_message(input)
        .map_err(|e| TestCaseError::fail(format!("hl7-parser: {e}")))?;
    let esc = ours.delimiters().escape.map(char::from).unwrap_or('\\');
    let seps = theirs.separators;
    prop_assert!(!theirs.segments.is_empty());
    prop_assert!(theirs.segments.len() <= ours.segment_count());
    let mut decoded = 0;
    for (seg, tseg) in ours.segments().zip(&theirs.segments) {
        prop_assert_eq!(seg.id(), tseg.name);
        prop_assert_eq!(seg.raw(), tseg.raw_value().as_bytes());
        prop_assert_eq!(seg.field_count(), tseg.fields.len(), "{}", seg.id());
        for (n, tf) in (1..).zip(&tseg.fields) {
            let f = seg.field(n).unwrap();
            prop_assert_eq!(f.raw(), tf.raw_value().as_bytes(), "{}-{}", seg.id(), n);
            if seg.is_msh() && n <= 2 {
                continue;
            }
            let reps: Vec<_> = f.repetitions().collect();
            prop_assert_eq!(reps.len(), tf.repeats.len(), "{}-{}", seg.id(), n);
            for (rep, trep) in reps.iter().zip(&tf.repeats) {
                prop_assert_eq!(rep.raw(), trep.raw_value().as_bytes());
                let comps: Vec<_> = rep.components().collect();
                prop_assert_eq!(comps.len(), trep.components.len(), "{}-{}", seg.id(), n);
                for (comp, tcomp) in comps.iter().zip(&trep.components) {
                    prop_assert_eq!(comp.raw(), tcomp.raw_value().as_bytes());
                    let subs: Vec<_> = comp.subcomponents().collect();
                    prop_assert_eq!(subs.len(), tcomp.subcomponents.len());
                    for (sub, tsub) in subs.iter().zip(&tcomp.subcomponents) {
                        prop_assert_eq!(sub.raw(), tsub.raw_value().as_bytes());
                        if simple_escapes(tsub.raw_value(), esc) {
                            let theirs = tsub.display(&seps).to_string();
                            prop_assert_eq!(sub.value(), theirs, "{}-{}", seg.id(), n);
                            decoded += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(decoded)
}

#[test]
fn examples_agree() {
    for (name, bytes) in common::examples() {
        let text = std::str::from_utf8(&bytes).unwrap();
        let theirs = hl7_parser::parse_message(text).unwrap();
        let ours = Message::parse(bytes.clone()).unwrap();
        assert_eq!(
            theirs.segments.len(),
            ours.segment_count(),
            "{name}: all segments"
        );
        let decoded = compare(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            decoded > 50,
            "{name}: only {decoded} values compared decoded"
        );
    }
}

#[test]
fn escapes_agree_where_both_decode_alike() {
    let text = "MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\r";
    assert_eq!(compare(text).unwrap(), 14);
    let ours = Message::parse(text.as_bytes().to_vec()).unwrap();
    assert_eq!(
        ours.get_str("NTE-3").unwrap().as_deref(),
        Some("a|b^c&d~e\\f")
    );
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn generated_messages_agree(g in message(Escapes::Simple, false)) {
        compare(&g.render())?;
    }
}
