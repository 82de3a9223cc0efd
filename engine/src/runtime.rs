//! The top level: reads a config and wires listeners, routes, the store and destinations
//! together.
//!
//! One message's way: the listener hands each frame to [`Intake`], which parses it and checks
//! the fields every message needs, journals the raw bytes durably, picks the routes and
//! queues a delivery for each of their destinations, then answers as the listener's
//! `ack_policy` says — by default AA/CA as soon as the message is journaled. Anything wrong
//! with the message is answered with AR/AE (CR/CE in enhanced mode) and an ERR segment naming
//! what and where; a message that cannot be stored gets AE, never AA.
//!
//! At start the engine recovers: deliveries that were in flight at a crash are queued again
//! (flagged possible duplicates) and journaled messages that were never processed are
//! processed. Shutdown is one token: listeners stop accepting and finish the message in
//! flight; destinations then deliver what is ready for up to `engine.shutdown_grace`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use courier_hl7::{
    AckCode, AckError, AckMode, ErrorCode, ErrorLocation, LineEndings, Message, ParseOptions, Path,
    Severity, build_ack, build_nak_for_unparsed,
};
use courier_mllp::{Handler, ListenerSettings, PeerInfo};
use courier_store::{
    NewDelivery, NewMessage, Processing, ProcessingStatus, SqliteStore, StepRecord, Store,
    StoreSettings,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{AckPolicy, Config, LineEndingsConfig, UnroutedPolicy, parse_charset};
use crate::destination::durable::{self, Stops, Wake};
use crate::destination::waiters::{Finished, Waiters};
use crate::destination::{self, Delivery, DestinationHandle};
use crate::route::{Envelope, Router};
use crate::steps::{RouteResult, Steps, run_route};

/// A running engine.
pub struct Engine {
    listeners: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Opens the store, recovers what a previous run left, binds every listener (failing
    /// fast if one cannot bind), starts the destination workers and begins serving.
    pub async fn start(config: Config) -> anyhow::Result<Engine> {
        let shutdown = CancellationToken::new();
        let drain = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let workers = TaskTracker::new();
        let names: Vec<Arc<str>> = config
            .destinations
            .iter()
            .map(|d| d.get_ref().name.as_str().into())
            .collect();
        let order_keys = config
            .destinations
            .iter()
            .map(|d| {
                d.get_ref()
                    .order_key
                    .as_ref()
                    .map(|k| Path::parse(k.get_ref()))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .context("destination order_key")?;

        let steps = Steps::load(
            &config,
            config
                .store
                .enabled
                .then(|| config.store_dir().join("plugin-cache")),
        )?;
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
            let waiters = Arc::new(Waiters::default());
            if config
                .listeners
                .iter()
                .any(|l| l.get_ref().ack_policy == AckPolicy::AfterDelivery)
            {
                waiters.enable();
            }
            for r in store.recover_in_flight().await? {
                warn!(
                    control_id = %r.control_id,
                    destination = %r.destination,
                    delivery = %r.id,
                    "was in flight when the engine stopped; it will be sent again, flagged possible duplicate"
                );
            }
            let wakes = config
                .destinations
                .iter()
                .map(|d| {
                    durable::spawn(
                        d.get_ref(),
                        store.clone(),
                        waiters.clone(),
                        &workers,
                        Stops {
                            drain: drain.clone(),
                            stop: hard_stop.clone(),
                        },
                    )
                })
                .collect();
            spawn_pruner(&config, store.clone(), &workers, hard_stop.clone());
            Output::Durable {
                store,
                wakes,
                waiters,
            }
        } else {
            warn!("the store is off: acknowledged messages are lost if the engine stops");
            Output::Memory(
                config
                    .destinations
                    .iter()
                    .map(|d| destination::spawn(d.get_ref(), &workers, hard_stop.clone()))
                    .collect(),
            )
        };
        workers.close();
        let router = Router::new(&config, |name| names.iter().position(|d| &**d == name))?;
        let pipeline = Arc::new(Pipeline {
            router,
            steps,
            names,
            order_keys,
            output,
        });
        pipeline.recover(&config).await?;
        let ack_ids = Arc::new(AckIds::new());

        let listeners_tracker = TaskTracker::new();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let l = l.get_ref();
            let addr: SocketAddr = l.bind.get_ref().parse().context("listener bind address")?;
            let socket = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listener {}: cannot bind {addr}", l.name))?;
            let local = socket.local_addr()?;
            info!(listener = %l.name, addr = %local, "listening");
            bound.push((l.name.clone(), local));
            let intake = Arc::new(Intake {
                listener: l.name.as_str().into(),
                options: listener_options(l)?,
                unrouted: l.unrouted,
                ack_policy: l.ack_policy,
                delivery_wait: l.delivery_wait,
                duplicate_window: l.duplicate_window,
                pipeline: pipeline.clone(),
                ack_ids: ack_ids.clone(),
                shutdown: shutdown.clone(),
            });
            let settings = ListenerSettings {
                name: l.name.clone(),
                max_connections: l.max_connections,
                idle_timeout: l.idle_timeout,
                max_frame_size: l.max_frame_size,
            };
            let token = shutdown.clone();
            let name = l.name.clone();
            listeners_tracker.spawn(async move {
                if let Err(e) = courier_mllp::serve(socket, settings, intake, token).await {
                    warn!(listener = %name, error = %e, "listener stopped with an error");
                }
            });
        }
        listeners_tracker.close();
        drop(pipeline);

        let grace = config.engine.shutdown_grace;
        let token = shutdown.clone();
        let done = tokio::spawn(async move {
            token.cancelled().await;
            listeners_tracker.wait().await;
            info!("listeners closed; delivering what is ready");
            // Durable workers stop once nothing is ready to send; in-memory ones once their
            // queue is empty (the listeners held the last senders). Either way, not beyond
            // the grace period: what is left stays in the store for the next start.
            drain.cancel();
            if tokio::time::timeout(grace, workers.wait()).await.is_err() {
                hard_stop.cancel();
                workers.wait().await;
            }
            hard_stop.cancel();
            info!("stopped");
        });
        Ok(Engine {
            listeners: bound,
            shutdown,
            done,
        })
    }

    /// The address each listener is bound to, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// A token that stops the engine gracefully when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the engine has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

fn listener_options(l: &crate::config::ListenerConfig) -> anyhow::Result<ParseOptions> {
    Ok(ParseOptions {
        line_endings: match l.line_endings {
            LineEndingsConfig::Strict => LineEndings::Strict,
            LineEndingsConfig::Lenient => LineEndings::Lenient,
        },
        default_charset: parse_charset(l.default_charset.get_ref())
            .context("listener default_charset")?,
    })
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

enum Output {
    /// The store's durable queues (the default).
    Durable {
        store: Arc<dyn Store>,
        wakes: Vec<Wake>,
        waiters: Arc<Waiters>,
    },
    /// In-memory bounded queues (`[store] enabled = false`).
    Memory(Vec<DestinationHandle>),
}

struct Pipeline {
    router: Router,
    steps: Steps,
    /// Destination names, by index.
    names: Vec<Arc<str>>,
    /// Each destination's `order_key` path.
    order_keys: Vec<Option<Path>>,
    output: Output,
}

/// What routing and the route steps made of a message.
#[derive(Default)]
struct Processed {
    /// One copy per (route, destination): route name, destination index, bytes, order key.
    copies: Vec<(Arc<str>, usize, Bytes, String)>,
    /// Every step's result, in order.
    steps: Vec<StepRecord>,
    /// Routes that matched.
    matched: usize,
    /// Routes on which a step failed, with the reason (no patient data).
    failures: Vec<String>,
}

impl Processed {
    fn processing(&self, names: &[Arc<str>]) -> Processing {
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
                    destination: names[*d].to_string(),
                    payload: payload.clone(),
                    order_key: key.clone(),
                })
                .collect(),
        }
    }
}

impl Pipeline {
    /// Routes a message and runs each matching route's steps on its own copy. Blocking when
    /// a route has steps: see [`Pipeline::process_async`].
    fn process(&self, listener: &str, env: &Envelope, msg: &Message) -> Processed {
        let mut out = Processed::default();
        let control_id: Arc<str> = msg.control_id().unwrap_or_default().into();
        for route in self.router.select(listener, env, msg) {
            out.matched += 1;
            let changed;
            let sent: &Message = if self.steps.has_steps(route.index) {
                match run_route(
                    &self.steps,
                    route.index,
                    &route.name,
                    &control_id,
                    msg,
                    &mut out.steps,
                ) {
                    RouteResult::Send(m) => {
                        changed = m;
                        &changed
                    }
                    RouteResult::Dropped(_) => continue,
                    RouteResult::Failed(reason) => {
                        out.failures.push(format!("route {}: {reason}", route.name));
                        continue;
                    }
                }
            } else {
                msg
            };
            let payload = sent.encode();
            for &d in &route.destinations {
                let key = self.order_keys[d]
                    .as_ref()
                    .and_then(|p| sent.get(p))
                    .unwrap_or_default();
                out.copies
                    .push((route.name.clone(), d, payload.clone(), key));
            }
        }
        out
    }

    /// [`Pipeline::process`], off the async worker threads when a matching route has steps
    /// (plugins and scripts are CPU-bound).
    async fn process_async(
        self: &Arc<Self>,
        listener: &Arc<str>,
        env: &Envelope,
        msg: &Message,
    ) -> Processed {
        let blocking = self
            .router
            .select(listener, env, msg)
            .any(|r| self.steps.has_steps(r.index));
        if !blocking {
            return self.process(listener, env, msg);
        }
        let (me, listener, env, msg) = (self.clone(), listener.clone(), env.clone(), msg.clone());
        tokio::task::spawn_blocking(move || me.process(&listener, &env, &msg))
            .await
            .unwrap_or_else(|e| Processed {
                failures: vec![format!("route steps panicked: {e}")],
                matched: 1,
                ..Processed::default()
            })
    }

    fn wake(&self, processed: &Processed) {
        if let Output::Durable { wakes, .. } = &self.output {
            for (_, d, _, _) in &processed.copies {
                wakes[*d].wake();
            }
        }
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
            let options = config
                .listeners
                .iter()
                .find(|l| l.get_ref().name == m.message.listener)
                .map(|l| listener_options(l.get_ref()))
                .transpose()?
                .unwrap_or(ParseOptions {
                    line_endings: LineEndings::Lenient,
                    ..ParseOptions::default()
                });
            let processing = match Message::parse_with(m.message.raw.clone(), &options) {
                Ok(msg) => {
                    let env = Envelope::of(&msg);
                    let processed = self.process(&m.message.listener, &env, &msg);
                    store
                        .complete_processing(m.id, processed.processing(&self.names))
                        .await?;
                    self.wake(&processed);
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

/// One listener's message handling.
struct Intake {
    listener: Arc<str>,
    options: ParseOptions,
    unrouted: UnroutedPolicy,
    ack_policy: AckPolicy,
    delivery_wait: Duration,
    duplicate_window: Option<Duration>,
    pipeline: Arc<Pipeline>,
    ack_ids: Arc<AckIds>,
    shutdown: CancellationToken,
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

impl Handler for Intake {
    async fn handle(&self, frame: Bytes, peer: &PeerInfo) -> Option<Bytes> {
        let started = Instant::now();
        let span = info_span!("message", listener = %self.listener, peer = %peer.peer);
        async {
            let msg = match self.parse(&frame) {
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
            let (answer, stored) = match &self.pipeline.output {
                Output::Durable { store, .. } => {
                    self.process_durable(store, &msg, &env, &control_id, peer)
                        .await
                }
                Output::Memory(queues) => (self.process_memory(queues, &msg, &env).await, None),
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
            let code = match AckMode::of(&msg) {
                AckMode::Original => code,
                AckMode::Enhanced { accept, .. } => {
                    if !accept.wants(code.is_accept()) {
                        return None;
                    }
                    commit_code(code)
                }
            };
            let ack = build_ack(&msg, code, error.as_ref(), &self.ack_ids.next(), &hl7_now());
            if let (Some((store, id)), Some(_)) = (stored, self.duplicate_window)
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

impl Intake {
    fn parse(&self, frame: &Bytes) -> Result<Message, AckError> {
        if frame.starts_with(b"FHS") || frame.starts_with(b"BHS") {
            return Err(AckError {
                code: ErrorCode::UnsupportedMessageType,
                location: Some(location("MSH", None)),
                text: "batches (FHS/BHS) are not accepted over MLLP; send one message per frame"
                    .into(),
                severity: Severity::Error,
            });
        }
        let msg = Message::parse_with(frame.clone(), &self.options)
            .map_err(|e| AckError::from_parse_error(&e))?;
        if msg.message_type().code.is_empty() {
            return Err(AckError {
                code: ErrorCode::RequiredFieldMissing,
                location: Some(location("MSH", Some(9))),
                text: "MSH-9 (message type) is empty".into(),
                severity: Severity::Error,
            });
        }
        if msg.control_id().is_none() {
            return Err(AckError {
                code: ErrorCode::RequiredFieldMissing,
                location: Some(location("MSH", Some(10))),
                text: "MSH-10 (message control ID) is empty".into(),
                severity: Severity::Error,
            });
        }
        Ok(msg)
    }

    fn unrouted_answer(&self, env: &Envelope) -> Answer {
        match self.unrouted {
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
        store: &Arc<dyn Store>,
        msg: &Message,
        env: &Envelope,
        control_id: &str,
        peer: &PeerInfo,
    ) -> (Answer, Stored) {
        let msh = |n: usize| msg.get(&Path::new("MSH").with_field(n)).unwrap_or_default();
        let (sending_application, sending_facility) = (msh(3), msh(4));
        if let Some(window) = self.duplicate_window {
            let since = SystemTime::now()
                .checked_sub(window)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match store
                .find_duplicate(&sending_application, &sending_facility, control_id, since)
                .await
            {
                Ok(Some(dup)) => {
                    if let Some(ack) = dup.ack {
                        return (Answer::Replay(ack), None);
                    }
                    // The original is stored but was not answered (e.g. a crash before its
                    // ACK): it is being handled already, so accept without a second copy.
                    return (Answer::Accepted { copies: 0 }, None);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "duplicate check failed; processing the message"),
            }
        }
        let id = match store
            .journal(NewMessage {
                received_at: SystemTime::now(),
                listener: self.listener.to_string(),
                peer: peer.peer.to_string(),
                control_id: control_id.to_owned(),
                message_type: env.message_type.clone(),
                sending_application,
                sending_facility,
                patient_id: msg
                    .get(&Path::new("PID").with_field(3).with_component(1))
                    .unwrap_or_default(),
                raw: msg.encode(),
            })
            .await
        {
            Ok(id) => id,
            Err(e) => {
                error!(error = %e, "cannot store the message; answering AE");
                return (
                    Answer::Refused(
                        AckCode::AE,
                        AckError {
                            code: ErrorCode::ApplicationInternalError,
                            location: None,
                            text: "the message could not be stored; resend it later".into(),
                            severity: Severity::Error,
                        },
                    ),
                    None,
                );
            }
        };
        let stored = Some((store.clone(), id));
        let p = &self.pipeline;
        let processed = p.process_async(&self.listener, env, msg).await;
        let copies = processed.copies.len();
        let recorded = store
            .complete_processing(id, processed.processing(&p.names))
            .await;
        let ids = match recorded {
            Ok(ids) => {
                p.wake(&processed);
                ids
            }
            Err(e) => {
                error!(error = %e, message = %id, "processing could not be recorded; it is processed again at the next start");
                if self.ack_policy == AckPolicy::AfterStore {
                    return (Answer::Accepted { copies }, stored);
                }
                return (
                    Answer::Refused(
                        AckCode::AE,
                        AckError {
                            code: ErrorCode::ApplicationInternalError,
                            location: None,
                            text: "the message was stored but could not be processed yet".into(),
                            severity: Severity::Error,
                        },
                    ),
                    stored,
                );
            }
        };
        if let Some(answer) = self.step_answer(&processed) {
            return (answer, stored);
        }
        if processed.matched == 0 {
            return (self.unrouted_answer(env), stored);
        }
        if copies == 0 || self.ack_policy != AckPolicy::AfterDelivery {
            return (Answer::Accepted { copies }, stored);
        }
        (self.wait_for_delivery(&ids).await, stored)
    }

    /// `after-delivery`: the destinations' verdict, relayed.
    async fn wait_for_delivery(&self, ids: &[courier_store::DeliveryId]) -> Answer {
        let Output::Durable { waiters, .. } = &self.pipeline.output else {
            return Answer::Accepted { copies: ids.len() };
        };
        let receivers: Vec<_> = ids.iter().map(|id| waiters.wait(*id)).collect();
        let all = futures::future::join_all(receivers);
        let results = tokio::select! {
            r = tokio::time::timeout(self.delivery_wait, all) => r.ok(),
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
                        self.delivery_wait.as_secs()
                    ),
                    severity: Severity::Error,
                },
            );
        };
        let finished: Vec<Finished> = results.into_iter().filter_map(Result::ok).collect();
        // Pass-through: one destination's own answer, accept or reject, goes back as it is.
        if let [Finished::Delivered(ack) | Finished::Failed(Some(ack))] = finished.as_slice() {
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

    async fn process_memory(
        &self,
        queues: &[DestinationHandle],
        msg: &Message,
        env: &Envelope,
    ) -> Answer {
        let processed = self.pipeline.process_async(&self.listener, env, msg).await;
        if let Some(answer) = self.step_answer(&processed) {
            return answer;
        }
        if processed.matched == 0 {
            return self.unrouted_answer(env);
        }
        let control_id: Arc<str> = msg.control_id().unwrap_or_default().into();
        let message_type: Arc<str> = env.message_type.as_str().into();
        let received = Instant::now();
        for (route, d, payload, _) in &processed.copies {
            let dest = &queues[*d];
            let delivery = Delivery {
                message: payload.clone(),
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
    fn step_answer(&self, processed: &Processed) -> Option<Answer> {
        if processed.failures.is_empty() || self.ack_policy == AckPolicy::AfterStore {
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
