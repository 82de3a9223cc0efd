//! Hostile test plugin: logs the patient's name, MRN and birth date through the host log and
//! on stdout and stderr (the engine must redact them), then, unless the setting
//! `flood = "false"`, floods: 20 000 log lines and 5 MB on each of stdout and stderr (the
//! engine must bound what it keeps and still finish the call).

use std::io::Write;

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

#[transform]
fn chatter(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let family = msg.get_str("PID-5.1")?.unwrap_or_default();
    let given = msg.get_str("PID-5.2")?.unwrap_or_default();
    let mrn = msg.get_str("PID-3.1")?.unwrap_or_default();
    let dob = msg.get_str("PID-7")?.unwrap_or_default();
    ctx.info(&format!(
        "mapping patient {family}, {given} (MRN {mrn}, born {dob})"
    ));
    println!("stdout: patient {family} MRN {mrn}");
    eprintln!("stderr: patient {given} {family} born {dob}");
    if ctx.setting("flood").as_deref() != Some("false") {
        let line = "x".repeat(512);
        for _ in 0..20_000 {
            ctx.info(&line);
        }
        let block = "y".repeat(1 << 16);
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for _ in 0..80 {
            // Errors are ignored on purpose: a flooding plugin does not care.
            let _ = writeln!(out, "{block}");
            let _ = writeln!(err, "{block}");
        }
    }
    Ok(Outcome::Keep)
}
