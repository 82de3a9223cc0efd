//! Hostile test plugin: allocates (and touches) memory until an allocation is refused. The
//! engine's memory cap must refuse the growth and report a memory limit, not crash.
//!
//! With the setting `mode = "try"` it uses `try_reserve` and stops politely at the first
//! refusal, reporting in ZMB-1 how many MiB it got: the engine refused growth, yet the call
//! succeeds because the plugin coped.
//!
//! With the setting `behave = "true"` it keeps the message and returns at once, so tests can
//! show that the same loaded plugin serves the next message after a failure.

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

#[transform]
fn bomb(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    if ctx.setting("behave").as_deref() == Some("true") {
        return Ok(Outcome::Keep);
    }
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    if ctx.setting("mode").as_deref() == Some("try") {
        loop {
            let mut chunk: Vec<u8> = Vec::new();
            if chunk.try_reserve_exact(1 << 20).is_err() {
                break;
            }
            chunk.resize(1 << 20, 0xAB);
            hoard.push(chunk);
        }
        msg.append_segment(&format!("ZMB|{}", hoard.len()))?;
        return Ok(Outcome::Keep);
    }
    loop {
        hoard.push(std::hint::black_box(vec![0xAB; 1 << 20]));
    }
}
