//! Acknowledgements: ACKs built for the example messages checked field by field (and read
//! back by hl7-parser as a second opinion), NAKs with ERR, custom delimiters, enhanced mode,
//! NAKs for unparseable bytes, and reading received ACKs.

mod common;

use bytes::Bytes;
use common::{config, examples};
use courier_hl7::{
    AckCode, AckCondition, AckError, AckMode, ErrorCode, ErrorLocation, Message, Path, ReceivedAck,
    Severity, build_ack, build_nak_for_unparsed,
};
use proptest::prelude::*;

fn raw<'m>(m: &'m Message, path: &str) -> &'m [u8] {
    m.raw(&Path::parse(path).unwrap()).unwrap_or_default()
}

fn get(m: &Message, path: &str) -> Option<String> {
    m.get_str(path).unwrap()
}

fn msg(s: &str) -> Message {
    Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
}

const TS: &str = "20261124120000-0500";

#[test]
fn aa_for_every_example_field_by_field() {
    for (name, bytes) in examples() {
        let orig = Message::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = build_ack(&orig, AckCode::AA, None, "ACK0001", TS);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.ends_with('\r') && !text.contains("\r\r") && !text.contains('\n'),
            "{name}"
        );
        let ack = Message::parse(out.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            ack.segments().map(|s| s.id()).collect::<Vec<_>>(),
            ["MSH", "MSA"]
        );
        assert_eq!(ack.delimiters(), orig.delimiters(), "{name}");
        assert_eq!(raw(&ack, "MSH-2"), raw(&orig, "MSH-2"));
        // Sender and receiver swapped, as raw ER7.
        assert_eq!(raw(&ack, "MSH-3"), raw(&orig, "MSH-5"), "{name}");
        assert_eq!(raw(&ack, "MSH-4"), raw(&orig, "MSH-6"), "{name}");
        assert_eq!(raw(&ack, "MSH-5"), raw(&orig, "MSH-3"), "{name}");
        assert_eq!(raw(&ack, "MSH-6"), raw(&orig, "MSH-4"), "{name}");
        assert_eq!(get(&ack, "MSH-7").as_deref(), Some(TS));
        assert_eq!(get(&ack, "MSH-8").as_deref(), Some(""));
        let trigger = orig.message_type().trigger;
        assert_eq!(
            get(&ack, "MSH-9"),
            Some(format!("ACK^{trigger}^ACK")),
            "{name}"
        );
        assert_eq!(ack.control_id().as_deref(), Some("ACK0001"));
        assert_eq!(raw(&ack, "MSH-11"), raw(&orig, "MSH-11"));
        assert_eq!(raw(&ack, "MSH-12"), raw(&orig, "MSH-12"));
        assert_eq!(ack.version(), orig.version());
        for n in [13, 14, 15, 16, 17] {
            assert_eq!(
                get(&ack, &format!("MSH-{n}")).as_deref(),
                Some(""),
                "{name} MSH-{n}"
            );
        }
        assert_eq!(raw(&ack, "MSH-18"), raw(&orig, "MSH-18"));
        assert_eq!(ack.charset(), orig.charset());
        assert_eq!(get(&ack, "MSA-1").as_deref(), Some("AA"));
        assert_eq!(raw(&ack, "MSA-2"), raw(&orig, "MSH-10"));
        assert_eq!(get(&ack, "MSA-3"), None, "{name}: no MSA-3 without error");

        let received = ReceivedAck::parse(&out).unwrap();
        assert_eq!(received.code, AckCode::AA);
        assert_eq!(Some(received.control_id), orig.control_id());
        assert_eq!(received.text, None);
        assert!(received.errors.is_empty());

        // Second opinion: hl7-parser reads the same fields.
        let theirs = hl7_parser::parse_message(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(theirs.segments.len(), 2);
        let msh = theirs.segment("MSH").unwrap();
        for n in 3..=12 {
            let ours = raw(&ack, &format!("MSH-{n}"));
            let other = msh.field(n).map_or("", |f| f.raw_value());
            assert_eq!(other.as_bytes(), ours, "{name}: MSH-{n}");
        }
        let msa = theirs.segment("MSA").unwrap();
        assert_eq!(msa.field(1).unwrap().raw_value(), "AA");
        assert_eq!(
            msa.field(2).unwrap().raw_value().as_bytes(),
            raw(&orig, "MSH-10")
        );
    }
}

#[test]
fn ae_and_ar_carry_err() {
    let (_, bytes) = examples().remove(0);
    let orig = Message::parse(bytes).unwrap();
    let error = AckError {
        code: ErrorCode::RequiredFieldMissing,
        location: Some(ErrorLocation {
            segment: "PID".into(),
            sequence: 1,
            field: Some(3),
            component: Some(1),
        }),
        text: "PID-3.1 is required | empty\nsee spec".into(),
        severity: Severity::Error,
    };
    for code in [AckCode::AE, AckCode::AR] {
        let out = build_ack(&orig, code, Some(&error), "N1", TS);
        let ack = Message::parse(out.clone()).unwrap();
        assert_eq!(
            ack.segments().map(|s| s.id()).collect::<Vec<_>>(),
            ["MSH", "MSA", "ERR"]
        );
        assert_eq!(get(&ack, "MSA-1").as_deref(), Some(code.as_str()));
        assert_eq!(
            raw(&ack, "MSA-3"),
            br"PID-3.1 is required \F\ empty\.br\see spec"
        );
        assert_eq!(get(&ack, "MSA-3").as_deref(), Some(error.text.as_str()));
        assert_eq!(get(&ack, "ERR-1").as_deref(), Some(""));
        assert_eq!(raw(&ack, "ERR-2"), b"PID^1^3^^1");
        assert_eq!(raw(&ack, "ERR-3"), b"101^Required field missing^HL70357");
        assert_eq!(get(&ack, "ERR-4").as_deref(), Some("E"));
        assert_eq!(get(&ack, "ERR-8").as_deref(), Some(error.text.as_str()));
        let seg = ack.segment("ERR", 1).unwrap();
        assert_eq!(seg.field_count(), 8, "no trailing empty fields");

        let received = ReceivedAck::parse(&out).unwrap();
        assert_eq!(received.code, code);
        assert_eq!(received.text.as_deref(), Some(error.text.as_str()));
        assert_eq!(received.errors, [error.text.as_str()]);
        assert!(received.code.is_error() == (code == AckCode::AE));
        assert!(received.code.is_reject() == (code == AckCode::AR));
    }
    // Location without component, and no location at all; a warning.
    let mut e = AckError::new(ErrorCode::UnsupportedVersionId, "MSH-12 not supported");
    e.severity = Severity::Warning;
    let ack = Message::parse(build_ack(&orig, AckCode::AR, Some(&e), "N2", TS)).unwrap();
    assert_eq!(get(&ack, "ERR-2").as_deref(), Some(""));
    assert_eq!(raw(&ack, "ERR-3"), b"203^Unsupported version id^HL70357");
    assert_eq!(get(&ack, "ERR-4").as_deref(), Some("W"));
    e.location = Some(ErrorLocation {
        segment: "MSH".into(),
        sequence: 1,
        field: Some(12),
        component: None,
    });
    let ack = Message::parse(build_ack(&orig, AckCode::AR, Some(&e), "N3", TS)).unwrap();
    assert_eq!(raw(&ack, "ERR-2"), b"MSH^1^12");
}

#[test]
fn from_parse_error_names_no_data() {
    let bad = b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|C1|P|2.5\rPID|1||SECRET-MRN\rP!D|x\r";
    let e = Message::parse(&bad[..]).unwrap_err();
    let err = AckError::from_parse_error(&e);
    assert_eq!(err.code, ErrorCode::SegmentSequenceError);
    assert_eq!(err.severity, Severity::Error);
    assert!(!err.text.contains("SECRET"), "{}", err.text);
    let nak = build_nak_for_unparsed(bad, AckCode::AR, &err, "N4", TS);
    assert!(!String::from_utf8_lossy(&nak).contains("SECRET"));
    let ack = Message::parse(nak.clone()).unwrap();
    assert_eq!(raw(&ack, "ERR-3"), b"100^Segment sequence error^HL70357");
    assert_eq!(raw(&ack, "MSA-2"), b"C1");
}

#[test]
fn custom_delimiters_are_kept() {
    let orig = msg("MSH#!@$%#APP!X#FAC#RCV#RFAC#2026##ORM!O01!ORM_O01#C7#P#2.4\rPID#1##42!!!H%1\r");
    let error = AckError::new(ErrorCode::DataTypeError, "bad # ! @ $ % | ^");
    let out = build_ack(&orig, AckCode::AE, Some(&error), "A#1", "2026");
    let text = std::str::from_utf8(&out).unwrap();
    assert!(
        text.starts_with("MSH#!@$%#RCV#RFAC#APP!X#FAC#2026##ACK!O01!ACK#A$F$1#P#2.4\r"),
        "{text}"
    );
    assert!(
        text.contains("MSA#AE#C7#bad $F$ $S$ $R$ $E$ $T$ | ^\r"),
        "{text}"
    );
    assert!(text.contains("ERR##"), "{text}");
    let ack = Message::parse(out.clone()).unwrap();
    assert_eq!(ack.delimiters(), orig.delimiters());
    assert_eq!(get(&ack, "MSH-3.1").as_deref(), Some("RCV"));
    assert_eq!(get(&ack, "MSH-5.2").as_deref(), Some("X"));
    assert_eq!(get(&ack, "ERR-8").as_deref(), Some(error.text.as_str()));
    assert_eq!(ack.control_id().as_deref(), Some("A#1"));
    let received = ReceivedAck::parse(&out).unwrap();
    assert_eq!(received.control_id, "C7");
    assert_eq!(received.errors, [error.text.as_str()]);
    let theirs = hl7_parser::parse_message(text).unwrap();
    assert_eq!(
        theirs.segment("MSA").unwrap().field(2).unwrap().raw_value(),
        "C7"
    );

    // The v2.7 truncation character is echoed in MSH-2 and escaped in texts.
    let orig = msg("MSH|^~\\&#|A|B|C|D|2026||ADT^A04|T1|P|2.7\r");
    let e = AckError::new(ErrorCode::ApplicationInternalError, "ward #3");
    let out = build_ack(&orig, AckCode::AE, Some(&e), "T2", TS);
    assert!(out.starts_with(b"MSH|^~\\&#|C|D|A|B|"));
    let ack = Message::parse(out.clone()).unwrap();
    assert_eq!(ack.delimiters().truncation, Some(b'#'));
    assert_eq!(raw(&ack, "MSA-3"), br"ward \P\3");
    assert_eq!(get(&ack, "MSA-3").as_deref(), Some("ward #3"));

    // MSH-2 without an escape character: delimiters in texts become spaces.
    let orig = msg("MSH|^~|A|B|C|D|2026||ADT^A04|T3|P|2.3\r");
    let e = AckError::new(ErrorCode::ApplicationInternalError, "a|b^c~d\re");
    let out = build_ack(&orig, AckCode::AE, Some(&e), "T4", TS);
    let ack = Message::parse(out).unwrap();
    assert_eq!(get(&ack, "MSA-3").as_deref(), Some("a b c d e"));
    assert_eq!(ack.delimiters().escape, None);
}

#[test]
fn no_trigger_no_version_no_charset() {
    let orig = msg("MSH|^~\\&|A||||||QRY|Q1\r");
    let out = build_ack(&orig, AckCode::AA, None, "X", TS);
    assert_eq!(
        &out[..],
        format!("MSH|^~\\&|||A||{TS}||ACK|X\rMSA|AA|Q1\r").as_bytes()
    );
}

#[test]
fn charset_echoed_and_texts_converted() {
    let orig = Message::parse(
        &b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|L1|P|2.5||||||8859/1\rPID|1||||M\xFCller\r"[..],
    )
    .unwrap();
    let e = AckError::new(ErrorCode::DataTypeError, "Größe € fehlt");
    let out = build_ack(&orig, AckCode::AE, Some(&e), "L2", TS);
    assert!(out.windows(3).any(|w| w == b"Gr\xF6"), "Latin-1 bytes");
    let ack = Message::parse(out.clone()).unwrap();
    assert_eq!(get(&ack, "MSH-18").as_deref(), Some("8859/1"));
    assert_eq!(get(&ack, "MSA-3").as_deref(), Some("Größe ? fehlt"));
    assert_eq!(ReceivedAck::parse(&out).unwrap().errors, ["Größe ? fehlt"]);
}

#[test]
fn commit_codes() {
    let orig = msg("MSH|^~\\&|A|B|C|D|2026||ADT^A01|E1|P|2.5|||AL|NE\r");
    for code in [AckCode::CA, AckCode::CE, AckCode::CR] {
        let err = AckError::new(ErrorCode::ApplicationInternalError, "store unavailable");
        let error = (code != AckCode::CA).then_some(&err);
        let out = build_ack(&orig, code, error, "E2", TS);
        let received = ReceivedAck::parse(&out).unwrap();
        assert_eq!(received.code, code);
        assert!(received.code.is_commit());
        assert_eq!(received.code.is_accept(), code == AckCode::CA);
        assert_eq!(received.errors.len(), usize::from(code != AckCode::CA));
        let ack = Message::parse(out).unwrap();
        assert_eq!(get(&ack, "MSH-15"), None, "an ACK is not acknowledged");
        assert_eq!(AckMode::of(&ack), AckMode::Original);
    }
}

#[test]
fn enhanced_mode_detection() {
    use AckCondition::*;
    let cases = [
        ("", "", None),
        ("AL", "NE", Some((Always, Never))),
        ("NE", "AL", Some((Never, Always))),
        ("ER", "SU", Some((Error, Success))),
        ("SU", "ER", Some((Success, Error))),
        ("", "AL", Some((Always, Always))),
        ("NE", "", Some((Never, Always))),
        ("XX", "ne", Some((Always, Never))),
        (" ", " ", None),
    ];
    for (f15, f16, expected) in cases {
        let m = msg(&format!(
            "MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5|||{f15}|{f16}\r"
        ));
        let want = match expected {
            None => AckMode::Original,
            Some((accept, application)) => AckMode::Enhanced {
                accept,
                application,
            },
        };
        assert_eq!(AckMode::of(&m), want, "MSH-15={f15:?} MSH-16={f16:?}");
    }
    // MSH shorter than MSH-15: original mode.
    assert_eq!(
        AckMode::of(&msg("MSH|^~\\&|||||||ADT^A01|1\r")),
        AckMode::Original
    );
    for (name, bytes) in examples() {
        let m = Message::parse(bytes).unwrap();
        let valued = |p: &str| !get(&m, p).unwrap_or_default().is_empty();
        let enhanced = valued("MSH-15") || valued("MSH-16");
        assert_eq!(AckMode::of(&m) != AckMode::Original, enhanced, "{name}");
    }
}

#[test]
fn nak_for_unparsed_salvages_msh() {
    let raw_in = b"MSH|^~\\&|LAB|HOSP^1.2.3^ISO|EMR|CLINIC|2026||ORU^R01^ORU_R01|CTRL9|P|2.5.1\rPID|1\n||x\r";
    assert!(Message::parse(&raw_in[..]).is_err());
    let err = AckError::new(ErrorCode::SegmentSequenceError, "line feed in segment 2");
    let out = build_nak_for_unparsed(raw_in, AckCode::AR, &err, "NAK1", TS);
    let ack = Message::parse(out.clone()).unwrap();
    assert_eq!(raw(&ack, "MSH-3"), b"EMR");
    assert_eq!(raw(&ack, "MSH-4"), b"CLINIC");
    assert_eq!(raw(&ack, "MSH-5"), b"LAB");
    assert_eq!(raw(&ack, "MSH-6"), b"HOSP^1.2.3^ISO");
    assert_eq!(get(&ack, "MSH-9").as_deref(), Some("ACK^R01^ACK"));
    assert_eq!(raw(&ack, "MSH-11"), b"P");
    assert_eq!(raw(&ack, "MSH-12"), b"2.5.1");
    assert_eq!(raw(&ack, "MSA-2"), b"CTRL9");
    let received = ReceivedAck::parse(&out).unwrap();
    assert_eq!(received.code, AckCode::AR);
    assert_eq!(received.control_id, "CTRL9");
    assert_eq!(received.errors, ["line feed in segment 2"]);

    // Custom delimiters survive; non-ASCII salvaged fields are dropped.
    let raw_in = b"MSH#!@$%#LAB#H\xC3\xB6SP#EMR#CL#2026##ORU!R01#C2#P#2.4\rbroken";
    let out = build_nak_for_unparsed(raw_in, AckCode::AE, &err, "NAK2", TS);
    let ack = Message::parse(out.clone()).unwrap();
    assert_eq!(ack.delimiters().field, b'#');
    assert_eq!(raw(&ack, "MSH-5"), b"LAB");
    assert_eq!(raw(&ack, "MSH-6"), b"");
    assert_eq!(ReceivedAck::parse(&out).unwrap().control_id, "C2");
}

#[test]
fn nak_for_garbage() {
    let err = AckError::new(ErrorCode::SegmentSequenceError, "not an HL7 message");
    for garbage in [
        &b""[..],
        b"\x00\xff\xfehello",
        b"MSH",
        b"MSH|",
        b"MSH|^",
        b"MSH|^^\\&|dup",
        b"MSHx^~\\&|A",
        b"MSH|^~\\&",
        b"MSH|^~\\&|||||||||||||||||||||||||||",
        b"GET / HTTP/1.1\r\n",
    ] {
        let out = build_nak_for_unparsed(garbage, AckCode::AR, &err, "G1", TS);
        let ack = Message::parse(out.clone())
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(garbage)));
        let received = ReceivedAck::parse(&out).unwrap();
        assert_eq!(received.code, AckCode::AR);
        assert_eq!(received.control_id, "");
        assert_eq!(ack.control_id().as_deref(), Some("G1"));
        assert!(hl7_parser::parse_message(std::str::from_utf8(&out).unwrap()).is_ok());
    }
    let out = build_nak_for_unparsed(b"junk", AckCode::AR, &err, "G2", TS);
    assert!(out.starts_with(b"MSH|^~\\&|||||"));
}

proptest! {
    #![proptest_config(config(256))]

    /// Whatever the bytes, the NAK parses, as a message and as an acknowledgement.
    #[test]
    fn nak_always_parses(
        prefix in prop_oneof![Just(&b""[..]), Just(&b"MSH|^~\\&|"[..]), Just(&b"MSH"[..])],
        body in proptest::collection::vec(any::<u8>(), 0..200),
        text in "\\PC{0,40}",
    ) {
        let mut input = prefix.to_vec();
        input.extend_from_slice(&body);
        let err = AckError::new(ErrorCode::ApplicationInternalError, text);
        let out = build_nak_for_unparsed(&input, AckCode::AE, &err, "P1", TS);
        let parsed = Message::parse(out.clone());
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let received = ReceivedAck::parse(&out).unwrap();
        prop_assert_eq!(received.code, AckCode::AE);
        // ERR-8, or ERR-3.2 when the text is blank.
        prop_assert_eq!(received.errors.len(), 1);
    }
}

#[test]
fn received_ack_is_lenient_on_line_endings() {
    let ack = "MSH|^~\\&|B|B|A|A|2026||ACK^A01^ACK|9|P|2.5\rMSA|AA|C1|fine\rERR||PID^1|102^Data type error^HL70357|W\r";
    for text in [
        ack.to_string(),
        ack.replace('\r', "\n"),
        ack.replace('\r', "\r\n"),
        format!("\r\n{}\n\n", ack.replace('\r', "\r\n")),
    ] {
        let r = ReceivedAck::parse(text.as_bytes()).unwrap();
        assert_eq!(r.code, AckCode::AA);
        assert_eq!(r.control_id, "C1");
        assert_eq!(r.text.as_deref(), Some("fine"));
        assert_eq!(r.errors, ["Data type error"]);
    }
}

#[test]
fn received_ack_v23_err_layout() {
    let ack = "MSH|^~\\&|B|B|A|A|2026||ACK|9|P|2.3\rMSA|AE|C1\rERR|PID^1^3^101&Required field missing&HL70357~PID^1^7^102\r";
    let r = ReceivedAck::parse(ack.as_bytes()).unwrap();
    assert_eq!(r.code, AckCode::AE);
    assert_eq!(r.text, None);
    assert_eq!(r.errors, ["Required field missing", "102"]);
}

#[test]
fn received_ack_errors_are_clear() {
    let cases: [(&[u8], &str); 6] = [
        (b"", "not an HL7 message"),
        (b"hello", "not an HL7 message"),
        (b"MSH", "not an HL7 message"),
        (b"MSH|^^\\&|", "not an HL7 message"),
        (b"MSH|^~\\&|A\rPID|1\r", "no MSA segment"),
        (
            b"MSH|^~\\&|A\rMSA|ZZ|1\r",
            "unknown acknowledgement code \"ZZ\"",
        ),
    ];
    for (input, needle) in cases {
        let e = ReceivedAck::parse(input).unwrap_err();
        assert!(
            e.to_string().contains(needle),
            "{:?}: {e}",
            String::from_utf8_lossy(input)
        );
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Reading whatever a peer sends never panics.
    #[test]
    fn received_ack_never_panics(
        parts in proptest::collection::vec(
            proptest::sample::select(vec![
                    &b"MSH|^~\\&|"[..],
                    &b"MSA|"[..],
                    &b"ERR|"[..],
                    &b"AA"[..],
                    &b"|"[..],
                    &b"^"[..],
                    &b"&"[..],
                    &b"~"[..],
                    &b"\\"[..],
                    &b"\r"[..],
                    &b"\n"[..],
                    &b"x"[..],
                    &b"\xff"[..],
                ]),
            0..32,
        ),
    ) {
        let _ = ReceivedAck::parse(&parts.concat());
    }
}
