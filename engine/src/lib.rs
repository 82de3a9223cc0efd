//! Courier, an HL7 v2 interface engine.
//!
//! The library behind the `courier` binary: configuration ([`config`]), routing ([`route`]),
//! delivery ([`destination`]), the file and HTTP connectors ([`connectors`]) and the runtime
//! that wires them to listeners ([`runtime`]). The HL7 model is the `courier-hl7` crate and MLLP framing the
//! `courier-mllp` crate, so that neither can reach into the other or into the engine.

pub mod admin;
mod alerts;
pub mod config;
pub mod connectors;
pub mod destination;
pub mod logging;
pub mod messagefile;
pub mod metrics;
pub mod package;
mod reload;
pub mod route;
pub mod routetest;
pub mod runtime;
pub mod steps;

pub use courier_hl7 as hl7;
pub use courier_mllp as mllp;
