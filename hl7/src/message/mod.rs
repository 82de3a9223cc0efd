//! The message model: a lossless, zero-copy index over the bytes of one ER7 message.
//!
//! Parsing makes one pass over the bytes and records, in two flat vectors, where each segment
//! starts and ends and where its field separators are; nothing is copied and nothing below
//! the field is looked at until asked (repetitions, components and sub-components are found
//! by splitting the field's bytes on demand). The original [`Bytes`] stay the backing store,
//! so an unchanged message encodes to the very same buffer.
//!
//! An edit rewrites one segment into owned bytes (the new value escaped with the message's own
//! delimiters and spliced in, padded with separators where needed) and re-indexes that
//! segment only; every other segment keeps pointing into the original buffer, and every
//! segment keeps the terminator it arrived with.
//!
//! Submodules: `element` (read access: [`SegmentRef`], [`Element`]) and `edit` (the editing
//! operations).

mod edit;
mod element;
#[cfg(test)]
mod tests;

pub use element::{Element, SegmentRef};

use crate::charset::Charset;
use crate::delimiters::Delimiters;
use crate::error::{ParseError, printable};
use crate::path::{Path, PathError, is_segment_id};
use bytes::Bytes;
use std::fmt;
use std::ops::Range;

/// Which bytes end a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LineEndings {
    /// Only `\r`, as the standard says; a `\n` anywhere is an error
    /// ([`ParseError::LineFeedInSegment`]).
    #[default]
    Strict,
    /// `\r`, `\n` and `\r\n` all end a segment (files edited on Unix or Windows). Each
    /// segment's terminator is kept as it was, so the message still encodes byte for byte.
    Lenient,
}

/// Default [`ParseOptions::max_segments`]: 10,000 segments. A large ORU (a full chemistry
/// panel with notes, or a report sent line by line as OBX/NTE) runs to a few hundred
/// segments; ten thousand leaves a wide margin while bounding the work every later step does
/// per segment (routing conditions, `OBX[n]` lookups, plugins walking the message).
pub const DEFAULT_MAX_SEGMENTS: usize = 10_000;

/// Default [`ParseOptions::max_fields`]: 1,000 fields in one segment. The longest standard
/// segments have a few dozen fields (MSH 25, PV1 52, IN1 55 in v2.8); a thousand leaves room
/// for any site-defined Z-segment, while a segment that is nothing but field separators
/// (which would otherwise cost an index entry per byte) is refused early.
pub const DEFAULT_MAX_FIELDS: usize = 1_000;

/// How to read a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParseOptions {
    /// Which bytes end a segment. Default: [`LineEndings::Strict`].
    pub line_endings: LineEndings,
    /// The character set of a message whose MSH-18 is empty. Default: [`Charset::Utf8`].
    pub default_charset: Charset,
    /// Most segments a message may have (empty lines are not segments); one more is
    /// [`ParseError::TooManySegments`]. Default: [`DEFAULT_MAX_SEGMENTS`].
    pub max_segments: usize,
    /// Most fields one segment may have, as [`SegmentRef::field_count`] counts them (MSH-1
    /// included); one more is [`ParseError::TooManyFields`]. Default: [`DEFAULT_MAX_FIELDS`].
    pub max_fields: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            line_endings: LineEndings::default(),
            default_charset: Charset::default(),
            max_segments: DEFAULT_MAX_SEGMENTS,
            max_fields: DEFAULT_MAX_FIELDS,
        }
    }
}

impl ParseOptions {
    /// Options accepting `\n` and `\r\n` as segment terminators, UTF-8 by default.
    pub fn lenient() -> ParseOptions {
        ParseOptions {
            line_endings: LineEndings::Lenient,
            ..ParseOptions::default()
        }
    }

    /// These options without the segment and field limits, for reading a message that was
    /// already accepted under limits set elsewhere.
    pub fn unlimited(self) -> ParseOptions {
        ParseOptions {
            max_segments: usize::MAX,
            max_fields: usize::MAX,
            ..self
        }
    }
}

/// MSH-9, the message type: code, trigger event and message structure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MessageType {
    /// MSH-9.1, e.g. `ADT`; empty when absent.
    pub code: String,
    /// MSH-9.2, e.g. `A04`; empty when absent.
    pub trigger: String,
    /// MSH-9.3, e.g. `ADT_A01`; empty when absent.
    pub structure: String,
}

impl fmt::Display for MessageType {
    /// `ADT^A04` (code and trigger, no structure), or the code alone when there is no trigger.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.trigger.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{}^{}", self.code, self.trigger)
        }
    }
}

/// One HL7 v2 message in ER7 (pipe-delimited) form.
///
/// Reading: [`Message::get`] and [`Message::raw`] by [`Path`], or walk
/// [`Message::segments`] → [`SegmentRef::field`] → [`Element`]. Editing: [`Message::set`] and
/// friends; [`Message::encode`] gives the bytes back.
///
/// `Debug` shows the structure (segment IDs, sizes) but never field contents, so a message can
/// be logged without leaking patient data.
#[derive(Clone)]
pub struct Message {
    /// The bytes as received; unchanged segments point into them.
    source: Bytes,
    delims: Delimiters,
    charset: Charset,
    options: ParseOptions,
    segs: Vec<Seg>,
    /// Field-separator offsets (relative to their segment's start) of all segments still in
    /// `source`, segment after segment; each `Body::Source` holds its range.
    seps: Vec<u32>,
    modified: bool,
}

/// One segment: where its bytes are, and the terminator it ends with.
#[derive(Clone)]
struct Seg {
    body: Body,
    term: Term,
}

#[derive(Clone)]
enum Body {
    /// Still in the original buffer: `source[start..end]`, separators at
    /// `seps[seps_start..seps_end]`.
    Source {
        start: u32,
        end: u32,
        seps_start: u32,
        seps_end: u32,
    },
    /// Rewritten by an edit, or added.
    Owned(Box<OwnedSeg>),
}

#[derive(Clone)]
struct OwnedSeg {
    bytes: Vec<u8>,
    seps: Vec<u32>,
}

/// The bytes after a segment up to the next one: its terminator, plus any empty lines, kept
/// verbatim so that an unchanged message encodes byte for byte.
#[derive(Clone, Copy)]
enum Term {
    /// `source[start..end]`; empty for a last segment without terminator.
    Source { start: u32, end: u32 },
    /// A `\r`, for added segments (and a formerly last segment that gained a successor).
    Cr,
}

impl Message {
    /// Parses an ER7 message with the default options (strict `\r` line endings, UTF-8 unless
    /// MSH-18 says otherwise). See [`Message::parse_with`].
    pub fn parse(bytes: impl Into<Bytes>) -> Result<Message, ParseError> {
        Message::parse_with(bytes, &ParseOptions::default())
    }

    /// Parses an ER7 message.
    ///
    /// The bytes are not copied. The message must start with an MSH segment that declares its
    /// delimiters and reaches MSH-9; every segment must start with a valid segment ID
    /// (`[A-Z][A-Z0-9]{2}` then the field separator or the end of the segment) — a malformed
    /// one anywhere is an error naming its position, never a silent truncation. The bytes must
    /// be valid in the character set of MSH-18 (or `opts.default_charset` when it is empty).
    ///
    /// Empty segments (a doubled `\r`, a blank line in lenient mode, trailing terminators) are
    /// tolerated: they hold no data, are not counted as segments, and are kept verbatim with the
    /// preceding segment's terminator so that the message still encodes byte for byte. A
    /// second MSH is an error: two messages run together must be split first.
    ///
    /// More than `opts.max_segments` segments, or a segment with more than `opts.max_fields`
    /// fields, is an error naming the limit; it is raised as soon as the limit is passed, so
    /// the index of an over-limit message is never built in full.
    pub fn parse_with(bytes: impl Into<Bytes>, opts: &ParseOptions) -> Result<Message, ParseError> {
        let source: Bytes = bytes.into();
        let buf: &[u8] = &source;
        let len = buf.len();
        if u32::try_from(len).is_err() {
            return Err(ParseError::TooLarge { len });
        }
        if buf.iter().all(|&b| b == b'\r' || b == b'\n') {
            return Err(ParseError::Empty);
        }
        if !buf.starts_with(b"MSH") {
            let found = buf
                .iter()
                .take(3)
                .take_while(|&&b| b != b'\r' && b != b'\n')
                .copied()
                .collect::<Vec<u8>>();
            return Err(ParseError::MissingMsh {
                found: printable(&found),
            });
        }
        let fs = match buf.get(3) {
            None | Some(b'\r' | b'\n') => {
                return Err(ParseError::ShortMsh {
                    missing: "MSH-1 (field separator)",
                    field: 1,
                });
            }
            Some(&b) => b,
        };
        let msh2 = buf.get(4..).unwrap_or_default();
        let msh2_len = memchr::memchr3(fs, b'\r', b'\n', msh2).unwrap_or(msh2.len());
        if msh2_len == 0 {
            return Err(ParseError::ShortMsh {
                missing: "MSH-2 (encoding characters)",
                field: 2,
            });
        }
        let delims = Delimiters::from_msh(fs, &msh2[..msh2_len])?;

        let (segs, seps) = index(buf, fs, opts)?;
        let (msh, msh_seps) = segs
            .first()
            .and_then(|s| source_parts(buf, &seps, s))
            .unwrap_or_default();
        if msh_seps.len() < 8 {
            return Err(ParseError::ShortMsh {
                missing: "MSH-9 (message type)",
                field: 9,
            });
        }
        let charset = charset_of(msh, msh_seps, &delims, opts.default_charset)?;
        if let Err(offset) = charset.validate(buf) {
            return Err(encoding_error(buf, &segs, &seps, charset, offset));
        }
        Ok(Message {
            source,
            delims,
            charset,
            options: *opts,
            segs,
            seps,
            modified: false,
        })
    }

    /// The delimiters declared by MSH-1 and MSH-2.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delims
    }

    /// The character set: MSH-18 (first repetition), or the parse option's default when empty.
    pub fn charset(&self) -> Charset {
        self.charset
    }

    /// The options the message was parsed with.
    pub fn options(&self) -> &ParseOptions {
        &self.options
    }

    /// The value at `path`.
    ///
    /// - When the element has no lower-level separator inside (a field without `~ ^ &`, a
    ///   component without `&`, ...), its value decoded: escape sequences decoded
    ///   ([`crate::decode`]) and bytes converted from the message's character set.
    /// - Otherwise its ER7 text as written, escapes kept (e.g. `Johnson^Sarah` for `PID-5`):
    ///   decoding it would make `^` in data indistinguishable from a separator.
    /// - A bare segment path (`OBX[2]`) gives the segment's ER7 text.
    /// - MSH-1 and MSH-2 are returned as written, never split or unescaped.
    ///
    /// `None` when the segment, field, repetition, component or sub-component does not exist
    /// in the text; `Some("")` when it exists but is empty — a field whose separators are there
    /// (`PID|1||x`: PID-2), or a component position inside a present field (`^b`: component 1).
    /// So `PID-5.2` of `Smith` is `None` (no second component), but of `Smith^` is `Some("")`.
    /// HL7's explicit null `""` is returned as the two quote characters.
    ///
    /// For a leaf, `set(path, get(path))` leaves the bytes as they were; for ER7 text, write it
    /// back with [`Message::set_raw`] (`set` would escape its separators as data).
    pub fn get(&self, path: &Path) -> Option<String> {
        match self.resolve(path)? {
            Resolved::Segment(seg) => Some(seg.er7()),
            Resolved::Element(el) => Some(el.value()),
        }
    }

    /// [`Message::get`] with the path given as text, e.g. `"PID-5.1"`.
    pub fn get_str(&self, path: &str) -> Result<Option<String>, PathError> {
        Ok(self.get(&Path::parse(path)?))
    }

    /// The bytes at `path` as they stand in the message (escaped, in its character set). For a
    /// bare segment path, the segment without its terminator.
    pub fn raw(&self, path: &Path) -> Option<&[u8]> {
        match self.resolve(path)? {
            Resolved::Segment(seg) => Some(seg.raw()),
            Resolved::Element(el) => Some(el.raw()),
        }
    }

    /// The element at `path`, to walk its repetitions, components or sub-components; `None`
    /// when absent, and for a bare segment path (use [`Message::segment`]).
    pub fn element(&self, path: &Path) -> Option<Element<'_>> {
        match self.resolve(path)? {
            Resolved::Segment(_) => None,
            Resolved::Element(el) => Some(el),
        }
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = SegmentRef<'_>> {
        (0..self.segs.len()).filter_map(move |i| self.segment_at(i))
    }

    /// The number of segments (empty lines are not segments).
    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    /// The segment at a 0-based position (0 is MSH).
    pub fn segment_at(&self, index: usize) -> Option<SegmentRef<'_>> {
        let (bytes, seps) = self.seg_parts(index)?;
        Some(SegmentRef::new(self, index, bytes, seps))
    }

    /// The `occurrence`-th (1-based) segment with this ID.
    pub fn segment(&self, id: &str, occurrence: usize) -> Option<SegmentRef<'_>> {
        let index = self.find_segment(id, occurrence)?;
        self.segment_at(index)
    }

    /// How many segments have this ID.
    pub fn segment_occurrences(&self, id: &str) -> usize {
        (0..self.segs.len())
            .filter(|&i| self.seg_id(i) == id.as_bytes())
            .count()
    }

    /// The number of repetitions of the field `path` names (any repetition, component or
    /// sub-component in the path is ignored). 0 when the segment or field is absent, and also
    /// when the field is empty — an empty field holds no repetition, even though
    /// `get(PID-3[1])` of it gives `Some("")` (the position exists). MSH-1 and MSH-2 count 1.
    pub fn repetition_count(&self, path: &Path) -> usize {
        if path.check().is_err() {
            return 0;
        }
        let Some(n) = path.field else { return 0 };
        self.segment(&path.segment, path.occurrence_or_first())
            .and_then(|s| s.field(n))
            .map_or(0, |f| f.repetition_count())
    }

    /// The message's bytes. Unchanged, this is the original buffer itself (a cheap clone of the
    /// same allocation), byte for byte; after edits, the segments in order, each with its own
    /// terminator (added segments end with `\r`).
    pub fn encode(&self) -> Bytes {
        if !self.modified {
            return self.source.clone();
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        for i in 0..self.segs.len() {
            if let Some((bytes, _)) = self.seg_parts(i) {
                out.extend_from_slice(bytes);
            }
            out.extend_from_slice(self.term_bytes(i));
        }
        Bytes::from(out)
    }

    /// The length of [`Message::encode`]'s bytes, without making them.
    pub fn encoded_len(&self) -> usize {
        if !self.modified {
            return self.source.len();
        }
        (0..self.segs.len())
            .map(|i| self.seg_parts(i).map_or(0, |p| p.0.len()) + self.term_bytes(i).len())
            .sum()
    }

    /// [`Message::encode`]'s bytes as pieces to be read one after the other, without making
    /// them: each run of segments (with their terminators) still in the original buffer is one
    /// slice of it (a cheap clone of the same allocation); what edits wrote in between is one
    /// piece of new bytes. A large message with a few fields changed is then held, stored and
    /// compared without a second message-sized buffer.
    pub fn pieces(&self) -> Vec<Bytes> {
        self.spans()
            .into_iter()
            .map(|span| match span {
                Span::Kept(range) => self.source.slice(range),
                Span::Written(bytes) => Bytes::from(bytes),
            })
            .collect()
    }

    /// [`Message::pieces`] by position: each run of the buffer the message was parsed from
    /// as its range in that buffer, and the bytes edits wrote in between. A plugin answers
    /// the engine in this form, so that what it did not change is not copied back.
    pub fn spans(&self) -> Vec<Span> {
        if !self.modified {
            return vec![Span::Kept(0..self.source.len())];
        }
        let mut out = Spans::default();
        for seg in &self.segs {
            match &seg.body {
                Body::Source { start, end, .. } => out.kept(*start, *end),
                Body::Owned(o) => out.written(&o.bytes),
            }
            match seg.term {
                Term::Source { start, end } => out.kept(start, end),
                Term::Cr => out.written(b"\r"),
            }
        }
        out.finish()
    }

    /// This message (typically what a plugin returned for `base`) with every segment that is,
    /// byte for byte, one of `base`'s segments still in `base`'s buffer taken from that buffer
    /// instead of its own; the other segments are copied out. It encodes to the same bytes.
    /// Once this message's own buffer is dropped, a large message of which a step changed a
    /// few fields costs those fields, not a second copy of the message.
    ///
    /// Segments are matched in order (a removed segment is skipped over, an added one copied).
    /// When the two messages differ in delimiters or character set, or a terminator cannot be
    /// expressed, the message is returned as it is.
    pub fn share_unchanged(self, base: &Message) -> Message {
        /// How far ahead in `base` a segment is looked for (segments removed in between).
        const AHEAD: usize = 16;
        if self.delims != base.delims || self.charset != base.charset {
            return self;
        }
        let mut segs = Vec::with_capacity(self.segs.len());
        let mut next = 0;
        for i in 0..self.segs.len() {
            let Some((bytes, seps)) = self.seg_parts(i) else {
                return self;
            };
            let term = self.term_bytes(i);
            let found = (next..base.segs.len().min(next + AHEAD)).find(|&k| {
                matches!(base.segs[k].body, Body::Source { .. })
                    && base.seg_parts(k).is_some_and(|(b, _)| b == bytes)
            });
            let (body, base_term) = match found {
                Some(k) => {
                    next = k + 1;
                    (base.segs[k].body.clone(), Some(k))
                }
                None => (
                    Body::Owned(Box::new(OwnedSeg {
                        bytes: bytes.to_vec(),
                        seps: seps.to_vec(),
                    })),
                    None,
                ),
            };
            let term = match (term, base_term) {
                (t, Some(k)) if t == base.term_bytes(k) => base.segs[k].term,
                (b"\r", _) => Term::Cr,
                // A last segment without terminator.
                (b"", _) => Term::Source { start: 0, end: 0 },
                _ => return self,
            };
            segs.push(Seg { body, term });
        }
        Message {
            source: base.source.clone(),
            delims: self.delims,
            charset: self.charset,
            options: self.options,
            segs,
            seps: base.seps.clone(),
            modified: true,
        }
    }

    /// The message whose bytes are `spans` one after the other (`Kept` ranges read from this
    /// message's buffer), as parsing those bytes joined would give it, but built without
    /// joining them: every segment kept whole points into this message's buffer, and only
    /// the written segments are bytes of its own. This is how the engine reads a plugin's
    /// answer for a large message (the plugin's side makes it with [`Message::spans`]), so
    /// that the message is never copied back whole.
    ///
    /// `None` when the spans are not in the shape this builds directly, and the caller joins
    /// and parses them instead, which gives the same message or the parse error: this message
    /// edited since parsing; a range outside its buffer, or one that does not start and end
    /// at a segment's or a terminator's edge; a segment made of both kept and written bytes;
    /// written line endings other than a lone `\r`; an MSH that is not first, or written with
    /// other delimiters or character set; written segments that do not parse; more segments
    /// than the parse options allow.
    pub fn splice(&self, spans: &[Span]) -> Option<Message> {
        /// A segment's body in the answer: one of this message's, or written.
        enum Part {
            Kept(usize),
            Written(Vec<u8>),
        }
        if self.modified {
            return None;
        }
        let len = self.source.len();
        let mut parts: Vec<(Part, Term)> = Vec::new();
        let mut body: Option<Part> = None;
        for span in spans {
            match span {
                Span::Kept(r) => {
                    if r.start > r.end || r.end > len {
                        return None;
                    }
                    let mut at = r.start;
                    while at < r.end {
                        // The segment whose body starts at `at`, or whose body `at` is in.
                        let k = self
                            .segs
                            .partition_point(|seg| match seg.body {
                                Body::Source { start, .. } => start as usize <= at,
                                Body::Owned(_) => false,
                            })
                            .checked_sub(1)?;
                        let (Body::Source { start, end, .. }, Term::Source { end: term_end, .. }) =
                            (&self.segs[k].body, self.segs[k].term)
                        else {
                            return None;
                        };
                        let (start, end, term_end) =
                            (*start as usize, *end as usize, term_end as usize);
                        if at == start {
                            if body.is_some() || r.end < end {
                                return None;
                            }
                            body = Some(Part::Kept(k));
                            at = end;
                            if at == r.end {
                                break;
                            }
                        }
                        // What follows a body is its terminator (with any blank lines).
                        if at != end || end == term_end || r.end < term_end {
                            return None;
                        }
                        let done = body.take()?;
                        parts.push((
                            done,
                            Term::Source {
                                start: end as u32,
                                end: term_end as u32,
                            },
                        ));
                        at = term_end;
                    }
                }
                Span::Written(bytes) => {
                    for chunk in bytes.split_inclusive(|&b| b == b'\r') {
                        let (text, cr) = match chunk.strip_suffix(b"\r") {
                            Some(text) => (text, true),
                            None => (chunk, false),
                        };
                        if text.contains(&b'\n') {
                            return None;
                        }
                        if !text.is_empty() {
                            match &mut body {
                                None => body = Some(Part::Written(text.to_vec())),
                                Some(Part::Written(b)) => b.extend_from_slice(text),
                                Some(Part::Kept(_)) => return None,
                            }
                        }
                        if cr {
                            // A `\r` without a body before it is a blank line.
                            parts.push((body.take()?, Term::Cr));
                        }
                    }
                }
            }
        }
        if let Some(last) = body {
            // A last segment without terminator.
            parts.push((last, Term::Source { start: 0, end: 0 }));
        }
        let msh_written = match parts.first() {
            Some((Part::Kept(0), _)) => false,
            Some((Part::Written(_), _)) => true,
            _ => return None,
        };
        if parts.len() > self.options.max_segments
            || parts
                .iter()
                .skip(1)
                .any(|(p, _)| matches!(p, Part::Kept(0)))
        {
            return None;
        }
        // The written segments behind an MSH, parsed as they would be in the joined bytes:
        // the same checks (segment IDs, field counts, character set, no second MSH) and
        // their field separators.
        let mut check = Vec::new();
        if !msh_written {
            check.extend_from_slice(self.seg_parts(0)?.0);
            check.push(b'\r');
        }
        for (part, _) in &parts {
            if let Part::Written(b) = part {
                check.extend_from_slice(b);
                check.push(b'\r');
            }
        }
        let checked = Message::parse_with(check, &self.options).ok()?;
        if checked.delims != self.delims || checked.charset != self.charset {
            return None;
        }
        let mut written = (usize::from(!msh_written)..checked.segs.len())
            .map(|i| checked.seg_parts(i).map(|(_, seps)| seps.to_vec()));
        let mut segs = Vec::with_capacity(parts.len());
        for (part, term) in parts {
            let body = match part {
                Part::Kept(k) => self.segs[k].body.clone(),
                Part::Written(bytes) => Body::Owned(Box::new(OwnedSeg {
                    bytes,
                    seps: written.next()??,
                })),
            };
            segs.push(Seg { body, term });
        }
        if written.next().is_some() {
            return None;
        }
        Some(Message {
            source: self.source.clone(),
            delims: self.delims,
            charset: self.charset,
            options: self.options,
            segs,
            seps: self.seps.clone(),
            modified: true,
        })
    }

    /// The buffer the message was parsed from.
    pub(crate) fn source(&self) -> &Bytes {
        &self.source
    }

    /// Whether any edit has been made since parsing.
    pub fn is_modified(&self) -> bool {
        self.modified
    }

    /// MSH-10, the message control ID, decoded; `None` when empty.
    pub fn control_id(&self) -> Option<String> {
        self.msh_value(&Path::new("MSH").with_field(10))
    }

    /// MSH-9: code, trigger event and structure (each `""` when absent).
    pub fn message_type(&self) -> MessageType {
        let part = |c| {
            self.get(&Path::new("MSH").with_field(9).with_component(c))
                .unwrap_or_default()
        };
        MessageType {
            code: part(1),
            trigger: part(2),
            structure: part(3),
        }
    }

    /// MSH-12.1, the version ID (e.g. `2.5.1`); `None` when empty.
    pub fn version(&self) -> Option<String> {
        self.msh_value(&Path::new("MSH").with_field(12).with_component(1))
    }

    fn msh_value(&self, path: &Path) -> Option<String> {
        self.get(path).filter(|v| !v.is_empty())
    }

    // ----- internals -----

    fn resolve(&self, path: &Path) -> Option<Resolved<'_>> {
        path.check().ok()?;
        let seg = self.segment(&path.segment, path.occurrence_or_first())?;
        let Some(n) = path.field else {
            return Some(Resolved::Segment(seg));
        };
        let mut el = seg.field(n)?;
        if let Some(r) = path.repetition {
            el = el.repetition(r)?;
        }
        if let Some(c) = path.component {
            el = el.component(c)?;
        }
        if let Some(s) = path.subcomponent {
            el = el.subcomponent(s)?;
        }
        Some(Resolved::Element(el))
    }

    /// 0-based index of the `occurrence`-th segment with this ID.
    fn find_segment(&self, id: &str, occurrence: usize) -> Option<usize> {
        if occurrence == 0 {
            return None;
        }
        (0..self.segs.len())
            .filter(|&i| self.seg_id(i) == id.as_bytes())
            .nth(occurrence - 1)
    }

    fn seg_id(&self, index: usize) -> &[u8] {
        self.seg_parts(index)
            .and_then(|(b, _)| b.get(..3))
            .unwrap_or_default()
    }

    /// A segment's bytes (without terminator) and its field-separator offsets.
    fn seg_parts(&self, index: usize) -> Option<(&[u8], &[u32])> {
        let seg = self.segs.get(index)?;
        match &seg.body {
            Body::Source { .. } => source_parts(&self.source, &self.seps, seg),
            Body::Owned(o) => Some((&o.bytes, &o.seps)),
        }
    }

    fn term_bytes(&self, index: usize) -> &[u8] {
        match self.segs.get(index).map(|s| s.term) {
            Some(Term::Source { start, end }) => self
                .source
                .get(start as usize..end as usize)
                .unwrap_or_default(),
            Some(Term::Cr) => b"\r",
            None => &[],
        }
    }
}

/// One part of a message's bytes, as [`Message::spans`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// These bytes of the buffer the message was parsed from, unchanged.
    Kept(Range<usize>),
    /// Bytes edits wrote.
    Written(Vec<u8>),
}

impl Span {
    /// How many bytes of the message this part is.
    pub fn len(&self) -> usize {
        match self {
            Span::Kept(range) => range.len(),
            Span::Written(bytes) => bytes.len(),
        }
    }

    /// Whether it is no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `spans` make one after the other, `Kept` ranges read from `base` (the buffer
    /// they were taken from). Panics if a range lies outside `base`.
    pub fn join(spans: &[Span], base: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(spans.iter().map(Span::len).sum());
        for span in spans {
            match span {
                Span::Kept(range) => out.extend_from_slice(&base[range.clone()]),
                Span::Written(bytes) => out.extend_from_slice(bytes),
            }
        }
        out
    }
}

/// Gathers [`Message::spans`]: runs of the original buffer, and new bytes in between.
#[derive(Default)]
struct Spans {
    spans: Vec<Span>,
    /// The run of the original buffer being extended.
    run: Option<Range<usize>>,
    /// New bytes being gathered.
    new: Vec<u8>,
}

impl Spans {
    /// `source[start..end]` comes next: extends the run, or starts one.
    fn kept(&mut self, start: u32, end: u32) {
        let (start, end) = (start as usize, end as usize);
        if start == end {
            return;
        }
        if !self.new.is_empty() {
            self.spans
                .push(Span::Written(std::mem::take(&mut self.new)));
        }
        match &mut self.run {
            Some(run) if run.end == start => run.end = end,
            run => {
                if let Some(done) = run.replace(start..end) {
                    self.spans.push(Span::Kept(done));
                }
            }
        }
    }

    /// New bytes come next.
    fn written(&mut self, bytes: &[u8]) {
        if let Some(done) = self.run.take() {
            self.spans.push(Span::Kept(done));
        }
        self.new.extend_from_slice(bytes);
    }

    fn finish(mut self) -> Vec<Span> {
        if let Some(done) = self.run.take() {
            self.spans.push(Span::Kept(done));
        }
        if !self.new.is_empty() {
            self.spans.push(Span::Written(self.new));
        }
        self.spans
    }
}

enum Resolved<'a> {
    Segment(SegmentRef<'a>),
    Element(Element<'a>),
}

impl fmt::Debug for Message {
    /// Structure only — never field contents, which may be patient data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.segments().map(|s| s.id().to_string()).collect();
        f.debug_struct("Message")
            .field("segments", &ids)
            .field("delimiters", &self.delims.encoding_characters())
            .field("charset", &self.charset)
            .field("modified", &self.modified)
            .finish_non_exhaustive()
    }
}

/// The bytes and field-separator offsets of a segment still in the original buffer.
fn source_parts<'b>(buf: &'b [u8], seps: &'b [u32], seg: &Seg) -> Option<(&'b [u8], &'b [u32])> {
    match seg.body {
        Body::Source {
            start,
            end,
            seps_start,
            seps_end,
        } => Some((
            buf.get(start as usize..end as usize)?,
            seps.get(seps_start as usize..seps_end as usize)?,
        )),
        Body::Owned(_) => None,
    }
}

/// The error for a byte at `offset` that is invalid in `charset`, naming its segment and
/// field. Only called during parsing, when every segment is still in `buf`.
fn encoding_error(
    buf: &[u8],
    segs: &[Seg],
    seps: &[u32],
    charset: Charset,
    offset: usize,
) -> ParseError {
    let start_of = |s: &Seg| match s.body {
        Body::Source { start, .. } => start as usize,
        Body::Owned(_) => 0,
    };
    let index = segs
        .partition_point(|s| start_of(s) <= offset)
        .saturating_sub(1);
    let id_of = |s: &Seg| source_parts(buf, seps, s).and_then(|(b, _)| b.get(..3));
    let (id, seg_seps, start) = match segs.get(index) {
        Some(s) => (
            id_of(s).unwrap_or_default(),
            source_parts(buf, seps, s).map(|p| p.1).unwrap_or_default(),
            start_of(s),
        ),
        None => (&[][..], &[][..], 0),
    };
    let rel = offset.saturating_sub(start);
    // Field-separator offsets are relative to the segment start: the number of them before
    // `rel` is the piece the byte is in (piece 0 is the ID).
    let piece = seg_seps.partition_point(|&s| (s as usize) < rel);
    let occurrence = segs
        .iter()
        .take(index + 1)
        .filter(|s| id_of(s) == Some(id))
        .count();
    ParseError::InvalidEncoding {
        charset,
        offset,
        segment: index + 1,
        segment_id: printable(id),
        occurrence,
        // HL7 numbers MSH-1 (the separator, no piece), so MSH piece k is field k+1.
        field: if index == 0 { piece + 1 } else { piece },
    }
}

/// The single indexing pass: segment boundaries, terminators and field separators.
fn index(buf: &[u8], fs: u8, opts: &ParseOptions) -> Result<(Vec<Seg>, Vec<u32>), ParseError> {
    let lenient = opts.line_endings == LineEndings::Lenient;
    let len = buf.len();
    // Capacity guesses sized for typical segments (~100 bytes) and fields (~7 bytes), so a
    // message costs two allocations; a longer one just grows the vectors. The guesses are
    // capped: a message made large by one big field (a PDF in OBX-5) has a handful of
    // segments, and an uncapped guess reserved 1.3 MiB of index for a 1 MiB report.
    let mut segs: Vec<Seg> = Vec::with_capacity((len / 64 + 4).min(MAX_SEGS_GUESS));
    let mut seps: Vec<u32> = Vec::with_capacity((len / 6 + 16).min(MAX_SEPS_GUESS));
    let mut pos = 0usize;
    loop {
        let number = segs.len() + 1;
        if number > opts.max_segments {
            return Err(ParseError::TooManySegments {
                limit: opts.max_segments,
                offset: pos,
            });
        }
        check_segment_id(buf, pos, fs, number)?;
        if pos != 0 && buf.get(pos..pos + 3) == Some(b"MSH") {
            return Err(ParseError::UnexpectedMsh {
                segment: number,
                offset: pos,
            });
        }
        let seps_start = seps.len();
        // Fields as `SegmentRef::field_count` counts them: MSH-1 is a field but no separator
        // follows it, so MSH has one field more than separators.
        let max_seps = if pos == 0 {
            opts.max_fields.saturating_sub(1)
        } else {
            opts.max_fields
        };
        let mut i = pos + 3;
        let end = loop {
            let rest = buf.get(i..).unwrap_or_default();
            match memchr::memchr3(fs, b'\r', b'\n', rest) {
                Some(k) => {
                    let j = i + k;
                    if rest[k] == fs {
                        if seps.len() - seps_start >= max_seps {
                            return Err(too_many_fields(buf, &segs, pos, number, opts.max_fields));
                        }
                        // `len` fits in u32 (checked by the caller), so every offset does.
                        seps.push((j - pos) as u32);
                        i = j + 1;
                    } else {
                        break j;
                    }
                }
                None => break len,
            }
        };
        let mut t = end;
        while let Some(&b) = buf.get(t) {
            match b {
                b'\r' => t += 1,
                b'\n' if lenient => t += 1,
                b'\n' => {
                    return Err(ParseError::LineFeedInSegment {
                        segment: number,
                        offset: t,
                    });
                }
                _ => break,
            }
        }
        segs.push(Seg {
            body: Body::Source {
                start: pos as u32,
                end: end as u32,
                seps_start: seps_start as u32,
                seps_end: seps.len() as u32,
            },
            term: Term::Source {
                start: end as u32,
                end: t as u32,
            },
        });
        if t >= len {
            release_spare(&mut segs);
            release_spare(&mut seps);
            return Ok((segs, seps));
        }
        pos = t;
    }
}

/// The most segments [`index`] reserves room for before it has seen them (40 KiB).
const MAX_SEGS_GUESS: usize = 1024;
/// The most field separators [`index`] reserves room for before it has seen them (64 KiB).
const MAX_SEPS_GUESS: usize = 16 * 1024;

/// Gives back most of a vector's unused room when the guess was far off (a large message
/// with few segments or fields), since the index lives as long as the message. A guess that
/// was about right is left alone: shrinking costs a reallocation.
fn release_spare<T>(v: &mut Vec<T>) {
    if v.capacity() > 2 * v.len() + 256 {
        v.shrink_to_fit();
    }
}

/// The error for segment `number` (at `pos`, its ID already checked) having more than
/// `limit` fields; `segs` are the segments before it.
fn too_many_fields(
    buf: &[u8],
    segs: &[Seg],
    pos: usize,
    number: usize,
    limit: usize,
) -> ParseError {
    let id = buf.get(pos..pos + 3).unwrap_or_default();
    let occurrence = 1 + segs
        .iter()
        .filter(|s| match s.body {
            Body::Source { start, .. } => buf.get(start as usize..start as usize + 3) == Some(id),
            Body::Owned(_) => false,
        })
        .count();
    ParseError::TooManyFields {
        limit,
        segment: number,
        segment_id: printable(id),
        occurrence,
    }
}

/// A segment starts with `[A-Z][A-Z0-9]{2}` followed by the field separator or its end.
fn check_segment_id(buf: &[u8], pos: usize, fs: u8, number: usize) -> Result<(), ParseError> {
    let id = buf.get(pos..pos + 3);
    let ok = id.is_some_and(is_segment_id)
        && match buf.get(pos + 3) {
            None | Some(b'\r' | b'\n') => true,
            Some(&b) => b == fs,
        };
    if ok {
        return Ok(());
    }
    let shown: Vec<u8> = buf
        .get(pos..)
        .unwrap_or_default()
        .iter()
        .take(3)
        .take_while(|&&b| b != b'\r' && b != b'\n')
        .copied()
        .collect();
    Err(ParseError::MalformedSegmentId {
        segment: number,
        offset: pos,
        id: printable(&shown),
    })
}

/// The character set declared by MSH-18 (first repetition) of an MSH segment given as its
/// bytes and field-separator offsets, or `default` when it is empty or absent.
fn charset_of(
    msh: &[u8],
    seps: &[u32],
    delims: &Delimiters,
    default: Charset,
) -> Result<Charset, ParseError> {
    // MSH-18 is piece 17 of the segment split on the field separator (MSH-1 is no piece).
    let Some(&start) = seps.get(16) else {
        return Ok(default);
    };
    let start = start as usize + 1;
    let end = seps.get(17).map_or(msh.len(), |&e| e as usize);
    let field = msh.get(start..end).unwrap_or_default();
    let first = field
        .split(|&b| b == delims.repetition)
        .next()
        .unwrap_or_default();
    let decoded = crate::escape::decode(first, delims);
    let unsupported = || ParseError::UnsupportedCharset {
        value: printable(&decoded.iter().take(40).copied().collect::<Vec<u8>>()),
    };
    let text = std::str::from_utf8(&decoded).map_err(|_| unsupported())?;
    if text.trim().is_empty() {
        return Ok(default);
    }
    Charset::from_hl7(text).ok_or_else(unsupported)
}
