//! Hostile test plugin: remembers things in statics. With a fresh instance per message it
//! must see an empty memory every time: it writes `ZST|<calls seen>|<names remembered>`, and
//! the engine's test asserts `ZST|1|0` on every call. With the setting `panic = "true"` it
//! counts the call and then panics (a trap), for the test that a kept instance
//! (`reuse_instance`) is discarded after a trap.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

static CALLS: AtomicU32 = AtomicU32::new(0);
static NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[transform]
fn remember(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if ctx.setting("panic").as_deref() == Some("true") {
        panic!("asked to panic after {calls} calls");
    }
    let mut names = NAMES.lock().map_err(|_| Error::new("poisoned"))?;
    let before = names.len();
    if let Some(name) = msg.get_str("PID-5.1")? {
        names.push(name);
    }
    msg.append_segment(&format!("ZST|{calls}|{before}"))?;
    Ok(Outcome::Keep)
}
