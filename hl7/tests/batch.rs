//! Splitting batches and multi-message input: batch files with one or several batches, count
//! checks, envelope errors, line endings, and a bad message that must not hide the others.

mod common;

use bytes::Bytes;
use courier_hl7::{BatchError, Message, ParseOptions, split_messages};
use std::path::PathBuf;

fn example(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/messages")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn examples() -> [String; 3] {
    [
        example("adt_a04_sarah.hl7"),
        example("orm_o01_labs.hl7"),
        example("oru_r01_results.hl7"),
    ]
}

fn strict(s: &str) -> Result<courier_hl7::Batch, BatchError> {
    split_messages(
        Bytes::copy_from_slice(s.as_bytes()),
        &ParseOptions::default(),
    )
}

fn lenient(s: &str) -> Result<courier_hl7::Batch, BatchError> {
    split_messages(
        Bytes::copy_from_slice(s.as_bytes()),
        &ParseOptions::lenient(),
    )
}

const FHS: &str = "FHS|^~\\&|LAB|RIVERSIDE|COURIER|RIVERSIDE|20261124150000\r";
const BHS: &str = "BHS|^~\\&|LAB|RIVERSIDE|COURIER|RIVERSIDE|20261124150000\r";

#[test]
fn three_message_batch_file() {
    let [a, b, c] = examples();
    let input = format!("{FHS}{BHS}{a}{b}{c}BTS|3\rFTS|1\r");
    let batch = strict(&input).unwrap();
    assert_eq!(batch.messages.len(), 3);
    for (got, want) in batch.messages.iter().zip([&a, &b, &c]) {
        assert_eq!(&got[..], want.as_bytes(), "each message byte for byte");
        let m = Message::parse(got.clone()).unwrap();
        assert_eq!(&m.encode()[..], want.as_bytes());
    }
    assert_eq!(
        batch.file_header.as_deref(),
        Some(FHS.trim_end().as_bytes())
    );
    assert_eq!(batch.batch_headers, [Bytes::from(BHS.trim_end())]);
    assert_eq!(batch.batch_trailers, [Bytes::from_static(b"BTS|3")]);
    assert_eq!(batch.file_trailer.as_deref(), Some(&b"FTS|1"[..]));
    assert_eq!(batch.batch_messages, vec![(0..3)]);
    assert_eq!(batch.declared_counts.batch_messages, [Some(3)]);
    assert_eq!(batch.declared_counts.file_batches, Some(1));
}

#[test]
fn several_batches_in_one_file() {
    let [a, b, c] = examples();
    let input = format!("{FHS}{BHS}{a}{b}BTS|2\r{BHS}{c}BTS\r{BHS}BTS|0\rFTS|3|done\r");
    let batch = strict(&input).unwrap();
    assert_eq!(batch.messages.len(), 3);
    assert_eq!(batch.batch_headers.len(), 3);
    assert_eq!(batch.batch_messages, [0..2, 2..3, 3..3]);
    assert_eq!(
        batch.declared_counts.batch_messages,
        [Some(2), None, Some(0)]
    );
    assert_eq!(batch.declared_counts.file_batches, Some(3));
}

#[test]
fn lone_batch_and_back_to_back() {
    let [a, b, c] = examples();
    let batch = strict(&format!("{BHS}{a}{b}BTS|2\r")).unwrap();
    assert!(batch.file_header.is_none());
    assert_eq!(batch.messages.len(), 2);
    let batch = strict(&format!("{a}{b}{c}")).unwrap();
    assert_eq!(batch.messages.len(), 3);
    assert!(batch.batch_headers.is_empty() && batch.file_header.is_none());
    let batch = strict(&a).unwrap();
    assert_eq!(&batch.messages[0][..], a.as_bytes());
}

#[test]
fn count_mismatches() {
    let [a, b, _] = examples();
    let e = strict(&format!("{FHS}{BHS}{a}{b}BTS|3\rFTS|1\r")).unwrap_err();
    assert_eq!(
        e,
        BatchError::CountMismatch {
            field: "BTS-1",
            what: "messages",
            declared: 3,
            found: 2,
            segment: 3 + a.matches('\r').count() + b.matches('\r').count(),
            offset: FHS.len() + BHS.len() + a.len() + b.len(),
        }
    );
    assert!(
        e.to_string().starts_with("BTS-1 says 3 messages, found 2"),
        "{e}"
    );
    let e = strict(&format!("{FHS}{BHS}{a}BTS|1\rFTS|2\r")).unwrap_err();
    assert!(
        e.to_string().starts_with("FTS-1 says 2 batches, found 1"),
        "{e}"
    );
    let e = strict(&format!("{FHS}{BHS}{a}BTS|1\rFTS|two\r")).unwrap_err();
    assert!(
        matches!(e, BatchError::InvalidCount { field: "FTS-1", .. }),
        "{e}"
    );
}

#[test]
fn envelope_errors() {
    let [a, b, _] = examples();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty input"),
        ("\r\r".into(), "empty input"),
        (format!("EVN|A01\r{a}"), "before the first MSH"),
        (
            format!("{BHS}{a}"),
            "BHS at segment 1 (byte offset 0) is not closed by a BTS",
        ),
        (
            format!("{BHS}{a}{BHS}{b}BTS\r"),
            "BHS at segment 1 (byte offset 0) is not closed",
        ),
        (
            format!("{FHS}{BHS}{a}BTS\r"),
            "FHS at segment 1 (byte offset 0) is not closed by an FTS",
        ),
        (format!("{BHS}{a}BTS\rFTS|1\r"), "FTS without FHS"),
        (format!("{a}BTS\r"), "BTS without BHS"),
        (
            format!("{FHS}{BHS}{a}BTS\rFTS\r{b}"),
            "after the file trailer",
        ),
        (
            format!("{BHS}{a}BTS\rPID|1\r{BHS}BTS\r"),
            "outside any message",
        ),
        (format!("{a}{FHS}"), "a file header comes first"),
        (format!("{FHS}{FHS}"), "a file header comes first"),
    ];
    for (input, needle) in cases {
        let e = strict(&input).unwrap_err();
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
}

#[test]
fn bad_message_inside_batch_still_splits() {
    let [a, b, c] = examples();
    let bad = b.replacen("\rPID|", "\rP!D|", 1);
    let input = format!("{FHS}{BHS}{a}{bad}{c}BTS|3\rFTS|1\r");
    let batch = strict(&input).unwrap();
    assert_eq!(batch.messages.len(), 3);
    let parsed: Vec<_> = batch
        .messages
        .iter()
        .map(|m| Message::parse(m.clone()))
        .collect();
    assert!(parsed[0].is_ok());
    let e = parsed[1].as_ref().unwrap_err();
    assert!(e.to_string().contains("malformed segment ID"), "{e}");
    assert!(parsed[2].is_ok());
}

#[test]
fn line_endings_and_blank_lines() {
    let [a, b, c] = examples();
    let unix = format!(
        "{}\n\n{}\r\n{}\n",
        format!("{FHS}{BHS}{a}").replace('\r', "\n"),
        b.replace('\r', "\r\n").trim_end(),
        format!("{c}BTS|3\rFTS|1").replace('\r', "\n")
    );
    let batch = lenient(&unix).unwrap();
    assert_eq!(batch.messages.len(), 3);
    for m in &batch.messages {
        Message::parse_with(m.clone(), &ParseOptions::lenient()).unwrap();
    }
    assert!(batch.messages[1].ends_with(b"\r\n"));
    // Strict mode refuses line feeds between segments, naming where.
    let e = strict(&unix).unwrap_err();
    assert!(matches!(e, BatchError::LineFeed { .. }), "{e}");
    // Blank lines between messages are fine in strict mode too.
    let batch = strict(&format!("\r{a}\r\r{b}  \r{c}\r")).unwrap();
    assert_eq!(batch.messages.len(), 3);
    assert_eq!(&batch.messages[1][..], b.as_bytes());
}

mod generated {
    use super::*;
    use crate::common::{Escapes, config, message};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(config(256))]

        /// Generated messages, back to back or in a batch file, with blank lines between
        /// them, come back exactly.
        #[test]
        fn split_gives_back_each_message(
            gens in proptest::collection::vec(message(Escapes::Any, true), 1..5),
            blanks in proptest::collection::vec(prop_oneof![Just(""), Just("\r"), Just("\r  \r")], 5),
            envelope in any::<bool>(),
        ) {
            let texts: Vec<String> = gens.iter().map(|g| g.render()).collect();
            let mut input = String::new();
            if envelope {
                input.push_str(FHS);
                input.push_str(BHS);
            }
            for (t, b) in texts.iter().zip(&blanks) {
                input.push_str(t);
                input.push_str(b);
            }
            if envelope {
                input.push_str(&format!("BTS|{}\rFTS|1\r", texts.len()));
            }
            let batch = strict(&input).unwrap();
            let got: Vec<&[u8]> = batch.messages.iter().map(|m| &m[..]).collect();
            let want: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
            prop_assert_eq!(got, want);
        }

        /// Whatever the bytes, splitting never panics, and what it returns are slices of the
        /// input starting with MSH.
        #[test]
        fn split_never_panics(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"MSH|^~\\&|"[..],
                    &b"BHS|"[..],
                    &b"BTS|"[..],
                    &b"FHS|"[..],
                    &b"FTS|"[..],
                    &b"\r"[..],
                    &b"\n"[..],
                    &b"\r\n"[..],
                    &b"PID|1"[..],
                    &b"1"[..],
                    &b" "[..],
                    &b"\xff"[..],
                ]),
                0..24,
            ),
        ) {
            let input = Bytes::from(parts.concat());
            for opts in [ParseOptions::default(), ParseOptions::lenient()] {
                if let Ok(batch) = split_messages(input.clone(), &opts) {
                    for m in &batch.messages {
                        prop_assert!(m.starts_with(b"MSH"));
                        let start = m.as_ptr() as usize - input.as_ptr() as usize;
                        prop_assert_eq!(&input[start..start + m.len()], &m[..]);
                    }
                }
            }
        }
    }
}
