//! Hostile test plugin: never returns. The engine's CPU deadline (epoch interruption) must
//! stop it with a timeout, and the same plugin must then serve the next message.
//!
//! With the setting `behave = "true"` it keeps the message and returns at once, so tests can
//! show that the same loaded plugin serves the next message after a failure.

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

#[transform]
fn spin(_msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    if ctx.setting("behave").as_deref() == Some("true") {
        return Ok(Outcome::Keep);
    }
    let mut n: u64 = 0;
    loop {
        // black_box keeps the optimiser from proving the loop pointless.
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
