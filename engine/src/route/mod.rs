//! Routing: which routes want a message, and the pipeline it goes through on each.
//!
//! A route matches on the listener the message came in on, MSH-9 (with wildcards such as
//! `ADT^A0*`), MSH-3..6 and conditions on field values. A message may match several routes;
//! each route fans out to its destinations. The pipeline's steps (filters, transforms) plug
//! in between matching and fan-out.

mod condition;

use std::sync::Arc;

use courier_hl7::{Message, Path};
use wildmatch::WildMatch;

pub use condition::Condition;

use crate::config::{CompiledMatch, Config, ConfigError};

/// A wildcard pattern (`*` any run of characters, `?` one character), case-sensitive as HL7
/// codes are.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: WildMatch,
}

impl Pattern {
    /// Compiles a pattern; empty patterns are refused.
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.trim().is_empty() {
            return Err("pattern must not be empty (leave the key out to match anything)".into());
        }
        Ok(Pattern {
            text: text.to_owned(),
            matcher: WildMatch::new(text),
        })
    }

    /// Does `value` match?
    pub fn matches(&self, value: &str) -> bool {
        self.matcher.matches(value)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A route ready to match messages.
#[derive(Debug)]
pub struct Route {
    /// The route's name from the config.
    pub name: Arc<str>,
    /// The route's position in the config (its steps are found by it).
    pub index: usize,
    rules: CompiledMatch,
    /// Indexes into the engine's destination list, in config order.
    pub destinations: Vec<usize>,
}

/// The fields of MSH a route looks at, read once per message.
#[derive(Debug, Default, Clone)]
pub struct Envelope {
    /// `code^trigger` of MSH-9 (or just the code).
    pub message_type: String,
    /// MSH-9.1.
    pub code: String,
    /// MSH-3.1 .. MSH-6.1.
    pub msh: [String; 4],
}

impl Envelope {
    /// Reads the routing fields of a message.
    pub fn of(msg: &Message) -> Envelope {
        let mt = msg.message_type();
        let first = |n: usize| {
            msg.get(&Path::new("MSH").with_field(n).with_component(1))
                .unwrap_or_default()
        };
        Envelope {
            message_type: mt.to_string(),
            code: mt.code.clone(),
            msh: [first(3), first(4), first(5), first(6)],
        }
    }
}

impl Route {
    /// Does this route want a message that came in on `listener`?
    pub fn matches(&self, listener: &str, env: &Envelope, msg: &Message) -> bool {
        if let Some(ls) = &self.rules.listeners
            && !ls.iter().any(|l| l == listener)
        {
            return false;
        }
        if let Some(types) = &self.rules.message_types
            && !types.iter().any(|p| type_matches(p, env))
        {
            return false;
        }
        for (p, v) in self.rules.msh.iter().zip(&env.msh) {
            if let Some(p) = p
                && !p.matches(v)
            {
                return false;
            }
        }
        self.rules.when.iter().all(|c| c.holds(msg))
    }
}

/// `ADT` matches the code with any trigger; `ADT^A0*` matches `code^trigger`.
fn type_matches(p: &Pattern, env: &Envelope) -> bool {
    if p.as_str().contains('^') {
        p.matches(&env.message_type)
    } else {
        p.matches(&env.code)
    }
}

/// All routes of a config, in config order.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the router; `destination_index` maps a destination name to its slot.
    pub fn new(
        config: &Config,
        destination_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<Router, ConfigError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let rc = r.get_ref();
            let destinations = rc
                .destinations
                .iter()
                .filter_map(|d| destination_index(d.get_ref()))
                .collect();
            routes.push(Route {
                name: rc.name.as_str().into(),
                index: i,
                rules: config.compiled_match(i)?,
                destinations,
            });
        }
        Ok(Router { routes })
    }

    /// The routes that want this message, in config order.
    pub fn select<'a>(
        &'a self,
        listener: &'a str,
        env: &'a Envelope,
        msg: &'a Message,
    ) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes
            .iter()
            .filter(move |r| r.matches(listener, env, msg))
    }

    /// All routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &[u8] = b"MSH|^~\\&|REGADT|RIVERSIDE_FD|COURIER|RIVERSIDE|20261124||ADT^A04^ADT_A01|C1|P|2.5.1\rPID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah\r";

    fn router(routes: &str) -> Router {
        let text = format!(
            "[[listener]]\nname=\"in\"\nbind=\"127.0.0.1:0\"\n[[listener]]\nname=\"other\"\nbind=\"127.0.0.1:0\"\n\
             [[destination]]\nname=\"emr\"\naddress=\"h:1\"\n{routes}"
        );
        let c = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        Router::new(&c, |n| (n == "emr").then_some(0)).unwrap()
    }

    fn selected(r: &Router, listener: &str, raw: &[u8]) -> Vec<String> {
        let m = Message::parse(raw.to_vec()).unwrap();
        let env = Envelope::of(&m);
        r.select(listener, &env, &m)
            .map(|r| r.name.to_string())
            .collect()
    }

    #[test]
    fn matches_type_wildcards_msh_and_conditions() {
        let r = router(
            r#"
[[route]]
name = "adt-wild"
message_types = ["ADT^A0*"]
destinations = ["emr"]
[[route]]
name = "adt-code"
message_types = ["ADT"]
destinations = ["emr"]
[[route]]
name = "orm"
message_types = ["ORM^O01"]
destinations = ["emr"]
[[route]]
name = "from-reg"
sending_application = "REG*"
receiving_facility = "RIVERSIDE"
destinations = ["emr"]
[[route]]
name = "other-listener"
listeners = ["other"]
destinations = ["emr"]
[[route]]
name = "clinic-mrn"
when = ['PID-3.4 == "RIVERSIDE"', 'PID-5.1 =~ "John*"']
destinations = ["emr"]
[[route]]
name = "not-clinic"
when = ['PID-3.4 != "RIVERSIDE"']
destinations = ["emr"]
"#,
        );
        assert_eq!(
            selected(&r, "in", ADT),
            ["adt-wild", "adt-code", "from-reg", "clinic-mrn"]
        );
        assert_eq!(
            selected(&r, "other", ADT),
            [
                "adt-wild",
                "adt-code",
                "from-reg",
                "other-listener",
                "clinic-mrn"
            ]
        );
    }
}
