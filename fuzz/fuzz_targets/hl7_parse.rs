//! The HL7 parser on arbitrary bytes, strict and lenient: it never panics; what it accepts
//! re-encodes to the very same bytes (the crate's lossless-index promise), reads safely all
//! the way down to sub-components, and passes the segment and field limits exactly at its own
//! counts but not one below them.
#![no_main]

use bytes::Bytes;
use courier_hl7::{Message, ParseError, ParseOptions, Path};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8], opts: ParseOptions) {
    let input = Bytes::copy_from_slice(data);
    let Ok(m) = Message::parse_with(input.clone(), &opts) else {
        return;
    };
    assert_eq!(
        m.encode(),
        input,
        "an accepted message re-encodes byte for byte"
    );

    let mut fields = 0;
    for (i, s) in m.segments().enumerate() {
        fields = fields.max(s.field_count());
        // Lookup by path is linear in the segments: only the first few, or long inputs would
        // spend the run here.
        if i < 16 {
            let path = Path::new(s.id()).with_occurrence(s.occurrence());
            assert_eq!(m.raw(&path), Some(s.raw()));
        }
        for f in s.fields() {
            let _ = f.value();
            for r in f.repetitions() {
                for c in r.components() {
                    for sc in c.subcomponents() {
                        let _ = sc.value();
                    }
                }
            }
        }
    }
    let _ = m.control_id();
    let _ = m.message_type();
    let _ = courier_hl7::to_json(&m);

    let segments = m.segment_count();
    assert!(segments <= opts.max_segments && fields <= opts.max_fields);
    let at = ParseOptions {
        max_segments: segments,
        max_fields: fields,
        ..opts
    };
    assert!(Message::parse_with(input.clone(), &at).is_ok());
    let below = ParseOptions {
        max_segments: segments - 1,
        ..at
    };
    assert!(matches!(
        Message::parse_with(input.clone(), &below),
        Err(ParseError::TooManySegments { .. })
    ));
    let below = ParseOptions {
        max_fields: fields - 1,
        ..at
    };
    assert!(matches!(
        Message::parse_with(input, &below),
        Err(ParseError::TooManyFields { .. })
    ));
}

fuzz_target!(|data: &[u8]| {
    check(data, ParseOptions::default());
    check(data, ParseOptions::lenient());
});
