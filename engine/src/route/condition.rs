//! Route conditions on field values: `PID-3.4 == "RIVERSIDE"`.
//!
//! The grammar is deliberately small — one path, one operator, one quoted value — because
//! anything richer belongs in a Rhai or WASM step, which is tested and versioned like code.
//!
//! ```text
//! PATH == "value"    decoded value equals
//! PATH != "value"    decoded value differs (an absent field differs from any non-empty value)
//! PATH =~ "A0*"      wildcard match (* and ?)
//! PATH !~ "A0*"      no wildcard match
//! PATH               the field is valued
//! !PATH              the field is empty or absent
//! ```

use courier_hl7::{Message, Path};
use wildmatch::WildMatch;

/// A parsed condition.
#[derive(Debug, Clone)]
pub struct Condition {
    path: Path,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Like(WildMatch),
    NotLike(WildMatch),
    Valued,
    Empty,
}

impl Condition {
    /// Parses one condition; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty condition".into());
        }
        if let Some(rest) = t.strip_prefix('!')
            && !rest.contains(['=', '~', '"', '\''])
        {
            return Ok(Condition {
                path: parse_path(rest.trim())?,
                op: Op::Empty,
            });
        }
        let Some(op_at) = t.find(['=', '!']) else {
            return Ok(Condition {
                path: parse_path(t)?,
                op: Op::Valued,
            });
        };
        let path = parse_path(t[..op_at].trim())?;
        let rest = &t[op_at..];
        let (op, value) = ["==", "!=", "=~", "!~"]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)))
            .ok_or_else(|| format!("unknown operator in `{t}`; use ==, !=, =~ (wildcard) or !~"))?;
        let value = parse_quoted(value.trim()).ok_or_else(|| {
            format!("the value after `{op}` must be one quoted string, e.g. \"RIVERSIDE\"")
        })?;
        let op = match op {
            "==" => Op::Eq(value),
            "!=" => Op::Ne(value),
            "=~" => Op::Like(WildMatch::new(&value)),
            _ => Op::NotLike(WildMatch::new(&value)),
        };
        Ok(Condition { path, op })
    }

    /// Evaluates the condition on a message.
    pub fn holds(&self, msg: &Message) -> bool {
        let value = msg.get(&self.path);
        let v = value.as_deref().unwrap_or("");
        match &self.op {
            Op::Eq(x) => v == x,
            Op::Ne(x) => v != x,
            Op::Like(w) => w.matches(v),
            Op::NotLike(w) => !w.matches(v),
            Op::Valued => !v.is_empty(),
            Op::Empty => v.is_empty(),
        }
    }
}

fn parse_path(s: &str) -> Result<Path, String> {
    Path::parse(s).map_err(|e| format!("bad path `{s}`: {e}"))
}

/// `"text"` or `'text'`, with `\"`, `\'` and `\\` escapes; nothing may follow.
fn parse_quoted(s: &str) -> Option<String> {
    let quote = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let mut out = String::new();
    let mut chars = s[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            c if c == quote => return chars.as_str().trim().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message::parse(
            b"MSH|^~\\&|A|B|C|D|1||ADT^A04|X|P|2.5\rPID|1||7^^^CLINIC^MR||Doe^Jo \\T\\ Co\r"
                .to_vec(),
        )
        .unwrap()
    }

    fn holds(c: &str) -> bool {
        Condition::parse(c).unwrap().holds(&msg())
    }

    #[test]
    fn operators() {
        assert!(holds(r#"PID-3.4 == "CLINIC""#));
        assert!(holds(r#"PID.3.4 == 'CLINIC'"#));
        assert!(!holds(r#"PID-3.4 != "CLINIC""#));
        assert!(holds(r#"PID-3.4 =~ "CLI*""#));
        assert!(holds(r#"PID-3.4 !~ "X*""#));
        assert!(holds("PID-3.1"));
        assert!(holds("!PID-8"));
        assert!(!holds("!PID-3"));
        // Values are compared decoded: \T\ is the sub-component separator `&`.
        assert!(holds(r#"PID-5.2 == "Jo & Co""#));
        // An absent segment is empty.
        assert!(holds(r#"ZZZ-1 != "x""#));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Condition::parse(r#"PID-3.4 = "X""#).unwrap_err();
        assert!(e.contains("unknown operator"), "{e}");
        let e = Condition::parse(r#"PID-3.4 == X"#).unwrap_err();
        assert!(e.contains("quoted"), "{e}");
        let e = Condition::parse(r#"PID-3.4 == "X" junk"#).unwrap_err();
        assert!(e.contains("quoted"), "{e}");
        let e = Condition::parse(r#"P-3 == "X""#).unwrap_err();
        assert!(e.contains("bad path"), "{e}");
    }
}
