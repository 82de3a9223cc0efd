//! Hostile test plugin: a perfectly good component of some other interface (it exports
//! `hello`, not Courier's `transform` or `filter`). The engine must refuse it at load with an
//! error naming the file.

// Written against wit-bindgen directly, so the generated bindings and the `export!` below
// are this crate's own unsafe code.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({
        inline: "
            package other:greeter;
            world greeter {
                export hello: func() -> string;
            }
        ",
    });
}

struct Greeter;

impl bindings::Guest for Greeter {
    fn hello() -> String {
        "hello".to_owned()
    }
}

bindings::export!(Greeter with_types_in bindings);
