//! The `#[transform]` and `#[filter]` attributes of `courier-plugin-sdk`; use them through
//! that crate (`courier_plugin_sdk::transform`), which documents them.
//!
//! Each attribute keeps the author's function as written and adds, next to it, the
//! component's entry point: WIT bindings for one world of `wit/plugin.wit` (embedded here at
//! compile time, so a plugin crate needs no WIT files of its own) and an implementation of
//! the world's export that parses the message, calls the function and gives back the answer
//! (`#[transform]` builds `transform-pieces-step`: a changed message goes back as what was
//! kept and what was written).
//!
//! A function the attribute cannot use is a compile error pointing at the offending part of
//! its signature (`syn::Error::new_spanned`), never a panic in the macro.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, ReturnType, Type};

/// The plugin interface, the same file the engine's host is generated from.
const WIT: &str = include_str!("../../../wit/plugin.wit");

/// Marks the plugin's transform: `fn(&mut Message, &Context) -> Result<Outcome, Error>`.
/// Documented on `courier_plugin_sdk::transform`.
#[proc_macro_attribute]
pub fn transform(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Transform, attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// Marks the plugin's filter: `fn(&Message, &Context) -> Result<bool, Error>` (or
/// `Result<Outcome, Error>`). Documented on `courier_plugin_sdk::filter`.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Filter, attr.into(), item.into())
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transform,
    Filter,
}

impl Kind {
    fn attribute(self) -> &'static str {
        match self {
            Kind::Transform => "#[transform]",
            Kind::Filter => "#[filter]",
        }
    }

    fn signature(self) -> &'static str {
        match self {
            Kind::Transform => "fn(msg: &mut Message, ctx: &Context) -> Result<Outcome, Error>",
            Kind::Filter => "fn(msg: &Message, ctx: &Context) -> Result<bool, Error>",
        }
    }
}

fn expand(kind: Kind, attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            format!("{} takes no arguments", kind.attribute()),
        ));
    }
    let func: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!(
                "{} goes on a function: {}",
                kind.attribute(),
                kind.signature()
            ),
        )
    })?;
    check_signature(kind, &func)?;

    let ident = &func.sig.ident;
    let wit = LitStr::new(WIT, Span::call_site());
    // Type errors in the author's types (say `&mut String` for the message) surface at the
    // call below; spanning it with the signature points the compiler there, not at the macro.
    let call_span = func.sig.span();
    let glue = match kind {
        Kind::Transform => {
            let call = quote_spanned! {call_span=>
                ::courier_plugin_sdk::__private::run_transform(message.bytes, &message.default_charset, super::#ident)
            };
            quote! {
                ::courier_plugin_sdk::__private::wit_bindgen::generate!({
                    inline: #wit,
                    world: "transform-pieces-step",
                    runtime_path: "::courier_plugin_sdk::__private::wit_bindgen::rt",
                    with: {
                        "courier:plugin/host@0.1.1": ::courier_plugin_sdk::__private::host,
                    },
                    generate_all,
                });

                struct CourierPlugin;

                impl Guest for CourierPlugin {
                    fn transform_pieces(
                        message: courier::plugin::types::Hl7Message,
                    ) -> ::core::result::Result<courier::plugin::types::PiecesOutcome, ::std::string::String> {
                        use courier::plugin::types::{PiecesOutcome, Piece, Span};
                        match #call {
                            ::core::result::Result::Ok(::courier_plugin_sdk::__private::Reply::Keep(spans)) => {
                                // Positions fit in u32: the engine sends no message of 4 GiB
                                // or more, and the guest's parser refuses one.
                                let pieces = spans.map(|spans| {
                                    spans
                                        .into_iter()
                                        .map(|span| match span {
                                            ::courier_plugin_sdk::hl7::Span::Kept(range) => Piece::Kept(Span {
                                                start: range.start as u32,
                                                len: range.len() as u32,
                                            }),
                                            ::courier_plugin_sdk::hl7::Span::Written(bytes) => Piece::Written(bytes),
                                        })
                                        .collect()
                                });
                                ::core::result::Result::Ok(PiecesOutcome::Keep(pieces))
                            }
                            ::core::result::Result::Ok(::courier_plugin_sdk::__private::Reply::Drop(reason)) => {
                                ::core::result::Result::Ok(PiecesOutcome::Drop(reason))
                            }
                            ::core::result::Result::Err(e) => ::core::result::Result::Err(e),
                        }
                    }
                }

                export!(CourierPlugin);
            }
        }
        Kind::Filter => {
            let name = LitStr::new(&ident.to_string(), ident.span());
            let call = quote_spanned! {call_span=>
                ::courier_plugin_sdk::__private::run_filter(message.bytes, &message.default_charset, #name, super::#ident)
            };
            quote! {
                ::courier_plugin_sdk::__private::wit_bindgen::generate!({
                    inline: #wit,
                    world: "filter-step",
                    runtime_path: "::courier_plugin_sdk::__private::wit_bindgen::rt",
                    with: {
                        "courier:plugin/host@0.1.1": ::courier_plugin_sdk::__private::host,
                    },
                    generate_all,
                });

                struct CourierPlugin;

                impl Guest for CourierPlugin {
                    fn filter(
                        message: courier::plugin::types::Hl7Message,
                    ) -> ::core::result::Result<courier::plugin::types::Verdict, ::std::string::String> {
                        match #call {
                            ::core::result::Result::Ok(::core::option::Option::None) => {
                                ::core::result::Result::Ok(courier::plugin::types::Verdict::Keep)
                            }
                            ::core::result::Result::Ok(::core::option::Option::Some(reason)) => {
                                ::core::result::Result::Ok(courier::plugin::types::Verdict::Drop(reason))
                            }
                            ::core::result::Result::Err(e) => ::core::result::Result::Err(e),
                        }
                    }
                }

                export!(CourierPlugin);
            }
        }
    };

    Ok(quote! {
        #func

        // One entry point per plugin crate: a second attribute in the same crate collides
        // here, by name.
        #[doc(hidden)]
        #[allow(unsafe_code, missing_docs, unused, clippy::all, clippy::pedantic)]
        mod __courier_plugin_entry_point__only_one_per_crate {
            #glue
        }
    })
}

/// Refuses anything but a plain, synchronous, non-generic function of two reference
/// arguments with a return type, naming what is wrong at its span.
fn check_signature(kind: Kind, func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    let attr = kind.attribute();
    let expected = kind.signature();
    if let Some(t) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            t,
            format!(
                "{attr} functions cannot be async: a plugin runs to completion on one message; expected {expected}"
            ),
        ));
    }
    if let Some(t) = &sig.constness {
        return Err(syn::Error::new_spanned(
            t,
            format!("{attr} functions cannot be const; expected {expected}"),
        ));
    }
    if let Some(t) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            t,
            format!("{attr} functions cannot be unsafe; expected {expected}"),
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            format!("{attr} functions cannot declare an ABI; expected {expected}"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("{attr} functions cannot be generic; expected {expected}"),
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            format!("{attr} functions cannot be variadic; expected {expected}"),
        ));
    }
    if sig.inputs.len() != 2 {
        let spanned: &dyn quote::ToTokens = if sig.inputs.is_empty() {
            &sig.ident
        } else {
            &sig.inputs
        };
        return Err(syn::Error::new_spanned(
            spanned,
            format!(
                "{attr} functions take two arguments, the message and the context; expected {expected}"
            ),
        ));
    }
    let mut args = sig.inputs.iter();
    let (Some(msg), Some(ctx)) = (args.next(), args.next()) else {
        // Unreachable after the length check; answered as an error, not a panic.
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            format!("expected {expected}"),
        ));
    };
    let msg_mut = match kind {
        Kind::Transform => true,
        Kind::Filter => false,
    };
    check_reference(msg, msg_mut, attr, expected, "the message")?;
    check_reference(ctx, false, attr, expected, "the context")?;
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new_spanned(
            sig,
            format!("{attr} functions return a Result; expected {expected}"),
        ));
    }
    Ok(())
}

fn check_reference(
    arg: &FnArg,
    want_mut: bool,
    attr: &str,
    expected: &str,
    what: &str,
) -> syn::Result<()> {
    let ty = match arg {
        FnArg::Receiver(r) => {
            return Err(syn::Error::new_spanned(
                r,
                format!("{attr} goes on a free function, not a method; expected {expected}"),
            ));
        }
        FnArg::Typed(t) => &t.ty,
    };
    let ok = match &**ty {
        Type::Reference(r) => r.mutability.is_some() == want_mut,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let shape = if want_mut {
        "a `&mut` reference"
    } else {
        "a shared `&` reference"
    };
    Err(syn::Error::new_spanned(
        ty,
        format!("{attr}: {what} is taken as {shape}; expected {expected}"),
    ))
}
