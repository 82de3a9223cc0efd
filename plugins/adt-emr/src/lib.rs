//! `adt-emr`: prepares registration messages (ADT) for the clinic's EMR.
//!
//! The mapping itself lives in [`mapping`], plain Rust over the HL7 model with no plugin
//! machinery, so that the engine's benchmark runs the very same code natively beside this
//! component. This file only reads the settings and logs.
//!
//! Settings (see `docs/plugins.md`): `assigning_authority` (required), `identifier_type`
//! (default `MR`), `other_identifiers` (`drop`, default, or `keep`), `phone_format` (`us`,
//! default, or `e164`), `receiving_application`, `receiving_facility`.

mod mapping;

use courier_plugin_sdk::{Context, Error, Message, Outcome, transform};

#[transform]
fn adt_emr(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error> {
    let settings = mapping::Settings::from_settings(|name| ctx.setting(name))?;
    mapping::apply(msg, &settings, &mut |line| ctx.warn(line))?;
    Ok(Outcome::Keep)
}
