//! HL7 escape sequences: turning the `\F\`, `\S\`, `\X0D\`... of ER7 text into the bytes they
//! stand for ([`decode`]) and back ([`encode`]), always with the message's own delimiters.
//!
//! Only the sequences that stand for characters are decoded: `\F\ \S\ \T\ \R\ \E\` (the
//! delimiters), `\P\` (the v2.7 truncation character, when the message declares one),
//! `\Xhh..\` (bytes) and `\.br\` (a line break, `\n`). Formatting sequences (`\H\ \N\ \.sp\
//! \.in\ \.ti\ \.sk\ \.ce\ \.fi\ \.nf\`), character-set switches (`\Zxx\ \Cxxyy\ \Mxxyyzz\`) and
//! unknown sequences carry meaning this crate does not interpret, so they are kept exactly as
//! written — never reduced to their letters. [`encode`] mirrors that: a well-formed sequence
//! that [`decode`] would keep is copied through, any other escape character becomes `\E\`. So
//! `encode(decode(x))` means what `x` meant, and `set(path, get(path))` leaves the bytes alone.
//!
//! One asymmetry is deliberate: text holding what looks like `\F\` or `\X41\` is escaped
//! (`\E\F\E\`), because in text it is literal. A `\Xhh\` whose bytes are not valid in the
//! message's character set is kept as written by [`crate::Element::value`] (see there), and a
//! `set` of that text escapes it.

use crate::delimiters::Delimiters;
use std::borrow::Cow;

/// What one `\...\` sequence stands for.
enum Sequence {
    /// One delimiter character.
    Char(u8),
    /// `\Xhh..\`: these bytes.
    Hex,
    /// `\.br\`: a line break.
    LineBreak,
    /// Formatting, character-set or unknown: kept as written.
    Keep,
}

/// Decodes the escape sequences in `raw` (bytes of one field, component, ...) with `delims`.
///
/// Escape decoding only: the result is still in the message's character set. Formatting and
/// unknown sequences are kept as written; an escape character without a closing one (before the
/// next separator or the end) is kept literally. Without an escape character (`delims.escape`
/// is `None`) the bytes are returned unchanged. Borrows when there is nothing to decode.
pub fn decode<'a>(raw: &'a [u8], delims: &Delimiters) -> Cow<'a, [u8]> {
    decode_with(raw, delims, false)
}

/// [`decode`], optionally keeping `\Xhh..\` sequences as written: the fallback when the bytes
/// they stand for are not valid in the message's character set.
pub(crate) fn decode_with<'a>(raw: &'a [u8], delims: &Delimiters, keep_hex: bool) -> Cow<'a, [u8]> {
    let Some(esc) = delims.escape else {
        return Cow::Borrowed(raw);
    };
    let Some(first) = memchr::memchr(esc, raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        let b = raw[i];
        if b != esc {
            // Copy the run up to the next escape character in one go.
            let next = memchr::memchr(esc, &raw[i..]).map_or(raw.len(), |k| i + k);
            out.extend_from_slice(&raw[i..next]);
            i = next;
            continue;
        }
        let Some(close) = find_close(raw, i, esc, delims) else {
            out.push(esc);
            i += 1;
            continue;
        };
        let content = &raw[i + 1..close];
        match classify(content, delims) {
            Sequence::Char(c) => out.push(c),
            Sequence::LineBreak => out.push(b'\n'),
            Sequence::Hex if !keep_hex => push_hex(&mut out, &content[1..]),
            Sequence::Hex | Sequence::Keep => out.extend_from_slice(&raw[i..=close]),
        }
        i = close + 1;
    }
    Cow::Owned(out)
}

/// Escapes `text` for ER7 with `delims`: separators become `\F\ \S\ \T\ \R\`, the truncation
/// character `\P\`, `\n` becomes `\.br\` (`\X0A\` when `.` is one of the delimiters, which
/// cannot write `.br`) and `\r` becomes `\X0D\`; an escape character becomes
/// `\E\` unless it opens a well-formed sequence [`decode`] keeps as written (formatting,
/// character-set or unknown), which is copied through.
///
/// Byte-level and character-set agnostic (the delimiters are ASCII). Without an escape
/// character nothing can be escaped and `text` is returned unchanged: callers that must not
/// produce ambiguous ER7 check for delimiters first (as `Message::set` does). Borrows when
/// nothing needs escaping.
pub fn encode<'a>(text: &'a [u8], delims: &Delimiters) -> Cow<'a, [u8]> {
    let Some(esc) = delims.escape else {
        return Cow::Borrowed(text);
    };
    let needs = |b: u8| {
        b == esc
            || delims.is_separator(b)
            || b == b'\r'
            || b == b'\n'
            || Some(b) == delims.truncation
    };
    let Some(first) = text.iter().position(|&b| needs(b)) else {
        return Cow::Borrowed(text);
    };
    let dot_is_delimiter =
        esc == b'.' || delims.is_separator(b'.') || delims.truncation == Some(b'.');
    let mut out = Vec::with_capacity(text.len() + 16);
    out.extend_from_slice(&text[..first]);
    let mut i = first;
    while i < text.len() {
        let b = text[i];
        let letter: &[u8] = if b == esc {
            if let Some(close) = find_close(text, i, esc, delims)
                && matches!(classify(&text[i + 1..close], delims), Sequence::Keep)
            {
                out.extend_from_slice(&text[i..=close]);
                i = close + 1;
                continue;
            }
            b"E"
        } else if b == delims.field {
            b"F"
        } else if b == delims.component {
            b"S"
        } else if b == delims.repetition {
            b"R"
        } else if b == delims.subcomponent {
            b"T"
        } else if Some(b) == delims.truncation {
            b"P"
        } else if b == b'\n' && dot_is_delimiter {
            // `\.br\` cannot be written when `.` is a delimiter: as the escape character,
            // `..br.` reads back as the empty sequence `..` then text; as a separator or the
            // truncation character it ends the sequence early. Write the byte in hex instead.
            b"X0A"
        } else if b == b'\n' {
            b".br"
        } else if b == b'\r' {
            b"X0D"
        } else {
            out.push(b);
            i += 1;
            continue;
        };
        out.push(esc);
        out.extend_from_slice(letter);
        out.push(esc);
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether `text` holds a byte that [`encode`] would have to escape but cannot, because the
/// delimiters declare no escape character.
pub(crate) fn needs_escape_char(text: &[u8], delims: &Delimiters) -> bool {
    delims.escape.is_none()
        && text
            .iter()
            .any(|&b| delims.is_separator(b) || b == b'\r' || b == b'\n')
}

/// The position of the escape character closing the sequence opened at `open`, if the
/// sequence is well formed: no separator, truncation character or line break before it.
fn find_close(bytes: &[u8], open: usize, esc: u8, delims: &Delimiters) -> Option<usize> {
    let rest = bytes.get(open + 1..)?;
    for (k, &b) in rest.iter().enumerate() {
        if b == esc {
            return Some(open + 1 + k);
        }
        if delims.is_separator(b) || b == b'\r' || b == b'\n' || Some(b) == delims.truncation {
            return None;
        }
    }
    None
}

fn classify(content: &[u8], delims: &Delimiters) -> Sequence {
    match content {
        b"F" => Sequence::Char(delims.field),
        b"S" => Sequence::Char(delims.component),
        b"R" => Sequence::Char(delims.repetition),
        b"E" => delims.escape.map_or(Sequence::Keep, Sequence::Char),
        b"T" if delims.has_subcomponents() => Sequence::Char(delims.subcomponent),
        b"P" => delims.truncation.map_or(Sequence::Keep, Sequence::Char),
        b".br" => Sequence::LineBreak,
        [b'X', hex @ ..]
            if !hex.is_empty() && hex.len() % 2 == 0 && hex.iter().all(u8::is_ascii_hexdigit) =>
        {
            Sequence::Hex
        }
        _ => Sequence::Keep,
    }
}

fn push_hex(out: &mut Vec<u8>, hex: &[u8]) {
    for pair in hex.chunks_exact(2) {
        out.push(hex_value(pair[0]) << 4 | hex_value(pair[1]));
    }
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        b'A'..=b'F' => d - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Delimiters {
        Delimiters::default()
    }
    fn dec(s: &str) -> String {
        String::from_utf8(decode(s.as_bytes(), &d()).into_owned()).unwrap()
    }
    fn enc(s: &str) -> String {
        String::from_utf8(encode(s.as_bytes(), &d()).into_owned()).unwrap()
    }

    #[test]
    fn delimiter_escapes() {
        assert_eq!(dec(r"a\F\b\S\c\T\d\R\e\E\f"), r"a|b^c&d~e\f");
        assert_eq!(enc(r"a|b^c&d~e\f"), r"a\F\b\S\c\T\d\R\e\E\f");
    }

    #[test]
    fn line_break_round_trips_when_dot_is_a_delimiter() {
        // Found by the hl7_escape fuzz target: `.br` cannot be written with `.` as the escape
        // character (`..br.` reads back as `..`, `br`, ...), so encode wrote text that did not
        // decode to itself.
        let dot = Delimiters::from_msh(b'|', b"^~.&").unwrap();
        let escaped = encode(b"a\nb\rc", &dot);
        assert_eq!(escaped.as_ref(), b"a.X0A.b.X0D.c");
        assert_eq!(decode(&escaped, &dot).as_ref(), b"a\nb\rc");
        // The input the fuzzer found, minimised: a line break between escape characters.
        let text = b"..\n.";
        assert_eq!(decode(&encode(text, &dot), &dot).as_ref(), text);
        // Nor with `.` as a separator or the truncation character, which would end the
        // sequence early (found by the fuzzer after the first fix).
        for msh2 in [&b"^~\\&."[..], b".~\\&", b"^.\\&", b"^~\\."] {
            let d = Delimiters::from_msh(b'|', msh2).unwrap();
            let escaped = encode(b"a\nb", &d);
            assert_eq!(escaped.as_ref(), br"a\X0A\b", "{msh2:?}");
            assert_eq!(decode(&escaped, &d).as_ref(), b"a\nb");
        }
        // Other delimiter sets keep the standard `\.br\`.
        assert_eq!(encode(b"a\nb", &d()).as_ref(), br"a\.br\b");
    }

    #[test]
    fn hex_and_line_break() {
        assert_eq!(dec(r"\X41\\X4243\"), "ABC");
        assert_eq!(dec(r"x\X0D\y\.br\z"), "x\ry\nz");
        assert_eq!(dec(r"\XC3A9\"), "é");
        assert_eq!(enc("x\ry\nz"), r"x\X0D\y\.br\z");
        assert_eq!(enc("é"), "é");
        // Odd or empty hex is not a hex escape: kept as written.
        assert_eq!(dec(r"\X4\"), r"\X4\");
        assert_eq!(dec(r"\X\"), r"\X\");
        assert_eq!(dec(r"\XZZ\"), r"\XZZ\");
        let kept = decode_with(br"a\X41\b", &d(), true);
        assert_eq!(kept.as_ref(), br"a\X41\b");
    }

    #[test]
    fn formatting_and_unknown_preserved() {
        for s in [
            r"\H\bold\N\",
            r"\.sp2\",
            r"\.in+4\",
            r"\.ti-2\",
            r"\.sk3\",
            r"\.ce\",
            r"\.fi\",
            r"\.nf\",
            r"\Z1234\",
            r"\C2842\",
            r"\M2442\",
            r"\Q\",
            r"\whatever\",
            r"\\",
        ] {
            assert_eq!(dec(s), s, "decode {s}");
            assert_eq!(enc(s), s, "encode {s}");
        }
        // Decoding around kept sequences still decodes the rest.
        assert_eq!(dec(r"\H\a\F\b\N\"), r"\H\a|b\N\");
        assert_eq!(enc(r"\H\a|b\N\"), r"\H\a\F\b\N\");
    }

    #[test]
    fn unterminated_and_lone() {
        assert_eq!(dec(r"abc\F"), r"abc\F");
        assert_eq!(dec(r"abc\"), r"abc\");
        assert_eq!(enc(r"abc\"), r"abc\E\");
        assert_eq!(enc(r"C:\dir"), r"C:\E\dir");
        // An escape cannot span a separator.
        assert_eq!(dec(r"\F^\"), r"\F^\");
    }

    #[test]
    fn literal_escape_like_text_is_escaped() {
        assert_eq!(enc(r"\F\"), r"\E\F\E\");
        assert_eq!(dec(r"\E\F\E\"), r"\F\");
        assert_eq!(enc(r"\X41\"), r"\E\X41\E\");
        assert_eq!(enc(r"\.br\"), r"\E\.br\E\");
        assert_eq!(dec(r"\E\.br\E\"), r"\.br\");
    }

    #[test]
    fn truncation_character() {
        let d = Delimiters::from_msh(b'|', b"^~\\&#").unwrap();
        assert_eq!(decode(br"Apt \P\3", &d).as_ref(), b"Apt #3");
        assert_eq!(encode(b"Apt #3", &d).as_ref(), br"Apt \P\3");
        // Without a truncation character \P\ is unknown and kept, # is data.
        assert_eq!(dec(r"\P\"), r"\P\");
        assert_eq!(enc("#"), "#");
    }

    #[test]
    fn custom_delimiters() {
        let d = Delimiters::from_msh(b'#', b"!@$%").unwrap();
        assert_eq!(decode(b"a$F$b$S$c$E$", &d).as_ref(), b"a#b!c$");
        assert_eq!(encode(b"a#b!c$d|^\\", &d).as_ref(), b"a$F$b$S$c$E$d|^\\");
    }

    #[test]
    fn no_escape_character() {
        let d = Delimiters::from_msh(b'|', b"^~").unwrap();
        assert_eq!(decode(br"a\F\b", &d).as_ref(), br"a\F\b");
        assert_eq!(encode(b"a|b", &d).as_ref(), b"a|b");
        assert!(needs_escape_char(b"a|b", &d));
        assert!(!needs_escape_char(b"ab", &d));
    }

    #[test]
    fn borrows_when_unchanged() {
        assert!(matches!(decode(b"plain", &d()), Cow::Borrowed(_)));
        assert!(matches!(encode(b"plain", &d()), Cow::Borrowed(_)));
    }

    #[test]
    fn round_trip_identity_on_samples() {
        for s in [
            "plain",
            r"\F\\S\\T\\R\\E\",
            r"\H\x\N\",
            r"lone \ backslash",
            r"\X0D\\.br\",
            r"\unknown\ and \F\",
        ] {
            let decoded = decode(s.as_bytes(), &d()).into_owned();
            let again = decode(&encode(&decoded, &d()), &d()).into_owned();
            assert_eq!(again, decoded, "{s}");
        }
    }
}
