//! Benchmark plugin, one half of the bytes-versus-resource measurement in `docs/plugins.md`:
//! twelve reads and writes (seven `get`, five `set`) on the message, which crosses the
//! boundary as ER7 bytes and is parsed in the guest. `bench-resource-ops` does the same twelve
//! through host calls.

use courier_plugin_sdk::{Context, Error, Message, MessageExt, Outcome, transform};

#[transform]
fn twelve_ops(msg: &mut Message, _ctx: &Context) -> Result<Outcome, Error> {
    let get = |m: &Message, p: &str| m.get_str(p).map(Option::unwrap_or_default);
    let _authority = get(msg, "PID-3[1].4")?;
    let _kind = get(msg, "PID-3[1].5")?;
    let family = get(msg, "PID-5.1")?;
    msg.set_str("PID-5.1", &family.to_uppercase())?;
    let given = get(msg, "PID-5.2")?;
    msg.set_str("PID-5.2", &given.to_uppercase())?;
    let _born = get(msg, "PID-7")?;
    let area = get(msg, "PID-13.6")?;
    let local = get(msg, "PID-13.7")?;
    msg.set_str("PID-13.1", &format!("({area}){local}"))?;
    msg.set_str("MSH-5", "EPIC")?;
    msg.set_str("MSH-6", "RIVERSIDE_EMR")?;
    Ok(Outcome::Keep)
}
