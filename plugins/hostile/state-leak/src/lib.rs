//! Hostile test plugin: remembers things in statics. With a fresh instance per message it
//! must see an empty memory every time: it writes `ZST|<calls seen>|<names remembered>`, and
//! the engine's test asserts `ZST|1|0` on every call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

static CALLS: AtomicU32 = AtomicU32::new(0);
static NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[transform]
fn remember(msg: &mut Message, _ctx: &Context) -> Result<Outcome, Error> {
    let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    let mut names = NAMES.lock().map_err(|_| Error::new("poisoned"))?;
    let before = names.len();
    if let Some(name) = msg.get_str("PID-5.1")? {
        names.push(name);
    }
    msg.append_segment(&format!("ZST|{calls}|{before}"))?;
    Ok(Outcome::Keep)
}
