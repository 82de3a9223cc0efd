//! HL7 acknowledgements: building the ACK (or NAK) the engine sends back for a message it
//! received, and reading the ACK a peer sends back for a message the engine delivered.
//!
//! Building: [`build_ack`] answers a parsed message, [`build_nak_for_unparsed`] answers bytes
//! that could not be parsed (salvaging what it can of their MSH). Both write the ACK with the
//! original's own delimiters and character set, swap sender and receiver, and add an ERR
//! segment in the v2.5 layout when given an [`AckError`]. Error texts are the caller's; this
//! module never copies a field value of the original into them — only header fields that
//! identify the exchange (applications, facilities, control ID, processing ID, version).
//!
//! Reading: [`ReceivedAck::parse`] is deliberately more tolerant than [`Message::parse`]: it
//! splits the few segments it needs by hand, accepts any line endings and never fails on
//! character set or segment details, because misreading a peer's AA as an error only causes a
//! retry, but failing to read it at all would retry forever.
//!
//! [`ack_mode`] / [`AckMode::of`] tell original from enhanced acknowledgement mode (MSH-15 and
//! MSH-16).

use crate::charset::Charset;
use crate::delimiters::Delimiters;
use crate::error::{ErrorCode, ErrorLocation, ParseError, printable};
use crate::escape;
use crate::message::Message;
use crate::path::Path;
use bytes::Bytes;
use std::fmt;
use std::str::FromStr;

/// An acknowledgement code (MSA-1, HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Application accept: processed.
    AA,
    /// Application error: not processed because of an error; the sender may retry.
    AE,
    /// Application reject: not processed and never will be (bad message type, version, ...).
    AR,
    /// Commit accept (enhanced mode): received and safely stored.
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl AckCode {
    /// All codes.
    pub const ALL: [AckCode; 6] = [
        AckCode::AA,
        AckCode::AE,
        AckCode::AR,
        AckCode::CA,
        AckCode::CE,
        AckCode::CR,
    ];

    /// The code as MSA-1 carries it, e.g. `"AA"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    /// AA or CA: the message was accepted.
    pub fn is_accept(&self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }

    /// AE or CE: an error; the message was not processed, a retry may succeed.
    pub fn is_error(&self) -> bool {
        matches!(self, AckCode::AE | AckCode::CE)
    }

    /// AR or CR: rejected; retrying the same message will not help.
    pub fn is_reject(&self) -> bool {
        matches!(self, AckCode::AR | AckCode::CR)
    }

    /// CA, CE or CR: an enhanced-mode commit (accept) acknowledgement.
    pub fn is_commit(&self) -> bool {
        matches!(self, AckCode::CA | AckCode::CE | AckCode::CR)
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AckCode {
    type Err = AckParseError;

    /// Reads `AA`, `AE`, `AR`, `CA`, `CE` or `CR`, ignoring surrounding spaces and ASCII case.
    fn from_str(s: &str) -> Result<AckCode, AckParseError> {
        let t = s.trim();
        AckCode::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| AckParseError::UnknownCode {
                found: printable(&t.as_bytes()[..t.len().min(8)]),
            })
    }
}

/// When a sender wants an acknowledgement in enhanced mode (MSH-15 / MSH-16, HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCondition {
    /// `AL`: always.
    Always,
    /// `NE`: never.
    Never,
    /// `ER`: only when the message was not accepted.
    Error,
    /// `SU`: only when the message was accepted.
    Success,
}

impl AckCondition {
    /// Reads an MSH-15/MSH-16 value, ignoring surrounding spaces and ASCII case. An empty or
    /// unknown value reads as [`AckCondition::Always`]: HL7 takes an empty value in enhanced
    /// mode as `AL`, and for an unknown one an acknowledgement the sender did not want is a
    /// smaller harm than one it waits for in vain.
    pub fn from_hl7(value: &str) -> AckCondition {
        match value.trim().to_ascii_uppercase().as_str() {
            "NE" => AckCondition::Never,
            "ER" => AckCondition::Error,
            "SU" => AckCondition::Success,
            _ => AckCondition::Always,
        }
    }

    /// The table 0155 code: `AL`, `NE`, `ER` or `SU`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCondition::Always => "AL",
            AckCondition::Never => "NE",
            AckCondition::Error => "ER",
            AckCondition::Success => "SU",
        }
    }

    /// Whether an acknowledgement is wanted for a message that was (`accepted == true`) or
    /// was not accepted.
    pub fn wants(&self, accepted: bool) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::Error => !accepted,
            AckCondition::Success => accepted,
        }
    }
}

/// The acknowledgement mode a message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckMode {
    /// Original mode (MSH-15 and MSH-16 both empty): one application acknowledgement,
    /// AA/AE/AR.
    Original,
    /// Enhanced mode (MSH-15 or MSH-16 valued): an accept (commit) acknowledgement CA/CE/CR
    /// when `accept` wants one, and an application acknowledgement when `application` does.
    Enhanced {
        /// MSH-15, accept acknowledgement type.
        accept: AckCondition,
        /// MSH-16, application acknowledgement type.
        application: AckCondition,
    },
}

impl AckMode {
    /// The acknowledgement mode `msg` asks for.
    ///
    /// Enhanced when MSH-15 or MSH-16 holds anything but spaces, original otherwise. In
    /// enhanced mode an empty MSH-15 or MSH-16 means [`AckCondition::Always`], as does an
    /// unknown value (see [`AckCondition::from_hl7`]).
    pub fn of(msg: &Message) -> AckMode {
        ack_mode(msg)
    }
}

/// The acknowledgement mode `msg` asks for: the same as [`AckMode::of`].
pub fn ack_mode(msg: &Message) -> AckMode {
    let get = |n: usize| msg.get(&Path::new("MSH").with_field(n)).unwrap_or_default();
    let (accept, application) = (get(15), get(16));
    if accept.trim().is_empty() && application.trim().is_empty() {
        AckMode::Original
    } else {
        AckMode::Enhanced {
            accept: AckCondition::from_hl7(&accept),
            application: AckCondition::from_hl7(&application),
        }
    }
}

/// How serious an error reported in ERR is (ERR-4, HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Severity {
    /// `E`: the message was not processed.
    #[default]
    Error,
    /// `W`: processed, with a warning.
    Warning,
    /// `I`: information only.
    Information,
}

impl Severity {
    /// The ERR-4 code: `E`, `W` or `I`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
        }
    }
}

/// An error to report in the ERR segment of an acknowledgement.
///
/// `text` goes to ERR-8 and MSA-3. It must say what was wrong without patient data: name the
/// position (`PID-7`), not the value found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// ERR-3, the table 0357 condition code.
    pub code: ErrorCode,
    /// ERR-2, where the error is, when known.
    pub location: Option<ErrorLocation>,
    /// ERR-8 (and MSA-3): a readable description, without patient data.
    pub text: String,
    /// ERR-4.
    pub severity: Severity,
}

impl AckError {
    /// An error of severity [`Severity::Error`] without location.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> AckError {
        AckError {
            code,
            location: None,
            text: text.into(),
            severity: Severity::Error,
        }
    }

    /// The error to report for a message that could not be parsed: the parse error's table
    /// 0357 code, location and message (which names positions, never data).
    pub fn from_parse_error(e: &ParseError) -> AckError {
        AckError {
            code: e.error_code(),
            location: e.location(),
            text: e.to_string(),
            severity: Severity::Error,
        }
    }
}

/// Builds the acknowledgement of `original`.
///
/// MSH: the original's MSH-1 and MSH-2 verbatim (so its delimiters, truncation character
/// included); MSH-3/4 = the original's MSH-5/6 and MSH-5/6 = its MSH-3/4, copied as ER7 so
/// components survive; MSH-7 = `timestamp`; MSH-9 = `ACK^<original trigger>^ACK` (`ACK` when
/// the original has no trigger); MSH-10 = `ack_control_id`; MSH-11, MSH-12 and MSH-18 echo the
/// original's. MSH-15/16 stay empty: acknowledgements are not acknowledged.
///
/// Then `MSA|<code>|<original MSH-10>`, plus MSA-3 = the error text when `error` is given (for
/// v2.3/2.4 receivers that read only MSA-3), and an ERR segment in the v2.5 layout: ERR-2 the
/// location (`SEG^sequence^field^^component`), ERR-3 `<code>^<table 0357 text>^HL70357`,
/// ERR-4 the severity, ERR-8 the text.
///
/// `timestamp`, `ack_control_id` and the error text are escaped with the original's
/// delimiters (or, when its MSH-2 declares no escape character, delimiters in them are
/// replaced with spaces) and converted to its character set (a character it cannot hold
/// becomes `?`). Every segment ends with `\r`; trailing empty fields are left out.
pub fn build_ack(
    original: &Message,
    code: AckCode,
    error: Option<&AckError>,
    ack_control_id: &str,
    timestamp: &str,
) -> Bytes {
    let delims = *original.delimiters();
    let msh = original.segment_at(0);
    let field = |n: usize| -> &[u8] {
        msh.as_ref()
            .and_then(|s| s.field(n))
            .map_or(&[][..], |f| f.raw())
    };
    let trigger = msh
        .as_ref()
        .and_then(|s| s.field(9))
        .and_then(|f| f.component(2))
        .map_or(&[][..], |c| c.raw());
    let header = Header {
        delims,
        msh2: field(2),
        charset: original.charset(),
        sending: [field(5), field(6)],
        receiving: [field(3), field(4)],
        trigger,
        original_control_id: field(10),
        processing_id: field(11),
        version: field(12),
        charset_field: field(18),
    };
    header.write(code, error, ack_control_id, timestamp)
}

/// Builds a negative acknowledgement for bytes that could not be parsed.
///
/// When `raw` starts with `MSH` and a usable delimiter set, the answer keeps those delimiters
/// and salvages, by plain splitting of the first segment, MSH-3..6 (swapped as in
/// [`build_ack`]), the trigger (MSH-9.2), MSH-10 (into MSA-2), MSH-11 and MSH-12. A salvaged
/// field is kept only when it is printable ASCII of at most 200 bytes, so the answer is valid
/// whatever the original's character set; anything else is left empty. Otherwise the answer
/// uses `|^~\&` and empty fields (MSA-2 empty). Texts are written as ASCII (other characters
/// become `?`) and MSH-18 is left empty.
///
/// The result always parses with [`Message::parse`] and [`ReceivedAck::parse`]; it never
/// panics, whatever `raw` holds.
pub fn build_nak_for_unparsed(
    raw: &[u8],
    code: AckCode,
    error: &AckError,
    ack_control_id: &str,
    timestamp: &str,
) -> Bytes {
    let salvaged = salvage_msh(raw);
    let (delims, msh2, fields) = match &salvaged {
        Some((d, msh2, fields)) => (*d, *msh2, fields.as_slice()),
        None => (Delimiters::default(), &b"^~\\&"[..], &[][..]),
    };
    // `fields[k]` is MSH-(k + 3): the pieces of the segment after MSH-2.
    let field = |n: usize| -> &[u8] {
        let value = fields.get(n.wrapping_sub(3)).copied().unwrap_or_default();
        if value.len() <= 200 && value.iter().all(|b| (0x20..0x7f).contains(b)) {
            value
        } else {
            &[]
        }
    };
    let trigger = field(9)
        .split(|&b| b == delims.component)
        .nth(1)
        .filter(|t| t.iter().all(u8::is_ascii_alphanumeric))
        .unwrap_or_default();
    let header = Header {
        delims,
        msh2,
        charset: Charset::Ascii,
        sending: [field(5), field(6)],
        receiving: [field(3), field(4)],
        trigger,
        original_control_id: field(10),
        processing_id: field(11),
        version: field(12),
        charset_field: &[],
    };
    header.write(code, Some(error), ack_control_id, timestamp)
}

/// What [`salvage_msh`] finds: the delimiters, MSH-2 as written, and MSH-3 onwards.
type Salvaged<'a> = (Delimiters, &'a [u8], Vec<&'a [u8]>);

/// MSH-1/MSH-2 and the pieces of the first segment, when `raw` starts with an MSH whose
/// delimiters are usable.
fn salvage_msh(raw: &[u8]) -> Option<Salvaged<'_>> {
    if !raw.starts_with(b"MSH") {
        return None;
    }
    let fs = *raw.get(3)?;
    let end = memchr::memchr2(b'\r', b'\n', raw).unwrap_or(raw.len());
    let segment = raw.get(4..end)?;
    let mut pieces = segment.split(|&b| b == fs);
    let msh2 = pieces.next()?;
    let delims = Delimiters::from_msh(fs, msh2).ok()?;
    Some((delims, msh2, pieces.collect()))
}

/// Everything an acknowledgement's MSH and MSA need, as ER7 bytes in the answer's
/// delimiters.
struct Header<'a> {
    delims: Delimiters,
    /// MSH-2, verbatim.
    msh2: &'a [u8],
    /// The character set texts are converted to.
    charset: Charset,
    /// The answer's MSH-3/4 (the original's MSH-5/6).
    sending: [&'a [u8]; 2],
    /// The answer's MSH-5/6 (the original's MSH-3/4).
    receiving: [&'a [u8]; 2],
    trigger: &'a [u8],
    original_control_id: &'a [u8],
    processing_id: &'a [u8],
    version: &'a [u8],
    /// MSH-18, verbatim (empty to leave it out).
    charset_field: &'a [u8],
}

impl Header<'_> {
    fn write(
        &self,
        code: AckCode,
        error: Option<&AckError>,
        ack_control_id: &str,
        timestamp: &str,
    ) -> Bytes {
        let d = &self.delims;
        let text = |s: &str| text_field(s, d, self.charset);
        let comp = |parts: &[&[u8]]| join(parts, d.component);

        let mut message_type = b"ACK".to_vec();
        if !self.trigger.is_empty() {
            message_type = comp(&[b"ACK", self.trigger, b"ACK"]);
        }
        let timestamp = text(timestamp);
        let control_id = text(ack_control_id);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"MSH");
        out.push(d.field);
        out.extend_from_slice(self.msh2);
        // MSH-3 .. MSH-18.
        let msh: [&[u8]; 16] = [
            self.sending[0],
            self.sending[1],
            self.receiving[0],
            self.receiving[1],
            &timestamp,
            b"",
            &message_type,
            &control_id,
            self.processing_id,
            self.version,
            b"",
            b"",
            b"",
            b"",
            b"",
            self.charset_field,
        ];
        push_fields(&mut out, &msh, d.field);

        let error_text = error.map(|e| text(&e.text)).unwrap_or_default();
        out.extend_from_slice(b"MSA");
        push_fields(
            &mut out,
            &[
                code.as_str().as_bytes(),
                self.original_control_id,
                &error_text,
            ],
            d.field,
        );

        if let Some(e) = error {
            let location = e
                .location
                .as_ref()
                .map(|l| {
                    let sequence = l.sequence.to_string();
                    let field = l.field.map(|f| f.to_string()).unwrap_or_default();
                    let component = l.component.map(|c| c.to_string()).unwrap_or_default();
                    let segment = text(&l.segment);
                    trim_join(
                        &[
                            &segment,
                            sequence.as_bytes(),
                            field.as_bytes(),
                            b"",
                            component.as_bytes(),
                        ],
                        d.component,
                    )
                })
                .unwrap_or_default();
            let number = e.code.code().to_string();
            let condition = comp(&[number.as_bytes(), &text(e.code.text()), b"HL70357"]);
            out.extend_from_slice(b"ERR");
            push_fields(
                &mut out,
                &[
                    b"",
                    &location,
                    &condition,
                    e.severity.as_str().as_bytes(),
                    b"",
                    b"",
                    b"",
                    &error_text,
                ],
                d.field,
            );
        }
        Bytes::from(out)
    }
}

/// Appends `fs field` for each field up to the last non-empty one, then `\r`.
fn push_fields(out: &mut Vec<u8>, fields: &[&[u8]], fs: u8) {
    let used = fields
        .iter()
        .rposition(|f| !f.is_empty())
        .map_or(0, |k| k + 1);
    for f in &fields[..used] {
        out.push(fs);
        out.extend_from_slice(f);
    }
    out.push(b'\r');
}

fn join(parts: &[&[u8]], sep: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.extend_from_slice(p);
    }
    out
}

/// [`join`] without the trailing empty parts.
fn trim_join(parts: &[&[u8]], sep: u8) -> Vec<u8> {
    let used = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |k| k + 1);
    join(&parts[..used], sep)
}

/// Text for a leaf of the answer: in `charset` (characters it cannot hold become `?`), then
/// escaped; without an escape character, separators and line breaks become spaces.
fn text_field(text: &str, d: &Delimiters, charset: Charset) -> Vec<u8> {
    let bytes: Vec<u8> = match charset.encode(text) {
        Ok(b) => b.into_owned(),
        Err(_) => {
            let mut out = Vec::with_capacity(text.len());
            let mut buf = [0u8; 4];
            for c in text.chars() {
                match charset.encode(c.encode_utf8(&mut buf)) {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => out.push(b'?'),
                }
            }
            out
        }
    };
    if d.escape.is_some() {
        return escape::encode(&bytes, d).into_owned();
    }
    bytes
        .into_iter()
        .map(|b| {
            if d.is_separator(b) || b == b'\r' || b == b'\n' || Some(b) == d.truncation {
                b' '
            } else {
                b
            }
        })
        .collect()
}

/// Why bytes received as an acknowledgement could not be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckParseError {
    /// The bytes are not an HL7 v2 message.
    #[error("not an HL7 message: {reason}")]
    NotHl7 {
        /// What is wrong.
        reason: String,
    },
    /// An HL7 message without MSA segment: not an acknowledgement.
    #[error("no MSA segment: the reply is not an acknowledgement")]
    MissingMsa,
    /// MSA-1 holds something other than AA, AE, AR, CA, CE or CR.
    #[error("unknown acknowledgement code {found:?} in MSA-1 (expected AA, AE, AR, CA, CE or CR)")]
    UnknownCode {
        /// What MSA-1 holds (at most 8 bytes, non-printable ones escaped).
        found: String,
    },
}

/// An acknowledgement received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedAck {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-2, the control ID of the message acknowledged (decoded).
    pub control_id: String,
    /// MSA-3, the text message, when valued (decoded).
    pub text: Option<String>,
    /// A readable text per ERR segment (and per ERR-1 repetition in the v2.3/2.4 layout): ERR-8
    /// when valued, else ERR-3.2 (the condition's text), else ERR-1 (its error code text, or
    /// the field as written).
    pub errors: Vec<String>,
}

impl ReceivedAck {
    /// Reads an acknowledgement.
    ///
    /// Tolerant: segments may end with `\r`, `\n` or `\r\n`, blank lines and leading spaces or
    /// line breaks are skipped, and the character set is taken from MSH-18 when it names
    /// ISO-8859-1, else UTF-8 with invalid bytes replaced. Errors (`AckParseError`): `NotHl7`
    /// (no MSH with usable delimiters first), `MissingMsa`, `UnknownCode` (MSA-1).
    pub fn parse(bytes: &[u8]) -> Result<ReceivedAck, AckParseError> {
        let start = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(bytes.len());
        let bytes = &bytes[start..];
        if bytes.is_empty() {
            return Err(AckParseError::NotHl7 {
                reason: "empty".into(),
            });
        }
        if !bytes.starts_with(b"MSH") {
            return Err(AckParseError::NotHl7 {
                reason: format!(
                    "it starts with {:?}, not MSH",
                    printable(&bytes[..bytes.len().min(3)])
                ),
            });
        }
        let mut segments = bytes
            .split(|&b| b == b'\r' || b == b'\n')
            .filter(|s| !s.is_empty());
        let msh = segments.next().unwrap_or_default();
        let Some(&fs) = msh.get(3) else {
            return Err(AckParseError::NotHl7 {
                reason: "MSH ends before its delimiters".into(),
            });
        };
        let mut msh_fields = msh[3..].split(|&b| b == fs).skip(1);
        let msh2 = msh_fields.next().unwrap_or_default();
        let delims = Delimiters::from_msh(fs, msh2).map_err(|e| AckParseError::NotHl7 {
            reason: e.to_string(),
        })?;
        // MSH-18 is the 16th piece after MSH-2.
        let latin1 = msh_fields
            .nth(15)
            .and_then(|f| f.split(|&b| b == delims.repetition).next())
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(Charset::from_hl7)
            == Some(Charset::Latin1);
        let reader = Reader { delims, latin1 };

        let mut msa: Option<Vec<&[u8]>> = None;
        let mut errors = Vec::new();
        for seg in segments {
            let fields: Vec<&[u8]> = seg.split(|&b| b == fs).collect();
            match fields[0] {
                b"MSA" if msa.is_none() => msa = Some(fields),
                b"ERR" => errors.extend(reader.err_texts(&fields)),
                _ => {}
            }
        }
        let msa = msa.ok_or(AckParseError::MissingMsa)?;
        let field = |n: usize| msa.get(n).copied().unwrap_or_default();
        let code: AckCode = reader.text(field(1)).parse()?;
        let text = Some(reader.text(field(3))).filter(|t| !t.is_empty());
        Ok(ReceivedAck {
            code,
            control_id: reader.text(field(2)),
            text,
            errors,
        })
    }
}

/// Decodes the pieces of a received acknowledgement.
struct Reader {
    delims: Delimiters,
    latin1: bool,
}

impl Reader {
    fn text(&self, raw: &[u8]) -> String {
        let decoded = escape::decode(raw, &self.delims);
        if self.latin1 {
            decoded.iter().map(|&b| char::from(b)).collect()
        } else {
            String::from_utf8_lossy(&decoded).into_owned()
        }
    }

    fn split<'b>(&self, raw: &'b [u8], sep: u8) -> Vec<&'b [u8]> {
        raw.split(|&b| b == sep).collect()
    }

    /// Component `c`, sub-component `s` (1-based) of one repetition.
    fn part(&self, repetition: &[u8], c: usize, s: usize) -> String {
        let d = &self.delims;
        let component = self
            .split(repetition, d.component)
            .get(c - 1)
            .copied()
            .unwrap_or_default();
        let sub = if d.has_subcomponents() {
            self.split(component, d.subcomponent)
                .get(s - 1)
                .copied()
                .unwrap_or_default()
        } else if s == 1 {
            component
        } else {
            &[]
        };
        self.text(sub)
    }

    /// The readable texts of one ERR segment (split on the field separator).
    fn err_texts(&self, fields: &[&[u8]]) -> Vec<String> {
        let field = |n: usize| fields.get(n).copied().unwrap_or_default();
        let d = &self.delims;
        let user = self.text(field(8));
        if !user.trim().is_empty() {
            return vec![user];
        }
        let condition = self.part(field(3), 2, 1);
        if !condition.trim().is_empty() {
            return vec![condition];
        }
        // v2.3/2.4: ERR-1 is a repeating ELD, segment^sequence^field^code(CE).
        self.split(field(1), d.repetition)
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let text = self.part(r, 4, 2);
                if !text.trim().is_empty() {
                    return text;
                }
                let code = self.part(r, 4, 1);
                if !code.trim().is_empty() {
                    return code;
                }
                self.text(r)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        for c in AckCode::ALL {
            assert_eq!(c.as_str().parse::<AckCode>().unwrap(), c);
            assert_eq!(
                [c.is_accept(), c.is_error(), c.is_reject()]
                    .iter()
                    .filter(|&&b| b)
                    .count(),
                1
            );
        }
        assert_eq!(" ca ".parse::<AckCode>().unwrap(), AckCode::CA);
        assert!(AckCode::CR.is_commit() && !AckCode::AR.is_commit());
        let e = "XX".parse::<AckCode>().unwrap_err();
        assert!(e.to_string().contains("\"XX\""), "{e}");
    }

    #[test]
    fn conditions() {
        assert_eq!(AckCondition::from_hl7("AL"), AckCondition::Always);
        assert_eq!(AckCondition::from_hl7(" ne "), AckCondition::Never);
        assert_eq!(AckCondition::from_hl7("ER"), AckCondition::Error);
        assert_eq!(AckCondition::from_hl7("SU"), AckCondition::Success);
        assert_eq!(AckCondition::from_hl7(""), AckCondition::Always);
        assert_eq!(AckCondition::from_hl7("??"), AckCondition::Always);
        assert!(AckCondition::Error.wants(false) && !AckCondition::Error.wants(true));
        assert!(AckCondition::Success.wants(true) && !AckCondition::Success.wants(false));
        assert!(!AckCondition::Never.wants(false) && AckCondition::Always.wants(true));
    }

    #[test]
    fn text_without_escape_character() {
        let d = Delimiters::from_msh(b'|', b"^~").unwrap();
        assert_eq!(text_field("a|b^c\r", &d, Charset::Utf8), b"a b c ");
        assert_eq!(text_field("é€", &d, Charset::Latin1), b"\xE9?");
        assert_eq!(
            text_field("a|b\n", &Delimiters::default(), Charset::Ascii),
            b"a\\F\\b\\.br\\"
        );
    }

    #[test]
    fn salvage_is_defensive() {
        assert!(salvage_msh(b"MSH").is_none());
        assert!(salvage_msh(b"MSH|").is_none());
        assert!(salvage_msh(b"MSH|^").is_none());
        assert!(salvage_msh(b"MSHA^~\\&").is_none());
        let (d, msh2, fields) = salvage_msh(b"MSH#!@$%#A#B\rPID").unwrap();
        assert_eq!(d.field, b'#');
        assert_eq!(msh2, b"!@$%");
        assert_eq!(fields, [&b"A"[..], b"B"]);
    }
}
