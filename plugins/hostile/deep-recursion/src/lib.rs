//! Hostile test plugin: recurses without end. The WebAssembly stack (or the shadow stack in
//! linear memory) overflows and traps; the engine must report a trap and keep serving.
//!
//! With the setting `behave = "true"` it keeps the message and returns at once, so tests can
//! show that the same loaded plugin serves the next message after a failure.

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

// Unbounded on purpose: the point is to overflow the stack.
#[allow(unconditional_recursion)]
#[inline(never)]
fn deeper(depth: u64, pad: [u8; 64]) -> u64 {
    // The array and black_box keep a real frame per call (no tail call, no folding).
    let pad = std::hint::black_box(pad);
    let below = deeper(depth + 1, pad);
    std::hint::black_box(below.wrapping_add(u64::from(pad[(depth % 64) as usize])))
}

#[transform]
fn recurse(_msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    if ctx.setting("behave").as_deref() == Some("true") {
        return Ok(Outcome::Keep);
    }
    let _ = std::hint::black_box(deeper(0, [1; 64]));
    Ok(Outcome::Keep)
}
