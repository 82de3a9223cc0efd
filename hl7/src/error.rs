//! Errors of the message model: why a message could not be parsed ([`ParseError`]) or an edit
//! was refused ([`EditError`]), plus the HL7 vocabulary an ACK needs to report them
//! ([`ErrorCode`], table 0357, and [`ErrorLocation`], ERR-2).
//!
//! Messages name positions (segment number, byte offset, field) but never echo patient data:
//! the most a parse error quotes is a malformed 3-byte segment ID, with non-printable bytes
//! escaped.

use crate::charset::Charset;
use std::fmt::Write as _;

/// Why bytes could not be read as an HL7 v2 message. Every variant names where the problem
/// is, so the ERR segment of the rejecting ACK can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// No bytes at all, or only segment terminators.
    #[error("empty message: no segments")]
    Empty,
    /// The message does not start with an MSH segment.
    #[error("the message must start with an MSH segment, found {found:?}")]
    MissingMsh {
        /// The first (at most 3) bytes, non-printable ones escaped.
        found: String,
    },
    /// MSH ends before a part every message needs.
    #[error("MSH segment too short: it ends before {missing}")]
    ShortMsh {
        /// What is missing, e.g. "MSH-2 (encoding characters)".
        missing: &'static str,
        /// The MSH field that is missing (2 for the delimiters, 9 for the message type).
        field: usize,
    },
    /// MSH-1/MSH-2 do not declare a usable set of delimiters.
    #[error("invalid delimiters in MSH-1/MSH-2: {reason}")]
    InvalidDelimiters {
        /// What is wrong with them.
        reason: String,
    },
    /// A segment does not start with a valid segment ID: three characters `[A-Z][A-Z0-9]{2}`
    /// followed by the field separator or the end of the segment.
    #[error(
        "segment {segment} (byte offset {offset}): malformed segment ID {id:?}; a segment ID is \
         three characters [A-Z][A-Z0-9]{{2}} followed by the field separator"
    )]
    MalformedSegmentId {
        /// 1-based position of the segment in the message.
        segment: usize,
        /// Byte offset of the segment's first byte in the message.
        offset: usize,
        /// The (at most 3) bytes found, non-printable ones escaped.
        id: String,
    },
    /// A line feed where strict line endings allow only `\r`.
    #[error(
        "segment {segment} (byte offset {offset}): line feed found; segments end with \\r; \
         enable lenient line endings to accept \\n"
    )]
    LineFeedInSegment {
        /// 1-based position of the segment the line feed ends or sits in.
        segment: usize,
        /// Byte offset of the line feed.
        offset: usize,
    },
    /// A second MSH segment: two messages run together, which must be split (as a batch)
    /// rather than read as one patient's message.
    #[error(
        "segment {segment} (byte offset {offset}): a second MSH segment; split batches into \
         messages before parsing"
    )]
    UnexpectedMsh {
        /// 1-based position of the second MSH.
        segment: usize,
        /// Byte offset of its first byte.
        offset: usize,
    },
    /// MSH-18 names a character set this crate does not support.
    #[error(
        "unsupported character set {value:?} in MSH-18 (supported: UNICODE UTF-8, ASCII, 8859/1)"
    )]
    UnsupportedCharset {
        /// The MSH-18 value (non-printable bytes escaped, at most 40 characters).
        value: String,
    },
    /// A byte that is not valid in the message's character set.
    #[error(
        "byte offset {offset} (segment {segment} {segment_id}, field {field}): invalid \
         {charset} byte sequence"
    )]
    InvalidEncoding {
        /// The character set the message was validated against.
        charset: Charset,
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// 1-based position of the segment holding it.
        segment: usize,
        /// ID of that segment.
        segment_id: String,
        /// 1-based occurrence of that segment ID (ERR-2.2).
        occurrence: usize,
        /// 1-based field number holding it (HL7 numbering, so MSH fields count MSH-1).
        field: usize,
    },
    /// The message has more segments than the `max_segments` limit allows.
    #[error(
        "more than {limit} segments (byte offset {offset} starts segment {}): over the \
         max_segments limit of {limit}",
        limit + 1
    )]
    TooManySegments {
        /// The `max_segments` limit in force.
        limit: usize,
        /// Byte offset of the first segment over the limit.
        offset: usize,
    },
    /// A segment has more fields than the `max_fields` limit allows.
    #[error(
        "segment {segment} ({segment_id}) has more than {limit} fields: over the max_fields \
         limit of {limit}"
    )]
    TooManyFields {
        /// The `max_fields` limit in force.
        limit: usize,
        /// 1-based position of the segment in the message.
        segment: usize,
        /// Its ID.
        segment_id: String,
        /// 1-based occurrence of that segment ID (ERR-2.2).
        occurrence: usize,
    },
    /// The message is larger than the 4 GiB the index can address.
    #[error("message of {len} bytes is larger than the 4 GiB limit")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },
}

impl ParseError {
    /// Where the error is, in the terms of ERR-2, when it can be named by a segment ID.
    pub fn location(&self) -> Option<ErrorLocation> {
        let msh = |field: Option<usize>| ErrorLocation {
            segment: "MSH".to_string(),
            sequence: 1,
            field,
            component: None,
        };
        match self {
            ParseError::MissingMsh { .. } => Some(msh(None)),
            ParseError::ShortMsh { field, .. } => Some(msh(Some(*field))),
            ParseError::InvalidDelimiters { .. } => Some(msh(Some(2))),
            ParseError::UnsupportedCharset { .. } => Some(msh(Some(18))),
            ParseError::UnexpectedMsh { .. } => Some(ErrorLocation {
                segment: "MSH".to_string(),
                sequence: 2,
                field: None,
                component: None,
            }),
            ParseError::InvalidEncoding {
                segment_id,
                occurrence,
                field,
                ..
            } => Some(ErrorLocation {
                segment: segment_id.clone(),
                sequence: *occurrence,
                field: Some(*field),
                component: None,
            }),
            ParseError::TooManyFields {
                segment_id,
                occurrence,
                limit,
                ..
            } => Some(ErrorLocation {
                segment: segment_id.clone(),
                sequence: *occurrence,
                field: Some(limit.saturating_add(1)),
                component: None,
            }),
            ParseError::Empty
            | ParseError::MalformedSegmentId { .. }
            | ParseError::LineFeedInSegment { .. }
            | ParseError::TooManySegments { .. }
            | ParseError::TooLarge { .. } => None,
        }
    }

    /// The HL7 table 0357 code an ACK rejecting this message should carry (ERR-3).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ParseError::Empty
            | ParseError::MissingMsh { .. }
            | ParseError::MalformedSegmentId { .. }
            | ParseError::LineFeedInSegment { .. }
            | ParseError::UnexpectedMsh { .. } => ErrorCode::SegmentSequenceError,
            ParseError::ShortMsh { .. } => ErrorCode::RequiredFieldMissing,
            ParseError::InvalidDelimiters { .. } | ParseError::InvalidEncoding { .. } => {
                ErrorCode::DataTypeError
            }
            ParseError::UnsupportedCharset { .. } => ErrorCode::TableValueNotFound,
            // Table 0357 has no code for a size limit; like the 4 GiB limit, these are
            // limits of this application, not errors in the message's structure.
            ParseError::TooLarge { .. }
            | ParseError::TooManySegments { .. }
            | ParseError::TooManyFields { .. } => ErrorCode::ApplicationInternalError,
        }
    }
}

/// Where an error is, as ERR-2 (error location) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorLocation {
    /// Segment ID (ERR-2.1), e.g. `PID`.
    pub segment: String,
    /// 1-based occurrence of that segment ID in the message (ERR-2.2).
    pub sequence: usize,
    /// 1-based field number (ERR-2.3), when known.
    pub field: Option<usize>,
    /// 1-based component number (ERR-2.5), when known.
    pub component: Option<usize>,
}

/// HL7 table 0357, message error condition codes (ERR-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: Message accepted.
    MessageAccepted,
    /// 100: Segment sequence error.
    SegmentSequenceError,
    /// 101: Required field missing.
    RequiredFieldMissing,
    /// 102: Data type error.
    DataTypeError,
    /// 103: Table value not found.
    TableValueNotFound,
    /// 200: Unsupported message type.
    UnsupportedMessageType,
    /// 201: Unsupported event code.
    UnsupportedEventCode,
    /// 202: Unsupported processing id.
    UnsupportedProcessingId,
    /// 203: Unsupported version id.
    UnsupportedVersionId,
    /// 204: Unknown key identifier.
    UnknownKeyIdentifier,
    /// 205: Duplicate key identifier.
    DuplicateKeyIdentifier,
    /// 206: Application record locked.
    ApplicationRecordLocked,
    /// 207: Application internal error.
    ApplicationInternalError,
}

impl ErrorCode {
    /// All codes, in table order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::MessageAccepted,
        ErrorCode::SegmentSequenceError,
        ErrorCode::RequiredFieldMissing,
        ErrorCode::DataTypeError,
        ErrorCode::TableValueNotFound,
        ErrorCode::UnsupportedMessageType,
        ErrorCode::UnsupportedEventCode,
        ErrorCode::UnsupportedProcessingId,
        ErrorCode::UnsupportedVersionId,
        ErrorCode::UnknownKeyIdentifier,
        ErrorCode::DuplicateKeyIdentifier,
        ErrorCode::ApplicationRecordLocked,
        ErrorCode::ApplicationInternalError,
    ];

    /// The numeric code (ERR-3.1).
    pub fn code(&self) -> u16 {
        match self {
            ErrorCode::MessageAccepted => 0,
            ErrorCode::SegmentSequenceError => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::UnknownKeyIdentifier => 204,
            ErrorCode::DuplicateKeyIdentifier => 205,
            ErrorCode::ApplicationRecordLocked => 206,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table's text for the code (ERR-3.2).
    pub fn text(&self) -> &'static str {
        match self {
            ErrorCode::MessageAccepted => "Message accepted",
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }

    /// The code with this number, if table 0357 has one.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Why an edit of a [`crate::Message`] was refused. A refused edit leaves the message as it
/// was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The path names a segment the message does not have (edits never create segments;
    /// use `insert_segment`/`append_segment`).
    #[error("no segment {segment}[{occurrence}] in the message")]
    NoSuchSegment {
        /// Segment ID.
        segment: String,
        /// 1-based occurrence asked for.
        occurrence: usize,
    },
    /// The path cannot be used for this edit.
    #[error("path {path}: {reason}")]
    InvalidPath {
        /// The path, in canonical form.
        path: String,
        /// What is wrong with it for this edit.
        reason: &'static str,
    },
    /// The value holds a character the message's character set (MSH-18) cannot represent.
    #[error(
        "path {path}: character U+{:04X} at position {position} of the value cannot be \
         represented in {charset}",
        u32::from(*character)
    )]
    NotRepresentable {
        /// The message's character set.
        charset: Charset,
        /// The path being edited.
        path: String,
        /// 0-based character position in the value.
        position: usize,
        /// The character.
        character: char,
    },
    /// The value cannot be written at this place as it is (e.g. raw ER7 holding a field
    /// separator or segment terminator).
    #[error("path {path}: {reason}")]
    InvalidValue {
        /// The path being edited.
        path: String,
        /// Why the value is refused.
        reason: &'static str,
    },
    /// The text given as a segment is not one valid segment.
    #[error("invalid segment: {reason}")]
    InvalidSegment {
        /// What is wrong with it.
        reason: String,
    },
    /// A segment index past the end of the message.
    #[error("segment index {index} is out of range (the message has {count} segments)")]
    NoSuchIndex {
        /// The 0-based index given.
        index: usize,
        /// The number of segments.
        count: usize,
    },
    /// MSH is the first segment of every message and cannot be removed or displaced.
    #[error("the MSH segment cannot be removed or displaced")]
    CannotRemoveMsh,
    /// An edit this model does not perform, e.g. changing MSH-1/MSH-2.
    #[error("unsupported edit: {what}")]
    Unsupported {
        /// What was asked.
        what: &'static str,
    },
    /// The edited segment would exceed the 4 GiB the index can address.
    #[error("the edited segment would be larger than 4 GiB")]
    TooLarge,
}

/// Renders bytes for an error message: printable ASCII as is, anything else as `\xNN`.
/// Callers pass only short, non-patient snippets (segment IDs, MSH-18).
pub(crate) fn printable(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_0357() {
        let codes: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            codes,
            [
                0, 100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207
            ]
        );
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!(!c.text().is_empty());
        }
        assert_eq!(ErrorCode::from_code(104), None);
        assert_eq!(ErrorCode::DataTypeError.text(), "Data type error");
    }

    #[test]
    fn printable_escapes() {
        assert_eq!(printable(b"P\x00D"), "P\\x00D");
        assert_eq!(printable(b"\xC3\xA9"), "\\xC3\\xA9");
    }

    #[test]
    fn messages_name_positions() {
        let e = ParseError::MalformedSegmentId {
            segment: 3,
            offset: 245,
            id: "P!D".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("segment 3") && s.contains("245") && s.contains("P!D"),
            "{s}"
        );
        assert_eq!(e.error_code(), ErrorCode::SegmentSequenceError);
        let e = ParseError::UnsupportedCharset {
            value: "8859/15".into(),
        };
        assert_eq!(e.location().unwrap().field, Some(18));
        assert!(e.to_string().contains("8859/15"));
    }
}
