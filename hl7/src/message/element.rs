//! Read access to a parsed message: [`SegmentRef`] (one segment) and [`Element`] (a field,
//! repetition, component or sub-component), both borrowing the message's bytes.
//!
//! Fields come from the index built at parse; anything below a field is found by splitting
//! the field's bytes when asked, which keeps parsing cheap for the many fields nobody reads.

use super::Message;
use crate::charset::Charset;
use crate::delimiters::Delimiters;
use crate::escape;
use std::borrow::Cow;
use std::fmt;

/// One segment of a [`Message`].
///
/// `Debug` shows the segment ID and position only, never contents.
#[derive(Clone, Copy)]
pub struct SegmentRef<'a> {
    msg: &'a Message,
    index: usize,
    bytes: &'a [u8],
    seps: &'a [u32],
}

impl<'a> SegmentRef<'a> {
    pub(super) fn new(
        msg: &'a Message,
        index: usize,
        bytes: &'a [u8],
        seps: &'a [u32],
    ) -> SegmentRef<'a> {
        SegmentRef {
            msg,
            index,
            bytes,
            seps,
        }
    }

    /// The segment ID, e.g. `PID`.
    pub fn id(&self) -> &'a str {
        // Validated as [A-Z][A-Z0-9]{2} at parse or insertion, so always ASCII.
        self.bytes
            .get(..3)
            .and_then(|id| std::str::from_utf8(id).ok())
            .unwrap_or("")
    }

    /// 0-based position among all segments (MSH is 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// 1-based occurrence among the segments with the same ID (`OBX[3]` is occurrence 3).
    pub fn occurrence(&self) -> usize {
        let id = self.id().as_bytes();
        (0..=self.index)
            .filter(|&i| self.msg.seg_id(i) == id)
            .count()
    }

    /// The segment's bytes as they stand, without terminator.
    pub fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    /// The segment's ER7 text (escapes kept), converted from the message's character set.
    pub fn er7(&self) -> String {
        to_text(self.bytes, self.msg.charset)
    }

    /// The number of fields present (HL7 numbering: for MSH this counts MSH-1 and MSH-2). A
    /// segment with only its ID has 0.
    pub fn field_count(&self) -> usize {
        if self.is_msh() {
            self.seps.len() + 1
        } else {
            self.seps.len()
        }
    }

    /// Field `n` (1-based, HL7 numbering), `None` past the last field present. For MSH,
    /// field 1 is the field separator and field 2 the encoding characters, both returned as
    /// written and never split or unescaped.
    pub fn field(&self, n: usize) -> Option<Element<'a>> {
        if n == 0 {
            return None;
        }
        if self.is_msh() {
            return match n {
                1 => Some(self.element(self.bytes.get(3..4)?, Level::Literal)),
                2 => Some(self.element(self.piece(1)?, Level::Literal)),
                _ => Some(self.element(self.piece(n - 1)?, Level::Field)),
            };
        }
        Some(self.element(self.piece(n)?, Level::Field))
    }

    /// The fields in order, from field 1.
    pub fn fields(&self) -> impl Iterator<Item = Element<'a>> + use<'a> {
        let seg = *self;
        (1..=seg.field_count()).filter_map(move |n| seg.field(n))
    }

    /// Whether this is the message's MSH (always the first segment).
    pub fn is_msh(&self) -> bool {
        self.index == 0
    }

    fn element(&self, raw: &'a [u8], level: Level) -> Element<'a> {
        Element {
            raw,
            level,
            delims: &self.msg.delims,
            charset: self.msg.charset,
        }
    }

    /// Piece `k` of the segment split on the field separator (piece 0 is the ID).
    fn piece(&self, k: usize) -> Option<&'a [u8]> {
        let start = match k {
            0 => 0,
            _ => *self.seps.get(k - 1)? as usize + 1,
        };
        let end = match self.seps.get(k) {
            Some(&e) => e as usize,
            None if k == self.seps.len() => self.bytes.len(),
            None => return None,
        };
        self.bytes.get(start..end)
    }
}

impl fmt::Debug for SegmentRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentRef")
            .field("id", &self.id())
            .field("index", &self.index)
            .field("fields", &self.field_count())
            .finish_non_exhaustive()
    }
}

/// What an [`Element`] is, which decides which separators split it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Field,
    Repetition,
    Component,
    Subcomponent,
    /// MSH-1 or MSH-2: never split, never unescaped.
    Literal,
}

/// A field, repetition, component or sub-component of a message, borrowing its bytes.
///
/// Walk down with [`Element::repetitions`], [`Element::components`] and
/// [`Element::subcomponents`] (or the 1-based [`Element::repetition`],
/// [`Element::component`], [`Element::subcomponent`]). A level that is skipped is taken at
/// its first element — `components()` of a field are those of its first repetition, as the
/// path `PID-5.1` means `PID-5[1].1` — and asking an element for a level at or above its own
/// gives the element itself once (a component's `subcomponents()` of a component without
/// `&` is that component).
///
/// `Debug` shows the level and length only, never contents.
#[derive(Clone, Copy)]
pub struct Element<'a> {
    raw: &'a [u8],
    level: Level,
    delims: &'a Delimiters,
    charset: Charset,
}

impl<'a> Element<'a> {
    /// The bytes as they stand in the message (escaped, in the message's character set).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the element is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Whether the element has no lower-level separator inside (`~ ^ &` for a field, `^ &`
    /// for a repetition, `&` for a component): whether [`Element::value`] decodes it.
    pub fn is_leaf(&self) -> bool {
        let d = self.delims;
        match self.level {
            Level::Field => {
                memchr::memchr3(d.repetition, d.component, d.subcomponent, self.raw).is_none()
            }
            Level::Repetition => memchr::memchr2(d.component, d.subcomponent, self.raw).is_none(),
            Level::Component => {
                !d.has_subcomponents() || memchr::memchr(d.subcomponent, self.raw).is_none()
            }
            Level::Subcomponent | Level::Literal => true,
        }
    }

    /// The value as [`Message::get`] gives it: decoded (escapes and character set) when the
    /// element is a leaf ([`Element::is_leaf`]), its ER7 text as written otherwise; MSH-1 and
    /// MSH-2 as written.
    ///
    /// A `\Xhh\` escape whose bytes are not valid in the message's character set (say `\XE9\`
    /// in a UTF-8 message) cannot become text: such escapes are then kept as written rather
    /// than replaced with U+FFFD, so no data is lost.
    pub fn value(&self) -> String {
        if self.level == Level::Literal || !self.is_leaf() {
            return self.er7();
        }
        decode_text(self.raw, self.delims, self.charset)
    }

    /// [`Element::value`] without a copy when the text stands in the message as it is (no
    /// escape sequence, ASCII or UTF-8): a large value, such as a base64 report in OBX-5, is
    /// then read in place.
    pub fn value_cow(&self) -> Cow<'a, str> {
        if self.level == Level::Literal || !self.is_leaf() {
            return match self.charset.decode(self.raw) {
                Some(text) => text,
                None => Cow::Owned(String::from_utf8_lossy(self.raw).into_owned()),
            };
        }
        if let Cow::Borrowed(unescaped) = escape::decode(self.raw, self.delims)
            && let Some(text) = self.charset.decode(unescaped)
        {
            return text;
        }
        Cow::Owned(decode_text(self.raw, self.delims, self.charset))
    }

    /// The ER7 text as written (escapes kept), converted from the message's character set.
    pub fn er7(&self) -> String {
        to_text(self.raw, self.charset)
    }

    /// The repetitions of a field (at least one: an empty field is one empty repetition). Any
    /// other element gives itself.
    pub fn repetitions(&self) -> impl Iterator<Item = Element<'a>> + use<'a> {
        match self.level {
            Level::Field => self.split(Some(self.delims.repetition), Level::Repetition),
            _ => self.split(None, self.level),
        }
    }

    /// The components of a repetition (or of a field's first repetition). A component or
    /// sub-component gives itself.
    pub fn components(&self) -> impl Iterator<Item = Element<'a>> + use<'a> {
        match self.level {
            Level::Field | Level::Repetition => self
                .down(Level::Repetition)
                .split(Some(self.delims.component), Level::Component),
            _ => self.split(None, self.level),
        }
    }

    /// The sub-components of a component (or of the first component of a field or
    /// repetition). A sub-component gives itself, as does a component when MSH-2 declares no
    /// sub-component separator.
    pub fn subcomponents(&self) -> impl Iterator<Item = Element<'a>> + use<'a> {
        match self.level {
            Level::Field | Level::Repetition | Level::Component => {
                let c = self.down(Level::Component);
                let sep = self
                    .delims
                    .has_subcomponents()
                    .then_some(self.delims.subcomponent);
                c.split(sep, Level::Subcomponent)
            }
            _ => self.split(None, self.level),
        }
    }

    /// Repetition `n` (1-based) of a field; `None` past the last. Other elements answer
    /// `Some(self)` for 1.
    pub fn repetition(&self, n: usize) -> Option<Element<'a>> {
        nth1(self.repetitions(), n)
    }

    /// Component `n` (1-based) of a repetition, or of a field's first repetition; `None` past
    /// the last. Components and below answer `Some(self)` for 1.
    pub fn component(&self, n: usize) -> Option<Element<'a>> {
        nth1(self.components(), n)
    }

    /// Sub-component `n` (1-based) of a component (or of the first component above); `None`
    /// past the last. A sub-component answers `Some(self)` for 1.
    pub fn subcomponent(&self, n: usize) -> Option<Element<'a>> {
        nth1(self.subcomponents(), n)
    }

    /// The number of repetitions of a field: 0 when it is empty. Other elements count 1.
    pub fn repetition_count(&self) -> usize {
        match self.level {
            Level::Field if self.raw.is_empty() => 0,
            Level::Field => memchr::memchr_iter(self.delims.repetition, self.raw).count() + 1,
            _ => 1,
        }
    }

    /// This element taken down to `level` through first elements (a field's first
    /// repetition, a repetition's first component).
    fn down(&self, level: Level) -> Element<'a> {
        let d = self.delims;
        let mut el = *self;
        if el.level == Level::Field && level != Level::Field {
            el = el.first(d.repetition, Level::Repetition);
        }
        if el.level == Level::Repetition && level == Level::Component {
            el = el.first(d.component, Level::Component);
        }
        el
    }

    fn first(&self, sep: u8, level: Level) -> Element<'a> {
        let end = memchr::memchr(sep, self.raw).unwrap_or(self.raw.len());
        Element {
            raw: self.raw.get(..end).unwrap_or_default(),
            level,
            ..*self
        }
    }

    fn split(&self, sep: Option<u8>, level: Level) -> Split<'a> {
        Split {
            rest: Some(self.raw),
            sep,
            proto: Element { level, ..*self },
        }
    }
}

impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Element")
            .field("level", &self.level)
            .field("len", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// The pieces of an element split on one separator (or the element itself once when there is
/// no separator to split on).
struct Split<'a> {
    rest: Option<&'a [u8]>,
    sep: Option<u8>,
    proto: Element<'a>,
}

impl<'a> Iterator for Split<'a> {
    type Item = Element<'a>;

    fn next(&mut self) -> Option<Element<'a>> {
        let rest = self.rest?;
        let (piece, tail) = match self.sep.and_then(|s| memchr::memchr(s, rest)) {
            Some(k) => (&rest[..k], rest.get(k + 1..)),
            None => (rest, None),
        };
        self.rest = tail;
        Some(Element {
            raw: piece,
            ..self.proto
        })
    }
}

fn nth1<'a>(mut it: impl Iterator<Item = Element<'a>>, n: usize) -> Option<Element<'a>> {
    it.nth(n.checked_sub(1)?)
}

/// Escape-decodes then charset-decodes a leaf's bytes; see [`Element::value`] for the
/// fallback when `\Xhh\` bytes are not valid in the character set.
pub(crate) fn decode_text(raw: &[u8], delims: &Delimiters, charset: Charset) -> String {
    let decoded = escape::decode(raw, delims);
    if let Some(text) = charset.decode(&decoded) {
        return text.into_owned();
    }
    let kept = escape::decode_with(raw, delims, true);
    to_text(&kept, charset)
}

/// Bytes in the message's character set as text. The message was validated at parse and
/// every edit is converted into its character set, so this cannot fail; the lossy fallback only
/// guards against a broken invariant without panicking.
pub(crate) fn to_text(bytes: &[u8], charset: Charset) -> String {
    match charset.decode(bytes) {
        Some(text) => text.into_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}
