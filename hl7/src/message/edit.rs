//! Editing a [`Message`]: setting, deleting and inserting values by [`Path`], and adding or
//! removing whole segments.
//!
//! An edit rebuilds only the segment it touches: the segment's bytes are split on the
//! separator of each level the path goes through, the target piece is replaced (padding with
//! empty pieces where the path goes past the end), and the pieces are joined again with the
//! message's own delimiters. The result becomes the segment's owned bytes and is re-indexed;
//! all other segments keep pointing into the original buffer.
//!
//! Every edit keeps the message parseable: values are escaped (or, for raw ER7, checked), and
//! converted into the message's character set or refused; MSH-1/MSH-2 cannot be edited and
//! MSH-18 cannot be changed to another character set, since either would change how every
//! other byte must be read. A refused edit leaves the message unchanged.

use super::{Body, Message, OwnedSeg, Seg, Term, charset_of};
use crate::error::{EditError, printable};
use crate::escape;
use crate::path::{Path, is_segment_id};
use std::borrow::Cow;

/// The largest field, repetition, component or sub-component number an edit accepts. Edits
/// pad with empty pieces up to the number given, so a hostile path such as `PID-999999999999`
/// from a script would otherwise allocate without bound.
pub(crate) const MAX_EDIT_INDEX: usize = 65_535;

/// What to do with the piece the path names.
enum Op<'v> {
    /// Replace it (ER7 bytes), padding with separators if it is missing.
    Set(&'v [u8]),
    /// Empty it, then trim trailing empty pieces if it was the last one.
    Clear,
    /// Remove it and its separator (repetitions).
    Remove,
    /// Insert before it, so that the new piece takes its number (repetitions).
    Insert(&'v [u8]),
}

/// The levels an edit goes down, outermost first, each as its separator and the 0-based piece
/// it takes: the field, then the repetition, component and sub-component the path names. At
/// most four, so kept inline rather than allocated per edit.
struct Levels {
    items: [(u8, usize); 4],
    len: usize,
}

impl Levels {
    fn push(&mut self, level: (u8, usize)) {
        self.items[self.len] = level;
        self.len += 1;
    }
}

impl std::ops::Deref for Levels {
    type Target = [(u8, usize)];

    fn deref(&self) -> &[(u8, usize)] {
        &self.items[..self.len]
    }
}

/// The segment an edit applies to.
struct Target {
    index: usize,
    msh: bool,
}

impl Message {
    /// Sets the value at `path`, escaping it with this message's delimiters and converting it
    /// to its character set.
    ///
    /// The path needs a field. A field path without repetition (`PID-3`) replaces the whole
    /// field, all repetitions; `PID-5.1` sets component 1 of repetition 1. Missing fields,
    /// repetitions, components and sub-components are created by padding with separators
    /// (`set(PID-30, x)` on a shorter PID appends `|||...|x`); a missing segment is
    /// [`EditError::NoSuchSegment`] — segments are added with [`Message::insert_segment`].
    ///
    /// Refused: MSH-1 and MSH-2 ([`EditError::Unsupported`]); a character the character set
    /// cannot hold ([`EditError::NotRepresentable`], never silently replaced); a delimiter or
    /// line break when MSH-2 declares no escape character ([`EditError::InvalidValue`]);
    /// changing MSH-18 to another character set; an index above 65 535
    /// ([`EditError::InvalidPath`]).
    pub fn set(&mut self, path: &Path, value: &str) -> Result<(), EditError> {
        let target = self.edit_target(path)?;
        let bytes = self.prepare_value(path, value)?;
        let levels = self.levels(path, target.msh);
        self.apply(target.index, &levels, Op::Set(&bytes))
    }

    /// Sets the value at `path` to ER7 text already written with this message's delimiters
    /// (it may hold `^`, `~`, `&` and escape sequences, which are kept as given).
    ///
    /// Refused with [`EditError::InvalidValue`]: a field separator or segment terminator
    /// (`\r`, `\n`) anywhere, and a separator of the target's own level or above (a `~` in a
    /// repetition or below, a `^` in a component or below, a `&` in a sub-component), which
    /// would change the structure around the target. Otherwise as [`Message::set`].
    pub fn set_raw(&mut self, path: &Path, er7: &str) -> Result<(), EditError> {
        let target = self.edit_target(path)?;
        let d = self.delims;
        let invalid = |reason| EditError::InvalidValue {
            path: path.to_string(),
            reason,
        };
        let raw = er7.as_bytes();
        if raw
            .iter()
            .any(|&b| b == d.field || b == b'\r' || b == b'\n')
        {
            return Err(invalid(
                "raw ER7 may not contain the field separator or a segment terminator",
            ));
        }
        let has = |sep: u8| raw.contains(&sep);
        if path.subcomponent.is_some()
            && (has(d.repetition) || has(d.component) || has(d.subcomponent))
        {
            return Err(invalid(
                "raw ER7 for a sub-component may not contain a repetition, component or sub-component separator",
            ));
        }
        if path.component.is_some() && (has(d.repetition) || has(d.component)) {
            return Err(invalid(
                "raw ER7 for a component may not contain a repetition or component separator",
            ));
        }
        if path.repetition.is_some() && has(d.repetition) {
            return Err(invalid(
                "raw ER7 for a repetition may not contain the repetition separator",
            ));
        }
        let bytes = self.to_charset(path, er7)?;
        let levels = self.levels(path, target.msh);
        self.apply(target.index, &levels, Op::Set(&bytes))
    }

    /// Deletes what `path` names.
    ///
    /// - A bare segment path (`OBX[2]`, `ZPI`): that segment is removed (MSH cannot be:
    ///   [`EditError::CannotRemoveMsh`]).
    /// - An explicit repetition (`PID-3[2]`): that repetition is removed, the later ones move
    ///   up.
    /// - A field, component or sub-component: emptied; when it was the last one of its level,
    ///   the trailing empty separators are trimmed (`a^b^c` minus `.3` is `a^b`; `PID|1|x`
    ///   minus PID-2 is `PID|1`), level by level upwards. MSH keeps at least up to MSH-9.
    ///
    /// Deleting something absent inside an existing segment is not an error (it is already
    /// gone); a missing segment is [`EditError::NoSuchSegment`].
    pub fn delete(&mut self, path: &Path) -> Result<(), EditError> {
        if path.field.is_none() {
            self.check_path(path)?;
            let index = self.require_segment(path)?;
            return self.remove_segment(index);
        }
        let target = self.edit_target(path)?;
        let levels = self.levels(path, target.msh);
        let op = if path.repetition.is_some() && path.component.is_none() {
            Op::Remove
        } else {
            Op::Clear
        };
        self.apply(target.index, &levels, op)
    }

    /// Inserts a repetition so that it becomes repetition `n` of the field, `n` being the
    /// path's repetition index (`PID-3[2]`: the new value is the second repetition, the old
    /// second becomes the third). Past the end, empty repetitions pad the gap. The value is
    /// escaped and converted as by [`Message::set`].
    pub fn insert_repetition(&mut self, path: &Path, value: &str) -> Result<(), EditError> {
        let target = self.edit_target(path)?;
        if path.repetition.is_none() || path.component.is_some() {
            return Err(EditError::InvalidPath {
                path: path.to_string(),
                reason: "insert_repetition needs a path naming a repetition, e.g. PID-3[2]",
            });
        }
        let bytes = self.prepare_value(path, value)?;
        let levels = self.levels(path, target.msh);
        self.apply(target.index, &levels, Op::Insert(&bytes))
    }

    /// Inserts a segment so that it gets the 0-based position `index` (`segment_count()`
    /// appends). `er7` is one segment in this message's delimiters, without terminator; it must
    /// start with a valid segment ID followed by the field separator (or be the ID alone), may
    /// not be MSH and may not contain `\r` or `\n`. Index 0 is refused: MSH stays first. The new
    /// segment ends with `\r`; appended after a last segment that had no terminator, that
    /// segment gains a `\r` too (and keeps it if the new one is removed again).
    pub fn insert_segment(&mut self, index: usize, er7: &str) -> Result<(), EditError> {
        if index == 0 {
            return Err(EditError::CannotRemoveMsh);
        }
        let count = self.segs.len();
        if index > count {
            return Err(EditError::NoSuchIndex { index, count });
        }
        let bytes = self
            .charset
            .encode(er7)
            .map_err(|(position, character)| EditError::NotRepresentable {
                charset: self.charset,
                path: format!("new segment at index {index}"),
                position,
                character,
            })?
            .into_owned();
        self.check_new_segment(&bytes)?;
        let seps = field_separators(&bytes, self.delims.field)?;
        if index == count
            && let Some(last) = self.segs.last_mut()
            && matches!(last.term, Term::Source { start, end } if start == end)
        {
            // The old last segment had no terminator; now it needs one.
            last.term = Term::Cr;
        }
        self.segs.insert(
            index,
            Seg {
                body: Body::Owned(Box::new(OwnedSeg { bytes, seps })),
                term: Term::Cr,
            },
        );
        self.modified = true;
        Ok(())
    }

    /// Appends a segment at the end; see [`Message::insert_segment`].
    pub fn append_segment(&mut self, er7: &str) -> Result<(), EditError> {
        self.insert_segment(self.segs.len(), er7)
    }

    /// Removes the segment at the 0-based position `index` (with its terminator). MSH, at
    /// index 0, cannot be removed.
    pub fn remove_segment(&mut self, index: usize) -> Result<(), EditError> {
        if index == 0 {
            return Err(EditError::CannotRemoveMsh);
        }
        let count = self.segs.len();
        if index >= count {
            return Err(EditError::NoSuchIndex { index, count });
        }
        self.segs.remove(index);
        self.modified = true;
        Ok(())
    }

    // ----- internals -----

    fn check_path(&self, path: &Path) -> Result<(), EditError> {
        path.check().map_err(|reason| EditError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    }

    fn require_segment(&self, path: &Path) -> Result<usize, EditError> {
        let occurrence = path.occurrence_or_first();
        self.find_segment(&path.segment, occurrence)
            .ok_or_else(|| EditError::NoSuchSegment {
                segment: path.segment.clone(),
                occurrence,
            })
    }

    /// Validates a path for a value edit and finds its segment.
    fn edit_target(&self, path: &Path) -> Result<Target, EditError> {
        self.check_path(path)?;
        let Some(field) = path.field else {
            return Err(EditError::InvalidPath {
                path: path.to_string(),
                reason: "this edit needs a field, e.g. PID-5",
            });
        };
        let indices = [
            path.field,
            path.repetition,
            path.component,
            path.subcomponent,
        ];
        if indices.iter().flatten().any(|&n| n > MAX_EDIT_INDEX) {
            return Err(EditError::InvalidPath {
                path: path.to_string(),
                reason: "an index above 65535 cannot be edited (it could pad the segment with \
                         that many separators)",
            });
        }
        let index = self.require_segment(path)?;
        let msh = index == 0;
        if msh && field <= 2 {
            return Err(EditError::Unsupported {
                what: "editing MSH-1 or MSH-2, the delimiters every other byte is read with",
            });
        }
        if path.subcomponent.is_some() && !self.delims.has_subcomponents() {
            return Err(EditError::Unsupported {
                what: "editing a sub-component: MSH-2 declares no sub-component separator",
            });
        }
        Ok(Target { index, msh })
    }

    /// A text value as ER7 bytes: in the message's character set, escaped.
    fn prepare_value<'v>(&self, path: &Path, value: &'v str) -> Result<Vec<u8>, EditError> {
        if escape::needs_escape_char(value.as_bytes(), &self.delims) {
            return Err(EditError::InvalidValue {
                path: path.to_string(),
                reason: "the value holds a delimiter or line break, and MSH-2 declares no \
                         escape character to escape it with",
            });
        }
        let bytes: Cow<'v, [u8]> = self.to_charset(path, value)?;
        Ok(escape::encode(&bytes, &self.delims).into_owned())
    }

    fn to_charset<'v>(&self, path: &Path, text: &'v str) -> Result<Cow<'v, [u8]>, EditError> {
        self.charset
            .encode(text)
            .map_err(|(position, character)| EditError::NotRepresentable {
                charset: self.charset,
                path: path.to_string(),
                position,
                character,
            })
    }

    /// The separators and 0-based piece indices leading from a segment to the path's target.
    fn levels(&self, path: &Path, msh: bool) -> Levels {
        let d = &self.delims;
        let field = path.field.unwrap_or(1);
        // Split on the field separator, piece 0 is the ID; MSH-1 is no piece, so MSH-n is
        // piece n-1 while any other segment's field n is piece n.
        let piece = if msh { field - 1 } else { field };
        let mut levels = Levels {
            items: [(d.field, piece); 4],
            len: 1,
        };
        if path.repetition.is_some() || path.component.is_some() {
            levels.push((d.repetition, path.repetition.unwrap_or(1) - 1));
        }
        if let Some(c) = path.component {
            levels.push((d.component, c - 1));
        }
        if let Some(s) = path.subcomponent {
            levels.push((d.subcomponent, s - 1));
        }
        levels
    }

    fn apply(&mut self, index: usize, levels: &[(u8, usize)], op: Op<'_>) -> Result<(), EditError> {
        let Some((bytes, _)) = self.seg_parts(index) else {
            return Err(EditError::NoSuchIndex {
                index,
                count: self.segs.len(),
            });
        };
        // MSH keeps its pieces up to MSH-9 (piece 8), which parsing requires.
        let floor = if index == 0 { 9 } else { 1 };
        let new = match op {
            // The common edit, in one pass and one allocation.
            Op::Set(v) => match set_in(bytes, levels, v) {
                Some(new) => new,
                None => return Ok(()),
            },
            op => edit_in(bytes, levels, &op, floor),
        };
        if new == bytes {
            // Nothing changed (the same value set again, an absent element deleted): keep the
            // segment in the original buffer and the message unmodified.
            return Ok(());
        }
        let seps = field_separators(&new, self.delims.field)?;
        if index == 0 {
            let declared = charset_of(&new, &seps, &self.delims, self.options.default_charset);
            if declared.ok() != Some(self.charset) {
                return Err(EditError::Unsupported {
                    what: "changing MSH-18 to another character set: every segment would have \
                           to be transcoded",
                });
            }
        }
        let Some(seg) = self.segs.get_mut(index) else {
            return Err(EditError::NoSuchIndex {
                index,
                count: self.segs.len(),
            });
        };
        seg.body = Body::Owned(Box::new(OwnedSeg { bytes: new, seps }));
        self.modified = true;
        Ok(())
    }

    fn check_new_segment(&self, bytes: &[u8]) -> Result<(), EditError> {
        let invalid = |reason: String| Err(EditError::InvalidSegment { reason });
        if bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
            return invalid(
                "a segment may not contain \\r or \\n: give one segment, without terminator"
                    .to_string(),
            );
        }
        let id = bytes.get(..3).unwrap_or(bytes);
        let after = bytes.get(3);
        if !is_segment_id(id) || after.is_some_and(|&b| b != self.delims.field) {
            return invalid(format!(
                "a segment starts with a segment ID [A-Z][A-Z0-9]{{2}} followed by the field \
                 separator '{}', found {:?}",
                self.delims.field as char,
                printable(bytes.get(..4).unwrap_or(bytes))
            ));
        }
        if id == b"MSH" {
            return invalid("a message has one MSH segment, its first".to_string());
        }
        Ok(())
    }
}

/// Offsets of the field separators in one segment's bytes.
fn field_separators(bytes: &[u8], fs: u8) -> Result<Vec<u32>, EditError> {
    memchr::memchr_iter(fs, bytes)
        .map(|i| u32::try_from(i).map_err(|_| EditError::TooLarge))
        .collect()
}

/// [`Op::Set`] of `value` at the piece `levels` leads to inside `container`: the new bytes,
/// or `None` when the piece already holds `value`.
///
/// What [`edit_in`] makes of a `Set`, without splitting every level into pieces and joining
/// them again: the target piece is found by scanning for separators, and the new bytes are
/// the bytes before it, the value, and the bytes after it. Where the path goes past the last
/// piece of a level, that level gets empty pieces up to it (its separator, once per missing
/// piece) at the end of its container, and each deeper level empty pieces before the value
/// (a container that does not exist yet is one empty piece).
fn set_in(container: &[u8], levels: &[(u8, usize)], value: &[u8]) -> Option<Vec<u8>> {
    // The piece of the current level: container[start..end].
    let (mut start, mut end) = (0, container.len());
    for (depth, &(sep, i)) in levels.iter().enumerate() {
        let mut piece = 0;
        let mut from = start;
        loop {
            let to = memchr::memchr(sep, &container[from..end]).map_or(end, |at| from + at);
            if piece == i {
                (start, end) = (from, to);
                break;
            }
            if to == end {
                // `piece` is this level's last piece: pad after it.
                let deeper = &levels[depth + 1..];
                let padding = i - piece + deeper.iter().map(|&(_, j)| j).sum::<usize>();
                let mut out = Vec::with_capacity(container.len() + padding + value.len());
                out.extend_from_slice(&container[..end]);
                out.resize(out.len() + (i - piece), sep);
                for &(sep, j) in deeper {
                    out.resize(out.len() + j, sep);
                }
                out.extend_from_slice(value);
                out.extend_from_slice(&container[end..]);
                return Some(out);
            }
            from = to + 1;
            piece += 1;
        }
    }
    if &container[start..end] == value {
        return None;
    }
    let mut out = Vec::with_capacity(container.len() - (end - start) + value.len());
    out.extend_from_slice(&container[..start]);
    out.extend_from_slice(value);
    out.extend_from_slice(&container[end..]);
    Some(out)
}

/// Applies `op` at the piece `levels` leads to inside `container`, returning the new bytes.
/// `floor` is how many pieces the outermost level keeps when trimming (the segment ID, or
/// MSH up to MSH-9).
fn edit_in(container: &[u8], levels: &[(u8, usize)], op: &Op<'_>, floor: usize) -> Vec<u8> {
    let Some((&(sep, i), inner)) = levels.split_first() else {
        return container.to_vec();
    };
    let mut pieces: Vec<Cow<'_, [u8]>> =
        container.split(|&b| b == sep).map(Cow::Borrowed).collect();
    if inner.is_empty() {
        match op {
            Op::Set(v) => {
                pad(&mut pieces, i + 1);
                pieces[i] = Cow::Owned(v.to_vec());
            }
            Op::Clear => {
                if let Some(p) = pieces.get_mut(i) {
                    *p = Cow::Borrowed(&[]);
                    if i + 1 == pieces.len() {
                        trim(&mut pieces, floor);
                    }
                }
            }
            Op::Remove => {
                if i < pieces.len() {
                    pieces.remove(i);
                }
            }
            Op::Insert(v) => {
                // An empty field holds no repetition: inserting the first must not leave an
                // empty one behind it.
                if container.is_empty() {
                    pieces.clear();
                }
                pad(&mut pieces, i);
                pieces.insert(i, Cow::Owned(v.to_vec()));
            }
        }
    } else {
        if i >= pieces.len() {
            match op {
                Op::Set(_) | Op::Insert(_) => pad(&mut pieces, i + 1),
                Op::Clear | Op::Remove => return container.to_vec(),
            }
        }
        let was_last = i + 1 == pieces.len();
        let new = edit_in(&pieces[i], inner, op, 1);
        let emptied = new.is_empty();
        pieces[i] = Cow::Owned(new);
        if matches!(op, Op::Clear | Op::Remove) && emptied && was_last {
            trim(&mut pieces, floor);
        }
    }
    join(&pieces, sep)
}

fn pad(pieces: &mut Vec<Cow<'_, [u8]>>, len: usize) {
    while pieces.len() < len {
        pieces.push(Cow::Borrowed(&[]));
    }
}

fn trim(pieces: &mut Vec<Cow<'_, [u8]>>, floor: usize) {
    while pieces.len() > floor.max(1) && pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
}

fn join(pieces: &[Cow<'_, [u8]>], sep: u8) -> Vec<u8> {
    let len = pieces.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    for (k, p) in pieces.iter().enumerate() {
        if k > 0 {
            out.push(sep);
        }
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `set_in` gives the bytes the general split-and-join path gives, for every level depth,
    /// piece present or missing, on containers with empty, trailing and missing pieces.
    #[test]
    fn set_in_agrees_with_splitting_and_joining() {
        let containers: &[&[u8]] = &[
            b"",
            b"PID",
            b"PID|",
            b"PID|1||123^^^MR~456^^^SS&X&Y||Doe^John^^^Dr.|",
            b"OBX|1|NM|WBC^Leukocytes^L||6.8|10*3/uL|4.0-11.0|N|||F",
            b"ZZZ|~~|^^|&&|a~b^c&d~e",
            b"MSH|^~\\&|APP|FAC|||20260101||ADT^A01|1|P|2.5.1",
        ];
        let values: &[&[u8]] = &[b"", b"X", b"6690-2", b"Leukocytes"];
        let mut checked = 0;
        for &container in containers {
            for field in 0..8 {
                for rep in [None, Some(0), Some(1), Some(2)] {
                    for comp in [None, Some(0), Some(2), Some(5)] {
                        for sub in [None, Some(0), Some(1), Some(3)] {
                            let mut levels = vec![(b'|', field)];
                            if rep.is_some() || comp.is_some() {
                                levels.push((b'~', rep.unwrap_or(0)));
                            }
                            if let Some(c) = comp {
                                levels.push((b'^', c));
                                if let Some(s) = sub {
                                    levels.push((b'&', s));
                                }
                            }
                            for &value in values {
                                let general = edit_in(container, &levels, &Op::Set(value), 1);
                                let fast = set_in(container, &levels, value)
                                    .unwrap_or_else(|| container.to_vec());
                                assert_eq!(
                                    String::from_utf8_lossy(&fast),
                                    String::from_utf8_lossy(&general),
                                    "{:?} {levels:?} {:?}",
                                    String::from_utf8_lossy(container),
                                    String::from_utf8_lossy(value),
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 3000, "{checked}");
    }
}
