//! The delimiters of one message, read from MSH-1 (field separator) and MSH-2 (encoding
//! characters).
//!
//! Every other part of the crate splits, escapes and re-encodes with the delimiters of the
//! message at hand, never with hard-wired `|^~\&`: an edited message keeps the sender's own
//! delimiters.

use crate::error::ParseError;

/// The separators and escape character declared by a message's MSH-1 and MSH-2.
///
/// MSH-2 lists, in order: component separator, repetition separator, escape character,
/// sub-component separator and (from v2.7) the truncation character. A message may declare
/// fewer: without the third character there is no escape character (`escape` is `None`, and
/// nothing is escaped or unescaped); without the fourth there is no sub-component separator,
/// which this type records as `subcomponent == component` (a component never contains its own
/// separator, so it is then never split further — see [`Delimiters::has_subcomponents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: u8,
    /// Component separator (MSH-2, 1st character), usually `^`.
    pub component: u8,
    /// Repetition separator (MSH-2, 2nd character), usually `~`.
    pub repetition: u8,
    /// Escape character (MSH-2, 3rd character), usually `\`; `None` when MSH-2 is shorter.
    pub escape: Option<u8>,
    /// Sub-component separator (MSH-2, 4th character), usually `&`. Equal to `component` when
    /// MSH-2 declares none.
    pub subcomponent: u8,
    /// Truncation character (MSH-2, 5th character, HL7 v2.7+), usually `#`.
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    /// `|^~\&`, no truncation character: what nearly every sender uses.
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: Some(b'\\'),
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// Reads the delimiters from MSH-1 (`field`) and the bytes of MSH-2.
    ///
    /// MSH-2 must hold 2 to 5 characters. Every delimiter must be a printable ASCII character
    /// that is neither a letter, a digit nor a space, and all must differ from each other:
    /// anything else could not be told apart from data.
    pub fn from_msh(field: u8, msh2: &[u8]) -> Result<Delimiters, ParseError> {
        if msh2.len() < 2 || msh2.len() > 5 {
            return Err(ParseError::InvalidDelimiters {
                reason: format!(
                    "MSH-2 (encoding characters) must hold 2 to 5 characters, found {}",
                    msh2.len()
                ),
            });
        }
        let mut all = [0u8; 6];
        all[0] = field;
        for (slot, &b) in all[1..].iter_mut().zip(msh2) {
            *slot = b;
        }
        let all = &all[..=msh2.len()];
        for (i, &b) in all.iter().enumerate() {
            if !is_valid_delimiter(b) {
                return Err(ParseError::InvalidDelimiters {
                    reason: format!(
                        "{} is {}, which cannot be a delimiter (printable ASCII punctuation only)",
                        DELIMITER_NAMES.get(i).copied().unwrap_or("a delimiter"),
                        crate::error::printable(&[b])
                    ),
                });
            }
            if all[..i].contains(&b) {
                return Err(ParseError::InvalidDelimiters {
                    reason: format!(
                        "{} repeats the character '{}' already used by another delimiter",
                        DELIMITER_NAMES.get(i).copied().unwrap_or("a delimiter"),
                        b as char
                    ),
                });
            }
        }
        let component = msh2.first().copied().unwrap_or(b'^');
        Ok(Delimiters {
            field,
            component,
            repetition: msh2.get(1).copied().unwrap_or(b'~'),
            escape: msh2.get(2).copied(),
            subcomponent: msh2.get(3).copied().unwrap_or(component),
            truncation: msh2.get(4).copied(),
        })
    }

    /// Whether a sub-component separator is declared (MSH-2 has at least 4 characters).
    pub fn has_subcomponents(&self) -> bool {
        self.subcomponent != self.component
    }

    /// MSH-2 as this message declares it, e.g. `^~\&` or `^~\&#`: what an ACK built for this
    /// message must echo.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(self.component as char);
        s.push(self.repetition as char);
        if let Some(e) = self.escape {
            s.push(e as char);
            if self.has_subcomponents() {
                s.push(self.subcomponent as char);
                if let Some(t) = self.truncation {
                    s.push(t as char);
                }
            }
        }
        s
    }

    /// Whether `b` is one of the structural separators (field, component, repetition,
    /// sub-component) — the bytes that split data.
    pub(crate) fn is_separator(&self, b: u8) -> bool {
        b == self.field || b == self.component || b == self.repetition || b == self.subcomponent
    }
}

/// Names used in error messages, index 0 = MSH-1, then MSH-2 by position.
const DELIMITER_NAMES: [&str; 6] = [
    "the field separator (MSH-1)",
    "the component separator (MSH-2.1)",
    "the repetition separator (MSH-2.2)",
    "the escape character (MSH-2.3)",
    "the sub-component separator (MSH-2.4)",
    "the truncation character (MSH-2.5)",
];

fn is_valid_delimiter(b: u8) -> bool {
    b.is_ascii_graphic() && !b.is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_delimiters() {
        let d = Delimiters::from_msh(b'|', b"^~\\&").unwrap();
        assert_eq!(d, Delimiters::default());
        assert_eq!(d.encoding_characters(), "^~\\&");
        assert!(d.has_subcomponents());
    }

    #[test]
    fn truncation_character() {
        let d = Delimiters::from_msh(b'|', b"^~\\&#").unwrap();
        assert_eq!(d.truncation, Some(b'#'));
        assert_eq!(d.encoding_characters(), "^~\\&#");
    }

    #[test]
    fn short_msh2() {
        let d = Delimiters::from_msh(b'|', b"^~").unwrap();
        assert_eq!(d.escape, None);
        assert!(!d.has_subcomponents());
        assert_eq!(d.encoding_characters(), "^~");
        let d = Delimiters::from_msh(b'|', b"^~\\").unwrap();
        assert_eq!(d.escape, Some(b'\\'));
        assert_eq!(d.encoding_characters(), "^~\\");
    }

    #[test]
    fn invalid() {
        assert!(Delimiters::from_msh(b'|', b"^").is_err());
        assert!(Delimiters::from_msh(b'|', b"^~\\&#!").is_err());
        assert!(Delimiters::from_msh(b'|', b"^^\\&").is_err());
        assert!(Delimiters::from_msh(b'|', b"^|\\&").is_err());
        assert!(Delimiters::from_msh(b'|', b"^~A&").is_err());
        assert!(Delimiters::from_msh(b' ', b"^~\\&").is_err());
        assert!(Delimiters::from_msh(b'|', b"^~\r&").is_err());
    }
}
