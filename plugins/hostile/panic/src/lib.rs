//! Hostile test plugin: panics, with the patient's name and MRN in the panic message (which
//! the guest prints to stderr before it traps). The engine must report a trap, and neither
//! the name nor the MRN may reach the engine's log.
//!
//! With the setting `behave = "true"` it keeps the message and returns at once, so tests can
//! show that the same loaded plugin serves the next message after a failure.

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

#[transform]
fn explode(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    if ctx.setting("behave").as_deref() == Some("true") {
        return Ok(Outcome::Keep);
    }
    let name = msg.get_str("PID-5")?.unwrap_or_default();
    let mrn = msg.get_str("PID-3.1")?.unwrap_or_default();
    panic!("cannot handle patient {name} with MRN {mrn}");
}
