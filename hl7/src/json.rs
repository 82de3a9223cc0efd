//! A JSON view of a message keyed by HL7 positions ([`to_json`]), and the way back
//! ([`from_json`]). The shape is documented, with an example, in `docs/json.md`.
//!
//! ```text
//! {"delimiters": "|^~\\&",
//!  "segments": [{"id": "PID", "fields": {"3": [{"1": "100234", "4": "RIVERSIDE", "5": "MR"}],
//!                                       "5": [{"1": "Johnson", "2": "Sarah"}]}}]}
//! ```
//!
//! Positions are 1-based string keys and sparse (empty positions are left out); a field is an
//! array of repetitions; a repetition with a single plain component is a string, otherwise an
//! object of components; a component with sub-components is an object of sub-components.
//! Values are decoded text (escape sequences and character set); MSH-1 and MSH-2 are the
//! delimiters as written.
//!
//! The round trip `from_json(&to_json(&m))` gives back `m` byte for byte once `m` is in the
//! normal form described in `docs/json.md` (no trailing empty separators, canonical escapes,
//! `\r` after every segment) — which the example messages are.

use crate::charset::Charset;
use crate::delimiters::Delimiters;
use crate::error::ParseError;
use crate::escape;
use crate::message::{Element, Message, ParseOptions, SegmentRef};
use crate::path::is_segment_id;
use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The largest position (field, component or sub-component number) [`from_json`] accepts: a
/// key such as `"99999999"` would otherwise make it write that many separators.
pub const MAX_POSITION: usize = 1000;

/// Why JSON could not be turned into a message. Errors name the JSON location (e.g.
/// `segments[2].fields.5[0].1`), never the value found there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The JSON does not have the documented shape.
    #[error("{path}: {reason}")]
    Shape {
        /// Where, e.g. `segments[2].fields.5[0]`.
        path: String,
        /// What was expected there.
        reason: String,
    },
    /// A position key above [`MAX_POSITION`].
    #[error("{path}: position {position} is above the limit of {limit}")]
    PositionTooLarge {
        /// Where the key is.
        path: String,
        /// The position.
        position: usize,
        /// [`MAX_POSITION`].
        limit: usize,
    },
    /// The delimiters (top-level `delimiters`, MSH-1/MSH-2) are unusable or disagree.
    #[error("invalid delimiters: {reason}")]
    Delimiters {
        /// What is wrong.
        reason: String,
    },
    /// A value holds a character the message's character set (MSH-18) cannot represent.
    #[error("{path}: character U+{:04X} cannot be represented in {charset}", u32::from(*character))]
    NotRepresentable {
        /// Where the value is.
        path: String,
        /// The character.
        character: char,
        /// The message's character set.
        charset: Charset,
    },
    /// A value holds a delimiter or line break, but MSH-2 declares no escape character.
    #[error(
        "{path}: the value holds a delimiter or line break, which cannot be escaped because \
         MSH-2 declares no escape character"
    )]
    CannotEscape {
        /// Where the value is.
        path: String,
    },
    /// The rebuilt ER7 is not a valid message (e.g. no MSH first, unsupported MSH-18).
    #[error("the rebuilt message does not parse: {0}")]
    Parse(#[from] ParseError),
}

/// The JSON view of `msg`; see the module documentation and `docs/json.md`.
pub fn to_json(msg: &Message) -> Value {
    // Serializing the view into a `Value` cannot fail: every map key is a position number
    // and every value a string, map or sequence.
    serde_json::to_value(JsonView(msg)).unwrap_or_default()
}

/// [`to_json`] written as JSON text to `out`, without building the `Value` tree: values
/// that need no decoding are escaped straight from the message's bytes, so a 1 MiB field
/// costs the output and nothing more. The text is what `serde_json::to_vec(&to_json(msg))`
/// gives, byte for byte.
pub fn write_json(msg: &Message, out: &mut Vec<u8>) {
    // Writing into a `Vec` cannot fail (see `to_json` for the view itself).
    let _ = serde_json::to_writer(out, &JsonView(msg));
}

/// [`write_json`] as pieces of text to send one after the other: every long run of the
/// message's own bytes that the JSON text carries as they are (a base64 report in OBX-5, say)
/// is a slice of the message's buffer, not a copy; the rest (keys, punctuation, short and
/// escaped values) is copied in between. A 1 MiB report then costs its keys, not a second
/// megabyte. The pieces joined are [`write_json`]'s text, byte for byte.
pub fn json_pieces(msg: &Message) -> Vec<Bytes> {
    let mut out = SharingWriter {
        source: msg.source(),
        pieces: Vec::new(),
        copied: Vec::new(),
    };
    // Writing to it cannot fail (see `to_json` for the view itself).
    let _ = serde_json::to_writer(&mut out, &JsonView(msg));
    if !out.copied.is_empty() {
        out.pieces.push(Bytes::from(out.copied));
    }
    out.pieces
}

/// From this length on, text that lies in the message's buffer is shared, not copied.
const SHARE_FROM: usize = 4096;

/// Collects [`json_pieces`]: serde_json writes an unescaped run of a string as one slice of
/// that string, which for a value read straight from the message lies in its buffer.
struct SharingWriter<'m> {
    source: &'m Bytes,
    pieces: Vec<Bytes>,
    copied: Vec<u8>,
}

impl std::io::Write for SharingWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let (start, end) = (self.source.as_ptr() as usize, data.as_ptr() as usize);
        let inside = end >= start && end + data.len() <= start + self.source.len();
        if data.len() >= SHARE_FROM && inside {
            if !self.copied.is_empty() {
                self.pieces
                    .push(Bytes::from(std::mem::take(&mut self.copied)));
            }
            self.pieces.push(self.source.slice_ref(data));
        } else {
            self.copied.extend_from_slice(data);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The message as [`to_json`] shapes it, serialized as it is walked.
struct JsonView<'m>(&'m Message);

impl Serialize for JsonView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = self.0.delimiters();
        let mut delimiters = String::with_capacity(6);
        delimiters.push(d.field as char);
        delimiters.push_str(&d.encoding_characters());
        let mut root = serializer.serialize_map(Some(2))?;
        root.serialize_entry("delimiters", &delimiters)?;
        root.serialize_entry("segments", &SegmentsView(self.0))?;
        root.end()
    }
}

struct SegmentsView<'m>(&'m Message);

impl Serialize for SegmentsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for seg in self.0.segments() {
            seq.serialize_element(&SegmentView(seg))?;
        }
        seq.end()
    }
}

struct SegmentView<'a>(SegmentRef<'a>);

impl Serialize for SegmentView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_map(Some(2))?;
        s.serialize_entry("id", self.0.id())?;
        s.serialize_entry("fields", &FieldsView(self.0))?;
        s.end()
    }
}

struct FieldsView<'a>(SegmentRef<'a>);

impl Serialize for FieldsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let seg = self.0;
        let mut fields = serializer.serialize_map(None)?;
        for n in 1..=seg.field_count() {
            let Some(f) = seg.field(n) else { continue };
            if seg.is_msh() && n <= 2 {
                fields.serialize_entry(&n, &f.value_cow())?;
            } else if let Some(reps) = field_view(&f) {
                fields.serialize_entry(&n, &reps)?;
            }
        }
        fields.end()
    }
}

/// A field's repetitions, or `None` when it holds nothing.
fn field_view<'a>(f: &Element<'a>) -> Option<Vec<Rep<'a>>> {
    if f.is_empty() {
        return None;
    }
    let reps: Vec<Rep<'a>> = f.repetitions().map(|r| Rep::of(&r)).collect();
    if let [only] = reps.as_slice()
        && only.0.is_empty()
    {
        return None;
    }
    Some(reps)
}

/// A repetition's components, trailing empty ones dropped. It is written as a string when it
/// has a single component that is a string, else as an object of the non-empty components
/// keyed by position (the empty string when it has none).
struct Rep<'a>(Vec<Comp<'a>>);

/// A component's sub-component values, trailing empty ones dropped. It is written as a string
/// when it has at most one, else as an object of the non-empty ones keyed by position.
struct Comp<'a>(Vec<Cow<'a, str>>);

impl<'a> Rep<'a> {
    fn of(r: &Element<'a>) -> Rep<'a> {
        let mut comps: Vec<Comp<'a>> = r.components().map(|c| Comp::of(&c)).collect();
        while comps.last().is_some_and(|c| c.0.is_empty()) {
            comps.pop();
        }
        Rep(comps)
    }
}

impl<'a> Comp<'a> {
    fn of(c: &Element<'a>) -> Comp<'a> {
        let mut subs: Vec<Cow<'a, str>> = c.subcomponents().map(|s| s.value_cow()).collect();
        while subs.last().is_some_and(|s| s.is_empty()) {
            subs.pop();
        }
        Comp(subs)
    }
}

impl Serialize for Rep<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [] => serializer.serialize_str(""),
            [only] if only.0.len() < 2 => only.serialize(serializer),
            comps => {
                let mut map = serializer.serialize_map(None)?;
                for (i, c) in comps.iter().enumerate() {
                    if !c.0.is_empty() {
                        map.serialize_entry(&(i + 1), c)?;
                    }
                }
                map.end()
            }
        }
    }
}

impl Serialize for Comp<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [] => serializer.serialize_str(""),
            [only] => serializer.serialize_str(only),
            subs => {
                let mut map = serializer.serialize_map(None)?;
                for (i, s) in subs.iter().enumerate() {
                    if !s.is_empty() {
                        map.serialize_entry(&(i + 1), s)?;
                    }
                }
                map.end()
            }
        }
    }
}

/// Rebuilds a message from the JSON [`to_json`] gives, with default parse options; see
/// [`from_json_with`].
pub fn from_json(value: &Value) -> Result<Message, JsonError> {
    from_json_with(value, &ParseOptions::default())
}

/// Rebuilds a message from the JSON [`to_json`] gives, parsing the result with `opts` (whose
/// `default_charset` is also the character set values are written in when MSH-18 is empty).
///
/// The delimiters come from the top-level `delimiters` string, else from MSH-1 and MSH-2; when
/// both are there they must agree. Values are converted to the character set MSH-18 names
/// and escaped with the delimiters; every segment ends with `\r`. Accepted beyond what
/// [`to_json`] writes: a field given as a single repetition instead of an array, and
/// `fields` left out for a segment without fields.
pub fn from_json_with(value: &Value, opts: &ParseOptions) -> Result<Message, JsonError> {
    let root = value
        .as_object()
        .ok_or_else(|| shape("$", "expected an object"))?;
    let segments = root
        .get("segments")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("segments", "expected an array of segments"))?;
    let delims = delimiters(root, segments)?;
    let charset = charset(segments, opts.default_charset);
    let writer = Writer { delims, charset };

    let mut out = Vec::with_capacity(1024);
    for (i, seg) in segments.iter().enumerate() {
        let path = format!("segments[{i}]");
        let seg = seg
            .as_object()
            .ok_or_else(|| shape(&path, "expected an object with \"id\" and \"fields\""))?;
        let id = seg
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| is_segment_id(id.as_bytes()))
            .ok_or_else(|| {
                shape(
                    &format!("{path}.id"),
                    "expected a segment ID, three characters [A-Z][A-Z0-9]{2}",
                )
            })?;
        let empty = Map::new();
        let fields = match seg.get("fields") {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(shape(
                    &format!("{path}.fields"),
                    "expected an object keyed by field number",
                ));
            }
        };
        let fields = positions(fields, &format!("{path}.fields"))?;
        out.extend_from_slice(id.as_bytes());
        let is_msh = id == "MSH";
        if is_msh {
            out.push(delims.field);
            out.extend_from_slice(delims.encoding_characters().as_bytes());
        }
        let first = if is_msh { 3 } else { 1 };
        let mut next = first;
        for (n, v, p) in fields {
            if n < first {
                continue;
            }
            for _ in next..=n {
                out.push(delims.field);
            }
            next = n + 1;
            writer.field(&mut out, v, &p)?;
        }
        out.push(b'\r');
    }
    Ok(Message::parse_with(out, opts)?)
}

fn shape(path: &str, reason: &str) -> JsonError {
    JsonError::Shape {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// The entries of a position-keyed object, sorted by position, each with its JSON path.
fn positions<'v>(
    map: &'v Map<String, Value>,
    path: &str,
) -> Result<Vec<(usize, &'v Value, String)>, JsonError> {
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let p = format!("{path}.{k}");
        let n: usize = match k.parse() {
            Ok(n) if n >= 1 && k.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(shape(&p, "keys are 1-based positions such as \"1\"")),
        };
        if n > MAX_POSITION {
            return Err(JsonError::PositionTooLarge {
                path: p,
                position: n,
                limit: MAX_POSITION,
            });
        }
        out.push((n, v, p));
    }
    out.sort_by_key(|e| e.0);
    // "1" and "01" would be the same position.
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(shape(&w[1].2, "the same position is given twice"));
    }
    Ok(out)
}

/// The delimiters from the top-level `delimiters` and/or MSH-1 + MSH-2.
fn delimiters(root: &Map<String, Value>, segments: &[Value]) -> Result<Delimiters, JsonError> {
    let top = match root.get("delimiters") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(shape(
                "delimiters",
                "expected a string such as \"|^~\\\\&\"",
            ));
        }
    };
    let msh = segments.first().and_then(|s| s.get("fields")).filter(|_| {
        segments
            .first()
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            == Some("MSH")
    });
    let msh_part = |k: &str| msh.and_then(|f| f.get(k)).and_then(Value::as_str);
    let from_msh = match (msh_part("1"), msh_part("2")) {
        (Some(a), Some(b)) => Some(format!("{a}{b}")),
        _ => None,
    };
    let text = match (top, from_msh) {
        (Some(t), Some(m)) if t != m => {
            return Err(JsonError::Delimiters {
                reason: "the top-level \"delimiters\" and MSH-1/MSH-2 differ".into(),
            });
        }
        (Some(t), _) => t,
        (None, Some(m)) => m,
        (None, None) => {
            return Err(JsonError::Delimiters {
                reason: "neither a top-level \"delimiters\" nor MSH-1 and MSH-2".into(),
            });
        }
    };
    let bytes = text.as_bytes();
    if !text.is_ascii() || bytes.len() < 3 {
        return Err(JsonError::Delimiters {
            reason: "expected the field separator then 2 to 5 encoding characters, e.g. |^~\\&"
                .into(),
        });
    }
    Delimiters::from_msh(bytes[0], &bytes[1..]).map_err(|e| JsonError::Delimiters {
        reason: e.to_string(),
    })
}

/// The character set MSH-18 (first repetition, first component) names; `default` when it is
/// empty, absent or unknown (an unknown one is then refused by the parse).
fn charset(segments: &[Value], default: Charset) -> Charset {
    let msh18 = segments
        .first()
        .filter(|s| s.get("id").and_then(Value::as_str) == Some("MSH"))
        .and_then(|s| s.get("fields"))
        .and_then(|f| f.get("18"));
    let first_text = |v: &Value| -> Option<String> {
        let mut v = v;
        loop {
            match v {
                Value::String(s) => return Some(s.clone()),
                Value::Array(a) => v = a.first()?,
                Value::Object(o) => v = o.get("1")?,
                _ => return None,
            }
        }
    };
    msh18
        .and_then(first_text)
        .and_then(|t| Charset::from_hl7(&t))
        .unwrap_or(default)
}

/// Writes values as escaped ER7 in the message's delimiters and character set.
struct Writer {
    delims: Delimiters,
    charset: Charset,
}

impl Writer {
    fn field(&self, out: &mut Vec<u8>, v: &Value, path: &str) -> Result<(), JsonError> {
        match v {
            Value::Array(reps) => {
                for (i, r) in reps.iter().enumerate() {
                    if i > 0 {
                        out.push(self.delims.repetition);
                    }
                    self.repetition(out, r, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            other => self.repetition(out, other, path),
        }
    }

    fn repetition(&self, out: &mut Vec<u8>, v: &Value, path: &str) -> Result<(), JsonError> {
        match v {
            Value::String(s) => self.text(out, s, path),
            Value::Object(comps) => {
                let mut next = 1;
                for (n, c, p) in positions(comps, path)? {
                    for _ in next..n {
                        out.push(self.delims.component);
                    }
                    next = n;
                    self.component(out, c, &p)?;
                }
                Ok(())
            }
            _ => Err(shape(path, "expected a string or an object of components")),
        }
    }

    fn component(&self, out: &mut Vec<u8>, v: &Value, path: &str) -> Result<(), JsonError> {
        match v {
            Value::String(s) => self.text(out, s, path),
            Value::Object(_) if !self.delims.has_subcomponents() => Err(shape(
                path,
                "sub-components, but MSH-2 declares no sub-component separator",
            )),
            Value::Object(subs) => {
                let mut next = 1;
                for (n, s, p) in positions(subs, path)? {
                    for _ in next..n {
                        out.push(self.delims.subcomponent);
                    }
                    next = n;
                    match s {
                        Value::String(t) => self.text(out, t, &p)?,
                        _ => return Err(shape(&p, "expected a string")),
                    }
                }
                Ok(())
            }
            _ => Err(shape(
                path,
                "expected a string or an object of sub-components",
            )),
        }
    }

    fn text(&self, out: &mut Vec<u8>, text: &str, path: &str) -> Result<(), JsonError> {
        let bytes =
            self.charset
                .encode(text)
                .map_err(|(_, character)| JsonError::NotRepresentable {
                    path: path.to_string(),
                    character,
                    charset: self.charset,
                })?;
        if escape::needs_escape_char(&bytes, &self.delims) {
            return Err(JsonError::CannotEscape {
                path: path.to_string(),
            });
        }
        out.extend_from_slice(&escape::encode(&bytes, &self.delims));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(s: &str) -> Message {
        Message::parse(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn shape_of_levels() {
        let m = msg("MSH|^~\\&|A||||||ADT^A01|1|P|2.5\rPID|1||7^^^X&Y&Z^MR~8||A\\S\\B^C^^|F~~\r");
        let j = to_json(&m);
        assert_eq!(j["delimiters"], "|^~\\&");
        let msh = &j["segments"][0]["fields"];
        assert_eq!(msh["1"], "|");
        assert_eq!(msh["2"], "^~\\&");
        assert_eq!(msh["9"], json!([{"1": "ADT", "2": "A01"}]));
        let pid = &j["segments"][1]["fields"];
        assert_eq!(pid["1"], json!(["1"]));
        assert!(pid.get("2").is_none());
        assert_eq!(
            pid["3"],
            json!([{"1": "7", "4": {"1": "X", "2": "Y", "3": "Z"}, "5": "MR"}, "8"])
        );
        // Decoded; trailing empty components dropped.
        assert_eq!(pid["5"], json!([{"1": "A^B", "2": "C"}]));
        assert_eq!(pid["6"], json!(["F", "", ""]));
    }

    #[test]
    fn written_json_is_the_value_as_text() {
        let m = msg(
            "MSH|^~\\&|A||||||ORU^R01|1|P|2.5\rOBX|1|ED|X^^L||^AP^PDF^Base64^QUJD\\T\\~x&y|F\r",
        );
        let mut out = Vec::new();
        write_json(&m, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            concat!(
                r#"{"delimiters":"|^~\\&","segments":[{"id":"MSH","fields":{"1":"|","2":"^~\\&","#,
                r#""3":["A"],"9":[{"1":"ORU","2":"R01"}],"10":["1"],"11":["P"],"12":["2.5"]}},"#,
                r#"{"id":"OBX","fields":{"1":["1"],"2":["ED"],"3":[{"1":"X","3":"L"}],"#,
                r#""5":[{"2":"AP","3":"PDF","4":"Base64","5":"QUJD&"},{"1":{"1":"x","2":"y"}}],"#,
                r#""6":["F"]}}]}"#
            )
        );
        assert_eq!(out, serde_json::to_vec(&to_json(&m)).unwrap());
    }

    #[test]
    fn json_pieces_are_the_written_text_sharing_long_values() {
        let long = "QUJD".repeat(4096);
        let text = format!(
            "MSH|^~\\&|A||||||ORU^R01|1|P|2.5\rOBX|1|ED|X^^L||^AP^PDF^Base64^{long}|F\rNTE|1||{long}\\T\\{long}\r"
        );
        let m = msg(&text);
        let mut written = Vec::new();
        write_json(&m, &mut written);
        let pieces = json_pieces(&m);
        assert_eq!(pieces.concat(), written);
        let buffer = m.encode();
        let inside = |p: &Bytes| {
            let (a, b) = (buffer.as_ptr() as usize, p.as_ptr() as usize);
            b >= a && b + p.len() <= a + buffer.len()
        };
        // The OBX value is a slice of the message; the NTE's is decoded (its escape), so
        // copied.
        let shared: Vec<usize> = pieces
            .iter()
            .filter(|p| inside(p))
            .map(Bytes::len)
            .collect();
        assert_eq!(shared, [long.len()]);
        // Short messages are one piece of copied text.
        let small = msg("MSH|^~\\&|A||||||ORU^R01|1|P|2.5\rPID|1||7\r");
        let mut written = Vec::new();
        write_json(&small, &mut written);
        assert_eq!(json_pieces(&small), [Bytes::from(written)]);
    }

    #[test]
    fn single_component_with_subcomponents_stays_an_object() {
        let m = msg("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rZZZ|a&b\r");
        let j = to_json(&m);
        assert_eq!(
            j["segments"][1]["fields"]["1"],
            json!([{"1": {"1": "a", "2": "b"}}])
        );
        assert_eq!(from_json(&j).unwrap().encode(), m.encode());
    }

    #[test]
    fn round_trip_and_normal_form() {
        let exact = "MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\rOBX|1|TX|||a\\F\\b\\.br\\c\\E\\d~~x\rZZZ\r";
        assert_eq!(
            from_json(&to_json(&msg(exact))).unwrap().encode(),
            exact.as_bytes()
        );
        // Trailing separators and non-canonical escapes are normalised.
        let m = msg("MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5|\rOBX|1|TX^|||\\X41\\&^||\r");
        let back = from_json(&to_json(&m)).unwrap();
        assert_eq!(
            &back.encode()[..],
            b"MSH|^~\\&|A|B|||||ORU^R01|1|P|2.5\rOBX|1|TX|||A\r"
        );
        assert_eq!(to_json(&back), to_json(&m));
    }

    #[test]
    fn errors_name_the_place() {
        let bad = json!({"delimiters": "|^~\\&", "segments": [{"id": "MSH", "fields": {"9": ["ADT"]}}, {"id": "PID", "fields": {"x": ["1"]}}]});
        let e = from_json(&bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "segments[1].fields.x: keys are 1-based positions such as \"1\""
        );
        let big = json!({"delimiters": "|^~\\&", "segments": [{"id": "MSH", "fields": {"9": [{"1001": "x"}]}}]});
        assert!(matches!(
            from_json(&big),
            Err(JsonError::PositionTooLarge { position: 1001, .. })
        ));
        let mismatch = json!({"delimiters": "|^~\\&", "segments": [{"id": "MSH", "fields": {"1": "#", "2": "^~\\&"}}]});
        assert!(matches!(
            from_json(&mismatch),
            Err(JsonError::Delimiters { .. })
        ));
        let ascii = json!({"segments": [{"id": "MSH", "fields": {"1": "|", "2": "^~\\&", "9": ["ADT"], "18": ["ASCII"]}}, {"id": "PID", "fields": {"5": ["é"]}}]});
        assert!(matches!(
            from_json(&ascii),
            Err(JsonError::NotRepresentable {
                character: 'é', ..
            })
        ));
        let no_escape = json!({"segments": [{"id": "MSH", "fields": {"1": "|", "2": "^~", "9": ["ADT"]}}, {"id": "PID", "fields": {"5": ["a|b"]}}]});
        assert!(matches!(
            from_json(&no_escape),
            Err(JsonError::CannotEscape { .. })
        ));
        let id = json!({"delimiters": "|^~\\&", "segments": [{"id": "MSH", "fields": {"9": ["ADT"]}}, {"id": "P|D"}]});
        assert!(matches!(from_json(&id), Err(JsonError::Shape { .. })));
        let first = json!({"delimiters": "|^~\\&", "segments": [{"id": "PID"}]});
        assert!(matches!(from_json(&first), Err(JsonError::Parse(_))));
    }

    #[test]
    fn latin1_values_convert_back() {
        let bytes = b"MSH|^~\\&|||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||||M\xFCller\r".to_vec();
        let m = Message::parse(bytes.clone()).unwrap();
        let j = to_json(&m);
        assert_eq!(j["segments"][1]["fields"]["5"], json!(["Müller"]));
        assert_eq!(&from_json(&j).unwrap().encode()[..], &bytes[..]);
    }
}
