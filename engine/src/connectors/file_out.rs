//! The file destination: each message becomes one file in a directory, named from a pattern.
//!
//! A file is written under a hidden temporary name, synced, then linked to its final name
//! (which never replaces an existing file: a taken name gets `-1`, `-2`, … before its
//! extension) and the directory synced, so a reader never sees half a file and a delivered
//! message is on disk. An I/O error (disk full, permissions) is retried like a receiver that
//! is down.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::http_out::Body;
use crate::config::{DestinationConfig, PayloadFormat};
use crate::destination::Attempt;

/// The default `name_pattern`.
pub const DEFAULT_PATTERN: &str = "{timestamp}_{control_id}.hl7";

const PLACEHOLDERS: [&str; 5] = [
    "control_id",
    "message_type",
    "timestamp",
    "millis",
    "delivery",
];

/// Tried names per message before the write is retried later.
const MAX_NAME_TRIES: usize = 1000;

/// Checks a `name_pattern`: known placeholders, balanced braces, a plain file name.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("must not be empty".into());
    }
    if pattern.contains('/') || pattern.contains('\\') {
        return Err("a file name, not a path: no `/` or `\\`".into());
    }
    if pattern.starts_with('.') {
        return Err("must not start with `.` (hidden names are the temporary files)".into());
    }
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("`{{` without `}}` in `{pattern}`"));
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; use {}",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("`}}` without `{{` in `{pattern}`"));
    }
    Ok(())
}

/// Characters kept in a name from message data; anything else becomes `_`.
fn safe(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.trim_start_matches('.') {
        "" => "_".into(),
        t => t.to_owned(),
    }
}

/// The file name for one message.
pub fn render(pattern: &str, control_id: &str, message_type: &str, delivery: u64) -> String {
    let now = chrono::Utc::now();
    pattern
        .replace("{control_id}", &safe(control_id))
        .replace("{message_type}", &safe(message_type))
        .replace("{timestamp}", &now.format("%Y%m%d%H%M%S").to_string())
        .replace("{millis}", &now.timestamp_millis().to_string())
        .replace("{delivery}", &delivery.to_string())
}

/// Numbers attempts, for `{delivery}` and unique temporary names.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes messages to a directory.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    pattern: String,
    format: PayloadFormat,
}

impl FileSink {
    /// The sink for a `kind = "file"` destination (validated at load).
    pub fn new(cfg: &DestinationConfig) -> FileSink {
        FileSink {
            dir: cfg
                .directory
                .as_ref()
                .map(|d| d.get_ref().clone())
                .unwrap_or_default(),
            pattern: cfg
                .name_pattern
                .as_ref()
                .map_or(DEFAULT_PATTERN.to_owned(), |p| p.get_ref().clone()),
            format: cfg.payload_format(),
        }
    }

    /// Writes one message; `Delivered` carries the file's name.
    pub async fn attempt(
        &mut self,
        payload: Bytes,
        control_id: &str,
        message_type: &str,
    ) -> Attempt {
        let body = match super::http_out::encode(payload, self.format) {
            Ok(b) => b,
            Err(reason) => {
                return Attempt::Rejected {
                    ack: Bytes::new(),
                    reason,
                };
            }
        };
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = render(&self.pattern, control_id, message_type, seq);
        let dir = self.dir.clone();
        let written =
            tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &body, seq)).await;
        match written {
            Ok(Ok(path)) => Attempt::Delivered(Bytes::from(format!(
                "file {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ))),
            Ok(Err(e)) => Attempt::Retry {
                reason: format!("cannot write to {}: {e}", self.dir.display()),
            },
            Err(e) => Attempt::Retry {
                reason: format!("file writer failed: {e}"),
            },
        }
    }
}

/// `name` with `-n` before its extension.
fn numbered(name: &str, n: usize) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

/// Temporary file, sync, link to a free final name, sync the directory.
pub fn write_atomically(dir: &Path, name: &str, body: &Body, seq: u64) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}-{seq}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        for piece in body.pieces() {
            f.write_all(piece)?;
        }
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let mut target = dir.join(name);
    let mut tries = 0;
    // A hard link never replaces an existing file, unlike a rename.
    loop {
        match std::fs::hard_link(&tmp, &target) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < MAX_NAME_TRIES => {
                tries += 1;
                target = dir.join(numbered(name, tries));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    std::fs::remove_file(&tmp)?;
    sync_dir(dir)?;
    Ok(target)
}

/// Makes renames and links in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern(DEFAULT_PATTERN).is_ok());
        assert!(check_pattern("{message_type}-{millis}-{delivery}.json").is_ok());
        assert!(
            check_pattern("{patient}.hl7")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(check_pattern("a/{control_id}").is_err());
        assert!(check_pattern(".x").is_err());
        assert!(check_pattern("{control_id").is_err());
        assert!(check_pattern("x}").is_err());
    }

    #[test]
    fn names_keep_only_safe_characters() {
        let n = render("{message_type}_{control_id}.hl7", "../a b", "ADT^A01", 7);
        assert_eq!(n, "ADT_A01__a_b.hl7");
        assert_eq!(numbered("x.hl7", 2), "x-2.hl7");
        assert_eq!(numbered("x", 2), "x-2");
    }

    #[test]
    fn a_taken_name_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let body = |text: &'static str| Body::from(vec![Bytes::from_static(text.as_bytes())]);
        let a = write_atomically(dir.path(), "m.hl7", &body("one"), 1).unwrap();
        let b = write_atomically(dir.path(), "m.hl7", &body("two"), 2).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        assert_eq!(b.file_name().unwrap(), "m-1.hl7");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "no temporary file is left behind");
    }
}
