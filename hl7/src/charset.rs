//! Character sets a message may declare in MSH-18, and the conversions between their bytes
//! and Rust strings.
//!
//! The whole message is validated against its character set once, at parse time, so later
//! reads can decode any slice of it without failing; edits are converted back and refused
//! (never replaced with `?`) when the character set cannot hold them.
//!
//! ISO-8859-1 is converted by hand rather than with `encoding_rs`: that crate follows the
//! WHATWG Encoding Standard, which maps the label "ISO-8859-1" to windows-1252, and windows-1252
//! turns the bytes 0x80–0x9F into letters such as `€` and `Š` where ISO-8859-1 (and HL7's
//! "8859/1") has the C1 control characters U+0080–U+009F. Latin-1 is also the one encoding where
//! byte n is code point n, so the hand-written conversion is a few lines.

use std::borrow::Cow;
use std::fmt;

/// A character set named by MSH-18 (first repetition), or the parse option's default when
/// MSH-18 is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Charset {
    /// UTF-8 (`UNICODE UTF-8`). The default.
    #[default]
    Utf8,
    /// 7-bit ASCII (`ASCII`): every byte below 0x80.
    Ascii,
    /// ISO-8859-1 (`8859/1`): every byte is the code point of the same number.
    Latin1,
}

impl Charset {
    /// Interprets an MSH-18 value (HL7 table 0211). An empty value is `None` as is an unknown
    /// one; the caller tells them apart. Matching ignores ASCII case and surrounding spaces, and
    /// accepts the common spellings `UTF-8`, `UTF8` and `UNICODE UTF8` besides the table's
    /// `UNICODE UTF-8`.
    pub fn from_hl7(value: &str) -> Option<Charset> {
        let v = value.trim();
        const UTF8: [&str; 4] = ["UNICODE UTF-8", "UNICODE UTF8", "UTF-8", "UTF8"];
        if UTF8.iter().any(|n| v.eq_ignore_ascii_case(n)) {
            Some(Charset::Utf8)
        } else if v.eq_ignore_ascii_case("ASCII") {
            Some(Charset::Ascii)
        } else if v.eq_ignore_ascii_case("8859/1") {
            Some(Charset::Latin1)
        } else {
            None
        }
    }

    /// The HL7 table 0211 code for this character set, as MSH-18 would carry it.
    pub fn hl7_name(&self) -> &'static str {
        match self {
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Ascii => "ASCII",
            Charset::Latin1 => "8859/1",
        }
    }

    /// Checks that `bytes` are valid in this character set; `Err` carries the offset of the
    /// first byte that is not.
    pub(crate) fn validate(self, bytes: &[u8]) -> Result<(), usize> {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(|_| ())
                .map_err(|e| e.valid_up_to()),
            Charset::Ascii => {
                if bytes.is_ascii() {
                    Ok(())
                } else {
                    Err(bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0))
                }
            }
            Charset::Latin1 => Ok(()),
        }
    }

    /// Converts bytes in this character set to text; `None` when they are not valid in it
    /// (which can only happen for bytes produced by `\Xhh\` escapes: the message itself was
    /// validated at parse).
    pub(crate) fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Charset::Ascii => {
                if bytes.is_ascii() {
                    std::str::from_utf8(bytes).ok().map(Cow::Borrowed)
                } else {
                    None
                }
            }
            Charset::Latin1 => {
                if bytes.is_ascii() {
                    std::str::from_utf8(bytes).ok().map(Cow::Borrowed)
                } else {
                    Some(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()))
                }
            }
        }
    }

    /// Converts text to bytes in this character set. `Err` carries the character offset and
    /// the first character the set cannot hold.
    pub(crate) fn encode(self, text: &str) -> Result<Cow<'_, [u8]>, (usize, char)> {
        if text.is_ascii() {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        match self {
            Charset::Utf8 => Ok(Cow::Borrowed(text.as_bytes())),
            Charset::Ascii => Err(first_bad(text, |c| c.is_ascii())),
            Charset::Latin1 => {
                let mut out = Vec::with_capacity(text.len());
                for (i, c) in text.chars().enumerate() {
                    match u8::try_from(u32::from(c)) {
                        Ok(b) => out.push(b),
                        Err(_) => return Err((i, c)),
                    }
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

fn first_bad(text: &str, ok: impl Fn(char) -> bool) -> (usize, char) {
    text.chars()
        .enumerate()
        .find(|&(_, c)| !ok(c))
        .unwrap_or((0, '\0'))
}

impl fmt::Display for Charset {
    /// The usual name of the character set: `UTF-8`, `ASCII`, `ISO-8859-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Charset::Utf8 => "UTF-8",
            Charset::Ascii => "ASCII",
            Charset::Latin1 => "ISO-8859-1",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Charset::from_hl7("UNICODE UTF-8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_hl7("unicode utf8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_hl7("utf-8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_hl7("ASCII"), Some(Charset::Ascii));
        assert_eq!(Charset::from_hl7("8859/1"), Some(Charset::Latin1));
        assert_eq!(Charset::from_hl7("8859/15"), None);
        assert_eq!(Charset::from_hl7(""), None);
        for c in [Charset::Utf8, Charset::Ascii, Charset::Latin1] {
            assert_eq!(Charset::from_hl7(c.hl7_name()), Some(c));
        }
    }

    #[test]
    fn latin1_is_not_windows_1252() {
        // 0x80 is U+0080 (a C1 control) in ISO-8859-1, not '€' as in windows-1252.
        assert_eq!(Charset::Latin1.decode(&[0x80, 0xE9]).unwrap(), "\u{80}é");
        assert_eq!(
            Charset::Latin1.encode("\u{80}é").unwrap().as_ref(),
            &[0x80, 0xE9]
        );
        assert_eq!(Charset::Latin1.encode("a€"), Err((1, '€')));
    }

    #[test]
    fn validation() {
        assert_eq!(Charset::Utf8.validate(b"ab\xC3\xA9"), Ok(()));
        assert_eq!(Charset::Utf8.validate(b"ab\xC3("), Err(2));
        assert_eq!(Charset::Ascii.validate(b"abc\x80"), Err(3));
        assert_eq!(Charset::Latin1.validate(b"\xff\x00"), Ok(()));
        assert_eq!(Charset::Ascii.encode("abé"), Err((2, 'é')));
        assert_eq!(Charset::Ascii.decode(b"a\x80"), None);
    }
}
