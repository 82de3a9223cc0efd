//! `test-filter`: drops the messages of test patients (or test traffic) by one rule: the value
//! at a path matches a wildcard pattern.
//!
//! Settings:
//! - `field`: the path to look at, in the engine's syntax; default `PID-5.1` (family name).
//! - `pattern`: a wildcard (`*` any run of characters, `?` one character); default `TEST*`.
//! - `case_sensitive`: `false` (default) or `true`.
//!
//! Examples: `field = "PID-5.1"`, `pattern = "TEST*"` drops every patient whose family name
//! starts with TEST; `field = "MSH-11"`, `pattern = "T"` drops messages flagged as training
//! or test traffic by their processing id. Two rules are two steps.
//!
//! A message without the field is kept. The drop reason names the rule, never the value it
//! matched, since the value may be a patient's name.

use courier_plugin_sdk::{Context, Error, Message, Outcome, Path, filter};
use wildmatch::WildMatch;

#[filter]
fn test_patients(msg: &Message, ctx: &Context) -> Result<Outcome, Error> {
    let field = ctx.setting("field").unwrap_or_else(|| "PID-5.1".to_owned());
    let pattern = ctx.setting("pattern").unwrap_or_else(|| "TEST*".to_owned());
    let case_sensitive = match ctx.setting("case_sensitive").as_deref().map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::new(format!(
                "the setting `case_sensitive` is true or false, not {other:?}"
            )));
        }
    };
    let path =
        Path::parse(field.trim()).map_err(|e| Error::new(format!("the setting `field`: {e}")))?;
    let Some(value) = msg.get(&path) else {
        return Ok(Outcome::Keep);
    };
    let matches = if case_sensitive {
        WildMatch::new(&pattern).matches(&value)
    } else {
        WildMatch::new(&pattern.to_lowercase()).matches(&value.to_lowercase())
    };
    Ok(if matches {
        Outcome::Drop(format!("test message: {path} matches {pattern:?}"))
    } else {
        Outcome::Keep
    })
}
