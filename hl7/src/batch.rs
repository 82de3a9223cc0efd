//! Splitting input that may hold more than one message: several messages back to back, or an
//! HL7 batch file (`FHS` / `BHS` … `BTS` / `FTS`), into one ER7 slice per message.
//!
//! The splitter only finds segment boundaries and the batch envelope; it does not parse the
//! messages. Each message comes back as a zero-copy slice of the input for the caller to
//! parse on its own, so one bad message inside a batch is refused alone and never hides the
//! others. What the splitter does check is the envelope, because a mistake there means
//! messages may be missing: unbalanced headers and trailers, stray segments outside any
//! message, and the counts declared in BTS-1 and FTS-1.

use crate::message::{LineEndings, ParseOptions};
use bytes::Bytes;
use std::ops::Range;

/// What [`split_messages`] found in its input.
///
/// For a single message, or messages back to back, only `messages` is filled. For a batch
/// file, the envelope segments are kept as they were received (without their terminators) so
/// a batch acknowledgement can refer to them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// The FHS segment (file header), without terminator, when the input is a batch file.
    pub file_header: Option<Bytes>,
    /// The FTS segment (file trailer), without terminator.
    pub file_trailer: Option<Bytes>,
    /// The BHS segments (batch headers), in order, without terminators.
    pub batch_headers: Vec<Bytes>,
    /// The BTS segments (batch trailers), in order, without terminators; one per BHS.
    pub batch_trailers: Vec<Bytes>,
    /// For each batch (same order as `batch_headers`), the range of `messages` it holds.
    pub batch_messages: Vec<Range<usize>>,
    /// Every message, in input order: one complete ER7 message from its MSH to the terminator
    /// of its last segment, a zero-copy slice of the input. Blank lines between messages are
    /// not part of any message.
    pub messages: Vec<Bytes>,
    /// The counts the trailers declare (already checked against what was found).
    pub declared_counts: DeclaredCounts,
}

/// The counts a batch file's trailers declare. [`split_messages`] refuses the input when a
/// declared count differs from what it found, so these are informational.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclaredCounts {
    /// BTS-1 (batch message count) of each batch, in order; `None` where BTS-1 is empty.
    pub batch_messages: Vec<Option<usize>>,
    /// FTS-1 (file batch count); `None` when FTS-1 is empty or there is no FTS.
    pub file_batches: Option<usize>,
}

/// Why input could not be split into messages. Every variant names where (1-based segment
/// number among the non-blank segments of the input, and byte offset); none quotes data
/// beyond a 3-byte segment ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// No bytes at all, or only blank lines.
    #[error("empty input: no segments")]
    Empty,
    /// A segment where none may stand: before the first MSH (only FHS or BHS may come first),
    /// between batches, or after the file trailer.
    #[error("segment {segment} (byte offset {offset}): unexpected {id:?} {place}")]
    UnexpectedSegment {
        /// 1-based segment number.
        segment: usize,
        /// Byte offset of its first byte.
        offset: usize,
        /// Its first (at most 3) bytes, non-printable ones escaped.
        id: String,
        /// Where it stands, e.g. "before the first MSH (only FHS or BHS may precede it)".
        place: &'static str,
    },
    /// A line feed at a segment boundary while only `\r` ends a segment
    /// ([`LineEndings::Strict`]).
    #[error(
        "segment {segment} (byte offset {offset}): line feed between segments; segments end \
         with \\r; enable lenient line endings to accept \\n and \\r\\n"
    )]
    LineFeed {
        /// 1-based number of the segment the line feed precedes or starts.
        segment: usize,
        /// Byte offset of the line feed.
        offset: usize,
    },
    /// BTS-1 or FTS-1 declares a count that differs from what the input holds.
    #[error(
        "{field} says {declared} {what}, found {found} (segment {segment}, byte offset {offset})"
    )]
    CountMismatch {
        /// `BTS-1` or `FTS-1`.
        field: &'static str,
        /// `messages` or `batches`.
        what: &'static str,
        /// The count the trailer declares.
        declared: usize,
        /// The count found.
        found: usize,
        /// 1-based number of the trailer segment.
        segment: usize,
        /// Byte offset of the trailer segment.
        offset: usize,
    },
    /// BTS-1 or FTS-1 is not a count.
    #[error("{field} is not a count (segment {segment}, byte offset {offset})")]
    InvalidCount {
        /// `BTS-1` or `FTS-1`.
        field: &'static str,
        /// 1-based number of the trailer segment.
        segment: usize,
        /// Byte offset of the trailer segment.
        offset: usize,
    },
    /// A BHS whose batch is not closed by a BTS (the input ends, or another BHS or the FTS
    /// comes first).
    #[error("BHS at segment {segment} (byte offset {offset}) is not closed by a BTS")]
    UnclosedBatch {
        /// 1-based number of the BHS segment.
        segment: usize,
        /// Byte offset of the BHS segment.
        offset: usize,
    },
    /// An FHS whose file is not closed by an FTS.
    #[error("FHS at segment {segment} (byte offset {offset}) is not closed by an FTS")]
    UnclosedFile {
        /// 1-based number of the FHS segment.
        segment: usize,
        /// Byte offset of the FHS segment.
        offset: usize,
    },
    /// A trailer (BTS or FTS) without its header.
    #[error("segment {segment} (byte offset {offset}): {id} without {header}")]
    UnmatchedTrailer {
        /// `BTS` or `FTS`.
        id: &'static str,
        /// `BHS` or `FHS`.
        header: &'static str,
        /// 1-based number of the trailer segment.
        segment: usize,
        /// Byte offset of the trailer segment.
        offset: usize,
    },
}

/// Splits `input` into its messages.
///
/// Accepts a single message, several messages back to back (a message starts at each segment
/// `MSH`), and batch files: `FHS`, one or more `BHS … BTS` batches, `FTS` — or a lone
/// `BHS … BTS` batch without file envelope. Messages directly inside an FHS without BHS are
/// accepted too.
///
/// Segments end with `\r`; with [`LineEndings::Lenient`] also with `\n` and `\r\n`, as in
/// [`crate::Message::parse_with`]. Blank lines (empty segments, or segments holding only spaces
/// and tabs) between messages are skipped. With strict line endings a line feed at a segment
/// boundary is an error ([`BatchError::LineFeed`]) rather than left inside a message, where it
/// could hide the next message's MSH; a line feed inside a segment is left for the message's
/// own parse to refuse.
///
/// The messages are not parsed: every segment from an MSH up to the next MSH or envelope
/// segment belongs to that message, whatever it holds.
pub fn split_messages(input: Bytes, opts: &ParseOptions) -> Result<Batch, BatchError> {
    Splitter::new(&input, opts.line_endings).run(&input)
}

/// One non-blank segment of the input.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// 1-based number among the non-blank segments.
    number: usize,
    /// Byte range of the segment, without terminator.
    start: usize,
    end: usize,
    /// End of its terminator (`end` for a last segment without one).
    term_end: usize,
}

/// The segment kinds the splitter tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fhs,
    Bhs,
    Msh,
    Bts,
    Fts,
    Other,
}

struct Splitter {
    segs: Vec<Seg>,
    error: Option<BatchError>,
}

/// An open batch: its BHS and the index of its first message.
#[derive(Clone, Copy)]
struct OpenBatch {
    bhs: Seg,
    first_message: usize,
}

impl Splitter {
    /// Finds the non-blank segments, or the strict-mode line feed error.
    fn new(buf: &[u8], line_endings: LineEndings) -> Splitter {
        let lenient = line_endings == LineEndings::Lenient;
        let mut segs = Vec::new();
        let mut pos = 0;
        let mut number = 0;
        while pos < buf.len() {
            let (end, term_end) = if lenient {
                match memchr::memchr2(b'\r', b'\n', &buf[pos..]) {
                    Some(k) => {
                        let end = pos + k;
                        let crlf = buf[end] == b'\r' && buf.get(end + 1) == Some(&b'\n');
                        (end, end + if crlf { 2 } else { 1 })
                    }
                    None => (buf.len(), buf.len()),
                }
            } else {
                match memchr::memchr(b'\r', &buf[pos..]) {
                    Some(k) => (pos + k, pos + k + 1),
                    None => (buf.len(), buf.len()),
                }
            };
            let body = &buf[pos..end];
            if !body.iter().all(|&b| b == b' ' || b == b'\t') {
                number += 1;
                if !lenient && let Some(lf) = strict_line_feed(body) {
                    return Splitter {
                        segs,
                        error: Some(BatchError::LineFeed {
                            segment: number,
                            offset: pos + lf,
                        }),
                    };
                }
                segs.push(Seg {
                    number,
                    start: pos,
                    end,
                    term_end,
                });
            }
            pos = term_end;
        }
        Splitter { segs, error: None }
    }

    fn run(self, input: &Bytes) -> Result<Batch, BatchError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let buf: &[u8] = input;
        let mut batch = Batch::default();
        let mut fhs: Option<Seg> = None;
        let mut fts_seen = false;
        let mut open: Option<OpenBatch> = None;
        let mut batches_in_file = 0usize;
        // The message being collected: its MSH and its last segment so far.
        let mut current: Option<(Seg, Seg)> = None;
        let mut seen_msh = false;

        let finish = |current: &mut Option<(Seg, Seg)>, batch: &mut Batch| {
            if let Some((first, last)) = current.take() {
                batch.messages.push(input.slice(first.start..last.term_end));
            }
        };

        if self.segs.is_empty() {
            return Err(BatchError::Empty);
        }
        for &seg in &self.segs {
            let body = &buf[seg.start..seg.end];
            let kind = kind_of(body);
            if fts_seen {
                return Err(unexpected(buf, seg, "after the file trailer (FTS)"));
            }
            match kind {
                Kind::Other => match current.as_mut() {
                    Some((_, last)) => *last = seg,
                    None if !seen_msh && open.is_none() => {
                        return Err(unexpected(
                            buf,
                            seg,
                            "before the first MSH (only FHS or BHS may precede it)",
                        ));
                    }
                    None => return Err(unexpected(buf, seg, "outside any message")),
                },
                Kind::Msh => {
                    finish(&mut current, &mut batch);
                    current = Some((seg, seg));
                    seen_msh = true;
                }
                Kind::Fhs => {
                    finish(&mut current, &mut batch);
                    if fhs.is_some()
                        || seen_msh
                        || open.is_some()
                        || !batch.batch_headers.is_empty()
                    {
                        return Err(unexpected(
                            buf,
                            seg,
                            "after the start of the input (a file header comes first, once)",
                        ));
                    }
                    fhs = Some(seg);
                    batch.file_header = Some(input.slice(seg.start..seg.end));
                }
                Kind::Bhs => {
                    finish(&mut current, &mut batch);
                    if let Some(o) = open {
                        return Err(unclosed_batch(o.bhs));
                    }
                    open = Some(OpenBatch {
                        bhs: seg,
                        first_message: batch.messages.len(),
                    });
                    batches_in_file += 1;
                    batch.batch_headers.push(input.slice(seg.start..seg.end));
                }
                Kind::Bts => {
                    finish(&mut current, &mut batch);
                    let Some(o) = open.take() else {
                        return Err(BatchError::UnmatchedTrailer {
                            id: "BTS",
                            header: "BHS",
                            segment: seg.number,
                            offset: seg.start,
                        });
                    };
                    let found = batch.messages.len() - o.first_message;
                    let declared = declared_count(body, seg, "BTS-1")?;
                    check_count(declared, found, "BTS-1", "messages", seg)?;
                    batch.batch_trailers.push(input.slice(seg.start..seg.end));
                    batch
                        .batch_messages
                        .push(o.first_message..batch.messages.len());
                    batch.declared_counts.batch_messages.push(declared);
                }
                Kind::Fts => {
                    finish(&mut current, &mut batch);
                    if let Some(o) = open {
                        return Err(unclosed_batch(o.bhs));
                    }
                    if fhs.is_none() {
                        return Err(BatchError::UnmatchedTrailer {
                            id: "FTS",
                            header: "FHS",
                            segment: seg.number,
                            offset: seg.start,
                        });
                    }
                    let declared = declared_count(body, seg, "FTS-1")?;
                    check_count(declared, batches_in_file, "FTS-1", "batches", seg)?;
                    batch.declared_counts.file_batches = declared;
                    batch.file_trailer = Some(input.slice(seg.start..seg.end));
                    fts_seen = true;
                }
            }
        }
        finish(&mut current, &mut batch);
        if let Some(o) = open {
            return Err(unclosed_batch(o.bhs));
        }
        if let Some(f) = fhs
            && !fts_seen
        {
            return Err(BatchError::UnclosedFile {
                segment: f.number,
                offset: f.start,
            });
        }
        Ok(batch)
    }
}

/// In strict mode, the offset of a line feed at the start of a segment (a `\r\n` line ending)
/// or right before an envelope or MSH segment ID (messages that would run together).
fn strict_line_feed(body: &[u8]) -> Option<usize> {
    if body.first() == Some(&b'\n') {
        return Some(0);
    }
    memchr::memchr_iter(b'\n', body).find(|&k| kind_of(&body[k + 1..]) != Kind::Other)
}

/// The kind of a segment from its first bytes: an envelope or MSH ID followed by a delimiter
/// (or nothing).
fn kind_of(body: &[u8]) -> Kind {
    let Some(id) = body.get(..3) else {
        return Kind::Other;
    };
    let delimited = match body.get(3) {
        None => true,
        Some(&b) => b.is_ascii_graphic() && !b.is_ascii_alphanumeric(),
    };
    if !delimited {
        return Kind::Other;
    }
    match id {
        b"MSH" => Kind::Msh,
        b"FHS" => Kind::Fhs,
        b"BHS" => Kind::Bhs,
        b"BTS" => Kind::Bts,
        b"FTS" => Kind::Fts,
        _ => Kind::Other,
    }
}

/// Field 1 of a trailer (BTS-1, FTS-1) as a count; `None` when empty.
fn declared_count(body: &[u8], seg: Seg, field: &'static str) -> Result<Option<usize>, BatchError> {
    let Some(&sep) = body.get(3) else {
        return Ok(None);
    };
    let value = body[4..].split(|&b| b == sep).next().unwrap_or_default();
    let value = value.trim_ascii();
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = || BatchError::InvalidCount {
        field,
        segment: seg.number,
        offset: seg.start,
    };
    if !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(invalid)
}

fn check_count(
    declared: Option<usize>,
    found: usize,
    field: &'static str,
    what: &'static str,
    seg: Seg,
) -> Result<(), BatchError> {
    match declared {
        Some(declared) if declared != found => Err(BatchError::CountMismatch {
            field,
            what,
            declared,
            found,
            segment: seg.number,
            offset: seg.start,
        }),
        _ => Ok(()),
    }
}

fn unexpected(buf: &[u8], seg: Seg, place: &'static str) -> BatchError {
    let id = &buf[seg.start..seg.end.min(seg.start + 3)];
    BatchError::UnexpectedSegment {
        segment: seg.number,
        offset: seg.start,
        id: crate::error::printable(id),
        place,
    }
}

fn unclosed_batch(bhs: Seg) -> BatchError {
    BatchError::UnclosedBatch {
        segment: bhs.number,
        offset: bhs.start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Result<Batch, BatchError> {
        split_messages(
            Bytes::copy_from_slice(s.as_bytes()),
            &ParseOptions::default(),
        )
    }

    fn lenient(s: &str) -> Result<Batch, BatchError> {
        split_messages(
            Bytes::copy_from_slice(s.as_bytes()),
            &ParseOptions::lenient(),
        )
    }

    fn texts(b: &Batch) -> Vec<&str> {
        b.messages
            .iter()
            .map(|m| std::str::from_utf8(m).unwrap())
            .collect()
    }

    const M1: &str = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1||1^^^X^MR\r";
    const M2: &str = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|2|P|2.5\rPID|1||2^^^X^MR\r";

    #[test]
    fn single_message() {
        let b = split(M1).unwrap();
        assert_eq!(texts(&b), [M1]);
        assert!(b.file_header.is_none() && b.batch_headers.is_empty());
        // Without final terminator.
        let b = split(M1.trim_end_matches('\r')).unwrap();
        assert_eq!(texts(&b), [M1.trim_end_matches('\r')]);
    }

    #[test]
    fn back_to_back_and_blank_lines() {
        let input = format!("\r{M1}\r\r{M2}  \r\r");
        let b = split(&input).unwrap();
        assert_eq!(texts(&b), [M1, M2]);
    }

    #[test]
    fn zero_copy() {
        let input = Bytes::from(format!("{M1}{M2}"));
        let b = split_messages(input.clone(), &ParseOptions::default()).unwrap();
        assert_eq!(b.messages[1].as_ptr(), input[M1.len()..].as_ptr());
    }

    #[test]
    fn errors_name_position() {
        assert_eq!(split(""), Err(BatchError::Empty));
        assert_eq!(split("\r\r \r"), Err(BatchError::Empty));
        let e = split(&format!("PID|1\r{M1}")).unwrap_err();
        assert!(matches!(
            e,
            BatchError::UnexpectedSegment {
                segment: 1,
                offset: 0,
                ..
            }
        ));
        assert!(e.to_string().contains("before the first MSH"), "{e}");
        let e = split(&format!("BHS|^~\\&\r{M1}")).unwrap_err();
        assert!(matches!(
            e,
            BatchError::UnclosedBatch {
                segment: 1,
                offset: 0
            }
        ));
        let e = split(&format!("FHS|^~\\&\rBHS|^~\\&\r{M1}BTS|1\r")).unwrap_err();
        assert!(
            matches!(e, BatchError::UnclosedFile { segment: 1, .. }),
            "{e}"
        );
        let e = split(&format!("{M1}BTS|1\r")).unwrap_err();
        assert!(
            matches!(e, BatchError::UnmatchedTrailer { id: "BTS", .. }),
            "{e}"
        );
        let e = split(&format!("BHS|^~\\&\r{M1}BTS|x\r")).unwrap_err();
        assert!(
            matches!(
                e,
                BatchError::InvalidCount {
                    field: "BTS-1",
                    segment: 4,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn line_endings() {
        let crlf = format!("{}\r\n{}", M1.replace('\r', "\r\n"), M2.replace('\r', "\n"));
        let b = lenient(&crlf).unwrap();
        assert_eq!(b.messages.len(), 2);
        assert!(texts(&b)[0].ends_with("MR\r\n"));
        let e = split(&crlf).unwrap_err();
        assert!(matches!(e, BatchError::LineFeed { segment: 2, .. }), "{e}");
        // A line feed inside a segment is left to the message's own parse.
        let b = split(&format!("{M1}ZZZ|a\nb\r{M2}")).unwrap();
        assert_eq!(b.messages.len(), 2);
        // ... unless it would hide the next message.
        let e = split(&format!("{}\n{M2}", M1.trim_end_matches('\r'))).unwrap_err();
        assert!(matches!(e, BatchError::LineFeed { .. }), "{e}");
    }
}
