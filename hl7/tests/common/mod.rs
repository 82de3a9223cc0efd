//! Shared by the integration tests: the example messages, and proptest generators of valid
//! ER7 messages (random segments, fields, repetitions, components, sub-components and escape
//! sequences, with random delimiter sets) kept as a structure so that tests can compare what
//! the parsers read with what was generated.
#![allow(dead_code)]

use bytes::Bytes;
use proptest::prelude::*;
use std::path::PathBuf;

/// The example messages under `examples/messages`, by file name.
pub fn examples() -> Vec<(String, Bytes)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/messages");
    let mut out: Vec<(String, Bytes)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, Bytes::from(std::fs::read(&p).unwrap()))
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 4,
        "example messages not found in {}",
        dir.display()
    );
    out
}

/// Proptest settings shared by the suites: modest case counts (`PROPTEST_CASES` overrides
/// them for a deeper run), no regression files.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A delimiter set, as characters.
#[derive(Debug, Clone)]
pub struct Delims {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    pub truncation: Option<char>,
}

impl Delims {
    pub fn standard() -> Delims {
        Delims {
            field: '|',
            component: '^',
            repetition: '~',
            escape: '\\',
            subcomponent: '&',
            truncation: None,
        }
    }

    /// MSH-2.
    pub fn encoding(&self) -> String {
        let mut s: String = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .into_iter()
        .collect();
        s.extend(self.truncation);
        s
    }

    pub fn all(&self) -> Vec<char> {
        let mut v = vec![
            self.field,
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ];
        v.extend(self.truncation);
        v
    }

    /// The crate's own type for the same set.
    pub fn to_courier(&self) -> courier_hl7::Delimiters {
        courier_hl7::Delimiters::from_msh(self.field as u8, self.encoding().as_bytes()).unwrap()
    }
}

/// Characters delimiters are drawn from.
const PUNCT: &[char] = &[
    '|', '^', '~', '\\', '&', '#', '!', '@', '$', '%', '*', '+', ':', ';', ',', '/', '?', '=', '{',
    '}', '[', ']', '<', '>', '`', '\'', '"', '_',
];

/// A random delimiter set: 5 distinct punctuation characters, sometimes a truncation
/// character (when `truncation`); the standard set half of the time.
pub fn delims(truncation: bool) -> impl Strategy<Value = Delims> {
    let random = proptest::sample::subsequence(PUNCT.to_vec(), 6)
        .prop_shuffle()
        .prop_map(move |v| Delims {
            field: v[0],
            component: v[1],
            repetition: v[2],
            escape: v[3],
            subcomponent: v[4],
            truncation: truncation.then_some(v[5]),
        });
    prop_oneof![Just(Delims::standard()), random]
}

/// Which escape sequences leaf text may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// Only the delimiter escapes `F S T R E`, and ASCII text: what every parser reads alike.
    Simple,
    /// Sequences that decode and re-encode to themselves: delimiters, `\P\`, `\.br\`,
    /// `\X0D\`, a kept formatting sequence `\H\`; any text.
    Canonical,
    /// Canonical ones plus non-canonical `\X41\` and lower-case hex.
    Any,
}

/// The raw ER7 text of one leaf (sub-component), in `d`.
pub fn leaf(d: &Delims, escapes: Escapes) -> BoxedStrategy<String> {
    let reserved = d.all();
    let mut plain: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain([' ', '.', '-', '"'])
        .chain(PUNCT.iter().copied())
        .filter(|c| !reserved.contains(c))
        .collect();
    if escapes != Escapes::Simple {
        plain.extend(['é', 'ß', '漢', '\u{1F600}']);
    }
    let e = d.escape;
    let mut seqs: Vec<String> = ["F", "S", "T", "R", "E"]
        .iter()
        .map(|s| format!("{e}{s}{e}"))
        .collect();
    if escapes != Escapes::Simple {
        seqs.extend(
            [".br", "X0D", "H", "N"]
                .iter()
                .map(|s| format!("{e}{s}{e}")),
        );
        if d.truncation.is_some() {
            seqs.push(format!("{e}P{e}"));
        }
    }
    if escapes == Escapes::Any {
        seqs.extend(
            ["X41", "X4a4B", "XC3A9"]
                .iter()
                .map(|s| format!("{e}{s}{e}")),
        );
    }
    let token = prop_oneof![
        4 => proptest::sample::select(plain).prop_map(String::from),
        1 => proptest::sample::select(seqs),
    ];
    prop_oneof![
        1 => Just(String::new()),
        3 => proptest::collection::vec(token, 1..6).prop_map(|v| v.concat()),
    ]
    .boxed()
}

/// field → repetitions → components → sub-components → raw leaf text.
pub type Field = Vec<Vec<Vec<String>>>;

/// A generated segment: its ID and fields (for MSH, from MSH-3).
#[derive(Debug, Clone)]
pub struct Seg {
    pub id: String,
    pub fields: Vec<Field>,
}

/// A generated message.
#[derive(Debug, Clone)]
pub struct Gen {
    pub delims: Delims,
    /// `segments[0]` is MSH, its fields starting at MSH-3.
    pub segments: Vec<Seg>,
}

fn field(d: &Delims, escapes: Escapes) -> impl Strategy<Value = Field> + use<> {
    let sub = proptest::collection::vec(leaf(d, escapes), 1..3);
    let comp = proptest::collection::vec(sub, 1..4);
    proptest::collection::vec(comp, 1..3)
}

/// A segment ID that may stand inside a message: not MSH, and not a batch envelope segment.
fn segment_id() -> impl Strategy<Value = String> {
    "[A-Z][A-Z0-9]{2}".prop_filter("a message body segment", |s| {
        !["MSH", "FHS", "FTS", "BHS", "BTS"].contains(&s.as_str())
    })
}

/// A valid message in a random delimiter set.
pub fn message(escapes: Escapes, truncation: bool) -> impl Strategy<Value = Gen> {
    delims(truncation).prop_flat_map(move |d| {
        let msh_fields = proptest::collection::vec(field(&d, escapes), 6);
        let seg = (
            segment_id(),
            proptest::collection::vec(field(&d, escapes), 0..8),
        )
            .prop_map(|(id, fields)| Seg { id, fields });
        let segs = proptest::collection::vec(seg, 1..6);
        (Just(d), msh_fields, segs).prop_map(|(d, mut msh, segs)| {
            let text = |s: &str| vec![vec![vec![s.to_string()]]];
            msh.push(vec![vec![vec!["ADT".into()], vec!["A01".into()]]]);
            msh.push(text("CTRL1"));
            msh.push(text("P"));
            msh.push(text("2.5"));
            let mut segments = vec![Seg {
                id: "MSH".into(),
                fields: msh,
            }];
            segments.extend(segs);
            Gen {
                delims: d,
                segments,
            }
        })
    })
}

impl Gen {
    /// The ER7 text, every segment ending with `\r`.
    pub fn render(&self) -> String {
        let d = &self.delims;
        let mut out = String::new();
        for (i, seg) in self.segments.iter().enumerate() {
            out.push_str(&seg.id);
            if i == 0 {
                out.push(d.field);
                out.push_str(&d.encoding());
            }
            for f in &seg.fields {
                out.push(d.field);
                out.push_str(&render_field(f, d));
            }
            out.push('\r');
        }
        out
    }

    /// The message in the normal form of the JSON round trip: no trailing empty
    /// sub-components, components or fields, and a field holding one empty repetition is
    /// empty.
    pub fn normalised(&self) -> Gen {
        let mut g = self.clone();
        for seg in &mut g.segments {
            for f in &mut seg.fields {
                for rep in f.iter_mut() {
                    for comp in rep.iter_mut() {
                        trim(comp, |s| s.is_empty());
                    }
                    trim(rep, |c| c.iter().all(String::is_empty));
                }
                if f.len() == 1 && f[0].is_empty() {
                    f.clear();
                }
            }
            trim(&mut seg.fields, |f| {
                f.iter().all(|r| r.is_empty()) && f.len() <= 1
            });
        }
        g
    }

    /// The 1-based field number of `fields[k]` of segment `i` (MSH fields start at 3).
    pub fn field_number(&self, i: usize, k: usize) -> usize {
        if i == 0 { k + 3 } else { k + 1 }
    }
}

fn trim<T>(v: &mut Vec<T>, empty: impl Fn(&T) -> bool) {
    while v.last().is_some_and(&empty) {
        v.pop();
    }
}

pub fn render_field(f: &Field, d: &Delims) -> String {
    f.iter()
        .map(|rep| {
            rep.iter()
                .map(|comp| comp.join(&d.subcomponent.to_string()))
                .collect::<Vec<_>>()
                .join(&d.component.to_string())
        })
        .collect::<Vec<_>>()
        .join(&d.repetition.to_string())
}

/// Whether every escape sequence in `raw` is one of `F S T R E` (which all parsers decode
/// alike), and `raw` is ASCII.
pub fn simple_escapes(raw: &str, escape: char) -> bool {
    if !raw.is_ascii() {
        return false;
    }
    let parts: Vec<&str> = raw.split(escape).collect();
    if parts.len().is_multiple_of(2) {
        return false;
    }
    parts
        .iter()
        .skip(1)
        .step_by(2)
        .all(|s| matches!(*s, "F" | "S" | "T" | "R" | "E"))
}
