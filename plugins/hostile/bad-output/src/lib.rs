//! Hostile test plugin: implements the transform world by hand (no SDK) and answers "changed"
//! with bytes that are not an HL7 message. The engine must refuse them (bad output) and keep
//! the message as it was.

// Written against wit-bindgen directly, so the generated bindings and the `export!` below
// are this crate's own unsafe code.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "transform-step",
    });
}

use bindings::courier::plugin::types::{Hl7Message, Outcome};

struct Garbage;

impl bindings::Guest for Garbage {
    fn transform(_message: Hl7Message) -> Result<Outcome, String> {
        Ok(Outcome::Keep(Some(
            b"this is not an HL7 message\r".to_vec(),
        )))
    }
}

bindings::export!(Garbage with_types_in bindings);
