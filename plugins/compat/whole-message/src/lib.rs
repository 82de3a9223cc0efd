//! Compatibility test plugin: a transform built for the first version of Courier's plugin
//! interface, `courier:plugin@0.1.0` (its WIT is kept verbatim in `wit/`), as plugins built
//! with the SDK of that version are. It answers a changed message whole, as that version's
//! `transform-step` does. The engine must keep running such plugins as it did.
//!
//! It upper-cases the patient's family name (PID-5.1) and sets the receiving application
//! (MSH-5) to `COMPAT`.

// Written against wit-bindgen directly, so the generated bindings and the `export!` below
// are this crate's own unsafe code.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "transform-step",
    });
}

use bindings::courier::plugin::types::{Hl7Message, Outcome};
use courier_hl7::{Charset, Message, ParseOptions, Path};

struct WholeMessage;

impl bindings::Guest for WholeMessage {
    fn transform(message: Hl7Message) -> Result<Outcome, String> {
        let opts = ParseOptions {
            default_charset: Charset::from_hl7(&message.default_charset).unwrap_or_default(),
            ..ParseOptions::lenient().unlimited()
        };
        let mut msg = Message::parse_with(message.bytes, &opts).map_err(|e| e.to_string())?;
        let family = Path::parse("PID-5.1").map_err(|e| e.to_string())?;
        if let Some(name) = msg.get(&family) {
            msg.set(&family, &name.to_uppercase())
                .map_err(|e| e.to_string())?;
        }
        msg.set(&Path::parse("MSH-5").map_err(|e| e.to_string())?, "COMPAT")
            .map_err(|e| e.to_string())?;
        Ok(Outcome::Keep(Some(Vec::from(msg.encode()))))
    }
}

bindings::export!(WholeMessage with_types_in bindings);
