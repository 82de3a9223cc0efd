//! `{{name}}`: a Courier route step, compiled to a WebAssembly component.
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/{{lib_name}}.wasm`, which `courier.toml` names in a route
//! step. The API is the plugin SDK's (`courier_plugin_sdk`, see docs/plugins.md in the
//! Courier tree): paths such as `PID-3[2].1` mean the same here as in route configs.

use courier_plugin_sdk::{Context, Error, Message, MessageExt, Outcome, transform};

/// Prepares a registration for the receiving system.
///
/// - MSH-5 (receiving application) becomes the step's `receiving_application` setting
///   (required: without it every message fails on the route, with a reason naming it).
/// - The patient's family name (PID-5.1) is written in upper case.
/// - A message without a PID segment is dropped (filtered) with a reason.
///
/// The function runs once per message in a fresh, sandboxed instance: no files, network,
/// environment or clock unless the route grants them. Log lines and reasons go to the
/// engine's log, so they name fields, never patient values.
#[transform]
fn {{lib_name}}(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let application = ctx.required_setting("receiving_application")?;
    if msg.segment("PID", 1).is_none() {
        return Ok(Outcome::Drop("no PID segment".into()));
    }
    msg.set_str("MSH-5", &application)?;
    if let Some(family) = msg.get_str("PID-5.1")? {
        msg.set_str("PID-5.1", &family.to_uppercase())?;
    }
    ctx.debug("MSH-5 and PID-5.1 set for the receiver");
    Ok(Outcome::Keep)
}

// The transform is plain Rust: `cargo test` runs these natively, with a test context that
// holds settings (and lookup tables) in memory.
#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] =
        b"MSH|^~\\&|REG|CLINIC|ENGINE|CLINIC|20260101120000||ADT^A04^ADT_A01|MSG0001|P|2.5.1\r\
        PID|1||123456^^^CLINIC^MR||Doe^Jane\r";

    #[test]
    fn sets_the_receiver_and_upper_cases_the_family_name() {
        let mut msg = Message::parse(ADT).unwrap();
        let ctx = Context::for_test().with_setting("receiving_application", "EMR");
        assert_eq!({{lib_name}}(&mut msg, &ctx), Ok(Outcome::Keep));
        assert_eq!(msg.get_str("MSH-5").unwrap().as_deref(), Some("EMR"));
        assert_eq!(msg.get_str("PID-5.1").unwrap().as_deref(), Some("DOE"));
        assert_eq!(msg.get_str("PID-5.2").unwrap().as_deref(), Some("Jane"));
    }

    #[test]
    fn drops_a_message_without_pid() {
        let mut msg = Message::parse(
            &b"MSH|^~\\&|REG|CLINIC|ENGINE|CLINIC|20260101||ADT^A08|MSG0002|P|2.5.1\r"[..],
        )
        .unwrap();
        let ctx = Context::for_test().with_setting("receiving_application", "EMR");
        assert_eq!(
            {{lib_name}}(&mut msg, &ctx),
            Ok(Outcome::Drop("no PID segment".into()))
        );
    }

    #[test]
    fn fails_without_its_setting() {
        let mut msg = Message::parse(ADT).unwrap();
        let err = {{lib_name}}(&mut msg, &Context::for_test()).unwrap_err();
        assert!(err.message().contains("receiving_application"), "{err}");
    }
}
