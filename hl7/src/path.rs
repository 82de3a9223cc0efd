//! Paths into a message — `PID-5.1`, `PID-3[2].1`, `OBX[3]-5`, `PID-5.1.2` — the one syntax
//! shared by the engine's config, the Rhai API and the plugin SDK.
//!
//! Numbering is HL7's: everything is 1-based, and MSH-1 is the field separator itself.
//! `PID.5.1` (dots only, as some other tools write it) is accepted as an alias of `PID-5.1`;
//! [`Path`]'s `Display` always writes the canonical form.

use std::fmt;
use std::str::FromStr;

/// A location in a message, from a whole segment down to one sub-component.
///
/// Semantics when reading and editing:
/// - no `occurrence`: the first segment with that ID;
/// - no `field`: the whole segment;
/// - a `field` but no `repetition`, and no `component`: the whole field, all repetitions;
/// - no `repetition` but a `component`: the component of the first repetition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// Segment ID, e.g. `PID`.
    pub segment: String,
    /// 1-based occurrence of the segment (`OBX[3]`); `None` means the first.
    pub occurrence: Option<usize>,
    /// 1-based field number (HL7 numbering: MSH-1 is the field separator).
    pub field: Option<usize>,
    /// 1-based repetition of the field (`PID-3[2]`).
    pub repetition: Option<usize>,
    /// 1-based component.
    pub component: Option<usize>,
    /// 1-based sub-component.
    pub subcomponent: Option<usize>,
}

/// Why a path string could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?} at column {column}: {reason}")]
pub struct PathError {
    /// The path as given (cut to 64 characters).
    pub path: String,
    /// 1-based character position of the problem.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

impl Path {
    /// A path to the first segment with this ID. Combine with the `with_*` methods.
    pub fn new(segment: &str) -> Path {
        Path {
            segment: segment.to_string(),
            occurrence: None,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
        }
    }

    /// This path with the segment occurrence set (1-based).
    pub fn with_occurrence(mut self, occurrence: usize) -> Path {
        self.occurrence = Some(occurrence);
        self
    }

    /// This path with the field set (1-based).
    pub fn with_field(mut self, field: usize) -> Path {
        self.field = Some(field);
        self
    }

    /// This path with the repetition set (1-based).
    pub fn with_repetition(mut self, repetition: usize) -> Path {
        self.repetition = Some(repetition);
        self
    }

    /// This path with the component set (1-based).
    pub fn with_component(mut self, component: usize) -> Path {
        self.component = Some(component);
        self
    }

    /// This path with the sub-component set (1-based).
    pub fn with_subcomponent(mut self, subcomponent: usize) -> Path {
        self.subcomponent = Some(subcomponent);
        self
    }

    /// Reads a path: `SEG[occ]-field[rep].component.subcomponent`, every part after the segment
    /// ID optional from the right; `.` may stand for `-`.
    pub fn parse(s: &str) -> Result<Path, PathError> {
        Parser { s, i: 0 }.path()
    }

    /// Checks a path built by hand: a valid segment ID, no index 0, and no lower level without
    /// the levels above it (a component needs a field, a sub-component a component).
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if !is_segment_id(self.segment.as_bytes()) {
            return Err("the segment ID must be three characters [A-Z][A-Z0-9]{2}");
        }
        let all = [
            self.occurrence,
            self.field,
            self.repetition,
            self.component,
            self.subcomponent,
        ];
        if all.contains(&Some(0)) {
            return Err("indices are 1-based; 0 is not a valid index");
        }
        if self.field.is_none() && (self.repetition.is_some() || self.component.is_some()) {
            return Err("a repetition or component needs a field");
        }
        if self.component.is_none() && self.subcomponent.is_some() {
            return Err("a sub-component needs a component");
        }
        Ok(())
    }

    /// 1-based occurrence, defaulting to the first.
    pub(crate) fn occurrence_or_first(&self) -> usize {
        self.occurrence.unwrap_or(1)
    }
}

/// Whether `id` is a segment ID: `[A-Z][A-Z0-9]{2}`.
pub(crate) fn is_segment_id(id: &[u8]) -> bool {
    matches!(id, [a, b, c] if a.is_ascii_uppercase()
        && (b.is_ascii_uppercase() || b.is_ascii_digit())
        && (c.is_ascii_uppercase() || c.is_ascii_digit()))
}

struct Parser<'a> {
    s: &'a str,
    /// Byte position; only ever advanced over ASCII, so always a char boundary.
    i: usize,
}

impl Parser<'_> {
    fn err(&self, at: usize, reason: impl Into<String>) -> PathError {
        let column = self.s.get(..at).map_or(at, |p| p.chars().count()) + 1;
        PathError {
            path: self.s.chars().take(64).collect(),
            column,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn path(mut self) -> Result<Path, PathError> {
        if self.s.is_empty() {
            return Err(self.err(0, "empty path"));
        }
        let bytes = self.s.as_bytes();
        let id_len = bytes
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if id_len == 0 {
            return Err(self.err(0, "missing segment ID (e.g. PID) at the start of the path"));
        }
        let id = &bytes[..id_len];
        if !is_segment_id(id) {
            let reason = if id.iter().any(u8::is_ascii_lowercase) && id.len() == 3 {
                "segment IDs are upper case, e.g. PID"
            } else {
                "the segment ID must be three characters [A-Z][A-Z0-9]{2}, e.g. PID"
            };
            return Err(self.err(0, reason));
        }
        let mut path = Path::new(&self.s[..id_len]);
        self.i = id_len;
        path.occurrence = self.bracket("segment occurrence")?;
        match self.peek() {
            None => return Ok(path),
            Some(b'-' | b'.') => self.i += 1,
            Some(_) => {
                return Err(self
                    .unexpected("'-' (or '.') before the field number, or '[' for an occurrence"));
            }
        }
        path.field = Some(self.number("field number")?);
        path.repetition = self.bracket("repetition")?;
        match self.peek() {
            None => return Ok(path),
            Some(b'.') => self.i += 1,
            Some(_) => {
                return Err(
                    self.unexpected("'.' before the component number, or '[' for a repetition")
                );
            }
        }
        path.component = Some(self.number("component number")?);
        match self.peek() {
            None => return Ok(path),
            Some(b'.') => self.i += 1,
            Some(_) => return Err(self.unexpected("'.' before the sub-component number")),
        }
        path.subcomponent = Some(self.number("sub-component number")?);
        match self.peek() {
            None => Ok(path),
            Some(_) => Err(self.unexpected("the end of the path after the sub-component")),
        }
    }

    fn unexpected(&self, expected: &str) -> PathError {
        let found = self
            .s
            .get(self.i..)
            .and_then(|r| r.chars().next())
            .unwrap_or(' ');
        self.err(self.i, format!("unexpected {found:?}, expected {expected}"))
    }

    /// An optional `[n]`.
    fn bracket(&mut self, what: &str) -> Result<Option<usize>, PathError> {
        if self.peek() != Some(b'[') {
            return Ok(None);
        }
        self.i += 1;
        let n = self.number(what)?;
        if self.peek() != Some(b']') {
            return Err(self.unexpected("']'"));
        }
        self.i += 1;
        Ok(Some(n))
    }

    fn number(&mut self, what: &str) -> Result<usize, PathError> {
        let start = self.i;
        let digits = self.s.as_bytes()[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(self.err(start, format!("expected a {what}")));
        }
        self.i = start + digits;
        let n: usize = self.s[start..self.i]
            .parse()
            .map_err(|_| self.err(start, format!("{what} is too large")))?;
        if n == 0 {
            return Err(self.err(
                start,
                format!("{what} must be 1 or more (HL7 counts from 1)"),
            ));
        }
        Ok(n)
    }
}

impl FromStr for Path {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Path, PathError> {
        Path::parse(s)
    }
}

impl fmt::Display for Path {
    /// The canonical form: `PID`, `OBX[3]`, `PID-3`, `PID-3[2].1`, `OBX[3]-5`, `PID-5.1.2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if let Some(o) = self.occurrence {
            write!(f, "[{o}]")?;
        }
        if let Some(n) = self.field {
            write!(f, "-{n}")?;
        }
        if let Some(r) = self.repetition {
            write!(f, "[{r}]")?;
        }
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        if let Some(s) = self.subcomponent {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Path {
        Path::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn all_forms() {
        assert_eq!(
            p("PID-5.1"),
            Path::new("PID").with_field(5).with_component(1)
        );
        assert_eq!(p("PID.5.1"), p("PID-5.1"));
        assert_eq!(p("PID.5"), p("PID-5"));
        assert_eq!(
            p("PID-3[2].1"),
            Path::new("PID")
                .with_field(3)
                .with_repetition(2)
                .with_component(1)
        );
        assert_eq!(
            p("OBX[3]-5"),
            Path::new("OBX").with_occurrence(3).with_field(5)
        );
        assert_eq!(p("OBX[3].5"), p("OBX[3]-5"));
        assert_eq!(
            p("PID-5.1.2"),
            Path::new("PID")
                .with_field(5)
                .with_component(1)
                .with_subcomponent(2)
        );
        assert_eq!(p("MSH-9"), Path::new("MSH").with_field(9));
        assert_eq!(p("OBX[2]"), Path::new("OBX").with_occurrence(2));
        assert_eq!(p("ZX1"), Path::new("ZX1"));
        assert_eq!(
            p("PID-3[2]"),
            Path::new("PID").with_field(3).with_repetition(2)
        );
        assert_eq!("PID-3[2].1".parse::<Path>().unwrap(), p("PID-3[2].1"));
    }

    #[test]
    fn display_is_canonical() {
        for s in [
            "PID-3[2].1",
            "OBX[3]-5",
            "PID-5.1.2",
            "MSH-9",
            "OBX[2]",
            "PID",
            "NK1[2]-3[4].5.6",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("PID.5.1").to_string(), "PID-5.1");
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("", 1, "empty"),
            ("-5", 1, "missing segment"),
            ("PI-5", 1, "three characters"),
            ("PIDX-5", 1, "three characters"),
            ("pid-5", 1, "upper case"),
            ("PID-0", 5, "1 or more"),
            ("PID-5.0", 7, "1 or more"),
            ("PID-3[0]", 7, "1 or more"),
            ("OBX[0]-5", 5, "1 or more"),
            ("PID-", 5, "expected a field number"),
            ("PID-x", 5, "expected a field number"),
            ("PID-5.", 7, "expected a component number"),
            ("PID-5.1.2.3", 10, "end of the path"),
            ("PID-3[2", 8, "']'"),
            ("PID 5", 4, "unexpected ' '"),
            ("PID-5x", 6, "unexpected 'x'"),
            ("PID-99999999999999999999999", 5, "too large"),
            ("PID-5.é", 7, "expected a component number"),
        ];
        for (s, column, needle) in cases {
            let e = Path::parse(s).expect_err(s);
            assert_eq!(e.column, column, "{s}: {e}");
            assert!(e.to_string().contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn check_hand_built() {
        assert!(p("PID-3[2].1.1").check().is_ok());
        assert!(Path::new("pid").check().is_err());
        assert!(Path::new("PID").with_field(0).check().is_err());
        assert!(Path::new("PID").with_component(1).check().is_err());
        assert!(
            Path::new("PID")
                .with_field(1)
                .with_subcomponent(1)
                .check()
                .is_err()
        );
    }
}
