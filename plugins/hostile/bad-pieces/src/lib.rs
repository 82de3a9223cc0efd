//! Hostile test plugin: implements `transform-pieces-step` by hand (no SDK) and answers
//! "changed" with pieces the engine must refuse (bad output), keeping the message as it was.
//! The step's setting `mode` says how:
//!
//! - `past-end`: keeps bytes that reach one byte past the end of the message;
//! - `huge`: keeps the whole message over and over, for more than 80 MiB in all, from a
//!   list of a few hundred kilobytes;
//! - `not-hl7`: writes bytes that are not an HL7 message.
//!
//! Without a `mode` it keeps the message's bytes in two halves, in order: a correct answer
//! that leaves the message unchanged.

// Written against wit-bindgen directly, so the generated bindings and the `export!` below
// are this crate's own unsafe code.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "transform-pieces-step",
    });
}

use bindings::courier::plugin::host;
use bindings::courier::plugin::types::{Hl7Message, Piece, PiecesOutcome, Span};

struct BadPieces;

impl bindings::Guest for BadPieces {
    fn transform_pieces(message: Hl7Message) -> Result<PiecesOutcome, String> {
        let len = u32::try_from(message.bytes.len()).map_err(|_| "too large".to_owned())?;
        let pieces = match host::setting("mode").as_deref() {
            Some("past-end") => vec![Piece::Kept(Span { start: 1, len })],
            Some("huge") => {
                let times = (80 << 20) / len.max(1) as usize + 1;
                vec![Piece::Kept(Span { start: 0, len }); times]
            }
            Some("not-hl7") => vec![Piece::Written(b"this is not an HL7 message\r".to_vec())],
            _ => vec![
                Piece::Kept(Span {
                    start: 0,
                    len: len / 2,
                }),
                Piece::Kept(Span {
                    start: len / 2,
                    len: len - len / 2,
                }),
            ],
        };
        Ok(PiecesOutcome::Keep(Some(pieces)))
    }
}

bindings::export!(BadPieces with_types_in bindings);
