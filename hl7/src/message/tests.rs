//! Byte-level tests of the message model: parsing and its errors, reading by path and by
//! tree, every edit with its exact ER7 result, delimiters, character sets and line endings.

use super::*;
use crate::error::{EditError, ErrorCode};

const MSH: &str = "MSH|^~\\&|SND|FAC|RCV|RFAC|20260101120000||ADT^A04^ADT_A01|CTRL1|P|2.5.1";

fn msg(rest: &str) -> Message {
    let text = format!("{MSH}\r{rest}");
    Message::parse(text.into_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn p(s: &str) -> Path {
    Path::parse(s).unwrap()
}

fn get(m: &Message, path: &str) -> Option<String> {
    m.get_str(path).unwrap()
}

/// The message's bytes after `MSH\r`, as text, for comparing edit results.
fn body(m: &Message) -> String {
    let all = String::from_utf8(m.encode().to_vec()).unwrap();
    all.strip_prefix(&format!("{MSH}\r"))
        .unwrap_or(&all)
        .to_string()
}

fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/messages");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect()
}

// ----- parsing and round trips -----

#[test]
fn examples_round_trip_byte_for_byte_and_zero_copy() {
    for (name, bytes) in examples() {
        let source = Bytes::from(bytes.clone());
        let m = Message::parse(source.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = m.encode();
        assert_eq!(out, bytes, "{name}");
        assert_eq!(out.as_ptr(), source.as_ptr(), "{name}: same allocation");
        assert!(!m.is_modified());
        // Rewriting every field with its own raw bytes goes through the edit machinery
        // (split, splice, join) and must give the same bytes: no segment changes, so the
        // message stays unmodified. Forcing a rebuild (add and remove a segment) must also give
        // the same bytes.
        let mut m2 = m.clone();
        for seg in 0..m.segment_count() {
            let s = m.segment_at(seg).unwrap();
            for n in 3..=s.field_count() {
                let path = Path::new(s.id())
                    .with_occurrence(s.occurrence())
                    .with_field(n);
                let raw = String::from_utf8(m.raw(&path).unwrap().to_vec()).unwrap();
                m2.set_raw(&path, &raw).unwrap();
            }
        }
        assert!(!m2.is_modified(), "{name}");
        m2.append_segment("ZZZ").unwrap();
        m2.remove_segment(m2.segment_count() - 1).unwrap();
        assert!(m2.is_modified());
        assert_eq!(m2.encode(), bytes, "{name}: rebuilt");
        // set(get(x)) on every leaf component is the identity.
        let mut m3 = m.clone();
        for s in m.segments() {
            for (k, f) in s.fields().enumerate() {
                let n = k + 1;
                if s.is_msh() && n <= 2 {
                    continue;
                }
                for (r, rep) in f.repetitions().enumerate() {
                    for (c, comp) in rep.components().enumerate() {
                        if !comp.is_leaf() || comp.is_empty() {
                            continue;
                        }
                        let path = Path::new(s.id())
                            .with_occurrence(s.occurrence())
                            .with_field(n)
                            .with_repetition(r + 1)
                            .with_component(c + 1);
                        let v = m.get(&path).unwrap();
                        m3.set(&path, &v).unwrap();
                    }
                }
            }
        }
        assert_eq!(m3.encode(), bytes, "{name}: set(get(x))");
    }
}

#[test]
fn example_structure() {
    for (name, bytes) in examples() {
        let m = Message::parse(bytes).unwrap();
        assert_eq!(m.segment_at(0).unwrap().id(), "MSH", "{name}");
        assert_eq!(m.charset(), Charset::Utf8);
        assert_eq!(m.version().as_deref(), Some("2.5.1"));
        assert!(m.control_id().is_some());
    }
    let oru = examples()
        .into_iter()
        .find(|(n, _)| n.contains("oru"))
        .unwrap()
        .1;
    let m = Message::parse(oru).unwrap();
    assert!(m.segment_occurrences("OBX") >= 7);
    assert_eq!(get(&m, "OBX[3]-3.2").as_deref(), Some("Hemoglobin"));
    assert_eq!(m.message_type().to_string(), "ORU^R01");
}

#[test]
fn missing_final_terminator_and_trailing_empty_segments_round_trip() {
    for text in [
        format!("{MSH}\rPID|1"),
        format!("{MSH}\rPID|1\r\r\r"),
        format!("{MSH}\r\rPID|1\r"),
        MSH.to_string(),
    ] {
        let m = Message::parse(text.clone().into_bytes()).unwrap();
        assert_eq!(m.encode(), text.as_bytes());
        assert_eq!(m.segment_count(), 1 + usize::from(text.contains("PID")));
        // And after an edit elsewhere, the terminators stay as they were.
        let mut m2 = m.clone();
        m2.set(&p("MSH-10"), "CTRL1").unwrap();
        assert!(!m2.is_modified(), "setting the same value changes nothing");
        m2.set(&p("MSH-10"), "OTHER").unwrap();
        m2.set(&p("MSH-10"), "CTRL1").unwrap();
        assert!(m2.is_modified());
        assert_eq!(m2.encode(), text.as_bytes());
    }
}

#[test]
fn append_after_missing_terminator_adds_one() {
    let mut m = Message::parse(format!("{MSH}\rPID|1").into_bytes()).unwrap();
    m.append_segment("ZX1|a").unwrap();
    assert_eq!(body(&m), "PID|1\rZX1|a\r");
}

#[test]
fn lenient_line_endings() {
    for sep in ["\n", "\r\n", "\r"] {
        let text = format!("{MSH}{sep}PID|1||42{sep}PV1|1|O{sep}");
        let m = Message::parse_with(text.clone().into_bytes(), &ParseOptions::lenient())
            .unwrap_or_else(|e| panic!("{sep:?}: {e}"));
        assert_eq!(m.segment_count(), 3);
        assert_eq!(get(&m, "PID-3").as_deref(), Some("42"));
        assert_eq!(m.encode(), text.as_bytes());
        // Edited, each segment keeps its own terminator; new ones get \r.
        let mut m2 = m.clone();
        m2.set(&p("PID-3"), "43").unwrap();
        m2.append_segment("ZX1").unwrap();
        let expected = format!("{MSH}{sep}PID|1||43{sep}PV1|1|O{sep}ZX1\r");
        assert_eq!(m2.encode(), expected.as_bytes());
    }
    // A blank line (empty segment) is tolerated and kept.
    let text = format!("{MSH}\n\nPID|1\n");
    let m = Message::parse_with(text.clone().into_bytes(), &ParseOptions::lenient()).unwrap();
    assert_eq!(m.segment_count(), 2);
    assert_eq!(m.encode(), text.as_bytes());
}

#[test]
fn strict_rejects_line_feeds_with_position() {
    let text = format!("{MSH}\nPID|1");
    let e = Message::parse(text.into_bytes()).unwrap_err();
    assert_eq!(
        e,
        ParseError::LineFeedInSegment {
            segment: 1,
            offset: MSH.len()
        }
    );
    assert!(e.to_string().contains("lenient"), "{e}");
    let text = format!("{MSH}\r\nPID|1\r\nPV1");
    let e = Message::parse(text.into_bytes()).unwrap_err();
    assert_eq!(
        e,
        ParseError::LineFeedInSegment {
            segment: 1,
            offset: MSH.len() + 1
        }
    );
    let text = format!("{MSH}\rPID|1|a\nb");
    let e = Message::parse(text.into_bytes()).unwrap_err();
    assert!(
        matches!(e, ParseError::LineFeedInSegment { segment: 2, .. }),
        "{e}"
    );
}

#[test]
fn malformed_segment_id_in_the_middle_is_an_error_naming_it() {
    let pid = "PID|1||42";
    let text = format!("{MSH}\r{pid}\rP!D|x\rOBX|1|ST|||secret");
    let e = Message::parse(text.into_bytes()).unwrap_err();
    assert_eq!(
        e,
        ParseError::MalformedSegmentId {
            segment: 3,
            offset: MSH.len() + 1 + pid.len() + 1,
            id: "P!D".into()
        }
    );
    let s = e.to_string();
    assert!(s.contains("segment 3") && s.contains(&(MSH.len() + pid.len() + 2).to_string()));
    assert_eq!(e.error_code(), ErrorCode::SegmentSequenceError);
    for bad in [
        "pid|1", "PIDX|1", "PI|1", "PI", " PID|1", "1ID|1", "PI\x00|1",
    ] {
        let text = format!("{MSH}\r{bad}\rPV1|1");
        match Message::parse(text.into_bytes()) {
            Err(ParseError::MalformedSegmentId { segment: 2, id, .. }) => {
                assert!(id.len() <= 4 * 3, "{bad:?}: {id}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // Non-printable bytes in the reported ID are escaped.
    let text = format!("{MSH}\rP\u{1}D|1");
    let e = Message::parse(text.into_bytes()).unwrap_err();
    assert!(matches!(e, ParseError::MalformedSegmentId { ref id, .. } if id == "P\\x01D"));
}

#[test]
fn hl7_parser_silently_drops_segments_after_a_malformed_one_we_refuse() {
    let text = format!("{MSH}\rPID|1||42\rp!d|x\rOBX|1|ST|||7.2\rOBX|2|ST|||8.1\r");
    let theirs = hl7_parser::Message::parse(&text).expect("hl7-parser accepts it");
    let seen: Vec<&str> = theirs.segments().map(|s| s.name).collect();
    assert_eq!(seen, ["MSH", "PID"], "hl7-parser dropped p!d and both OBX");
    assert!(theirs.segment("OBX").is_none());
    let ours = Message::parse(text.into_bytes());
    assert!(matches!(
        ours,
        Err(ParseError::MalformedSegmentId { segment: 3, .. })
    ));
}

#[test]
fn empty_missing_and_short_msh() {
    assert_eq!(Message::parse(Vec::new()).unwrap_err(), ParseError::Empty);
    assert_eq!(Message::parse(&b"\r\r"[..]).unwrap_err(), ParseError::Empty);
    assert_eq!(
        Message::parse(&b"PID|1\rMSH|^~\\&"[..]).unwrap_err(),
        ParseError::MissingMsh {
            found: "PID".into()
        }
    );
    assert_eq!(
        Message::parse(&b"\rMSH|^~\\&"[..]).unwrap_err(),
        ParseError::MissingMsh { found: "".into() }
    );
    for (text, field) in [
        ("MSH", 1),
        ("MSH\r", 1),
        ("MSH|", 2),
        ("MSH||A", 2),
        ("MSH|^~\\&", 9),
        ("MSH|^~\\&|A|B|C|D|E|", 9),
        ("MSH|^~\\&|A|B|C|D|E|\rPID|1", 9),
    ] {
        match Message::parse(text.as_bytes().to_vec()) {
            Err(e @ ParseError::ShortMsh { .. }) => {
                assert_eq!(e.location().unwrap().field, Some(field), "{text:?}");
                assert_eq!(e.error_code(), ErrorCode::RequiredFieldMissing);
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    assert!(Message::parse(&b"MSH|^~\\&|A|B|C|D|E||ADT^A01"[..]).is_ok());
    for bad in [
        "MSH|^|",
        "MSH|^^\\&|",
        "MSH|^~\\&#!|",
        "MSH ^~\\&|",
        "MSHA^~\\&|",
    ] {
        let e = Message::parse(format!("{bad}A|B|C|D|E||ADT^A01").into_bytes());
        assert!(
            matches!(e, Err(ParseError::InvalidDelimiters { .. })),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn second_msh_is_refused() {
    let text = format!("{MSH}\rPID|1\r{MSH}\rPID|2");
    let e = Message::parse(text.into_bytes()).unwrap_err();
    assert!(
        matches!(e, ParseError::UnexpectedMsh { segment: 3, .. }),
        "{e}"
    );
}

// ----- reading -----

#[test]
fn get_at_every_level() {
    let m =
        msg("PID|1||100^^^H^MR~200^^^S^SS||Doe^Jo&Ann^Q||19700101\rOBX|1|NM\rOBX|2|ST|||a\\F\\b");
    assert_eq!(get(&m, "PID-1").as_deref(), Some("1"));
    assert_eq!(get(&m, "PID-3").as_deref(), Some("100^^^H^MR~200^^^S^SS"));
    assert_eq!(get(&m, "PID-3[2]").as_deref(), Some("200^^^S^SS"));
    assert_eq!(get(&m, "PID-3[2].4").as_deref(), Some("S"));
    assert_eq!(get(&m, "PID-3.1").as_deref(), Some("100"));
    assert_eq!(get(&m, "PID-3.5").as_deref(), Some("MR"));
    assert_eq!(get(&m, "PID-5.2").as_deref(), Some("Jo&Ann"));
    assert_eq!(get(&m, "PID-5.2.2").as_deref(), Some("Ann"));
    assert_eq!(get(&m, "PID.5.2.1").as_deref(), Some("Jo"));
    assert_eq!(get(&m, "PID-5.1.1").as_deref(), Some("Doe"));
    assert_eq!(get(&m, "OBX[2]-5").as_deref(), Some("a|b"));
    assert_eq!(get(&m, "OBX[2].5").as_deref(), Some("a|b"));
    assert_eq!(
        m.raw(&p("OBX[2]-5")),
        Some(&b"a\\F\\b"[..]),
        "raw keeps escapes"
    );
    assert_eq!(get(&m, "OBX-2").as_deref(), Some("NM"));
    let ids: Vec<String> = m
        .element(&p("PID-3"))
        .unwrap()
        .repetitions()
        .map(|r| r.component(1).unwrap().value())
        .collect();
    assert_eq!(ids, ["100", "200"]);
    assert!(m.element(&p("PID")).is_none());
    assert_eq!(get(&m, "OBX[2]").as_deref(), Some("OBX|2|ST|||a\\F\\b"));
    assert_eq!(m.raw(&p("OBX[2]")), Some(&b"OBX|2|ST|||a\\F\\b"[..]));
    // Present but empty vs absent.
    assert_eq!(get(&m, "PID-2").as_deref(), Some(""));
    assert_eq!(get(&m, "PID-3.2").as_deref(), Some(""));
    assert_eq!(get(&m, "PID-8"), None);
    assert_eq!(get(&m, "PID-7.2"), None);
    assert_eq!(get(&m, "PID-3[3]"), None);
    assert_eq!(get(&m, "PID-5.2.3"), None);
    assert_eq!(get(&m, "OBX[3]-1"), None);
    assert_eq!(get(&m, "ZZZ-1"), None);
    assert_eq!(get(&m, "OBX-5"), None);
    assert!(m.get_str("PID-0").is_err());
}

#[test]
fn msh_1_and_2_are_literal() {
    let m = msg("PID|1");
    assert_eq!(get(&m, "MSH-1").as_deref(), Some("|"));
    assert_eq!(get(&m, "MSH-2").as_deref(), Some("^~\\&"));
    assert_eq!(get(&m, "MSH-2.1").as_deref(), Some("^~\\&"));
    assert_eq!(get(&m, "MSH-2.2"), None);
    assert_eq!(get(&m, "MSH-3").as_deref(), Some("SND"));
    assert_eq!(get(&m, "MSH-9.3").as_deref(), Some("ADT_A01"));
    let msh = m.segment("MSH", 1).unwrap();
    assert_eq!(msh.field_count(), 12);
    assert_eq!(msh.field(2).unwrap().components().count(), 1);
    assert_eq!(m.repetition_count(&p("MSH-2")), 1);
}

#[test]
fn header_accessors() {
    let m = msg("PID|1");
    assert_eq!(m.control_id().as_deref(), Some("CTRL1"));
    let t = m.message_type();
    assert_eq!(
        (t.code.as_str(), t.trigger.as_str(), t.structure.as_str()),
        ("ADT", "A04", "ADT_A01")
    );
    assert_eq!(t.to_string(), "ADT^A04");
    assert_eq!(m.version().as_deref(), Some("2.5.1"));
    let m = Message::parse(&b"MSH|^~\\&|||||||ACK|"[..]).unwrap();
    assert_eq!(m.control_id(), None);
    assert_eq!(m.version(), None);
    assert_eq!(m.message_type().to_string(), "ACK");
    assert_eq!(m.message_type().trigger, "");
}

#[test]
fn segments_and_occurrences() {
    let m = msg("PID|1\rOBX|1\rNTE|1\rOBX|2\rOBX|3");
    assert_eq!(m.segment_count(), 6);
    let ids: Vec<&str> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "OBX", "NTE", "OBX", "OBX"]);
    assert_eq!(m.segment_occurrences("OBX"), 3);
    assert_eq!(m.segment_occurrences("ZZZ"), 0);
    let obx3 = m.segment("OBX", 3).unwrap();
    assert_eq!(
        (obx3.index(), obx3.occurrence(), obx3.raw()),
        (5, 3, &b"OBX|3"[..])
    );
    assert!(m.segment("OBX", 4).is_none());
    assert!(m.segment("OBX", 0).is_none());
    let values: Vec<String> = m
        .segments()
        .filter(|s| s.id() == "OBX")
        .map(|s| s.field(1).unwrap().value())
        .collect();
    assert_eq!(values, ["1", "2", "3"]);
    assert_eq!(m.segment("PID", 1).unwrap().field_count(), 1);
    assert!(m.segment("PID", 1).unwrap().field(2).is_none());
    assert!(m.segment("PID", 1).unwrap().field(0).is_none());
}

#[test]
fn repetition_counts() {
    let m = msg("PID|1||a~b~c||x|||");
    assert_eq!(m.repetition_count(&p("PID-3")), 3);
    assert_eq!(m.repetition_count(&p("PID-3[2].1")), 3);
    assert_eq!(m.repetition_count(&p("PID-5")), 1);
    assert_eq!(m.repetition_count(&p("PID-2")), 0);
    assert_eq!(m.repetition_count(&p("PID-20")), 0);
    assert_eq!(m.repetition_count(&p("ZZZ-1")), 0);
    assert_eq!(m.repetition_count(&p("PID")), 0);
}

#[test]
fn element_tree_walk() {
    let m = msg("PID|1||a1^a2&x~b1||n1^n2");
    let pid = m.segment("PID", 1).unwrap();
    let f3 = pid.field(3).unwrap();
    assert!(!f3.is_leaf());
    let reps: Vec<Vec<Vec<String>>> = f3
        .repetitions()
        .map(|r| {
            r.components()
                .map(|c| c.subcomponents().map(|s| s.value()).collect())
                .collect()
        })
        .collect();
    assert_eq!(
        reps,
        vec![
            vec![
                vec!["a1".to_string()],
                vec!["a2".to_string(), "x".to_string()]
            ],
            vec![vec!["b1".to_string()]]
        ]
    );
    // Skipped levels are taken at their first element.
    let comps: Vec<String> = f3.components().map(|c| c.value()).collect();
    assert_eq!(comps, ["a1", "a2&x"]);
    assert_eq!(f3.repetition(2).unwrap().value(), "b1");
    assert_eq!(
        f3.component(2).unwrap().subcomponent(2).unwrap().value(),
        "x"
    );
    assert!(f3.repetition(3).is_none());
    assert!(f3.repetition(0).is_none());
    let fields: Vec<Vec<u8>> = pid.fields().map(|f| f.raw().to_vec()).collect();
    assert_eq!(fields.len(), 5);
    assert_eq!(fields[4], b"n1^n2");
    // Debug never shows contents.
    assert!(!format!("{m:?}").contains("a1"));
    assert!(!format!("{f3:?}").contains("a1"));
    assert!(!format!("{pid:?}").contains("a1"));
}

// ----- escapes through the model -----

#[test]
fn escapes_through_get_and_set() {
    let mut m = msg(r"NTE|1||a\F\b\S\c\T\d\R\e\E\f\.br\g\X41\\H\bold\N\\Q\x\");
    assert_eq!(
        get(&m, "NTE-3").as_deref(),
        Some("a|b^c&d~e\\f\ng\u{41}\\H\\bold\\N\\\\Q\\x\\")
    );
    m.set(&p("NTE-3"), "x|y^z&w~v\\u\nr\rs \\H\\t\\N\\")
        .unwrap();
    assert_eq!(
        body(&m),
        r"NTE|1||x\F\y\S\z\T\w\R\v\E\u\.br\r\X0D\s \H\t\N\"
    );
    assert_eq!(
        get(&m, "NTE-3").as_deref(),
        Some("x|y^z&w~v\\u\nr\rs \\H\\t\\N\\")
    );
}

#[test]
fn hex_escape_invalid_in_charset_is_kept_not_replaced() {
    let m = msg(r"NTE|1||caf\XE9\ and \XC3A9\");
    // \XE9\ alone is not UTF-8; rather than U+FFFD the escapes are kept as written.
    assert_eq!(get(&m, "NTE-3").as_deref(), Some(r"caf\XE9\ and \XC3A9\"));
    let m = msg(r"NTE|1||caf\XC3A9\");
    assert_eq!(get(&m, "NTE-3").as_deref(), Some("café"));
}

// ----- edits -----

#[test]
fn set_field_component_subcomponent_with_padding() {
    let mut m = msg("PID|1||42");
    m.set(&p("PID-5.2"), "Ann").unwrap();
    assert_eq!(body(&m), "PID|1||42||^Ann");
    m.set(&p("PID-5.1"), "Doe").unwrap();
    assert_eq!(body(&m), "PID|1||42||Doe^Ann");
    m.set(&p("PID-3[3].4"), "H").unwrap();
    assert_eq!(body(&m), "PID|1||42~~^^^H||Doe^Ann");
    m.set(&p("PID-5.2.3"), "x").unwrap();
    assert_eq!(body(&m), "PID|1||42~~^^^H||Doe^Ann&&x");
    m.set(&p("PID-3"), "7~8").unwrap();
    assert_eq!(
        body(&m),
        "PID|1||7\\R\\8||Doe^Ann&&x",
        "whole field, escaped"
    );
    m.set(&p("PID-3[2]"), "9").unwrap();
    assert_eq!(body(&m), "PID|1||7\\R\\8~9||Doe^Ann&&x");
    m.set(&p("PID-1"), "").unwrap();
    assert_eq!(body(&m), "PID|||7\\R\\8~9||Doe^Ann&&x");
    assert_eq!(get(&m, "PID-3[1]").as_deref(), Some("7~8"));
    assert_eq!(get(&m, "PID-5.2.3").as_deref(), Some("x"));
}

#[test]
fn set_on_other_segment_occurrence_and_msh() {
    let mut m = msg("OBX|1|NM|||5\rOBX|2|NM|||6");
    m.set(&p("OBX[2]-5"), "6.5").unwrap();
    assert_eq!(body(&m), "OBX|1|NM|||5\rOBX|2|NM|||6.5");
    m.set(&p("MSH-10"), "NEW").unwrap();
    assert_eq!(m.control_id().as_deref(), Some("NEW"));
    m.set(&p("MSH-15"), "AL").unwrap();
    assert_eq!(get(&m, "MSH-15").as_deref(), Some("AL"));
    assert!(m.encode().starts_with(
        b"MSH|^~\\&|SND|FAC|RCV|RFAC|20260101120000||ADT^A04^ADT_A01|NEW|P|2.5.1|||AL\r"
    ));
}

#[test]
fn set_errors_leave_message_unchanged() {
    let mut m = msg("PID|1");
    let before = m.encode();
    assert!(matches!(
        m.set(&p("ZZZ-1"), "x"),
        Err(EditError::NoSuchSegment { .. })
    ));
    assert!(matches!(
        m.set(&p("PID[2]-1"), "x"),
        Err(EditError::NoSuchSegment { occurrence: 2, .. })
    ));
    assert!(matches!(
        m.set(&p("MSH-1"), "#"),
        Err(EditError::Unsupported { .. })
    ));
    assert!(matches!(
        m.set(&p("MSH-2"), "^~\\&#"),
        Err(EditError::Unsupported { .. })
    ));
    assert!(matches!(
        m.set(&p("PID"), "x"),
        Err(EditError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.set(&Path::new("PID").with_field(0), "x"),
        Err(EditError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.set(&p("PID-999999999999"), "x"),
        Err(EditError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.insert_repetition(&p("PID-3[70000]"), "x"),
        Err(EditError::InvalidPath { .. })
    ));
    m.set(&p("ZZZ-1"), "x").unwrap_err();
    assert!(matches!(
        m.set(&p("MSH-18"), "8859/1"),
        Err(EditError::Unsupported { .. })
    ));
    assert!(matches!(
        m.set(&p("MSH-18"), "KLINGON"),
        Err(EditError::Unsupported { .. })
    ));
    assert!(!m.is_modified());
    assert_eq!(m.encode(), before);
    // Setting MSH-18 to the charset it already is (by default) is fine.
    m.set(&p("MSH-18"), "UNICODE UTF-8").unwrap();
    assert_eq!(m.charset(), Charset::Utf8);
}

#[test]
fn set_raw_keeps_er7_and_validates() {
    let mut m = msg("PID|1");
    m.set_raw(&p("PID-5"), "Doe^Jo&Ann~Roe\\T\\").unwrap();
    assert_eq!(body(&m), "PID|1||||Doe^Jo&Ann~Roe\\T\\");
    assert_eq!(get(&m, "PID-5[2]").as_deref(), Some("Roe&"));
    m.set_raw(&p("PID-5[2]"), "A^B").unwrap();
    assert_eq!(body(&m), "PID|1||||Doe^Jo&Ann~A^B");
    m.set_raw(&p("PID-5.2"), "X&Y").unwrap();
    assert_eq!(body(&m), "PID|1||||Doe^X&Y~A^B");
    for (path, bad) in [
        ("PID-5", "a|b"),
        ("PID-5", "a\rb"),
        ("PID-5", "a\nb"),
        ("PID-5[1]", "a~b"),
        ("PID-5.1", "a^b"),
        ("PID-5.1", "a~b"),
        ("PID-5.1.1", "a&b"),
    ] {
        assert!(
            matches!(
                m.set_raw(&p(path), bad),
                Err(EditError::InvalidValue { .. })
            ),
            "{path} {bad:?}"
        );
    }
    assert_eq!(body(&m), "PID|1||||Doe^X&Y~A^B");
}

#[test]
fn delete_field_component_subcomponent_trims_trailing_separators() {
    let mut m = msg("PID|1||a^b^c||x^y&z&w|q");
    m.delete(&p("PID-3.2")).unwrap();
    assert_eq!(body(&m), "PID|1||a^^c||x^y&z&w|q");
    m.delete(&p("PID-3.3")).unwrap();
    assert_eq!(body(&m), "PID|1||a||x^y&z&w|q");
    m.delete(&p("PID-5.2.3")).unwrap();
    assert_eq!(body(&m), "PID|1||a||x^y&z|q");
    m.delete(&p("PID-6")).unwrap();
    assert_eq!(body(&m), "PID|1||a||x^y&z");
    m.delete(&p("PID-5")).unwrap();
    assert_eq!(body(&m), "PID|1||a");
    m.delete(&p("PID-1")).unwrap();
    assert_eq!(body(&m), "PID|||a");
    m.delete(&p("PID-3.1")).unwrap();
    assert_eq!(body(&m), "PID");
    // Deleting what is absent is not an error.
    m.delete(&p("PID-9.2")).unwrap();
    assert_eq!(body(&m), "PID");
    assert!(matches!(
        m.delete(&p("ZZZ-1")),
        Err(EditError::NoSuchSegment { .. })
    ));
}

#[test]
fn delete_repetition_and_segment() {
    let mut m = msg("PID|1||a~b~c|x\rOBX|1\rOBX|2\rOBX|3");
    m.delete(&p("PID-3[2]")).unwrap();
    assert_eq!(body(&m), "PID|1||a~c|x\rOBX|1\rOBX|2\rOBX|3");
    m.delete(&p("PID-3[5]")).unwrap();
    m.delete(&p("PID-3[1]")).unwrap();
    assert_eq!(body(&m), "PID|1||c|x\rOBX|1\rOBX|2\rOBX|3");
    m.delete(&p("PID-3[1]")).unwrap();
    assert_eq!(body(&m), "PID|1|||x\rOBX|1\rOBX|2\rOBX|3");
    m.delete(&p("OBX[2]")).unwrap();
    assert_eq!(body(&m), "PID|1|||x\rOBX|1\rOBX|3");
    assert_eq!(get(&m, "OBX[2]-1").as_deref(), Some("3"));
    m.delete(&p("OBX")).unwrap();
    assert_eq!(body(&m), "PID|1|||x\rOBX|3");
    assert_eq!(m.delete(&p("MSH")), Err(EditError::CannotRemoveMsh));
    assert!(matches!(
        m.delete(&p("OBX[5]")),
        Err(EditError::NoSuchSegment { .. })
    ));
    // The last field emptied by removing its only repetition is trimmed.
    m.delete(&p("PID-4[1]")).unwrap();
    assert_eq!(body(&m), "PID|1\rOBX|3");
}

#[test]
fn delete_in_msh_keeps_msh_9() {
    let mut m = msg("PID|1");
    for n in (9..=12).rev() {
        m.delete(&Path::new("MSH").with_field(n)).unwrap();
    }
    let out = m.encode();
    assert!(out.starts_with(b"MSH|^~\\&|SND|FAC|RCV|RFAC|20260101120000||\r"));
    Message::parse(out).expect("still parses");
    assert!(matches!(
        m.delete(&p("MSH-2")),
        Err(EditError::Unsupported { .. })
    ));
}

#[test]
fn insert_repetition() {
    let mut m = msg("PID|1||a~b");
    m.insert_repetition(&p("PID-3[1]"), "z").unwrap();
    assert_eq!(body(&m), "PID|1||z~a~b");
    m.insert_repetition(&p("PID-3[3]"), "y^1").unwrap();
    assert_eq!(body(&m), "PID|1||z~a~y\\S\\1~b");
    m.insert_repetition(&p("PID-3[6]"), "w").unwrap();
    assert_eq!(body(&m), "PID|1||z~a~y\\S\\1~b~~w");
    m.insert_repetition(&p("PID-2[1]"), "first").unwrap();
    assert_eq!(body(&m), "PID|1|first|z~a~y\\S\\1~b~~w");
    m.insert_repetition(&p("PID-7[2]"), "v").unwrap();
    assert_eq!(body(&m), "PID|1|first|z~a~y\\S\\1~b~~w||||~v");
    assert!(matches!(
        m.insert_repetition(&p("PID-3"), "x"),
        Err(EditError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.insert_repetition(&p("PID-3[1].2"), "x"),
        Err(EditError::InvalidPath { .. })
    ));
}

#[test]
fn insert_and_remove_segments() {
    let mut m = msg("PID|1\rOBX|1");
    m.insert_segment(2, "PV1|1|O").unwrap();
    assert_eq!(body(&m), "PID|1\rPV1|1|O\rOBX|1");
    m.append_segment("NTE|1||note").unwrap();
    assert_eq!(body(&m), "PID|1\rPV1|1|O\rOBX|1\rNTE|1||note\r");
    m.insert_segment(1, "EVN").unwrap();
    assert_eq!(body(&m), "EVN\rPID|1\rPV1|1|O\rOBX|1\rNTE|1||note\r");
    assert_eq!(get(&m, "NTE-3").as_deref(), Some("note"));
    assert_eq!(m.segment("PV1", 1).unwrap().index(), 3);
    m.set(&p("NTE-3"), "changed").unwrap();
    assert_eq!(get(&m, "NTE-3").as_deref(), Some("changed"));
    m.remove_segment(1).unwrap();
    assert_eq!(body(&m), "PID|1\rPV1|1|O\rOBX|1\rNTE|1||changed\r");
    assert_eq!(m.remove_segment(0), Err(EditError::CannotRemoveMsh));
    assert_eq!(m.insert_segment(0, "ZX1"), Err(EditError::CannotRemoveMsh));
    assert_eq!(
        m.remove_segment(5),
        Err(EditError::NoSuchIndex { index: 5, count: 5 })
    );
    assert_eq!(
        m.insert_segment(6, "ZX1"),
        Err(EditError::NoSuchIndex { index: 6, count: 5 })
    );
    for bad in [
        "",
        "pv1|1",
        "PV1X|1",
        "PV",
        "PV1|1\rOBX|2",
        "PV1|1\n",
        "MSH|^~\\&",
        "P1",
    ] {
        assert!(
            matches!(
                m.insert_segment(1, bad),
                Err(EditError::InvalidSegment { .. })
            ),
            "{bad:?}"
        );
    }
    let out = m.encode();
    let again = Message::parse(out.clone()).unwrap();
    assert_eq!(again.encode(), out);
}

#[test]
fn custom_delimiters() {
    // Field '|', component '#', repetition '!', escape '@', sub-component '$', truncation '%'.
    let text = "MSH|#!@$%|A|B|C|D|E||ADT#A04|9|P|2.7\rPID|1||a#b!c$d||x@F@y@S@z";
    let mut m = Message::parse(text.as_bytes().to_vec()).unwrap();
    let d = *m.delimiters();
    assert_eq!(
        (
            d.field,
            d.component,
            d.repetition,
            d.escape,
            d.subcomponent,
            d.truncation
        ),
        (b'|', b'#', b'!', Some(b'@'), b'$', Some(b'%'))
    );
    assert_eq!(m.message_type().to_string(), "ADT^A04");
    assert_eq!(get(&m, "PID-3[1].2").as_deref(), Some("b"));
    assert_eq!(get(&m, "PID-3[2].1.2").as_deref(), Some("d"));
    assert_eq!(get(&m, "PID-5").as_deref(), Some("x|y#z"));
    assert_eq!(get(&m, "MSH-2").as_deref(), Some("#!@$%"));
    m.set(&p("PID-6.2"), "a#b|c@d^e~f&g%h\\").unwrap();
    assert_eq!(m.raw(&p("PID-6")), Some(&b"#a@S@b@F@c@E@d^e~f&g@P@h\\"[..]));
    assert_eq!(get(&m, "PID-6.2").as_deref(), Some("a#b|c@d^e~f&g%h\\"));
    // A different field separator too.
    let text = "MSH*^~\\&*A*B*C*D*E**ORU^R01*1*P*2.5\rOBX*1*ST***a|b";
    let m = Message::parse(text.as_bytes().to_vec()).unwrap();
    assert_eq!(get(&m, "OBX-5").as_deref(), Some("a|b"));
    assert_eq!(get(&m, "MSH-1").as_deref(), Some("*"));
    assert_eq!(m.encode(), text.as_bytes());
}

#[test]
fn truncation_character_v27() {
    let text = "MSH|^~\\&#|A|B|C|D|E||ADT^A04|1|P|2.7\rPID|1||Apt \\P\\3";
    let mut m = Message::parse(text.as_bytes().to_vec()).unwrap();
    assert_eq!(m.delimiters().truncation, Some(b'#'));
    assert_eq!(get(&m, "PID-3").as_deref(), Some("Apt #3"));
    m.set(&p("PID-4"), "#1").unwrap();
    assert_eq!(m.raw(&p("PID-4")), Some(&b"\\P\\1"[..]));
}

#[test]
fn short_msh2_without_escape_character() {
    let text = "MSH|^~|A|B|C|D|E||ADT^A04|1|P|2.5\rPID|1||a\\F\\b|x&y";
    let mut m = Message::parse(text.as_bytes().to_vec()).unwrap();
    assert_eq!(m.delimiters().escape, None);
    assert_eq!(get(&m, "PID-3").as_deref(), Some("a\\F\\b"), "no escaping");
    assert_eq!(
        get(&m, "PID-4.1").as_deref(),
        Some("x&y"),
        "no sub-components"
    );
    assert!(matches!(
        m.set(&p("PID-3"), "a|b"),
        Err(EditError::InvalidValue { .. })
    ));
    assert!(matches!(
        m.set(&p("PID-4.1.1"), "a"),
        Err(EditError::Unsupported { .. })
    ));
    m.set(&p("PID-3"), "plain\\text&more").unwrap();
    assert_eq!(get(&m, "PID-3").as_deref(), Some("plain\\text&more"));
}

// ----- character sets -----

#[test]
fn utf8_invalid_byte_is_an_error_with_offset() {
    let mut bytes = format!("{MSH}\rPID|1||Jos").into_bytes();
    let offset = bytes.len();
    bytes.extend_from_slice(b"\xC3(|x");
    let e = Message::parse(bytes).unwrap_err();
    assert_eq!(
        e,
        ParseError::InvalidEncoding {
            charset: Charset::Utf8,
            offset,
            segment: 2,
            segment_id: "PID".into(),
            occurrence: 1,
            field: 3
        }
    );
    let loc = e.location().unwrap();
    assert_eq!((loc.segment.as_str(), loc.field), ("PID", Some(3)));
    assert_eq!(e.error_code(), ErrorCode::DataTypeError);
    // In MSH, HL7 numbering counts MSH-1.
    let bytes = b"MSH|^~\\&|S\xFF|F|R|RF|1||ADT^A04|1|P|2.5".to_vec();
    match Message::parse(bytes).unwrap_err() {
        ParseError::InvalidEncoding { field, offset, .. } => {
            assert_eq!((field, offset), (3, 10))
        }
        e => panic!("{e}"),
    }
}

#[test]
fn utf8_get_and_set() {
    let mut m = msg("PID|1||||Müller^Zoë");
    assert_eq!(get(&m, "PID-5.1").as_deref(), Some("Müller"));
    m.set(&p("PID-5.2"), "Zoé 😀").unwrap();
    assert_eq!(get(&m, "PID-5.2").as_deref(), Some("Zoé 😀"));
}

fn with_charset(msh18: &str, rest: &[u8]) -> Vec<u8> {
    let mut b = format!("MSH|^~\\&|S|F|R|RF|1||ADT^A04|1|P|2.5||||||{msh18}\r").into_bytes();
    b.extend_from_slice(rest);
    b
}

#[test]
fn ascii() {
    let m = Message::parse(with_charset("ASCII", b"PID|1||abc")).unwrap();
    assert_eq!(m.charset(), Charset::Ascii);
    let e = Message::parse(with_charset("ASCII", b"PID|1||ab\xE9")).unwrap_err();
    assert!(matches!(
        e,
        ParseError::InvalidEncoding {
            charset: Charset::Ascii,
            field: 3,
            ..
        }
    ));
    let mut m = m;
    assert_eq!(
        m.set(&p("PID-5"), "Zoé"),
        Err(EditError::NotRepresentable {
            charset: Charset::Ascii,
            path: "PID-5".into(),
            position: 2,
            character: 'é'
        })
    );
    assert!(!m.is_modified());
    assert!(matches!(
        m.append_segment("NTE|1||é"),
        Err(EditError::NotRepresentable { .. })
    ));
}

#[test]
fn latin1_get_and_set() {
    let mut m = Message::parse(with_charset("8859/1", b"PID|1||||M\xFCller^Zo\xEB|\x80")).unwrap();
    assert_eq!(m.charset(), Charset::Latin1);
    assert_eq!(get(&m, "PID-5.1").as_deref(), Some("Müller"));
    assert_eq!(get(&m, "PID-5").as_deref(), Some("Müller^Zoë"));
    // 0x80 is U+0080 in ISO-8859-1 (not '€' as windows-1252 would have it).
    assert_eq!(get(&m, "PID-6").as_deref(), Some("\u{80}"));
    m.set(&p("PID-5.2"), "Zoé").unwrap();
    assert_eq!(m.raw(&p("PID-5.2")), Some(&b"Zo\xE9"[..]));
    assert!(matches!(
        m.set(&p("PID-5.2"), "Zoë €"),
        Err(EditError::NotRepresentable {
            character: '€',
            position: 4,
            ..
        })
    ));
    m.append_segment("NTE|1||Gr\u{fc}\u{df}e").unwrap();
    assert!(m.encode().ends_with(b"NTE|1||Gr\xFC\xDFe\r"));
    let again = Message::parse(m.encode()).unwrap();
    assert_eq!(get(&again, "NTE-3").as_deref(), Some("Grüße"));
}

#[test]
fn charset_names_and_defaults() {
    for (name, cs) in [
        ("UNICODE UTF-8", Charset::Utf8),
        ("UTF-8", Charset::Utf8),
        ("unicode utf8", Charset::Utf8),
        ("ASCII", Charset::Ascii),
        ("8859/1", Charset::Latin1),
        ("8859/1~UNICODE UTF-8", Charset::Latin1),
    ] {
        let m = Message::parse(with_charset(name, b"PID|1")).unwrap();
        assert_eq!(m.charset(), cs, "{name}");
    }
    let e = Message::parse(with_charset("ISO IR87", b"PID|1")).unwrap_err();
    assert_eq!(
        e,
        ParseError::UnsupportedCharset {
            value: "ISO IR87".into()
        }
    );
    assert_eq!(e.error_code(), ErrorCode::TableValueNotFound);
    let opts = ParseOptions {
        default_charset: Charset::Latin1,
        ..ParseOptions::default()
    };
    let m = Message::parse_with(with_charset("", b"PID|1||\xE9"), &opts).unwrap();
    assert_eq!(m.charset(), Charset::Latin1);
    assert_eq!(get(&m, "PID-3").as_deref(), Some("é"));
    assert!(Message::parse(with_charset("", b"PID|1||\xE9")).is_err());
}

// ----- robustness -----

fn limited(max_segments: usize, max_fields: usize) -> ParseOptions {
    ParseOptions {
        max_segments,
        max_fields,
        ..ParseOptions::default()
    }
}

#[test]
fn segment_limit_counts_segments_not_empty_lines() {
    let text = format!("{MSH}\rPID|1\r\rOBX|1\rOBX|2\r\r");
    let m = Message::parse_with(text.clone().into_bytes(), &limited(4, 100)).unwrap();
    assert_eq!(m.segment_count(), 4);
    assert_eq!(m.encode(), text.as_bytes());
    let e = Message::parse_with(text.into_bytes(), &limited(3, 100)).unwrap_err();
    let offset = MSH.len() + "\rPID|1\r\rOBX|1\r".len();
    assert_eq!(e, ParseError::TooManySegments { limit: 3, offset });
    let s = e.to_string();
    assert!(s.contains("max_segments limit of 3"), "{s}");
    assert!(s.contains("segment 4"), "{s}");
    assert_eq!(e.error_code(), ErrorCode::ApplicationInternalError);
    assert_eq!(e.location(), None);
}

#[test]
fn field_limit_counts_fields_as_field_count_does() {
    // MSH as written has 12 fields (MSH-1 counts); PID|1|2|3 has 3; the second OBX has 4.
    let text = format!("{MSH}\rPID|1|2|3\rOBX|1\rOBX|1|2|3|4\r");
    let m = Message::parse_with(text.clone().into_bytes(), &limited(100, 12)).unwrap();
    assert_eq!(m.segment_at(0).unwrap().field_count(), 12);
    assert_eq!(m.segment("OBX", 2).unwrap().field_count(), 4);

    let e = Message::parse_with(text.clone().into_bytes(), &limited(100, 11)).unwrap_err();
    assert_eq!(
        e,
        ParseError::TooManyFields {
            limit: 11,
            segment: 1,
            segment_id: "MSH".into(),
            occurrence: 1
        }
    );
    // MSH-13 present: 13 fields.
    let m =
        Message::parse_with(format!("{MSH}|X\rOBX|1\r").into_bytes(), &limited(100, 13)).unwrap();
    assert_eq!(m.segment_count(), 2);

    // The second OBX has 11 fields; MSH (without MSH-11/12) has 10.
    let short = MSH.replace("|P|2.5.1", "");
    let text = format!("{short}\rOBX|1|2|3\rPID|1\rOBX|1|2|3|4|5|6|7|8|9|10|11\r");
    let e = Message::parse_with(text.clone().into_bytes(), &limited(100, 10)).unwrap_err();
    assert_eq!(
        e,
        ParseError::TooManyFields {
            limit: 10,
            segment: 4,
            segment_id: "OBX".into(),
            occurrence: 2
        }
    );
    assert!(Message::parse_with(text.into_bytes(), &limited(100, 11)).is_ok());
    let s = e.to_string();
    assert!(
        s.contains("max_fields limit of 10") && s.contains("OBX"),
        "{s}"
    );
    assert_eq!(e.error_code(), ErrorCode::ApplicationInternalError);
    assert_eq!(
        e.location(),
        Some(crate::error::ErrorLocation {
            segment: "OBX".into(),
            sequence: 2,
            field: Some(11),
            component: None
        })
    );
}

#[test]
fn field_limit_is_raised_before_a_huge_segment_is_indexed() {
    // A segment of nothing but separators would cost an index entry per byte.
    let mut text = format!("{MSH}\rZZZ").into_bytes();
    text.resize(text.len() + 1_000_000, b'|');
    let e = Message::parse_with(text, &ParseOptions::default()).unwrap_err();
    assert!(
        matches!(
            e,
            ParseError::TooManyFields {
                limit: DEFAULT_MAX_FIELDS,
                segment: 2,
                ..
            }
        ),
        "{e}"
    );
    let mut text = MSH.as_bytes().to_vec();
    for _ in 0..DEFAULT_MAX_SEGMENTS {
        text.extend_from_slice(b"\rNTE|1");
    }
    assert!(matches!(
        Message::parse(text).unwrap_err(),
        ParseError::TooManySegments {
            limit: DEFAULT_MAX_SEGMENTS,
            ..
        }
    ));
}

#[test]
fn unlimited_lifts_only_the_limits() {
    let opts = ParseOptions::lenient().unlimited();
    assert_eq!(opts.line_endings, LineEndings::Lenient);
    assert_eq!(
        (opts.max_segments, opts.max_fields),
        (usize::MAX, usize::MAX)
    );
    let d = ParseOptions::default();
    assert_eq!(
        (d.max_segments, d.max_fields),
        (DEFAULT_MAX_SEGMENTS, DEFAULT_MAX_FIELDS)
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn hl7ish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop::sample::select(vec![
            &b"|"[..],
            b"^",
            b"~",
            b"&",
            b"\\",
            b"\r",
            b"\n",
            b"PID",
            b"OBX",
            b"MSH",
            b"a",
            b"1",
            b"\\F\\",
            b"\\X41\\",
            b"\\H\\",
            b"\xC3\xA9",
            b"\xFF",
            b" ",
            b"",
        ]);
        prop::collection::vec(piece, 0..60).prop_map(|parts| {
            let mut v = MSH.as_bytes().to_vec();
            for p in parts {
                v.extend_from_slice(p);
            }
            v
        })
    }

    fn paths() -> impl Strategy<Value = Path> {
        (
            prop::sample::select(vec!["MSH", "PID", "OBX"]),
            prop::option::of(1usize..4),
            1usize..14,
            prop::option::of(1usize..4),
            prop::option::of(1usize..4),
            prop::option::of(1usize..3),
        )
            .prop_map(|(s, o, f, r, c, sc)| Path {
                segment: s.to_string(),
                occurrence: o,
                field: Some(f),
                repetition: r,
                component: c,
                subcomponent: c.and(sc),
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            for opts in [ParseOptions::default(), ParseOptions::lenient()] {
                if let Ok(m) = Message::parse_with(bytes.clone(), &opts) {
                    prop_assert_eq!(m.encode(), bytes.clone());
                }
            }
        }

        #[test]
        fn parsed_messages_round_trip_and_read_safely(bytes in hl7ish(), path in paths()) {
            for opts in [ParseOptions::default(), ParseOptions::lenient()] {
                let Ok(m) = Message::parse_with(bytes.clone(), &opts) else { continue };
                prop_assert_eq!(m.encode(), bytes.clone());
                let _ = m.get(&path);
                let _ = m.raw(&path);
                let _ = m.repetition_count(&path);
                for s in m.segments() {
                    for f in s.fields() {
                        for r in f.repetitions() {
                            for c in r.components() {
                                for sc in c.subcomponents() {
                                    let _ = sc.value();
                                }
                            }
                        }
                    }
                }
            }
        }

        #[test]
        fn set_then_get_returns_the_value(
            bytes in hl7ish(),
            path in paths(),
            value in "[a-z|^~&\\\\\\r\\n é#]{0,12}",
        ) {
            let Ok(mut m) = Message::parse_with(bytes, &ParseOptions::lenient()) else { return Ok(()) };
            if m.set(&path, &value).is_ok() {
                let again = Message::parse_with(m.encode(), &ParseOptions::lenient())
                    .expect("an edited message parses");
                prop_assert_eq!(again.get(&path), Some(value.clone()));
                prop_assert_eq!(m.get(&path), Some(value.clone()));
            }
            if m.delete(&path).is_ok() {
                Message::parse_with(m.encode(), &ParseOptions::lenient())
                    .expect("a message after delete parses");
            }
            if m.insert_repetition(&Path { component: None, subcomponent: None, repetition: Some(path.repetition.unwrap_or(1)), ..path.clone() }, &value).is_ok() {
                Message::parse_with(m.encode(), &ParseOptions::lenient())
                    .expect("a message after insert_repetition parses");
            }
        }
    }
}

#[test]
fn a_large_message_with_few_segments_keeps_a_small_index() {
    // A 1 MiB report in one OBX-5: four segments and a few dozen field separators. The index
    // must be sized by what it holds, not by the byte count.
    let report = "A".repeat(1 << 20);
    let m = msg(&format!(
        "PID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah\rOBR|1|ORD1\rOBX|1|ED|PDF||^AP^PDF^Base64^{report}||||||F"
    ));
    assert_eq!(m.segment_count(), 4);
    assert!(
        m.segs.capacity() <= 2 * m.segs.len() + 256,
        "{}",
        m.segs.capacity()
    );
    assert!(
        m.seps.capacity() <= 2 * m.seps.len() + 256,
        "{}",
        m.seps.capacity()
    );
    let index_bytes = m.segs.capacity() * std::mem::size_of::<Seg>() + m.seps.capacity() * 4;
    assert!(index_bytes < 16 * 1024, "{index_bytes} bytes of index");
    // And a message of many segments still indexes them all.
    let many: String = (1..=5000)
        .map(|i| format!("OBX|{i}|NM|WBC||{i}|\r"))
        .collect();
    let m = msg(&many);
    assert_eq!(m.segment_count(), 5001);
    assert_eq!(get(&m, "OBX[5000]-5").as_deref(), Some("5000"));
}

/// The pieces read one after the other.
fn joined(pieces: &[Bytes]) -> Vec<u8> {
    pieces.iter().flat_map(|p| p.iter().copied()).collect()
}

/// Whether `piece` lies inside `buf`'s allocation (a slice of it, not a copy).
fn points_into(piece: &Bytes, buf: &Bytes) -> bool {
    let (p, b) = (piece.as_ptr() as usize, buf.as_ptr() as usize);
    p >= b && p + piece.len() <= b + buf.len()
}

/// Edits of every kind, each on its own copy of `text`: what they do to a message.
fn edited(text: &str, opts: &ParseOptions) -> Vec<(&'static str, Message)> {
    let base = Message::parse_with(text.as_bytes().to_vec(), opts).unwrap();
    let mut out = Vec::new();
    let mut m = base.clone();
    m.set(&p("PID-3.1"), "a much longer identifier than before")
        .unwrap();
    out.push(("set a field", m));
    let mut m = base.clone();
    m.delete(&p("PID-5")).unwrap();
    out.push(("delete a field", m));
    let mut m = base.clone();
    m.remove_segment(2).unwrap();
    out.push(("remove a segment", m));
    let mut m = base.clone();
    m.insert_segment(1, "ZZZ|inserted").unwrap();
    out.push(("insert a segment", m));
    let mut m = base.clone();
    m.append_segment("ZZZ|appended").unwrap();
    out.push(("append a segment", m));
    let mut m = base.clone();
    m.set(&p("MSH-5"), "OTHER").unwrap();
    m.set(&p("OBX[2]-5"), "changed").unwrap();
    m.remove_segment(1).unwrap();
    out.push(("several", m));
    out
}

const PIECES_TEXT: &[(&str, &str)] = &[
    (
        "\\r",
        "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\rPID|1||100^^^H^MR||Doe^Jane\rOBR|1\rOBX|1|TX|A||one\rOBX|2|TX|B||two\rNTE|1||end\r",
    ),
    (
        "\\r\\n, blank lines, no last terminator",
        "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\r\nPID|1||100^^^H^MR||Doe^Jane\r\n\r\nOBR|1\r\nOBX|1|TX|A||one\r\nOBX|2|TX|B||two\r\nNTE|1||end",
    ),
];

#[test]
fn pieces_read_as_the_encoded_message() {
    let opts = ParseOptions::lenient();
    for (name, text) in PIECES_TEXT {
        let base = Message::parse_with(text.as_bytes().to_vec(), &opts).unwrap();
        assert_eq!(joined(&base.pieces()), text.as_bytes(), "{name}: unchanged");
        assert_eq!(
            base.pieces().len(),
            1,
            "{name}: unchanged is the buffer itself"
        );
        for (edit, m) in edited(text, &opts) {
            let encoded = m.encode();
            assert_eq!(joined(&m.pieces()), &encoded[..], "{name}: {edit}");
            assert_eq!(m.encoded_len(), encoded.len(), "{name}: {edit}");
            assert!(
                m.pieces().iter().all(|p| !p.is_empty()),
                "{name}: {edit}: an empty piece"
            );
            // The same pieces by position: ranges of the text it was parsed from.
            let spans = m.spans();
            assert_eq!(
                Span::join(&spans, text.as_bytes()),
                &encoded[..],
                "{name}: {edit}: spans"
            );
            assert_eq!(spans.len(), m.pieces().len(), "{name}: {edit}");
            assert!(
                spans
                    .windows(2)
                    .all(|w| !matches!(w, [Span::Written(_), Span::Written(_)])
                        && !matches!(w, [Span::Kept(a), Span::Kept(b)] if a.end == b.start)),
                "{name}: {edit}: neighbouring spans not merged: {spans:?}"
            );
        }
        assert_eq!(base.spans(), [Span::Kept(0..text.len())], "{name}");
    }
}

#[test]
fn pieces_of_a_large_message_share_its_buffer() {
    let big = "A".repeat(1 << 20);
    let text = format!("{MSH}\rPID|1||100^^^H^MR||Doe^Jane\rOBX|1|ED|PDF||{big}\rNTE|1||x\r");
    let mut m = Message::parse(text.into_bytes()).unwrap();
    let source = m.encode();
    m.set(&p("PID-5"), "Roe").unwrap();
    let pieces = m.pieces();
    // MSH with its terminator; the new PID; its terminator, OBX and NTE in one run.
    assert_eq!(pieces.len(), 3);
    assert!(points_into(&pieces[0], &source) && points_into(&pieces[2], &source));
    assert!(!points_into(&pieces[1], &source));
    assert_eq!(&pieces[1][..], b"PID|1||100^^^H^MR||Roe");
    assert_eq!(joined(&pieces), &m.encode()[..]);
}

#[test]
fn share_unchanged_takes_unchanged_segments_from_the_base() {
    let opts = ParseOptions::lenient();
    for (name, text) in PIECES_TEXT {
        let base = Message::parse_with(text.as_bytes().to_vec(), &opts).unwrap();
        for (edit, m) in edited(text, &opts) {
            // What a plugin returns: the edited message as new bytes of its own.
            let returned = m.encode();
            let own = Message::parse_with(returned.to_vec(), &opts).unwrap();
            let shared = own.share_unchanged(&base);
            assert_eq!(shared.encode(), returned, "{name}: {edit}");
            assert_eq!(joined(&shared.pieces()), &returned[..], "{name}: {edit}");
            // Reads and edits go on working on the shared message.
            assert_eq!(get(&shared, "MSH-9"), get(&m, "MSH-9"), "{name}: {edit}");
            assert_eq!(
                get(&shared, "PID-3.1"),
                get(&m, "PID-3.1"),
                "{name}: {edit}"
            );
            let mut again = shared.clone();
            again.set(&p("NTE-3"), "later").unwrap();
            let mut direct = m.clone();
            direct.set(&p("NTE-3"), "later").unwrap();
            assert_eq!(
                again.encode(),
                direct.encode(),
                "{name}: {edit}: a later edit"
            );
        }
    }
}

#[test]
fn share_unchanged_drops_the_plugins_copy_of_a_large_message() {
    let big = "B".repeat(1 << 20);
    let text = format!("{MSH}\rPID|1||100^^^H^MR||Doe^Jane\rNK1|1|Doe^John\rOBX|1|ED|PDF||{big}\r");
    let base = Message::parse(text.into_bytes()).unwrap();
    let mut m = base.clone();
    m.set(&p("PID-3.1"), "0123456789abcdef0123456789abcdef")
        .unwrap();
    m.remove_segment(2).unwrap();
    let own = Message::parse(m.encode().to_vec()).unwrap();
    let shared = own.share_unchanged(&base);
    let pieces = shared.pieces();
    let base_bytes = base.encode();
    // The 1 MiB OBX comes from the base's buffer; only the new PID is the shared message's own.
    let own_bytes: usize = pieces
        .iter()
        .filter(|p| !points_into(p, &base_bytes))
        .map(Bytes::len)
        .sum();
    assert!(own_bytes < 100, "{own_bytes} bytes not shared");
    assert_eq!(shared.encode(), m.encode());
}

#[test]
fn share_unchanged_keeps_a_message_with_other_delimiters() {
    let base = msg("PID|1||100");
    let other = Message::parse(
        "MSH#^~\\&#SND#FAC#RCV#RFAC#20260101120000##ADT^A04^ADT_A01#CTRL1#P#2.5.1\rPID#1##100\r"
            .as_bytes()
            .to_vec(),
    )
    .unwrap();
    let before = other.encode();
    let shared = other.share_unchanged(&base);
    assert_eq!(shared.encode(), before);
    assert!(!shared.is_modified());
}

/// Whether two messages have the same segments, field by field, and the same bytes.
fn same_message(a: &Message, b: &Message) -> bool {
    a.encode() == b.encode()
        && a.segment_count() == b.segment_count()
        && a.delimiters() == b.delimiters()
        && a.charset() == b.charset()
        && a.segments().zip(b.segments()).all(|(x, y)| {
            x.raw() == y.raw()
                && x.field_count() == y.field_count()
                && (1..=x.field_count())
                    .all(|n| x.field(n).map(|f| f.raw()) == y.field(n).map(|f| f.raw()))
        })
}

#[test]
fn splice_builds_what_the_spans_say_over_the_buffer() {
    let opts = ParseOptions::lenient();
    for (name, text) in PIECES_TEXT {
        let base = Message::parse_with(text.as_bytes().to_vec(), &opts).unwrap();
        for (edit, m) in edited(text, &opts) {
            let spans = m.spans();
            let out = base
                .splice(&spans)
                .unwrap_or_else(|| panic!("{name}: {edit}: not built directly"));
            let joined = Span::join(&spans, text.as_bytes());
            let parsed = Message::parse_with(joined, &opts).unwrap();
            assert!(same_message(&out, &parsed), "{name}: {edit}");
            assert!(same_message(&out, &m), "{name}: {edit}");
            // Shared as the edited message was: the same runs of the buffer, the same writes.
            assert_eq!(out.spans(), spans, "{name}: {edit}");
            assert!(
                out.pieces()
                    .iter()
                    .zip(&spans)
                    .all(|(p, s)| !matches!(s, Span::Kept(_)) || points_into(p, &base.encode())),
                "{name}: {edit}"
            );
            // Later edits work on it as on the parsed message.
            let (mut a, mut b) = (out.clone(), parsed.clone());
            for m in [&mut a, &mut b] {
                m.set(&p("OBX[1]-5"), "later").unwrap();
                m.append_segment("ZZZ|later").unwrap();
            }
            assert!(same_message(&a, &b), "{name}: {edit}: later edits");
        }
        // The whole buffer kept is the message itself.
        let whole = base.splice(&[Span::Kept(0..text.len())]).unwrap();
        assert!(same_message(&whole, &base), "{name}");
    }
}

#[test]
fn splice_leaves_other_shapes_to_a_parse() {
    let text = "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\rPID|1||100^^^H^MR||Doe^Jane\rOBX|1|TX|A||one\r";
    let base = Message::parse(text.as_bytes().to_vec()).unwrap();
    let len = text.len();
    let msh_end = text.find('\r').unwrap();
    let pid = msh_end + 1;
    let w = |s: &str| Span::Written(s.as_bytes().to_vec());
    let cases: Vec<(&str, Vec<Span>)> = vec![
        ("a range past the end", vec![Span::Kept(0..len + 1)]),
        (
            "a range starting inside a segment",
            vec![w("MSH"), Span::Kept(3..len)],
        ),
        (
            "a range ending inside a segment",
            vec![Span::Kept(0..5), w("|rest\r")],
        ),
        (
            "a kept body continued by written bytes",
            vec![Span::Kept(0..msh_end), w("|X\r"), Span::Kept(pid..len)],
        ),
        (
            "written bytes continued by a kept body",
            vec![Span::Kept(0..pid), w("ZZZ|"), Span::Kept(pid..len)],
        ),
        (
            "a blank line written",
            vec![Span::Kept(0..pid), w("\r"), Span::Kept(pid..len)],
        ),
        (
            "a line feed written",
            vec![Span::Kept(0..pid), w("ZZZ|1\n"), Span::Kept(pid..len)],
        ),
        (
            "an MSH with other delimiters",
            vec![
                w("MSH#^~\\&#A#B#C#D#20260101##ORU^R01#1#P#2.5.1"),
                Span::Kept(msh_end..len),
            ],
        ),
        (
            "an MSH with another character set",
            vec![
                w("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1||||||8859/1"),
                Span::Kept(msh_end..len),
            ],
        ),
        ("the MSH not first", vec![w("PID|1\r"), Span::Kept(0..len)]),
        (
            "a second MSH",
            vec![
                Span::Kept(0..len),
                w("MSH|^~\\&|A|B|C|D|1||ADT^A04|2|P|2.5\r"),
            ],
        ),
        (
            "the MSH twice",
            vec![Span::Kept(0..len), Span::Kept(0..pid)],
        ),
        (
            "a bad segment ID written",
            vec![Span::Kept(0..pid), w("P!D|1\r")],
        ),
        ("nothing", vec![]),
    ];
    for (name, spans) in &cases {
        assert!(base.splice(spans).is_none(), "{name}");
    }
    // Over the segment limit: left to the parse, which names it.
    let limited = ParseOptions {
        max_segments: 3,
        ..ParseOptions::default()
    };
    let base3 = Message::parse_with(text.as_bytes().to_vec(), &limited).unwrap();
    assert!(base3.splice(&[Span::Kept(0..len), w("ZZZ|4\r")]).is_none());
    // An edited message is not a buffer the ranges can be read from.
    let mut edited = base.clone();
    edited.set(&p("PID-3.1"), "7").unwrap();
    assert!(edited.splice(&[Span::Kept(0..len)]).is_none());
}

#[test]
fn splice_agrees_with_parsing_the_joined_bytes() {
    // Pseudo-random answers, cut anywhere or at segment edges, with written bytes of every
    // kind in between: whatever splice builds must be what parsing the joined bytes gives.
    let text = "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\r\nPID|1||100^^^H^MR||Doe^Jane\r\n\r\nOBR|1\rOBX|1|TX|A||one\r\nNTE|1||end";
    let opts = ParseOptions::lenient();
    let base = Message::parse_with(text.as_bytes().to_vec(), &opts).unwrap();
    let edges: Vec<usize> = (0..=text.len())
        .filter(|&i| i == 0 || i == text.len() || matches!(text.as_bytes()[i - 1], b'\r' | b'\n'))
        .chain(text.match_indices(['\r', '\n']).map(|(i, _)| i))
        .collect();
    let writes = [
        "\r",
        "ZZZ|x\r",
        "PID|9",
        "|y",
        "\n",
        "\r\r",
        "MSH|^~\\&|A|B|C|D|1||ADT^A04|2|P|2.5.1\r",
        "P!D|1\r",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % n
    };
    // Segments: body and terminator (with blank lines), in order.
    let bytes = text.as_bytes();
    let mut segments = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let body_end = (at..bytes.len())
            .find(|&i| matches!(bytes[i], b'\r' | b'\n'))
            .unwrap_or(bytes.len());
        let term_end = (body_end..bytes.len())
            .find(|&i| !matches!(bytes[i], b'\r' | b'\n'))
            .unwrap_or(bytes.len());
        segments.push((at..body_end, body_end..term_end));
        at = term_end;
    }
    let keep = |spans: &mut Vec<Span>, r: Range<usize>| match spans.last_mut() {
        Some(Span::Kept(k)) if k.end == r.start => k.end = r.end,
        _ if r.is_empty() => {}
        _ => spans.push(Span::Kept(r)),
    };
    let (mut built, mut agreed) = (0, 0);
    for round in 0..4000 {
        let mut spans = Vec::new();
        if round % 4 != 0 {
            // Shaped like an edit: each segment kept, dropped, rewritten (its terminator kept)
            // or preceded by a new one; now and then only its body kept, or something odd
            // written.
            for (body, term) in &segments {
                match next(20) {
                    0 | 1 => {}
                    2 | 3 => {
                        spans.push(Span::Written(b"PID|9".to_vec()));
                        keep(&mut spans, term.clone());
                    }
                    4 | 5 => {
                        spans.push(Span::Written(b"ZZZ|x\r".to_vec()));
                        keep(&mut spans, body.start..term.end);
                    }
                    6 => keep(&mut spans, body.clone()),
                    7 => spans.push(Span::Written(
                        writes[next(writes.len())].as_bytes().to_vec(),
                    )),
                    _ => keep(&mut spans, body.start..term.end),
                }
            }
        } else {
            // Cut anywhere, or at line ends.
            for _ in 0..1 + next(5) {
                if next(3) == 0 {
                    spans.push(Span::Written(
                        writes[next(writes.len())].as_bytes().to_vec(),
                    ));
                } else {
                    let pick = |r: usize| {
                        if r.is_multiple_of(4) {
                            r % (text.len() + 1)
                        } else {
                            edges[r % edges.len()]
                        }
                    };
                    let (a, b) = (pick(next(1 << 20)), pick(next(1 << 20)));
                    spans.push(Span::Kept(a.min(b)..a.max(b)));
                }
            }
        }
        let joined = Span::join(&spans, text.as_bytes());
        let parsed = Message::parse_with(joined.clone(), &opts);
        if let Some(out) = base.splice(&spans) {
            built += 1;
            let parsed = parsed.unwrap_or_else(|e| panic!("{spans:?}: built, but {e}"));
            assert!(same_message(&out, &parsed), "{spans:?}");
            assert_eq!(&out.encode()[..], &joined[..], "{spans:?}");
        } else if parsed.is_ok() {
            agreed += 1;
        }
    }
    // Both sides of the test are exercised.
    assert!(
        built > 1000 && agreed > 20,
        "built {built}, left to the parse {agreed}"
    );
}
