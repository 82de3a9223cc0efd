//! The file source: messages dropped as files in a directory.
//!
//! A file may hold one message, several back to back, or an FHS/BHS batch. The directory is
//! scanned every `poll_interval`; a file whose name matches `pattern` (and does not start
//! with `.`) is taken to be completely written once its size and modification time have
//! stayed the same for `settle` (writers that can should still write under a hidden or
//! non-matching name and rename when done). Each file then goes through these steps, every
//! one of which survives a kill -9:
//!
//! 1. **Claim**: renamed into `.courier-work/` (same file system, so atomic) with a progress
//!    file beside it that records the claim time; both directories synced.
//! 2. **Store**: each message goes to the listener's intake, exactly as an MLLP frame would
//!    (routes, steps, duplicate detection, the one store commit). After each message is
//!    answered, the progress file records how many are done and why any was refused (written
//!    to a temporary file, synced, renamed).
//! 3. **Move**: to `processed/`, or to `error/` with a `<name>.error.txt` beside it when a
//!    message could not be read or was refused; then the progress file is removed.
//!
//! After a crash, files left in `.courier-work/` are finished first: messages the progress
//! file counts are skipped, so none is stored twice. The one message that may have been
//! stored just before the crash, before its progress was recorded, is looked up in the store
//! by MSH-3, MSH-4 and MSH-10 among messages received since the claim, and skipped if it is
//! there. If the store cannot take a message (disk full), the file stays claimed and is tried
//! again on the next scan. A file that is not HL7 goes to `error/` with the reason.
//!
//! A file over the listener's `max_frame_size` goes to `error/` unread.
//!
//! One engine per directory: the claim is a rename, so two engines would not share a file, but
//! recovery assumes `.courier-work/` is its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use courier_hl7::{Message, ParseOptions, Path as Hl7Path, ReceivedAck};
use courier_mllp::{Handler, PeerInfo};
use courier_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::file_out::sync_dir;

/// Where claimed files wait while their messages are stored.
pub const WORK_DIR: &str = ".courier-work";
/// Where files go once every message is stored.
pub const PROCESSED_DIR: &str = "processed";
/// Where files go when a message could not be read or was refused.
pub const ERROR_DIR: &str = "error";
const PROGRESS_SUFFIX: &str = ".courier-progress";

/// What the file source needs of a listener's config.
#[derive(Debug, Clone)]
pub struct FileSourceSettings {
    /// The listener's name.
    pub name: String,
    /// The watched directory.
    pub directory: PathBuf,
    /// File name pattern (`*` and `?`).
    pub pattern: String,
    /// How long a file must be unchanged.
    pub settle: Duration,
    /// Scan interval.
    pub poll: Duration,
    /// How messages are split and read.
    pub options: ParseOptions,
    /// Largest file taken, in bytes (the listener's `max_frame_size`); a larger one goes to
    /// `error/` unread.
    pub max_bytes: u64,
}

/// One engine-wide lock per directory, so that a reloaded source waits for the one it
/// replaces to finish its file.
static DIRS: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// Why a file is not finished.
enum Outcome {
    /// Every message answered, and the file moved on.
    Done,
    /// The store could not take a message: try the file again later.
    NotStored,
    /// Told to stop between messages: the file stays claimed and is finished at the next start.
    Stopped,
}

/// Watches the directory until `stop`.
pub async fn run<H: Handler>(
    settings: FileSourceSettings,
    handler: Arc<H>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let lock = DIRS
        .lock()
        .expect("dirs")
        .entry(settings.directory.clone())
        .or_default()
        .clone();
    let _held = tokio::select! {
        g = lock.lock_owned() => g,
        () = stop.cancelled() => return,
    };
    let source = Source {
        peer: PeerInfo {
            listener: settings.name.as_str().into(),
            peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            connection_id: 0,
        },
        pattern: wildmatch::WildMatch::new(&settings.pattern),
        settings,
        handler,
        store,
        stop,
    };
    if let Err(e) = source.prepare() {
        error!(listener = %source.settings.name, directory = %source.settings.directory.display(), error = %e, "cannot use the directory; the file listener is not running");
        return;
    }
    info!(listener = %source.settings.name, directory = %source.settings.directory.display(), "watching");
    source.run().await;
}

struct Source<H> {
    settings: FileSourceSettings,
    pattern: wildmatch::WildMatch,
    peer: PeerInfo,
    handler: Arc<H>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
}

/// A file's size and modification time, and since when they have been so.
#[derive(Clone, Copy, PartialEq)]
struct Seen {
    len: u64,
    modified: SystemTime,
}

impl<H: Handler> Source<H> {
    fn dir(&self, sub: &str) -> PathBuf {
        self.settings.directory.join(sub)
    }

    fn prepare(&self) -> std::io::Result<()> {
        for sub in [WORK_DIR, PROCESSED_DIR, ERROR_DIR] {
            std::fs::create_dir_all(self.dir(sub))?;
        }
        Ok(())
    }

    async fn run(&self) {
        let mut seen: HashMap<String, (Seen, SystemTime)> = HashMap::new();
        loop {
            // Claimed files first: those left by a crash, or that the store refused.
            if !self.finish_claimed().await {
                return;
            }
            let now = SystemTime::now();
            let mut ready = Vec::new();
            let mut present = HashMap::new();
            for (name, s) in self.candidates() {
                let since = match seen.get(&name) {
                    Some((prev, since)) if *prev == s => *since,
                    _ => now,
                };
                let quiet = |t: SystemTime| {
                    now.duration_since(t).unwrap_or_default() >= self.settings.settle
                };
                if quiet(since) && quiet(s.modified) {
                    ready.push(name.clone());
                }
                present.insert(name, (s, since));
            }
            seen = present;
            ready.sort();
            for name in ready {
                if self.stop.is_cancelled() {
                    return;
                }
                seen.remove(&name);
                if let Err(e) = self.claim(&name) {
                    warn!(listener = %self.settings.name, file = %name, error = %e, "cannot claim the file; trying again later");
                    continue;
                }
                match self.finish(&name, false).await {
                    Outcome::Stopped => return,
                    Outcome::NotStored => break,
                    Outcome::Done => {}
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    /// Regular files in the directory that the pattern takes.
    fn candidates(&self) -> Vec<(String, Seen)> {
        let Ok(entries) = std::fs::read_dir(&self.settings.directory) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.starts_with('.') || !self.pattern.matches(&name) {
                    return None;
                }
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        name,
                        Seen {
                            len: meta.len(),
                            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        },
                    )
                })
            })
            .collect()
    }

    fn progress_path(&self, name: &str) -> PathBuf {
        self.dir(WORK_DIR).join(format!("{name}{PROGRESS_SUFFIX}"))
    }

    /// Writes `done claimed_at_micros` and the reasons so far, one a line, durably.
    fn write_progress(
        &self,
        name: &str,
        done: usize,
        claimed: SystemTime,
        reasons: &[String],
    ) -> std::io::Result<()> {
        let path = self.progress_path(name);
        let tmp = self
            .dir(WORK_DIR)
            .join(format!("{name}{PROGRESS_SUFFIX}-tmp"));
        let micros = claimed
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{done} {micros}")?;
            for r in reasons {
                writeln!(f, "{}", r.replace(['\r', '\n'], " "))?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir(WORK_DIR))
    }

    fn read_progress(&self, name: &str) -> (usize, SystemTime, Vec<String>) {
        let text = std::fs::read_to_string(self.progress_path(name)).unwrap_or_default();
        let mut lines = text.lines();
        let mut parts = lines.next().unwrap_or_default().split_whitespace();
        let done = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let claimed = parts
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(SystemTime::UNIX_EPOCH, |m| {
                SystemTime::UNIX_EPOCH + Duration::from_micros(m)
            });
        (done, claimed, lines.map(str::to_owned).collect())
    }

    /// Progress file first (so a claimed file always has one), then the rename.
    fn claim(&self, name: &str) -> std::io::Result<()> {
        let work = self.dir(WORK_DIR).join(name);
        if work.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file of that name is still being processed",
            ));
        }
        self.write_progress(name, 0, SystemTime::now(), &[])?;
        std::fs::rename(self.settings.directory.join(name), &work)?;
        sync_dir(&self.dir(WORK_DIR))?;
        sync_dir(&self.settings.directory)
    }

    /// Finishes every claimed file; false when told to stop.
    async fn finish_claimed(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(self.dir(WORK_DIR)) else {
            return true;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in &names {
            if let Some(file) = name.strip_suffix(PROGRESS_SUFFIX) {
                if !names.iter().any(|n| n == file) {
                    // The file was moved on; its progress file outlived it.
                    let _ = std::fs::remove_file(self.dir(WORK_DIR).join(name));
                }
                continue;
            }
            if name.ends_with(&format!("{PROGRESS_SUFFIX}-tmp")) {
                let _ = std::fs::remove_file(self.dir(WORK_DIR).join(name));
                continue;
            }
            match self.finish(name, true).await {
                Outcome::Stopped => return false,
                Outcome::NotStored => return true,
                Outcome::Done => {}
            }
        }
        true
    }

    /// Stores a claimed file's messages, then moves it on.
    async fn finish(&self, name: &str, recovering: bool) -> Outcome {
        let path = self.dir(WORK_DIR).join(name);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() > self.settings.max_bytes
        {
            let reason = format!(
                "{} bytes: over the max_frame_size limit of {} bytes for one file",
                meta.len(),
                self.settings.max_bytes
            );
            self.move_on(name, &[reason]);
            return Outcome::Done;
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                warn!(listener = %self.settings.name, file = %name, error = %e, "cannot read the claimed file; trying again later");
                return Outcome::NotStored;
            }
        };
        let (done, claimed, mut refused) = self.read_progress(name);
        let batch = match courier_hl7::split_messages(bytes.clone(), &self.settings.options) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("not an HL7 message or batch: {e}");
                self.move_on(name, &[reason]);
                return Outcome::Done;
            }
        };
        let total = batch.messages.len();
        if recovering {
            info!(listener = %self.settings.name, file = %name, messages = total, already_stored = done, "finishing a file claimed before the engine stopped");
        }
        for (i, frame) in batch.messages.into_iter().enumerate().skip(done) {
            if self.stop.is_cancelled() {
                return Outcome::Stopped;
            }
            let n = i + 1;
            let msg = match Message::parse_with(frame.clone(), &self.settings.options)
                .map_err(|e| e.to_string())
                .and_then(|m| {
                    crate::runtime::check_required_fields(&m)
                        .map(|()| m)
                        .map_err(|e| e.text)
                }) {
                Ok(m) => m,
                Err(text) => {
                    warn!(listener = %self.settings.name, file = %name, message = n, error = %text, "not a readable HL7 message; the file goes to error/");
                    refused.push(format!(
                        "message {n} of {total}: not a readable HL7 message: {text}"
                    ));
                    if self.write_progress(name, n, claimed, &refused).is_err() {
                        return Outcome::NotStored;
                    }
                    continue;
                }
            };
            if recovering && i == done && self.already_stored(&msg, claimed).await {
                info!(listener = %self.settings.name, file = %name, message = n, "stored before the engine stopped; not stored again");
            } else {
                // The intake's log lines (accepted, refused) carry the file and message number.
                let ack = self
                    .handler
                    .handle(frame, &self.peer)
                    .instrument(info_span!("file", file = %name, message = n))
                    .await;
                match ack.as_deref().map(ReceivedAck::parse) {
                    None
                    | Some(Ok(ReceivedAck {
                        code: courier_hl7::AckCode::AA | courier_hl7::AckCode::CA,
                        ..
                    })) => {}
                    Some(Ok(a))
                        if a.errors
                            .iter()
                            .any(|e| e.contains(crate::runtime::NOT_STORED)) =>
                    {
                        error!(listener = %self.settings.name, file = %name, message = n, "the store cannot take the message; the file stays claimed and is tried again");
                        return Outcome::NotStored;
                    }
                    Some(Ok(a)) => {
                        let why = a.errors.first().cloned().or(a.text).unwrap_or_default();
                        refused.push(format!(
                            "message {n} of {total} ({}): {} {why}",
                            msg.control_id().unwrap_or_default(),
                            a.code.as_str()
                        ));
                    }
                    Some(Err(e)) => {
                        refused.push(format!("message {n} of {total}: unreadable answer: {e}"))
                    }
                }
            }
            if let Err(e) = self.write_progress(name, n, claimed, &refused) {
                error!(listener = %self.settings.name, file = %name, error = %e, "cannot record progress; the file stays claimed");
                return Outcome::NotStored;
            }
        }
        self.move_on(name, &refused);
        if refused.is_empty() {
            info!(listener = %self.settings.name, file = %name, messages = total, "file processed");
        }
        Outcome::Done
    }

    /// Is this message in the store, received since the file was claimed?
    async fn already_stored(&self, msg: &Message, claimed: SystemTime) -> bool {
        let msh = |n: usize| {
            msg.get(&Hl7Path::new("MSH").with_field(n))
                .unwrap_or_default()
        };
        let since = claimed
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(claimed);
        matches!(
            self.store
                .find_duplicate(
                    &msh(3),
                    &msh(4),
                    &msg.control_id().unwrap_or_default(),
                    since
                )
                .await,
            Ok(Some(_))
        )
    }

    /// To `processed/`, or `error/` with the reasons; then the progress file goes.
    fn move_on(&self, name: &str, reasons: &[String]) {
        let sub = if reasons.is_empty() {
            PROCESSED_DIR
        } else {
            ERROR_DIR
        };
        let to_dir = self.dir(sub);
        let result = (|| -> std::io::Result<PathBuf> {
            let mut target = to_dir.join(name);
            let mut n = 0;
            while target.exists() {
                n += 1;
                target = to_dir.join(format!("{name}.{n}"));
            }
            if !reasons.is_empty() {
                let why = to_dir.join(format!(
                    "{}.error.txt",
                    target.file_name().unwrap_or_default().to_string_lossy()
                ));
                std::fs::write(&why, reasons.join("\n") + "\n")?;
            }
            std::fs::rename(self.dir(WORK_DIR).join(name), &target)?;
            sync_dir(&to_dir)?;
            sync_dir(&self.dir(WORK_DIR))?;
            Ok(target)
        })();
        match result {
            Ok(target) => {
                if !reasons.is_empty() {
                    warn!(listener = %self.settings.name, file = %name, moved_to = %target.display(), reasons = reasons.len(), "file moved to error/ (reasons beside it in .error.txt)");
                }
                let _ = std::fs::remove_file(self.progress_path(name));
            }
            Err(e) => {
                error!(listener = %self.settings.name, file = %name, error = %e, "cannot move the file out of .courier-work; it is finished again (without storing twice) on the next scan")
            }
        }
    }
}
