//! Connectors beyond MLLP: files and HTTP, in and out (see docs/connectors.md).
//!
//! The sources hand every message to the same intake as an MLLP listener, so routes, steps,
//! the store, duplicate detection and ACK policies apply unchanged; the destinations are
//! transports behind the same worker, so retries, ordering and dead letters are unchanged.

pub mod file_in;
pub mod file_out;
pub mod http_in;
pub mod http_out;
