//! The top level: reads a config and wires listeners, routes, the store and destinations
//! together.
//!
//! One message's way: the listener hands each frame to [`Intake`], which parses it and checks
//! the fields every message needs, picks the routes and runs their steps, then stores the raw
//! bytes, each step's result and a delivery for each destination in one durable commit, and
//! answers as the listener's `ack_policy` says — by default AA/CA as soon as that commit is
//! durable. Anything wrong
//! with the message is answered with AR/AE (CR/CE in enhanced mode) and an ERR segment naming
//! what and where; a message that cannot be stored gets AE, never AA.
//!
//! At start the engine recovers: deliveries that were in flight at a crash are queued again
//! (flagged possible duplicates) and journaled messages that were never processed are
//! processed. Shutdown is one token: listeners stop accepting and finish the message in
//! flight; destinations then deliver what is ready for up to `engine.shutdown_grace`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use courier_hl7::{
    AckCode, AckError, AckMode, ErrorCode, ErrorLocation, LineEndings, Message, ParseOptions, Path,
    Severity, build_ack, build_nak_for_unparsed,
};
use courier_mllp::{Handler, ListenerSettings, PeerInfo};
use courier_store::{
    Journaled, NewDelivery, NewMessage, Payload, Processing, ProcessingStatus, SqliteStore,
    StepRecord, Store, StoreSettings,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::admin::Paused;
use crate::config::{
    AckPolicy, Config, DestinationConfig, ListenerConfig, ListenerKind, UnroutedPolicy,
};
use crate::destination::durable::{self, Stops, Wake};
use crate::destination::waiters::{Finished, Waiters};
use crate::destination::{self, Delivery, DestinationHandle};
use crate::metrics::{METRICS, RouteOutcome};
use crate::reload::ReloadRequest;
use crate::route::{Envelope, Router};
use crate::steps::{RouteResult, SharedSteps, StepLoader, Steps, run_route_shared};

/// A running engine.
pub struct Engine {
    bound: Bound,
    admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    done: JoinHandle<()>,
}

/// Each listener's bound address, by name (changes when a reload adds or moves listeners).
type Bound = Arc<Mutex<Vec<(String, SocketAddr)>>>;

impl Engine {
    /// Opens the store, recovers what a previous run left, binds every listener (failing
    /// fast if one cannot bind), starts the destination workers and begins serving. From
    /// then on the config file and the plugins and scripts it names are watched (unless
    /// `[engine] watch = false`) and reloaded when they change (see the `reload` module).
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let shutdown = CancellationToken::new();
        let tasks = Tasks {
            drain: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            shutdown: shutdown.clone(),
            workers: TaskTracker::new(),
            listeners: TaskTracker::new(),
            ack_ids: Arc::new(AckIds::new()),
            grace: Arc::new(GraceCell(AtomicU64::new(0))),
            paused: Arc::default(),
        };
        tasks.grace.set(config.engine.shutdown_grace);

        let mut loader = StepLoader::new(
            config
                .store
                .enabled
                .then(|| config.store_dir().join("plugin-cache")),
        );
        let steps = loader.load(&config)?;
        let output = if config.store.enabled {
            let dir = config.store_dir();
            let store: Arc<dyn Store> = Arc::new(
                SqliteStore::open(
                    &dir,
                    StoreSettings {
                        fsync: config.store.fsync,
                        max_size_bytes: config.store.max_size_bytes,
                        ..StoreSettings::default()
                    },
                )
                .with_context(|| format!("opening the store in {}", dir.display()))?,
            );
            for r in store.recover_in_flight().await? {
                warn!(
                    control_id = %r.control_id,
                    destination = %r.destination,
                    delivery = %r.id,
                    "was in flight when the engine stopped; it will be sent again, flagged possible duplicate"
                );
            }
            // The pruner stops when the destinations start draining: it must not hold the
            // shutdown for its grace period.
            spawn_pruner(&config, store.clone(), &tasks.workers, tasks.drain.clone());
            Output::Durable {
                store,
                waiters: Arc::new(Waiters::default()),
            }
        } else {
            warn!("the store is off: acknowledged messages are lost if the engine stops");
            Output::Memory
        };
        let mut dests = HashMap::new();
        for d in &config.destinations {
            let d = d.get_ref();
            dests.insert(d.name.clone(), DestWorker::spawn(d, &output, &tasks, None));
        }
        let version = Version::build(1, &config, steps, &dests)?;
        let pipeline = Arc::new(Pipeline {
            current: ArcSwap::from_pointee(version),
            output,
        });
        pipeline.enable_waiters(&config);
        pipeline.recover(&config).await?;

        let bound: Bound = Arc::default();
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let l = l.get_ref();
            let run = ListenerRun::start(l, &pipeline, &tasks, None).await?;
            bound
                .lock()
                .expect("bound")
                .push((l.name.clone(), run.addr));
            listeners.insert(l.name.clone(), run);
        }

        let live = Live {
            config,
            pipeline,
            loader,
            dests,
            listeners,
            bound: bound.clone(),
            tasks: tasks.clone(),
        };
        let (reload, requests) = tokio::sync::mpsc::channel(4);
        let view = EngineView {
            pipeline: live.pipeline.clone(),
            paused: tasks.paused.clone(),
            reload: reload.clone(),
            started_at: SystemTime::now(),
        };
        crate::alerts::spawn(view.clone(), &tasks.workers, tasks.drain.clone());
        let admin = match &live.config.admin {
            Some(cfg) => {
                let cfg = cfg.get_ref();
                let token = cfg.resolve_token().map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(
                    crate::admin::start(cfg, token, view, &tasks.listeners, tasks.shutdown.clone())
                        .await?,
                )
            }
            None => None,
        };
        let reloader = tokio::spawn(crate::reload::run(live, requests, shutdown.clone()));

        let grace = tasks.grace.clone();
        let done = tokio::spawn(async move {
            tasks.shutdown.cancelled().await;
            // The reloader finishes a reload in progress, then stops, dropping what it held
            // (the in-memory queues' last senders among it).
            let _ = reloader.await;
            tasks.listeners.close();
            tasks.listeners.wait().await;
            info!("listeners closed; delivering what is ready");
            // Durable workers stop once nothing is ready to send; in-memory ones once their
            // queue is empty (the listeners held the last senders). Either way, not beyond
            // the grace period: what is left stays in the store for the next start.
            tasks.drain.cancel();
            tasks.workers.close();
            if tokio::time::timeout(grace.get(), tasks.workers.wait())
                .await
                .is_err()
            {
                tasks.hard_stop.cancel();
                tasks.workers.wait().await;
            }
            tasks.hard_stop.cancel();
            info!("stopped");
        });
        Ok(Engine {
            bound,
            admin,
            shutdown,
            reload,
            done,
        })
    }

    /// The admin server's address, if the config has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The address each listener is bound to, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .lock()
            .expect("bound")
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// A token that stops the engine gracefully when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Asks for a reload of the config file and every plugin and script (as SIGHUP does).
    pub fn request_reload(&self) {
        let _ = self.reload.try_send(ReloadRequest(None));
    }

    /// Waits until the engine has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// What the admin server sees of a running engine and may ask of it.
#[derive(Clone)]
pub(crate) struct EngineView {
    pipeline: Arc<Pipeline>,
    paused: Arc<Paused>,
    reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    started_at: SystemTime,
}

impl EngineView {
    /// The config of the version new messages take.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.pipeline.current.load().config.clone()
    }

    /// The running version's number (1 at start, one more per reload).
    pub(crate) fn version(&self) -> u64 {
        self.pipeline.current.load().number
    }

    /// When the engine started.
    pub(crate) fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The store, unless it is off.
    pub(crate) fn store(&self) -> Option<&Arc<dyn Store>> {
        match &self.pipeline.output {
            Output::Durable { store, .. } => Some(store),
            Output::Memory => None,
        }
    }

    /// Operator-paused destinations.
    pub(crate) fn paused(&self) -> &Paused {
        &self.paused
    }

    /// Wakes a destination's worker after an operator changed its queue or state (resumed it,
    /// queued its dead letters again, resent to it); every destination's when `None`.
    pub(crate) fn wake(&self, destination: Option<&str>) {
        let version = self.pipeline.current.load();
        for d in &version.dests {
            if destination.is_none_or(|name| *d.name == *name)
                && let DestOut::Durable(wake) = &d.out
            {
                wake.changed();
            }
        }
    }

    /// In-memory queue depth of a destination (store off), if it has one.
    pub(crate) fn memory_depth(&self, destination: &str) -> Option<usize> {
        let version = self.pipeline.current.load();
        version.dests.iter().find_map(|d| match &d.out {
            DestOut::Memory(h) if *d.name == *destination => Some(h.depth()),
            _ => None,
        })
    }

    /// Reloads the config file and its steps, as SIGHUP does, and says how it went.
    pub(crate) async fn reload(&self) -> Result<u64, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.reload
            .send(ReloadRequest(Some(tx)))
            .await
            .map_err(|_| "the engine is stopping".to_owned())?;
        rx.await.map_err(|_| "the engine is stopping".to_owned())?
    }
}

/// The tokens and trackers every task of the engine hangs on.
#[derive(Clone)]
struct Tasks {
    /// Listeners stop accepting and finish the frame in flight.
    shutdown: CancellationToken,
    /// Destination workers finish what is ready, then stop.
    drain: CancellationToken,
    /// Destination workers stop now.
    hard_stop: CancellationToken,
    /// Destination workers and the pruner.
    workers: TaskTracker,
    /// Listener tasks.
    listeners: TaskTracker,
    ack_ids: Arc<AckIds>,
    /// The shutdown grace period, which a reload may change.
    grace: Arc<GraceCell>,
    /// Destinations an operator paused.
    paused: Arc<Paused>,
}

/// A duration shared between the reloader and the shutdown task.
#[derive(Debug)]
struct GraceCell(AtomicU64);

impl GraceCell {
    fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, d: Duration) {
        self.0.store(
            d.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

fn spawn_pruner(
    config: &Config,
    store: Arc<dyn Store>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let retention = config.store.retention;
    let every = config.store.prune_interval;
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let cutoff = SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match store.prune(cutoff).await {
                Ok(0) => {}
                Ok(n) => info!(pruned = n, "pruned delivered messages past retention"),
                Err(e) => warn!(error = %e, "pruning failed; will try again"),
            }
        }
    });
}

/// Where copies go: the same for the engine's whole life (the store cannot be swapped by a
/// reload).
enum Output {
    /// The store's durable queues (the default).
    Durable {
        store: Arc<dyn Store>,
        waiters: Arc<Waiters>,
    },
    /// In-memory bounded queues (`[store] enabled = false`).
    Memory,
}

/// How a version of the config reaches one destination.
#[derive(Clone)]
enum DestOut {
    /// Wakes the durable worker (the copy itself is in the store).
    Durable(Wake),
    /// The in-memory queue.
    Memory(DestinationHandle),
}

/// One destination's worker, as the reloader tracks it.
struct DestWorker {
    config: DestinationConfig,
    out: DestOut,
    /// Ends the worker after the send in progress (a reload removed or changed it).
    retire: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl DestWorker {
    /// Starts a worker; with `after`, only once that (retired) worker of the same
    /// destination has finished, so two workers never share a queue.
    fn spawn(
        cfg: &DestinationConfig,
        output: &Output,
        tasks: &Tasks,
        after: Option<JoinHandle<()>>,
    ) -> DestWorker {
        let retire = CancellationToken::new();
        match output {
            Output::Durable { store, waiters } => {
                let (wake, task) = durable::spawn(
                    cfg,
                    store.clone(),
                    waiters.clone(),
                    &tasks.workers,
                    Stops {
                        drain: tasks.drain.clone(),
                        stop: tasks.hard_stop.clone(),
                        retire: retire.clone(),
                    },
                    tasks.paused.clone(),
                    after,
                );
                DestWorker {
                    config: cfg.clone(),
                    out: DestOut::Durable(wake),
                    retire,
                    task: Some(task),
                }
            }
            Output::Memory => DestWorker {
                config: cfg.clone(),
                // The worker ends when the last version holding this handle is gone and its
                // queue is delivered: messages already queued still go to the old address.
                out: DestOut::Memory(destination::spawn(
                    cfg,
                    &tasks.workers,
                    tasks.hard_stop.clone(),
                )),
                retire,
                task: None,
            },
        }
    }

    /// Ends the worker after its send in progress; its task, to wait on.
    fn retire(mut self) -> Option<JoinHandle<()>> {
        self.retire.cancel();
        self.task.take()
    }
}

/// One listener, as the reloader tracks it.
struct ListenerRun {
    config: ListenerConfig,
    addr: SocketAddr,
    intake: Arc<Intake>,
    /// Stops this listener alone (a child of the engine's shutdown).
    stop: CancellationToken,
}

impl ListenerRun {
    /// Binds and serves a listener. `replacing`: a listener on the same address being
    /// stopped; the bind is retried for a while as its socket closes.
    async fn start(
        l: &ListenerConfig,
        pipeline: &Arc<Pipeline>,
        tasks: &Tasks,
        replacing: Option<SocketAddr>,
    ) -> anyhow::Result<ListenerRun> {
        if l.kind == ListenerKind::File {
            return Ok(Self::start_file(l, pipeline, tasks));
        }
        let addr: SocketAddr = l.bind.get_ref().parse().context("listener bind address")?;
        let addr = match replacing {
            // `:0` picked a port before: keep it, so senders need not be told.
            Some(old) if addr.port() == 0 && old.ip() == addr.ip() => old,
            _ => addr,
        };
        let mut tries = 0;
        let socket = loop {
            match TcpListener::bind(addr).await {
                Ok(s) => break s,
                Err(e) if replacing.is_some() && tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "address still in use; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("listener {}: cannot bind {addr}", l.name));
                }
            }
        };
        let local = socket.local_addr()?;
        info!(
            listener = %l.name,
            addr = %local,
            tls = l.tls.is_some(),
            mutual_tls = l.tls.as_ref().is_some_and(|t| t.get_ref().client_ca.is_some()),
            "listening"
        );
        let intake = Self::intake_for(l, pipeline, tasks);
        let settings = ListenerSettings {
            name: l.name.clone(),
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            idle_timeout: l.idle_timeout,
            max_frame_size: l.max_frame_size,
            allow: l.allow_parsed.clone(),
            tls: l.tls_loaded.clone(),
            handshake_timeout: l
                .tls
                .as_ref()
                .map_or(courier_mllp::listener::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
                    t.get_ref().handshake_timeout
                }),
        };
        let stop = tasks.shutdown.child_token();
        let token = stop.clone();
        let name = l.name.clone();
        let handler = intake.clone();
        if l.kind == ListenerKind::Http {
            let options = l.parse_options();
            tasks.listeners.spawn(async move {
                if let Err(e) =
                    crate::connectors::http_in::serve(socket, settings, options, handler, token)
                        .await
                {
                    warn!(listener = %name, error = %e, "listener stopped with an error");
                }
            });
        } else {
            tasks.listeners.spawn(async move {
                if let Err(e) = courier_mllp::serve(socket, settings, handler, token).await {
                    warn!(listener = %name, error = %e, "listener stopped with an error");
                }
            });
        }
        Ok(ListenerRun {
            config: l.clone(),
            addr: local,
            intake,
            stop,
        })
    }

    /// The intake for a listener's messages, whatever its transport.
    fn intake_for(l: &ListenerConfig, pipeline: &Arc<Pipeline>, tasks: &Tasks) -> Arc<Intake> {
        Arc::new(Intake {
            listener: l.name.as_str().into(),
            settings: ArcSwap::from_pointee(IntakeSettings::of(l)),
            pipeline: pipeline.clone(),
            ack_ids: tasks.ack_ids.clone(),
            shutdown: tasks.shutdown.clone(),
        })
    }

    /// A file listener: a task watching its directory (see `connectors::file_in`).
    fn start_file(l: &ListenerConfig, pipeline: &Arc<Pipeline>, tasks: &Tasks) -> ListenerRun {
        let intake = Self::intake_for(l, pipeline, tasks);
        let stop = tasks.shutdown.child_token();
        // The config refuses a file listener without the store.
        if let Output::Durable { store, .. } = &pipeline.output {
            let settings = crate::connectors::file_in::FileSourceSettings {
                name: l.name.clone(),
                directory: l
                    .directory
                    .as_ref()
                    .map(|d| d.get_ref().clone())
                    .unwrap_or_default(),
                pattern: l
                    .pattern
                    .as_ref()
                    .map_or("*".to_owned(), |p| p.get_ref().clone()),
                settle: l.settle(),
                poll: l.poll_interval(),
                options: l.parse_options(),
                max_bytes: l.max_frame_size as u64,
            };
            tasks.listeners.spawn(crate::connectors::file_in::run(
                settings,
                intake.clone(),
                store.clone(),
                stop.clone(),
            ));
        }
        ListenerRun {
            config: l.clone(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            intake,
            stop,
        }
    }

    /// Does a change from `self` to `new` need a new socket (rather than new settings)?
    /// Transport settings — limits, allow-list, TLS files — are the listener's own, so a
    /// change to any of them binds it again (its open connections finish their messages on
    /// the old settings). A certificate whose file changes under the same path needs no
    /// rebind: new handshakes pick it up by themselves.
    fn needs_rebind(&self, new: &ListenerConfig) -> bool {
        let old = &self.config;
        if old.kind != ListenerKind::Mllp || new.kind != ListenerKind::Mllp {
            // HTTP and file listeners start again on any change of their own settings.
            return old != new;
        }
        old.bind != new.bind
            || old.max_connections != new.max_connections
            || old.max_connections_per_ip != new.max_connections_per_ip
            || old.idle_timeout != new.idle_timeout
            || old.max_frame_size != new.max_frame_size
            || old.allow_parsed != new.allow_parsed
            || old.tls != new.tls
    }
}

/// What the engine is running, for the reloader to change.
pub(crate) struct Live {
    config: Config,
    pipeline: Arc<Pipeline>,
    loader: StepLoader,
    dests: HashMap<String, DestWorker>,
    listeners: HashMap<String, ListenerRun>,
    bound: Bound,
    tasks: Tasks,
}

/// Why a reload was refused: the running version keeps serving.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// The config file does not load.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// A plugin or script does not load.
    #[error("{0}")]
    Step(#[from] crate::steps::StepLoadError),
    /// Anything else about the new config (an order key, a charset).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Live {
    /// The config file being run.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The step files of the running version with their content hashes.
    pub(crate) fn step_files(&self) -> Vec<(String, String)> {
        self.pipeline.current.load().steps.files()
    }

    /// The version number serving now.
    pub(crate) fn version(&self) -> u64 {
        self.pipeline.current.load().number
    }

    /// Loads the config file and every step again, and if all of it loads, swaps it in:
    /// new messages take the new version while those in flight finish on the old one.
    /// Listeners and destinations that did not change are left alone, connections and all.
    pub(crate) async fn reload(&mut self) -> Result<u64, ReloadError> {
        let mut config = Config::load(&self.config.source)?;
        config.store.dir = self.config.store.dir.clone();
        if config.store != self.config.store {
            warn!(
                "[store] changed; it takes effect at the next restart (the running store is kept)"
            );
            config.store = self.config.store.clone();
        }
        if config.admin != self.config.admin {
            warn!(
                "[admin] changed; it takes effect at the next restart (the running admin server is kept)"
            );
            config.admin = self.config.admin.clone();
        }
        // Check everything before changing anything.
        for d in &config.destinations {
            let d = d.get_ref();
            if let Some(k) = &d.order_key {
                Path::parse(k.get_ref())
                    .with_context(|| format!("destination {}: order_key", d.name))?;
            }
        }
        for l in config
            .listeners
            .iter()
            .filter(|l| l.get_ref().kind != ListenerKind::File)
        {
            let _: SocketAddr = l
                .get_ref()
                .bind
                .get_ref()
                .parse()
                .with_context(|| format!("listener {}: bind address", l.get_ref().name))?;
        }
        let steps = self.loader.load(&config)?;
        let number = self.version() + 1;

        // Destinations: new and changed ones get a worker (a changed one's starts once the
        // old one has finished its send in progress); removed ones are retired.
        for d in &config.destinations {
            let d = d.get_ref();
            match self.dests.get(&d.name) {
                Some(w) if w.config == *d => {}
                Some(_) => {
                    let old = self.dests.remove(&d.name).expect("present");
                    let after = old.retire();
                    info!(destination = %d.name, "destination changed; its worker restarts after the send in progress");
                    let w = DestWorker::spawn(d, &self.pipeline.output, &self.tasks, after);
                    self.dests.insert(d.name.clone(), w);
                }
                None => {
                    info!(destination = %d.name, "destination added");
                    let w = DestWorker::spawn(d, &self.pipeline.output, &self.tasks, None);
                    self.dests.insert(d.name.clone(), w);
                }
            }
        }
        let version = Version::build(number, &config, steps, &self.dests)?;
        let removed: Vec<String> = self
            .dests
            .keys()
            .filter(|n| !config.destinations.iter().any(|d| &d.get_ref().name == *n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(w) = self.dests.remove(&name) {
                warn!(destination = %name, "destination removed; deliveries still queued for it stay in the store");
                w.retire();
            }
        }
        self.pipeline.current.store(Arc::new(version));
        self.pipeline.enable_waiters(&config);
        self.tasks.grace.set(config.engine.shutdown_grace);

        // Listeners: settings change in place; a new address or transport limit means a new
        // socket (the old one finishes its frames in flight); removed ones stop.
        for l in &config.listeners {
            let l = l.get_ref();
            let old = self.listeners.remove(&l.name);
            let replacing = match &old {
                Some(run) if !run.needs_rebind(l) => {
                    let settings = IntakeSettings::of(l);
                    run.intake.settings.store(Arc::new(settings));
                    let mut run = old.expect("present");
                    run.config = l.clone();
                    self.listeners.insert(l.name.clone(), run);
                    continue;
                }
                Some(run) => {
                    info!(listener = %l.name, "listener changed; it is bound again");
                    run.stop.cancel();
                    (run.config.bind == l.bind).then_some(run.addr)
                }
                None => None,
            };
            match ListenerRun::start(l, &self.pipeline, &self.tasks, replacing).await {
                Ok(run) => {
                    self.listeners.insert(l.name.clone(), run);
                }
                Err(e) => {
                    error!(listener = %l.name, error = format!("{e:#}"), "listener could not start")
                }
            }
        }
        let gone: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| !config.listeners.iter().any(|l| &l.get_ref().name == *n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(run) = self.listeners.remove(&name) {
                info!(listener = %name, "listener removed; it finishes its messages in flight and closes");
                run.stop.cancel();
            }
        }
        let mut bound: Vec<(String, SocketAddr)> = self
            .listeners
            .iter()
            .map(|(n, r)| (n.clone(), r.addr))
            .collect();
        bound.sort();
        *self.bound.lock().expect("bound") = bound;
        if config.engine.watch != self.config.engine.watch {
            info!(watch = config.engine.watch, "file watching changed");
        }
        self.config = config;
        Ok(number)
    }
}

/// One version of what a message is processed with: routes, steps and where each
/// destination is. Swapped whole on reload; a message takes one version for its whole way.
pub(crate) struct Version {
    number: u64,
    /// The config this version was built from.
    config: Arc<Config>,
    router: Router,
    steps: Steps,
    /// By destination index (config order): name, order key and where copies go.
    dests: Vec<DestRef>,
}

struct DestRef {
    name: Arc<str>,
    order_key: Option<Path>,
    out: DestOut,
}

impl Version {
    fn build(
        number: u64,
        config: &Config,
        steps: Steps,
        workers: &HashMap<String, DestWorker>,
    ) -> anyhow::Result<Version> {
        let mut dests = Vec::with_capacity(config.destinations.len());
        for d in &config.destinations {
            let d = d.get_ref();
            let order_key = d
                .order_key
                .as_ref()
                .map(|k| Path::parse(k.get_ref()))
                .transpose()
                .with_context(|| format!("destination {}: order_key", d.name))?;
            let out = workers
                .get(&d.name)
                .map(|w| w.out.clone())
                .with_context(|| format!("destination {} has no worker", d.name))?;
            dests.push(DestRef {
                name: d.name.as_str().into(),
                order_key,
                out,
            });
        }
        let router = Router::new(config, |name| dests.iter().position(|d| &*d.name == name))?;
        Ok(Version {
            number,
            config: Arc::new(config.clone()),
            router,
            steps,
            dests,
        })
    }

    /// Routes a message and runs each matching route's steps on its own copy. Blocking when
    /// a route has steps: see [`Pipeline::process`].
    fn process(&self, listener: &str, env: &Envelope, msg: &Message) -> Processed {
        let mut out = Processed::default();
        let control_id: Arc<str> = msg.control_id().unwrap_or_default().into();
        // What the routes so far made of the message, for later routes sharing their steps.
        let mut shared = SharedSteps::default();
        for route in self.router.select(listener, env, msg) {
            out.matched += 1;
            let changed;
            let sent: &Message = if self.steps.has_steps(route.index) {
                let result = run_route_shared(
                    &self.steps,
                    route.index,
                    &route.name,
                    &control_id,
                    msg,
                    &mut out.steps,
                    &mut shared,
                );
                match result {
                    RouteResult::Send(m) => {
                        changed = m;
                        &changed
                    }
                    RouteResult::Dropped(_) => {
                        METRICS.routed(&route.name, RouteOutcome::Filtered);
                        continue;
                    }
                    RouteResult::Failed(reason) => {
                        METRICS.routed(&route.name, RouteOutcome::Error);
                        out.failures.push(format!("route {}: {reason}", route.name));
                        continue;
                    }
                }
            } else {
                msg
            };
            METRICS.routed(&route.name, RouteOutcome::Sent);
            let payload = crate::steps::payload_of(sent);
            for &d in &route.destinations {
                let key = self.dests[d]
                    .order_key
                    .as_ref()
                    .and_then(|p| sent.get(p))
                    .unwrap_or_default();
                out.copies
                    .push((route.name.clone(), d, payload.clone(), key));
            }
        }
        out
    }
}

struct Pipeline {
    /// The version new messages take.
    current: ArcSwap<Version>,
    output: Output,
}

/// What routing and the route steps made of a message.
#[derive(Default)]
struct Processed {
    /// One copy per (route, destination): route name, destination index in the version,
    /// bytes, order key.
    copies: Vec<(Arc<str>, usize, Payload, String)>,
    /// Every step's result, in order.
    steps: Vec<StepRecord>,
    /// Routes that matched.
    matched: usize,
    /// Routes on which a step failed, with the reason (no patient data).
    failures: Vec<String>,
}

impl Processed {
    fn processing(&self, version: &Version) -> Processing {
        let status = if !self.failures.is_empty() {
            ProcessingStatus::Error
        } else if self.matched == 0 {
            ProcessingStatus::Unrouted
        } else if self.copies.is_empty() {
            ProcessingStatus::Filtered
        } else {
            ProcessingStatus::Processed
        };
        Processing {
            status,
            reason: (!self.failures.is_empty()).then(|| self.failures.join("; ")),
            steps: self.steps.clone(),
            deliveries: self
                .copies
                .iter()
                .map(|(route, d, payload, key)| NewDelivery {
                    route: route.to_string(),
                    destination: version.dests[*d].name.to_string(),
                    payload: payload.clone(),
                    order_key: key.clone(),
                })
                .collect(),
        }
    }
}

impl Pipeline {
    /// The current version's processing, off the async worker threads when a matching route
    /// has steps (plugins and scripts are CPU-bound). The message keeps the version it took
    /// here for the rest of its way.
    async fn process(
        self: &Arc<Self>,
        listener: &Arc<str>,
        env: &Envelope,
        msg: &Message,
    ) -> (Arc<Version>, Processed) {
        let version = self.current.load_full();
        let blocking = version
            .router
            .select(listener, env, msg)
            .any(|r| version.steps.has_steps(r.index));
        if !blocking {
            let processed = version.process(listener, env, msg);
            return (version, processed);
        }
        let (v, listener, env, msg) = (version.clone(), listener.clone(), env.clone(), msg.clone());
        let processed = tokio::task::spawn_blocking(move || v.process(&listener, &env, &msg))
            .await
            .unwrap_or_else(|e| Processed {
                failures: vec![format!("route steps panicked: {e}")],
                matched: 1,
                ..Processed::default()
            });
        (version, processed)
    }

    /// `after-delivery` needs the destinations' outcomes reported.
    fn enable_waiters(&self, config: &Config) {
        if let Output::Durable { waiters, .. } = &self.output
            && config
                .listeners
                .iter()
                .any(|l| l.get_ref().ack_policy == AckPolicy::AfterDelivery)
        {
            waiters.enable();
        }
    }

    fn wake(version: &Arc<Version>, processed: &Processed) {
        drop(WakeOnDrop::new(version, processed));
    }

    /// Processes what a previous run journaled but never processed.
    async fn recover(self: &Arc<Self>, config: &Config) -> anyhow::Result<()> {
        let Output::Durable { store, .. } = &self.output else {
            return Ok(());
        };
        let pending = store.unprocessed().await?;
        if pending.is_empty() {
            return Ok(());
        }
        info!(
            messages = pending.len(),
            "processing messages journaled before the last stop"
        );
        for m in pending {
            // Without the segment and field limits: the message was journaled, so it was
            // accepted under the limits of its time, and lowering them since must not turn an
            // accepted message into an error.
            let options = config
                .listeners
                .iter()
                .find(|l| l.get_ref().name == m.message.listener)
                .map(|l| l.get_ref().parse_options())
                .unwrap_or(ParseOptions {
                    line_endings: LineEndings::Lenient,
                    ..ParseOptions::default()
                })
                .unlimited();
            let processing = match Message::parse_with(m.message.raw.clone(), &options) {
                Ok(msg) => {
                    let env = Envelope::of(&msg);
                    let listener: Arc<str> = m.message.listener.as_str().into();
                    let (version, processed) = self.process(&listener, &env, &msg).await;
                    store
                        .complete_processing(m.id, processed.processing(&version))
                        .await?;
                    Pipeline::wake(&version, &processed);
                    continue;
                }
                Err(e) => Processing {
                    status: ProcessingStatus::Error,
                    reason: Some(format!("cannot be parsed any more: {e}")),
                    steps: Vec::new(),
                    deliveries: Vec::new(),
                },
            };
            store.complete_processing(m.id, processing).await?;
        }
        Ok(())
    }
}

/// The destinations a stored message was queued for, woken when this is dropped. The intake
/// keeps it until its own copies of the message and of the frame it was read from are gone,
/// so that a large message's received buffer is freed before its deliveries read their
/// copies back from the store rather than beside them (with a 1 MiB report, the difference
/// between the frame's buffer being freed before the claims or 1.4 MiB more at their peak
/// was a race).
#[must_use = "dropping it wakes the destinations"]
struct WakeOnDrop {
    version: Arc<Version>,
    dests: Vec<usize>,
}

impl WakeOnDrop {
    fn new(version: &Arc<Version>, processed: &Processed) -> WakeOnDrop {
        WakeOnDrop {
            version: version.clone(),
            dests: processed.copies.iter().map(|(_, d, _, _)| *d).collect(),
        }
    }
}

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        for d in &self.dests {
            if let DestOut::Durable(wake) = &self.version.dests[*d].out {
                wake.queued();
            }
        }
    }
}

/// Generates MSH-10 for the engine's own ACKs: unique within a run and across runs.
struct AckIds {
    prefix: String,
    next: AtomicU64,
}

impl AckIds {
    fn new() -> AckIds {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        AckIds {
            prefix: format!("CR{}", base36(secs)),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}.{}", self.prefix, base36(n))
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The current time as an HL7 DTM with offset, e.g. `20261124083012-0500`.
pub fn hl7_now() -> String {
    chrono::Local::now().format("%Y%m%d%H%M%S%z").to_string()
}

/// The ERR text of the AE answered when the store cannot take a message.
pub(crate) const NOT_STORED: &str = "the message could not be stored; resend it later";

/// One listener's message handling.
struct Intake {
    listener: Arc<str>,
    /// Swapped by a reload that changes them (the socket stays).
    settings: ArcSwap<IntakeSettings>,
    pipeline: Arc<Pipeline>,
    ack_ids: Arc<AckIds>,
    shutdown: CancellationToken,
}

/// A listener's settings that apply per message.
struct IntakeSettings {
    options: ParseOptions,
    unrouted: UnroutedPolicy,
    ack_policy: AckPolicy,
    delivery_wait: Duration,
    duplicate_window: Option<Duration>,
    mllp_release: u8,
}

impl IntakeSettings {
    fn of(l: &ListenerConfig) -> IntakeSettings {
        IntakeSettings {
            options: l.parse_options(),
            unrouted: l.unrouted,
            ack_policy: l.ack_policy,
            delivery_wait: l.delivery_wait,
            duplicate_window: l.duplicate_window,
            mllp_release: l.mllp_release,
        }
    }
}

/// How a message was answered.
enum Answer {
    Accepted {
        copies: usize,
    },
    Unrouted,
    Refused(AckCode, AckError),
    /// Pass-through: the destination's own ACK goes back as it is.
    Relay(Bytes),
    /// A duplicate: the original ACK goes back as it was.
    Replay(Bytes),
}

impl Answer {
    /// The acknowledgment code and error an answer of the engine's own is sent with.
    fn code(&self) -> (AckCode, Option<&AckError>) {
        match self {
            Answer::Refused(code, err) => (*code, Some(err)),
            // A relayed or replayed ACK is sent as it is; these are not built from a code.
            Answer::Accepted { .. } | Answer::Unrouted | Answer::Relay(_) | Answer::Replay(_) => {
                (AckCode::AA, None)
            }
        }
    }
}

impl Handler for Intake {
    async fn handle(&self, frame: Bytes, peer: &PeerInfo) -> Option<Bytes> {
        let started = Instant::now();
        METRICS.received(&self.listener);
        let reply = self.respond(frame, peer).await;
        METRICS.acked(
            &self.listener,
            crate::metrics::ack_code(reply.as_deref()),
            started.elapsed(),
        );
        reply
    }
}

impl Intake {
    /// The answer to one frame, as the listener's settings say.
    async fn respond(&self, frame: Bytes, peer: &PeerInfo) -> Option<Bytes> {
        let started = Instant::now();
        let span = info_span!("message", listener = %self.listener, peer = %peer.peer);
        let set = self.settings.load_full();
        let set = &*set;
        if set.mllp_release == 2 {
            return Some(self.commit(set, frame, peer).instrument(span).await);
        }
        async move {
            // Declared first, so dropped last: after the message and the frame (below).
            let mut _wake = None;
            let frame = frame;
            let msg = match self.parse(set, &frame) {
                Ok(m) => m,
                Err(err) => {
                    warn!(
                        code = err.code.code(),
                        error = %err.text,
                        bytes = frame.len(),
                        "rejected: not a readable HL7 message"
                    );
                    return Some(build_nak_for_unparsed(
                        &frame,
                        AckCode::AR,
                        &err,
                        &self.ack_ids.next(),
                        &hl7_now(),
                    ));
                }
            };
            let control_id = msg.control_id().unwrap_or_default();
            let env = Envelope::of(&msg);
            let (answer, stored, decided) = match &self.pipeline.output {
                Output::Durable { store, .. } => {
                    let (answer, stored, decided, woken) = self
                        .process_durable(set, store, &msg, &env, peer, AckStyle::Hl7)
                        .await;
                    _wake = woken;
                    (answer, stored, decided)
                }
                Output::Memory => (self.process_memory(set, &msg, &env).await, None, None),
            };
            let elapsed_us = started.elapsed().as_micros() as u64;
            let (code, error) = match answer {
                Answer::Accepted { copies } => {
                    info!(%control_id, message_type = %env.message_type, copies, elapsed_us, "accepted");
                    (AckCode::AA, None)
                }
                Answer::Unrouted => {
                    info!(%control_id, message_type = %env.message_type, elapsed_us, "accepted; no route wants it (unrouted)");
                    (AckCode::AA, None)
                }
                Answer::Refused(code, err) => {
                    warn!(%control_id, message_type = %env.message_type, ack = code.as_str(), error = %err.text, elapsed_us, "refused");
                    (code, Some(err))
                }
                Answer::Relay(ack) => {
                    info!(%control_id, message_type = %env.message_type, elapsed_us, "delivered; relaying the destination's ACK");
                    return Some(ack);
                }
                Answer::Replay(ack) => {
                    info!(%control_id, message_type = %env.message_type, "duplicate of a message already received; original ACK replayed");
                    return Some(ack);
                }
            };
            if let Some(ack) = decided {
                // Built before the store write and kept in its commit.
                return ack;
            }
            let ack = self.ack_for(&msg, code, error.as_ref())?;
            if let (Some((store, id)), Some(_)) = (stored, set.duplicate_window)
                && let Err(e) = store.record_ack(id, ack.clone()).await
            {
                warn!(error = %e, "could not keep the ACK for duplicate replay");
            }
            Some(ack)
        }
        .instrument(span)
        .await
    }
}

type Stored = Option<(Arc<dyn Store>, courier_store::MessageId)>;

/// The answer a stored message gets when it was decided before the store write, so it went
/// into the same commit (for duplicate replay): `Some(None)` when the sender asked for no
/// ACK of that kind (MSH-15), `None` when it waits for a delivery and is kept afterwards.
type Decided = Option<Option<Bytes>>;

/// Which kind of answer a listener sends for a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckStyle {
    /// An HL7 ACK (MSA), as MSH-15/16 ask.
    Hl7,
    /// MLLP release 2's commit acknowledgement.
    Commit,
}

impl Intake {
    /// MLLP release 2: the answer is a commit acknowledgement, ACK once the message is
    /// durably stored and NAK when it could not be (the sender then sends it again). The
    /// transport has no way to refuse content, so a message that cannot be read is stored
    /// too, recorded as errored with the reason, where `courier messages list --status error`
    /// finds it: nothing a sender handed over is lost.
    async fn commit(&self, set: &IntakeSettings, frame: Bytes, peer: &PeerInfo) -> Bytes {
        let Output::Durable { store, .. } = &self.pipeline.output else {
            // The config refuses release 2 without the store.
            return Bytes::from_static(courier_mllp::COMMIT_NAK);
        };
        let started = Instant::now();
        let msg = match self.parse(set, &frame) {
            Ok(m) => m,
            Err(err) => {
                let stored = self.journal_unreadable(store, &frame, &err, peer).await;
                return if stored {
                    warn!(code = err.code.code(), error = %err.text, bytes = frame.len(), "not a readable HL7 message; stored as errored (release 2 commit ACK sent)");
                    Bytes::from_static(courier_mllp::COMMIT_ACK)
                } else {
                    Bytes::from_static(courier_mllp::COMMIT_NAK)
                };
            }
        };
        let control_id = msg.control_id().unwrap_or_default();
        let env = Envelope::of(&msg);
        let (answer, stored, decided, wake) = self
            .process_durable(set, store, &msg, &env, peer, AckStyle::Commit)
            .await;
        drop(wake);
        let elapsed_us = started.elapsed().as_micros() as u64;
        let reply = match (&answer, &stored) {
            (Answer::Refused(_, err), None) => {
                warn!(%control_id, message_type = %env.message_type, error = %err.text, elapsed_us, "not stored; commit NAK sent, the sender will resend");
                courier_mllp::COMMIT_NAK
            }
            (Answer::Refused(_, err), Some(_)) => {
                warn!(%control_id, message_type = %env.message_type, error = %err.text, elapsed_us, "stored, with an error recorded; commit ACK sent");
                courier_mllp::COMMIT_ACK
            }
            (Answer::Replay(_), _) => {
                info!(%control_id, message_type = %env.message_type, "duplicate of a message already stored; commit ACK sent");
                courier_mllp::COMMIT_ACK
            }
            _ => {
                info!(%control_id, message_type = %env.message_type, elapsed_us, "stored; commit ACK sent");
                courier_mllp::COMMIT_ACK
            }
        };
        if let (None, Some((store, id)), Some(_)) = (decided, &stored, set.duplicate_window)
            && let Err(e) = store
                .record_ack(*id, Bytes::from_static(courier_mllp::COMMIT_ACK))
                .await
        {
            warn!(error = %e, "could not keep the ACK for duplicate replay");
        }
        Bytes::from_static(reply)
    }

    /// Stores a frame that is not a readable message, recorded as errored; false if the
    /// store failed.
    async fn journal_unreadable(
        &self,
        store: &Arc<dyn Store>,
        frame: &Bytes,
        err: &AckError,
        peer: &PeerInfo,
    ) -> bool {
        let journaled = store
            .journal(NewMessage {
                received_at: SystemTime::now(),
                listener: self.listener.to_string(),
                peer: peer.peer.to_string(),
                control_id: String::new(),
                message_type: String::new(),
                sending_application: String::new(),
                sending_facility: String::new(),
                patient_id: String::new(),
                raw: frame.clone(),
                ack: None,
            })
            .await;
        let id = match journaled {
            Ok(id) => id,
            Err(e) => {
                error!(error = %e, "cannot store the frame; commit NAK sent");
                return false;
            }
        };
        let processing = Processing {
            status: ProcessingStatus::Error,
            reason: Some(format!("not a readable HL7 message: {}", err.text)),
            steps: Vec::new(),
            deliveries: Vec::new(),
        };
        if let Err(e) = store.complete_processing(id, processing).await {
            // Stored all the same: the next start records it as unreadable.
            warn!(error = %e, message = %id, "could not record why the message is unreadable");
        }
        true
    }

    fn parse(&self, set: &IntakeSettings, frame: &Bytes) -> Result<Message, AckError> {
        if frame.starts_with(b"FHS") || frame.starts_with(b"BHS") {
            return Err(AckError {
                code: ErrorCode::UnsupportedMessageType,
                location: Some(location("MSH", None)),
                text: "batches (FHS/BHS) are not accepted over MLLP; send one message per frame"
                    .into(),
                severity: Severity::Error,
            });
        }
        let msg = Message::parse_with(frame.clone(), &set.options)
            .map_err(|e| AckError::from_parse_error(&e))?;
        check_required_fields(&msg)?;
        Ok(msg)
    }

    fn unrouted_answer(&self, set: &IntakeSettings, env: &Envelope) -> Answer {
        match set.unrouted {
            UnroutedPolicy::Accept => Answer::Unrouted,
            UnroutedPolicy::Reject => Answer::Refused(
                AckCode::AR,
                AckError {
                    code: ErrorCode::UnsupportedMessageType,
                    location: Some(location("MSH", Some(9))),
                    text: format!(
                        "no route accepts {} on listener {}",
                        env.message_type, self.listener
                    ),
                    severity: Severity::Error,
                },
            ),
        }
    }

    async fn process_durable(
        &self,
        set: &IntakeSettings,
        store: &Arc<dyn Store>,
        msg: &Message,
        env: &Envelope,
        peer: &PeerInfo,
        style: AckStyle,
    ) -> (Answer, Stored, Decided, Option<WakeOnDrop>) {
        let control_id = msg.control_id().unwrap_or_default();
        let msh = |n: usize| msg.get(&Path::new("MSH").with_field(n)).unwrap_or_default();
        let (sending_application, sending_facility) = (msh(3), msh(4));
        let mut message = NewMessage {
            received_at: SystemTime::now(),
            listener: self.listener.to_string(),
            peer: peer.peer.to_string(),
            control_id,
            message_type: env.message_type.clone(),
            sending_application,
            sending_facility,
            patient_id: msg
                .get(&Path::new("PID").with_field(3).with_component(1))
                .unwrap_or_default(),
            raw: msg.encode(),
            ack: None,
        };
        // The steps run before anything is written, so the raw message and its processing
        // share one commit; if that commit fails nothing is stored, and the sender gets AE and
        // sends the message again.
        let (version, processed) = self.pipeline.process(&self.listener, env, msg).await;
        // Unless it waits for a delivery, the answer is known now: its ACK is built here and
        // kept in the same commit, rather than in a second write the sender would wait for.
        let answer = self.answer_when_stored(set, env, &processed);
        let decided: Decided = answer.as_ref().map(|answer| match style {
            AckStyle::Hl7 => {
                let (code, error) = answer.code();
                self.ack_for(msg, code, error)
            }
            AckStyle::Commit => Some(Bytes::from_static(courier_mllp::COMMIT_ACK)),
        });
        if set.duplicate_window.is_some() {
            message.ack = decided.clone().flatten();
        }
        // The duplicate check is part of the write: a resend that arrives while its original
        // is still being processed is found too, and the intake waits for one store round trip
        // instead of a read and then a write.
        let processing = processed.processing(&version);
        let journaled = match set.duplicate_window {
            Some(window) => {
                let since = SystemTime::now()
                    .checked_sub(window)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                store
                    .journal_processed_once(message, processing, since)
                    .await
            }
            None => store
                .journal_processed(message, processing)
                .await
                .map(|(id, deliveries)| Journaled::Stored { id, deliveries }),
        };
        let (id, ids) = match journaled {
            Ok(Journaled::Stored { id, deliveries }) => (id, deliveries),
            Ok(Journaled::Duplicate(original)) => {
                // Nothing of this copy was written; what its steps made is dropped.
                return match original.ack {
                    Some(ack) => (Answer::Replay(ack), None, None, None),
                    // The original is stored but was not answered (yet, or a crash came before
                    // its ACK): it is being handled already, so accept without a second copy.
                    None => (Answer::Accepted { copies: 0 }, None, None, None),
                };
            }
            Err(e) => {
                error!(error = %e, "cannot store the message; answering AE");
                return (
                    Answer::Refused(
                        AckCode::AE,
                        AckError {
                            code: ErrorCode::ApplicationInternalError,
                            location: None,
                            text: NOT_STORED.into(),
                            severity: Severity::Error,
                        },
                    ),
                    None,
                    None,
                    None,
                );
            }
        };
        let wake = WakeOnDrop::new(&version, &processed);
        drop(processed);
        let stored = Some((store.clone(), id));
        match answer {
            Some(answer) => (answer, stored, decided, Some(wake)),
            None => {
                // Its deliveries are what it waits for.
                drop(wake);
                (self.wait_for_delivery(set, &ids).await, stored, None, None)
            }
        }
    }

    /// The answer to a message once it is stored, unless it waits for a delivery (`None`).
    fn answer_when_stored(
        &self,
        set: &IntakeSettings,
        env: &Envelope,
        processed: &Processed,
    ) -> Option<Answer> {
        if let Some(answer) = self.step_answer(set, processed) {
            return Some(answer);
        }
        if processed.matched == 0 {
            return Some(self.unrouted_answer(set, env));
        }
        if processed.copies.is_empty() || set.ack_policy != AckPolicy::AfterDelivery {
            return Some(Answer::Accepted {
                copies: processed.copies.len(),
            });
        }
        None
    }

    /// The ACK for a final answer, in the mode the sender asked for: `None` when its MSH-15
    /// wants no ACK of that kind.
    fn ack_for(&self, msg: &Message, code: AckCode, error: Option<&AckError>) -> Option<Bytes> {
        let code = match AckMode::of(msg) {
            AckMode::Original => code,
            AckMode::Enhanced { accept, .. } => {
                if !accept.wants(code.is_accept()) {
                    return None;
                }
                commit_code(code)
            }
        };
        Some(build_ack(
            msg,
            code,
            error,
            &self.ack_ids.next(),
            &hl7_now(),
        ))
    }

    /// `after-delivery`: the destinations' verdict, relayed.
    async fn wait_for_delivery(
        &self,
        set: &IntakeSettings,
        ids: &[courier_store::DeliveryId],
    ) -> Answer {
        let Output::Durable { waiters, .. } = &self.pipeline.output else {
            return Answer::Accepted { copies: ids.len() };
        };
        let receivers: Vec<_> = ids.iter().map(|id| waiters.wait(*id)).collect();
        let all = futures::future::join_all(receivers);
        let results = tokio::select! {
            r = tokio::time::timeout(set.delivery_wait, all) => r.ok(),
            _ = self.shutdown.cancelled() => None,
        };
        let Some(results) = results else {
            for id in ids {
                waiters.forget(*id);
            }
            return Answer::Refused(
                AckCode::AE,
                AckError {
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    text: format!(
                        "not delivered within {} s; it stays queued and will be delivered",
                        set.delivery_wait.as_secs()
                    ),
                    severity: Severity::Error,
                },
            );
        };
        let finished: Vec<Finished> = results.into_iter().filter_map(Result::ok).collect();
        // Pass-through: one destination's own answer, accept or reject, goes back as it is.
        // Only an HL7 ACK is relayed: a file or HTTP destination's record of its outcome is not.
        if let [Finished::Delivered(ack) | Finished::Failed(Some(ack))] = finished.as_slice()
            && ack.starts_with(b"MSH")
        {
            return Answer::Relay(ack.clone());
        }
        if finished.len() == ids.len()
            && finished.iter().all(|f| matches!(f, Finished::Delivered(_)))
        {
            return Answer::Accepted { copies: ids.len() };
        }
        Answer::Refused(
            AckCode::AR,
            AckError {
                code: ErrorCode::ApplicationInternalError,
                location: None,
                text: "a destination rejected the message".into(),
                severity: Severity::Error,
            },
        )
    }

    async fn process_memory(&self, set: &IntakeSettings, msg: &Message, env: &Envelope) -> Answer {
        let (version, processed) = self.pipeline.process(&self.listener, env, msg).await;
        if let Some(answer) = self.step_answer(set, &processed) {
            return answer;
        }
        if processed.matched == 0 {
            return self.unrouted_answer(set, env);
        }
        let control_id: Arc<str> = msg.control_id().unwrap_or_default().into();
        let message_type: Arc<str> = env.message_type.as_str().into();
        let received = Instant::now();
        // A route's copies share one payload: a large one held as pieces is joined once.
        let mut joined: Option<(&Payload, Bytes)> = None;
        for (route, d, payload, _) in &processed.copies {
            let DestOut::Memory(dest) = &version.dests[*d].out else {
                continue;
            };
            let message = match &joined {
                Some((p, bytes)) if *p == payload => bytes.clone(),
                _ => {
                    let bytes = payload.to_bytes();
                    joined = Some((payload, bytes.clone()));
                    bytes
                }
            };
            let delivery = Delivery {
                message,
                control_id: control_id.clone(),
                message_type: message_type.clone(),
                route: route.clone(),
                received,
            };
            let queued = tokio::select! {
                biased;
                r = dest.enqueue(delivery) => r.is_ok(),
                _ = self.shutdown.cancelled() => false,
            };
            if !queued {
                // Copies already queued for other destinations will still go out: the
                // sender resends on AE, which is at-least-once, never loss.
                return Answer::Refused(
                    AckCode::AE,
                    AckError {
                        code: ErrorCode::ApplicationInternalError,
                        location: None,
                        text: format!(
                            "engine is shutting down; destination {} did not take the message, resend it",
                            dest.name()
                        ),
                        severity: Severity::Error,
                    },
                );
            }
        }
        Answer::Accepted {
            copies: processed.copies.len(),
        }
    }

    /// With `after-processing` (or `after-delivery`), a failed step answers AE naming the
    /// route and step; with `after-store` the message was accepted when it was stored, and
    /// the failure is in the store and the log.
    fn step_answer(&self, set: &IntakeSettings, processed: &Processed) -> Option<Answer> {
        if processed.failures.is_empty() || set.ack_policy == AckPolicy::AfterStore {
            return None;
        }
        Some(Answer::Refused(
            AckCode::AE,
            AckError {
                code: ErrorCode::ApplicationInternalError,
                location: None,
                text: processed.failures.join("; "),
                severity: Severity::Error,
            },
        ))
    }
}

/// The fields every message needs before the engine takes it: MSH-9 (to route it) and
/// MSH-10 (to acknowledge it). Route tests apply the same check.
pub(crate) fn check_required_fields(msg: &Message) -> Result<(), AckError> {
    let missing = |field: usize, text: &str| AckError {
        code: ErrorCode::RequiredFieldMissing,
        location: Some(location("MSH", Some(field))),
        text: text.into(),
        severity: Severity::Error,
    };
    if msg.message_type().code.is_empty() {
        return Err(missing(9, "MSH-9 (message type) is empty"));
    }
    if msg.control_id().is_none() {
        return Err(missing(10, "MSH-10 (message control ID) is empty"));
    }
    Ok(())
}

fn location(segment: &str, field: Option<usize>) -> ErrorLocation {
    ErrorLocation {
        segment: segment.into(),
        sequence: 1,
        field,
        component: None,
    }
}

/// Enhanced mode answers with commit codes.
fn commit_code(code: AckCode) -> AckCode {
    match code {
        AckCode::AA | AckCode::CA => AckCode::CA,
        AckCode::AE | AckCode::CE => AckCode::CE,
        AckCode::AR | AckCode::CR => AckCode::CR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_are_unique_and_short() {
        let ids = AckIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(a.len() <= 20, "{a}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "Z");
        assert_eq!(base36(36), "10");
    }
}
