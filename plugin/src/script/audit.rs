//! A size and nesting audit of the script's variables, closing two gaps in Rhai's own checks.
//!
//! 1. Rhai checks `max_string_size`, `max_array_size` and `max_map_size` after operators and
//!    function calls, but not after an index assignment: `m[key] = value` on an object map
//!    adds an entry unchecked (rhai 1.27, `eval/chaining.rs`), so
//!    `loop { m[`k${i}`] = big + i; i += 1; }` would keep a new 1 MiB string per iteration —
//!    gigabytes within the 100 ms deadline.
//! 2. Rhai clones, compares, prints and drops nested arrays and maps recursively, and nothing
//!    bounds the nesting: `loop { a = [a]; }` overflows a 2 MiB thread stack (an abort, not a
//!    panic) within a few hundred levels in a debug build.
//!
//! So before every variable read the step measures that variable the way Rhai measures one
//! value (elements of arrays, entries of maps and bytes of strings, each summed over the
//! nesting) and its depth, and stops the script with Rhai's own "data too large" error (which
//! the step reports as the limit broken) or with `max_nesting`. A value can only grow through
//! a read of its variable, and one expression can nest at most `max_expr_depth` levels, so
//! neither limit can be overrun by much. The walk stops at `max_nesting`, so it never
//! recurses deeply itself.

use rhai::{Array, Dynamic, EvalAltResult, EvalContext, ImmutableString, Map, Position};

use super::api::Stop;

/// The limits being enforced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataLimits {
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_nesting: usize,
}

#[derive(Default)]
struct Sizes {
    arrays: usize,
    maps: usize,
    strings: usize,
}

/// The variable-access hook (`Engine::on_var`): measures the variable about to be read and
/// never resolves it itself.
pub(crate) fn on_var(
    limits: &DataLimits,
    name: &str,
    ctx: &EvalContext,
) -> Result<Option<Dynamic>, Box<EvalAltResult>> {
    if let Some(value) = ctx.scope().get(name) {
        measure(limits, value)?;
    }
    Ok(None)
}

/// Measures one value the way Rhai measures data, plus its nesting depth.
pub(crate) fn measure(limits: &DataLimits, value: &Dynamic) -> Result<(), Box<EvalAltResult>> {
    let over = if value.is_shared() {
        // Locked only if a call in progress holds it, and then it is not growing.
        match value.read_lock::<Dynamic>() {
            Some(inner) => walk(limits, &inner, 0, &mut Sizes::default()),
            None => Ok(()),
        }
    } else {
        walk(limits, value, 0, &mut Sizes::default())
    };
    over.map_err(|e| match e {
        Over::Nesting => Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::from(Stop::Limit(format!("max_nesting = {}", limits.max_nesting))),
            Position::NONE,
        )),
        // Rhai's own wording, so that the step maps these like Rhai's own checks.
        Over::Size(what) => Box::new(EvalAltResult::ErrorDataTooLarge(
            what.to_string(),
            Position::NONE,
        )),
    })
}

enum Over {
    Nesting,
    Size(&'static str),
}

/// Recursion is bounded by `max_nesting`: the walk stops one level past it.
fn walk(limits: &DataLimits, v: &Dynamic, depth: usize, sizes: &mut Sizes) -> Result<(), Over> {
    if let Some(s) = v.read_lock::<ImmutableString>() {
        sizes.strings += s.len();
        if sizes.strings > limits.max_string_size {
            return Err(Over::Size("Length of string"));
        }
    } else if let Some(a) = v.read_lock::<Array>() {
        if depth >= limits.max_nesting {
            return Err(Over::Nesting);
        }
        sizes.arrays += a.len();
        if sizes.arrays > limits.max_array_size {
            return Err(Over::Size("Size of array"));
        }
        for item in a.iter() {
            walk(limits, item, depth + 1, sizes)?;
        }
    } else if let Some(m) = v.read_lock::<Map>() {
        if depth >= limits.max_nesting {
            return Err(Over::Nesting);
        }
        sizes.maps += m.len();
        if sizes.maps > limits.max_map_size {
            return Err(Over::Size("Size of object map"));
        }
        for item in m.values() {
            walk(limits, item, depth + 1, sizes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits = DataLimits {
        max_string_size: 10,
        max_array_size: 5,
        max_map_size: 3,
        max_nesting: 2,
    };

    fn over(v: Dynamic) -> Option<String> {
        measure(&LIMITS, &v).err().map(|e| match *e {
            EvalAltResult::ErrorDataTooLarge(what, _) => what,
            EvalAltResult::ErrorTerminated(token, _) => match token.try_cast::<Stop>() {
                Some(Stop::Limit(l)) => l,
                _ => "?".into(),
            },
            other => other.to_string(),
        })
    }

    fn array(items: Vec<Dynamic>) -> Dynamic {
        Dynamic::from_array(items)
    }

    #[test]
    fn sizes_sum_over_the_nesting() {
        assert_eq!(over(Dynamic::from("0123456789")), None);
        let strings = array(vec![Dynamic::from("012345"), Dynamic::from("6789x")]);
        assert_eq!(over(strings).as_deref(), Some("Length of string"));
        let nested = array(vec![
            array(vec![Dynamic::from_int(1), Dynamic::from_int(2)]),
            array(vec![Dynamic::from_int(3), Dynamic::from_int(4)]),
        ]);
        assert_eq!(over(nested).as_deref(), Some("Size of array"));
        let mut m = Map::new();
        for k in ["a", "b", "c", "d"] {
            m.insert(k.into(), Dynamic::UNIT);
        }
        assert_eq!(
            over(Dynamic::from_map(m)).as_deref(),
            Some("Size of object map")
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let two = array(vec![array(vec![])]);
        assert_eq!(over(two.clone()), None);
        assert_eq!(over(array(vec![two])).as_deref(), Some("max_nesting = 2"));
    }
}
