//! Benchmark plugin, the other half of the bytes-versus-resource measurement in
//! `docs/plugins.md`: the same twelve reads and writes as `bench-bytes-ops`, but on a message
//! the host keeps and exposes as a WIT resource (`get`/`set` by path are host calls). The WIT
//! is inline: it is an experiment for the benchmark, not part of Courier's interface.

// Written against wit-bindgen directly, so the generated bindings and the `export!` below
// are this crate's own unsafe code.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package courier:bench;

            interface hl7 {
                resource message {
                    get: func(path: string) -> option<string>;
                    set: func(path: string, value: string) -> result<_, string>;
                }
            }

            world resource-step {
                import hl7;
                use hl7.{message};
                export transform: func(message: borrow<message>) -> result<_, string>;
            }
        ",
    });
}

use bindings::courier::bench::hl7::Message;

struct TwelveOps;

impl bindings::Guest for TwelveOps {
    fn transform(msg: &Message) -> Result<(), String> {
        let get = |p: &str| msg.get(p).unwrap_or_default();
        let _authority = get("PID-3[1].4");
        let _kind = get("PID-3[1].5");
        let family = get("PID-5.1");
        msg.set("PID-5.1", &family.to_uppercase())?;
        let given = get("PID-5.2");
        msg.set("PID-5.2", &given.to_uppercase())?;
        let _born = get("PID-7");
        let area = get("PID-13.6");
        let local = get("PID-13.7");
        msg.set("PID-13.1", &format!("({area}){local}"))?;
        msg.set("MSH-5", "EPIC")?;
        msg.set("MSH-6", "RIVERSIDE_EMR")?;
        Ok(())
    }
}

bindings::export!(TwelveOps with_types_in bindings);
