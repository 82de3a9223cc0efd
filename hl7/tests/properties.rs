//! Properties over generated messages (random segments, fields, repetitions, components,
//! sub-components and escape sequences in random delimiter sets):
//! - parse reads back exactly the structure generated, and encode gives the input back;
//! - set then get returns the value, for any printable text (delimiters, escape characters,
//!   line breaks), also after encoding and parsing again;
//! - escape decode(encode(x)) == x for any bytes;
//! - the JSON round trip gives the message in its documented normal form, and is idempotent;
//! - the segment and field limits accept a message exactly at them and refuse it one below.

mod common;

use bytes::Bytes;
use common::{Escapes, Gen, config, message};
use courier_hl7::{
    Message, ParseError, ParseOptions, Path, decode, encode, from_json, to_json, write_json,
};
use proptest::prelude::*;

fn parse(g: &Gen) -> Message {
    let text = g.render();
    Message::parse(Bytes::from(text.clone())).unwrap_or_else(|e| panic!("{e}\n{text:?}"))
}

/// Every field, repetition, component and sub-component of `g` as `m` reads it.
fn assert_structure(g: &Gen, m: &Message) -> Result<(), TestCaseError> {
    prop_assert_eq!(m.segment_count(), g.segments.len());
    for (i, (seg, gseg)) in m.segments().zip(&g.segments).enumerate() {
        prop_assert_eq!(seg.id(), gseg.id.as_str());
        let offset = g.field_number(i, 0) - 1;
        prop_assert_eq!(seg.field_count(), gseg.fields.len() + offset);
        for (k, gf) in gseg.fields.iter().enumerate() {
            let n = g.field_number(i, k);
            let f = seg.field(n).unwrap();
            let reps: Vec<_> = f.repetitions().collect();
            prop_assert_eq!(reps.len(), gf.len(), "{} field {}", seg.id(), n);
            for (rep, grep) in reps.iter().zip(gf) {
                let comps: Vec<_> = rep.components().collect();
                prop_assert_eq!(comps.len(), grep.len());
                for (comp, gcomp) in comps.iter().zip(grep) {
                    let subs: Vec<&[u8]> = comp.subcomponents().map(|s| s.raw()).collect();
                    let want: Vec<&[u8]> = gcomp.iter().map(|s| s.as_bytes()).collect();
                    prop_assert_eq!(subs, want);
                }
            }
        }
    }
    Ok(())
}

/// `g` with each leaf in canonical escaping (`encode(decode(leaf))`), then normalised.
fn json_normal_form(g: &Gen) -> String {
    let d = g.delims.to_courier();
    let mut g = g.clone();
    for seg in &mut g.segments {
        for leaf in seg.fields.iter_mut().flatten().flatten().flatten() {
            let decoded = decode(leaf.as_bytes(), &d).into_owned();
            *leaf = String::from_utf8(encode(&decoded, &d).into_owned()).unwrap();
        }
    }
    g.normalised().render()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn parse_reads_what_was_generated_and_encode_is_identity(g in message(Escapes::Any, true)) {
        let text = g.render();
        let m = parse(&g);
        prop_assert_eq!(&m.encode()[..], text.as_bytes());
        assert_structure(&g, &m)?;
        // An edit elsewhere leaves every other segment byte for byte.
        let mut edited = m.clone();
        edited.set(&Path::parse("MSH-10").unwrap(), "NEW").unwrap();
        let again = Message::parse(edited.encode()).unwrap();
        prop_assert_eq!(again.control_id(), Some("NEW".to_string()));
        for (a, b) in again.segments().zip(m.segments()).skip(1) {
            prop_assert_eq!(a.raw(), b.raw());
        }
    }

    #[test]
    fn set_then_get_returns_the_value(
        g in message(Escapes::Any, true),
        seg_pick in any::<prop::sample::Index>(),
        field in 1usize..10,
        rep in proptest::option::of(1usize..4),
        comp in proptest::option::of(1usize..5),
        sub in proptest::option::of(1usize..4),
        value in "[a-zA-Z0-9 |^~\\\\&#!@$%*+:;,/?=.\r\nXHPFSTREé漢]{1,30}",
    ) {
        let mut m = parse(&g);
        // A non-MSH segment, named by ID and occurrence.
        let index = 1 + seg_pick.index(g.segments.len() - 1);
        let id = g.segments[index].id.clone();
        let occurrence = g.segments[..=index].iter().filter(|s| s.id == id).count();
        let mut path = Path::new(&id).with_occurrence(occurrence).with_field(field);
        path.repetition = rep;
        path.component = comp;
        path.subcomponent = comp.and(sub);
        m.set(&path, &value).unwrap_or_else(|e| panic!("{path}: {e}"));
        prop_assert_eq!(m.get(&path), Some(value.clone()), "{}", path);
        let reparsed = Message::parse(m.encode()).unwrap();
        prop_assert_eq!(reparsed.get(&path), Some(value.clone()), "{}", path);
        // Other segments untouched.
        for (a, b) in reparsed.segments().zip(parse(&g).segments()) {
            if a.index() != index {
                prop_assert_eq!(a.raw(), b.raw());
            }
        }
    }

    #[test]
    fn escape_decode_inverts_encode(
        d in common::delims(true),
        bytes in proptest::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                2 => proptest::sample::select(b"|^~\\&#!@$%XHPFSTRE.br\r\n".to_vec()),
            ],
            0..48,
        ),
    ) {
        let d = d.to_courier();
        let escaped = encode(&bytes, &d);
        let decoded = decode(&escaped, &d).into_owned();
        prop_assert_eq!(&decoded, &bytes);
        // The escaped form holds no structural byte.
        prop_assert!(!escaped.iter().any(|&b| b == d.field || b == d.component
            || b == d.repetition || b == d.subcomponent || b == b'\r' || b == b'\n'
            || Some(b) == d.truncation));
    }

    #[test]
    fn json_round_trip_gives_the_normal_form(g in message(Escapes::Any, true)) {
        let m = parse(&g);
        let json = to_json(&m);
        // The streamed text is the value's text.
        let mut written = Vec::new();
        write_json(&m, &mut written);
        prop_assert_eq!(&written, &serde_json::to_vec(&json).unwrap());
        let back = from_json(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        prop_assert_eq!(
            String::from_utf8(back.encode().to_vec()).unwrap(),
            json_normal_form(&g)
        );
        // Idempotent: the normal form maps to the same JSON.
        prop_assert_eq!(to_json(&back), json);
        // Exact for a message already in normal form.
        let normal = Message::parse(Bytes::from(json_normal_form(&g))).unwrap();
        let again = from_json(&to_json(&normal)).unwrap();
        prop_assert_eq!(again.encode(), normal.encode());
    }

    #[test]
    fn limits_accept_a_message_at_them_and_refuse_it_below(g in message(Escapes::Any, true)) {
        let text = Bytes::from(g.render());
        let m = parse(&g);
        let segments = m.segment_count();
        let fields = m.segments().map(|s| s.field_count()).max().unwrap();
        let at = ParseOptions { max_segments: segments, max_fields: fields, ..ParseOptions::default() };
        let again = Message::parse_with(text.clone(), &at).unwrap();
        prop_assert_eq!(again.encode(), text.clone());

        let fewer_segments = ParseOptions { max_segments: segments - 1, ..at };
        let e = Message::parse_with(text.clone(), &fewer_segments).unwrap_err();
        prop_assert!(matches!(e, ParseError::TooManySegments { limit, .. } if limit == segments - 1), "{}", e);

        let fewer_fields = ParseOptions { max_fields: fields - 1, ..at };
        let e = Message::parse_with(text.clone(), &fewer_fields).unwrap_err();
        let first_over = m.segments().find(|s| s.field_count() == fields).unwrap();
        let is_first_over = matches!(
            &e,
            ParseError::TooManyFields { limit, segment, segment_id, .. }
                if *limit == fields - 1 && *segment == first_over.index() + 1 && segment_id == first_over.id()
        );
        prop_assert!(is_first_over, "{}", e);
    }
}
