//! Hot reload: the config file and every plugin and script it names are watched, and a
//! change is loaded off the hot path and swapped in whole.
//!
//! A change is taken once the files have been quiet for `[engine] reload_debounce` (a save
//! often comes as several writes, and a deploy as several files), or at once on SIGHUP or
//! [`crate::runtime::Engine::request_reload`]. The new config and every step are loaded and
//! checked first; if anything is wrong (a half-written or invalid file, a syntax error, a
//! plugin built for another interface, a trap at load) the change is refused with a log line
//! naming the file and the error, and the running version keeps serving. Otherwise the new
//! version is swapped in atomically: messages already being processed finish on the version
//! they started with, and each message's stored step records carry the content hash of the
//! plugins and scripts that processed it.
//!
//! The watch is on the directories of the files (not the files), so editors that save by
//! writing a new file and renaming it over the old one are seen, and a file that reappears
//! after being deleted is picked up again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::runtime::Live;

/// Runs until `shutdown`: reloads `live` on file changes, SIGHUP and `requests`.
pub(crate) async fn run(
    mut live: Live,
    mut requests: mpsc::Receiver<ReloadRequest>,
    shutdown: CancellationToken,
) {
    let mut hangup = hangup_signal();
    let (events_tx, mut events) = mpsc::unbounded_channel::<PathBuf>();
    let mut watch = Watch::new(events_tx);
    watch.follow(&live);
    loop {
        let mut reply = None;
        let changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r {
                Some(ReloadRequest(answer)) => {
                    reply = answer;
                    None
                }
                None => {
                    // The engine handle is gone; keep serving files and signals.
                    requests = mpsc::channel(1).1;
                    continue;
                }
            },
            _ = recv_hangup(&mut hangup) => {
                info!("SIGHUP: reloading");
                None
            }
            Some(path) = events.recv() => {
                if !watch.wants(&path) {
                    continue;
                }
                Some(path)
            }
        };
        if let Some(first) = changed {
            if !live.config().engine.watch {
                continue;
            }
            // Debounce: wait until the files are quiet, gathering what changed.
            let mut files = BTreeSet::from([first]);
            let quiet = live.config().engine.reload_debounce;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(quiet) => break,
                    Some(path) = events.recv() => {
                        if watch.wants(&path) {
                            files.insert(path);
                        }
                    }
                }
            }
            let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            info!(files = %files.join(", "), "files changed; reloading");
        }
        let before = live.version();
        let outcome = match live.reload().await {
            Ok(version) => {
                info!(
                    version,
                    previous = before,
                    steps = %live_steps(&live),
                    "reloaded; new messages take the new version"
                );
                Ok(version)
            }
            Err(e) => {
                error!(
                    file = %live.config().source.display(),
                    version = before,
                    error = %e,
                    "reload refused; the running version keeps serving"
                );
                Err(e.to_string())
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
        watch.follow(&live);
    }
}

/// A request to reload (from the engine handle or the admin API); with a channel, the
/// outcome is sent back: the new version's number, or why the reload was refused.
pub(crate) struct ReloadRequest(
    pub(crate) Option<tokio::sync::oneshot::Sender<Result<u64, String>>>,
);

/// The step files of the running version with their content hashes, for the log.
fn live_steps(live: &Live) -> String {
    live.step_files()
        .iter()
        .map(|(name, hash)| format!("{name}@{}", &hash[..hash.len().min(12)]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The file watch: which directories are watched and which files in them matter.
struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
}

impl Watch {
    fn new(events: mpsc::UnboundedSender<PathBuf>) -> Watch {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && !matches!(event.kind, EventKind::Access(_))
            {
                for path in event.paths {
                    let _ = events.send(path);
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch files; reload with SIGHUP");
                None
            }
        };
        Watch {
            watcher,
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    /// Watches the config file and every step file of what is running now.
    fn follow(&mut self, live: &Live) {
        let config = live.config();
        let mut files = BTreeSet::new();
        files.insert(absolute(&config.source));
        for r in &config.routes {
            for s in &r.get_ref().steps {
                if let Some(f) = s.get_ref().file(config) {
                    files.insert(absolute(&f));
                }
            }
        }
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if let Some(w) = &mut self.watcher {
            for gone in self.dirs.difference(&dirs) {
                let _ = w.unwatch(gone);
            }
            for dir in dirs.difference(&self.dirs) {
                if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                    warn!(dir = %dir.display(), error = %e, "cannot watch this directory; reload with SIGHUP");
                }
            }
        }
        self.dirs = dirs;
        self.files = files;
    }

    fn wants(&self, path: &Path) -> bool {
        self.files.contains(path)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

/// Resolves on the next SIGHUP; never when there is none to listen to.
async fn recv_hangup(h: &mut Hangup) {
    #[cfg(unix)]
    if let Some(s) = h {
        if s.recv().await.is_some() {
            return;
        }
        *h = None;
    }
    let _ = h;
    std::future::pending::<()>().await
}
