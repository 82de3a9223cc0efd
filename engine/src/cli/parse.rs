//! `courier parse`: a message's structure, the values at paths, or its JSON form.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use courier_hl7::{Message, Path as HlPath};

/// Prints each message of the file as asked.
pub fn parse(file: &Path, paths: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let messages = courier::messagefile::read_messages(file)?;
    let paths = paths
        .iter()
        .map(|p| HlPath::parse(p).with_context(|| format!("bad path `{p}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let many = messages.len() > 1;
    let mut out = std::io::stdout().lock();
    let mut json_out = Vec::new();
    let mut failed = false;
    for (i, bytes) in messages.into_iter().enumerate() {
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}: message {}: {e}", file.display(), i + 1);
                failed = true;
                continue;
            }
        };
        if json {
            json_out.push(courier_hl7::to_json(&msg));
            continue;
        }
        if many {
            writeln!(out, "# message {}", i + 1)?;
        }
        if paths.is_empty() {
            print_structure(&mut out, &msg)?;
        } else {
            for p in &paths {
                match msg.get(p) {
                    Some(v) => writeln!(out, "{p}\t{v}")?,
                    None => writeln!(out, "{p}\t(absent)")?,
                }
            }
        }
    }
    if json {
        let value = if json_out.len() == 1 {
            json_out.pop().unwrap_or_default()
        } else {
            serde_json::Value::Array(json_out)
        };
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One line per valued field: its path and its ER7 text.
fn print_structure(out: &mut impl Write, msg: &Message) -> std::io::Result<()> {
    for seg in msg.segments() {
        let occurrence = seg.occurrence();
        let id = seg.id();
        let name = if occurrence > 1 {
            format!("{id}[{occurrence}]")
        } else {
            id.to_owned()
        };
        writeln!(out, "{name}")?;
        for n in 1..=seg.field_count() {
            let Some(field) = seg.field(n) else { continue };
            let raw = field.raw();
            if raw.is_empty() {
                continue;
            }
            writeln!(out, "  {name}-{n:<3} {}", String::from_utf8_lossy(raw))?;
        }
    }
    Ok(())
}
