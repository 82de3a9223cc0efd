//! The ACK builder on every message the parser accepts (lenient, the listeners' most
//! permissive setting), with every code, with and without an error whose text and location
//! come from the input: it never panics, the ACK parses (strictly) both as a message and as a
//! received ACK, and MSA-2 is the original's MSH-10 as written.
#![no_main]

use courier_hl7::{
    AckCode, AckError, ErrorCode, ErrorLocation, Message, ParseOptions, Path, ReceivedAck,
    Severity, build_ack, build_nak_for_unparsed,
};
use libfuzzer_sys::fuzz_target;

const CODES: [AckCode; 6] = [
    AckCode::AA,
    AckCode::AE,
    AckCode::AR,
    AckCode::CA,
    AckCode::CE,
    AckCode::CR,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, raw)) = data.split_first() else {
        return;
    };
    let code = CODES[usize::from(pick) % CODES.len()];
    // Error text from the input, so escaping and charset conversion of the text are fuzzed too.
    let text = String::from_utf8_lossy(raw.get(..raw.len().min(64)).unwrap_or_default());
    let error = AckError {
        code: ErrorCode::ALL[usize::from(pick / 8) % ErrorCode::ALL.len()],
        location: (pick & 0x80 != 0).then(|| ErrorLocation {
            segment: text.chars().take(3).collect(),
            sequence: 1,
            field: Some(usize::from(pick)),
            component: None,
        }),
        text: text.into_owned(),
        severity: Severity::Error,
    };

    // Whatever the bytes, the NAK for unparsed input is a valid ACK.
    let nak = build_nak_for_unparsed(raw, code, &error, "ACK1", "20260101120000");
    Message::parse(nak.clone()).expect("the NAK parses");
    ReceivedAck::parse(&nak).expect("the NAK reads as an ACK");

    let Ok(msg) = Message::parse_with(raw.to_vec(), &ParseOptions::lenient()) else {
        return;
    };
    let msh10 = Path::new("MSH").with_field(10);
    for err in [None, Some(&error)] {
        let ack = build_ack(&msg, code, err, "ACK1", "20260101120000");
        let parsed = Message::parse(ack.clone())
            .unwrap_or_else(|e| panic!("the ACK parses: {e}\n{:?}", String::from_utf8_lossy(&ack)));
        assert_eq!(
            parsed
                .raw(&Path::new("MSA").with_field(2))
                .unwrap_or_default(),
            msg.raw(&msh10).unwrap_or_default(),
            "MSA-2 is the original's MSH-10"
        );
        let received = ReceivedAck::parse(&ack).expect("the ACK reads as an ACK");
        assert_eq!(received.code, code);
    }
});
