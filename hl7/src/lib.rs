//! Courier's HL7 v2 message model.
//!
//! The engine, the Rhai API and the plugin SDK all share this crate, so it has no async
//! runtime, no I/O and builds for `wasm32-wasip2`. It is a lossless, zero-copy index over the
//! bytes of an ER7 message: an unchanged message re-encodes byte for byte, an edited one
//! re-encodes with its own delimiters (MSH-1/MSH-2) and correct escaping. Anything it cannot
//! represent is refused with an error that says where, never silently truncated.
//!
//! Paths are 1-indexed as in the standard: `PID-5.1`, `PID-3[2].1` (repetition), `OBX[3]-5`
//! (segment occurrence), `PID-5.1.2` (sub-component); `PID.5.1` is accepted as an alias.

mod ack;
mod batch;
mod charset;
mod delimiters;
mod error;
mod escape;
mod json;
mod message;
mod path;

pub use ack::{
    AckCode, AckCondition, AckError, AckMode, AckParseError, ReceivedAck, Severity, ack_mode,
    build_ack, build_nak_for_unparsed,
};
pub use batch::{Batch, BatchError, DeclaredCounts, split_messages};
pub use charset::Charset;
pub use delimiters::Delimiters;
pub use error::{EditError, ErrorCode, ErrorLocation, ParseError};
pub use escape::{decode, encode};
pub use json::{
    JsonError, MAX_POSITION, from_json, from_json_with, json_pieces, to_json, write_json,
};
pub use message::{
    DEFAULT_MAX_FIELDS, DEFAULT_MAX_SEGMENTS, Element, LineEndings, Message, MessageType,
    ParseOptions, SegmentRef, Span,
};
pub use path::{Path, PathError};

/// From this size on, a message is large: worth holding as [`Message::pieces`] and sharing
/// with the version it came from ([`Message::share_unchanged`]) rather than in a buffer of its
/// own. Below it, one buffer costs less than the bookkeeping.
pub const LARGE_MESSAGE: usize = 64 * 1024;
