//! Route steps: loading (compile once, at start or reload) and running them on a message.
//!
//! Each matching route gets its own copy of the message and runs its steps in order; a step
//! keeps (possibly changing the copy), drops (the route sends nothing) or fails (the route
//! sends nothing and the message is recorded as errored). Every step's result is recorded
//! with the content hash of the plugin or script that produced it. Steps are CPU-bound and
//! blocking: the caller runs them off the async worker threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use courier_hl7::Message;
use courier_plugin::script::{ScriptLimits, ScriptStep};
use courier_plugin::wasm::{Grants, WasmLimits, WasmRuntime, WasmRuntimeConfig};
use courier_plugin::{Outcome, Step, StepContext, Tables, redact};
use courier_store::{Payload, StepOutcome, StepRecord};
use tracing::warn;

use sha2::{Digest, Sha256};

use crate::config::{Config, StepConfig};

/// A step ready to run.
pub struct LoadedStep {
    /// The compiled plugin or script.
    pub step: Arc<dyn Step>,
    /// `wasm` or `rhai`, for the store.
    pub kind: &'static str,
    /// Its settings from the config.
    pub settings: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// Why a step could not be loaded: names the route, the step and the file.
#[derive(Debug, thiserror::Error)]
#[error("route {route}, step {index}: {message}")]
pub struct StepLoadError {
    /// The route's name.
    pub route: String,
    /// 1-based position of the step in the route.
    pub index: usize,
    /// What went wrong (the plugin's or script's own error names the file).
    pub message: String,
}

/// The steps of every route, by route index, plus the lookup tables they share.
pub struct Steps {
    /// `routes[i]` are the steps of config route `i`, in order.
    pub routes: Vec<Vec<LoadedStep>>,
    /// `shares[i][k]`: the class of route `i`'s first `k + 1` steps — the first route whose
    /// first `k + 1` steps are the same loaded plugins and scripts, in the same order, with the
    /// same settings — for as long as every one of them is [`Step::deterministic`] (so shorter
    /// than the chain when a step is not). Routes of one class make the same of the same
    /// message up to that step, and [`run_route_shared`] runs those steps once per message.
    pub shares: Vec<Vec<usize>>,
    /// `wanted[i][k]`: another route is in the class of route `i`'s first `k + 1` steps, so
    /// what they make of a message is kept for it.
    wanted: Vec<Vec<bool>>,
    /// The config's lookup tables.
    pub tables: Arc<Tables>,
    /// Kept alive while any WASM step may run (it owns the epoch ticker).
    _runtime: Option<WasmRuntime>,
}

/// Loads the steps of a config, again and again: on a reload, a step whose file, kind and
/// limits are unchanged is reused as it is (no recompilation), and one WASM runtime (one
/// engine, one epoch ticker) serves every version.
pub struct StepLoader {
    cache_dir: Option<PathBuf>,
    runtime: Option<WasmRuntime>,
    /// What the last successful load produced, by what it was loaded from.
    loaded: HashMap<StepKey, Arc<dyn Step>>,
}

/// What makes two loads of a step the same: the file's path and bytes, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StepKey {
    file: PathBuf,
    digest: [u8; 32],
    limits: String,
}

impl Steps {
    /// Compiles every step of the config. `cache_dir` keeps precompiled WASM between runs.
    pub fn load(config: &Config, cache_dir: Option<PathBuf>) -> Result<Steps, StepLoadError> {
        StepLoader::new(cache_dir).load(config)
    }
}

impl StepLoader {
    /// A loader; `cache_dir` keeps precompiled WASM between runs.
    pub fn new(cache_dir: Option<PathBuf>) -> StepLoader {
        StepLoader {
            cache_dir,
            runtime: None,
            loaded: HashMap::new(),
        }
    }

    fn runtime(&mut self) -> Result<WasmRuntime, String> {
        if let Some(rt) = &self.runtime {
            return Ok(rt.clone());
        }
        let rt = WasmRuntime::new(WasmRuntimeConfig {
            cache_dir: self.cache_dir.clone(),
            ..WasmRuntimeConfig::default()
        })
        .map_err(|e| format!("cannot start the WASM runtime: {e}"))?;
        self.runtime = Some(rt.clone());
        Ok(rt)
    }

    /// Compiles every step of the config, reusing what is unchanged since the last load.
    /// Nothing is kept from a load that fails: the previous one stays the reference.
    pub fn load(&mut self, config: &Config) -> Result<Steps, StepLoadError> {
        let mut loaded = HashMap::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut uses_wasm = false;
        for r in &config.routes {
            let rc = r.get_ref();
            let mut steps = Vec::with_capacity(rc.steps.len());
            for (i, s) in rc.steps.iter().enumerate() {
                let sc = s.get_ref();
                let err = |message: String| StepLoadError {
                    route: rc.name.clone(),
                    index: i + 1,
                    message,
                };
                let file = sc.file(config).ok_or_else(|| err("no file".into()))?;
                // A package's settings get the defaults of its manifest's schema (checked at
                // config load).
                let mut table = sc.settings.clone();
                if let Some(p) = &sc.package {
                    p.manifest.apply_settings(&mut table).map_err(&err)?;
                }
                let settings = Arc::new(match serde_json::to_value(&table) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                });
                let bytes = std::fs::read(&file)
                    .map_err(|e| err(format!("cannot read {}: {e}", file.display())))?;
                // An installed package is re-checked against its signed manifest here too: the
                // bytes compiled are the bytes the vendor signed.
                if let Some(p) = &sc.package {
                    let actual = crate::package::sha256_hex(&bytes);
                    if actual != p.component_sha256 {
                        return Err(err(format!(
                            "plugin {}: {} changed since it was verified (sha256 {actual}, the signed manifest says {})",
                            p.manifest.id(),
                            file.display(),
                            p.component_sha256
                        )));
                    }
                }
                let wasm = sc.wasm.is_some() || sc.package.is_some();
                uses_wasm |= wasm;
                let limits = if wasm {
                    format!("{:?}", wasm_limits(sc))
                } else {
                    format!("{:?}", script_limits(sc))
                };
                let key = StepKey {
                    file: file.clone(),
                    digest: Sha256::digest(&bytes).into(),
                    limits,
                };
                let step: Arc<dyn Step> = match self.loaded.get(&key).or(loaded.get(&key)) {
                    Some(step) => step.clone(),
                    None if wasm => {
                        let rt = self.runtime().map_err(&err)?;
                        let plugin = rt
                            .load(&file, wasm_limits(sc))
                            .map_err(|e| err(e.to_string()))?;
                        Arc::new(plugin)
                    }
                    None => Arc::new(
                        ScriptStep::load(&file, script_limits(sc))
                            .map_err(|e| err(e.to_string()))?,
                    ),
                };
                loaded.insert(key, step.clone());
                steps.push(LoadedStep {
                    step,
                    kind: if wasm { "wasm" } else { "rhai" },
                    settings,
                });
            }
            routes.push(steps);
        }
        self.loaded = loaded;
        let (shares, wanted) = shared_prefixes(&routes);
        Ok(Steps {
            shares,
            wanted,
            routes,
            tables: Arc::new(config.tables.clone()),
            _runtime: if uses_wasm {
                self.runtime.clone()
            } else {
                None
            },
        })
    }
}

/// [`Steps::shares`] and [`Steps::wanted`] for these routes' steps.
fn shared_prefixes(routes: &[Vec<LoadedStep>]) -> (Vec<Vec<usize>>, Vec<Vec<bool>>) {
    let same =
        |x: &LoadedStep, y: &LoadedStep| Arc::ptr_eq(&x.step, &y.step) && x.settings == y.settings;
    let shares: Vec<Vec<usize>> = routes
        .iter()
        .map(|chain| {
            let deterministic = chain.iter().take_while(|s| s.step.deterministic()).count();
            (0..deterministic)
                .map(|k| {
                    routes
                        .iter()
                        .position(|other| {
                            other.len() > k
                                && other[..=k]
                                    .iter()
                                    .zip(&chain[..=k])
                                    .all(|(x, y)| same(x, y))
                        })
                        .expect("a route is in its own class")
                })
                .collect()
        })
        .collect();
    let wanted = shares
        .iter()
        .enumerate()
        .map(|(i, classes)| {
            classes
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    shares
                        .iter()
                        .enumerate()
                        .any(|(j, other)| j != i && other.get(k) == Some(c))
                })
                .collect()
        })
        .collect();
    (shares, wanted)
}

fn wasm_limits(sc: &StepConfig) -> WasmLimits {
    // A package gets only the capabilities its manifest asked for, even where the route
    // grants more.
    let grants = match &sc.package {
        Some(p) => p.manifest.narrow_grants(&sc.grants),
        None => sc.grants.clone(),
    };
    WasmLimits {
        deadline: sc.deadline,
        memory: sc.memory_bytes,
        grants: Grants {
            env: grants.env.into_iter().collect(),
            clock: grants.clock,
            random: grants.random,
            ..Grants::default()
        },
        reuse_instance: sc.reuse_instance,
    }
}

fn script_limits(sc: &StepConfig) -> ScriptLimits {
    ScriptLimits {
        deadline: sc.deadline,
        ..ScriptLimits::default()
    }
}

impl Steps {
    /// Every step file with its content hash, for the reload log.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = self
            .routes
            .iter()
            .flatten()
            .map(|s| (s.step.name().to_owned(), s.step.content_hash().to_owned()))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Does route `index` have steps?
    pub fn has_steps(&self, index: usize) -> bool {
        self.routes.get(index).is_some_and(|s| !s.is_empty())
    }
}

/// What one route's steps made of a message.
pub enum RouteResult {
    /// Send this message (changed or not) to the route's destinations.
    Send(Message),
    /// A step dropped it (filtered); the reason has no patient data.
    Dropped(String),
    /// A step failed; the reason names the step and has no patient data.
    Failed(String),
}

/// What the store writes (and the destinations get) for `msg` as it is now: a large changed
/// message as its pieces, so that it shares its unchanged runs with the message as received
/// until the store has written it (the store writes a large blob piece by piece, through its
/// pages).
pub fn payload_of(msg: &Message) -> Payload {
    if msg.is_modified() && msg.encoded_len() >= courier_hl7::LARGE_MESSAGE {
        Payload::from_pieces(msg.pieces())
    } else {
        msg.encode().into()
    }
}

/// Runs the steps of one route on a copy of `msg`, appending a record per step to `records`.
pub fn run_route(
    steps: &Steps,
    route_index: usize,
    route: &Arc<str>,
    control_id: &Arc<str>,
    msg: &Message,
    records: &mut Vec<StepRecord>,
) -> RouteResult {
    let mut alone = SharedSteps::default();
    run_route_shared(
        steps,
        route_index,
        route,
        control_id,
        msg,
        records,
        &mut alone,
    )
}

/// What the routes of one message have made of it so far, for the routes after them that
/// share their first steps ([`Steps::shares`]).
#[derive(Default)]
pub struct SharedSteps {
    /// The class of a route's first `k + 1` steps, `k`, what they made of the message (or the
    /// reason a step dropped it), and where the `k + 1` step records begin in `records`.
    done: Vec<(usize, usize, Result<Message, String>, usize)>,
}

impl SharedSteps {
    fn find(
        &self,
        class: usize,
        k: usize,
    ) -> Option<&(usize, usize, Result<Message, String>, usize)> {
        self.done.iter().find(|d| d.0 == class && d.1 == k)
    }
}

/// Runs the steps of one route like [`run_route`], but takes what another route of this
/// message made with the same first steps ([`Steps::shares`]) from `shared` instead of running
/// them again, and leaves there what later routes may take. The route gets its own records of
/// the steps it took over (the same outcomes and outputs, the bytes shared); those steps ran,
/// logged and were timed once, under the route that ran them. A step that failed is not taken
/// over: the next route runs it itself, and logs and counts its own failure.
pub fn run_route_shared(
    steps: &Steps,
    route_index: usize,
    route: &Arc<str>,
    control_id: &Arc<str>,
    msg: &Message,
    records: &mut Vec<StepRecord>,
    shared: &mut SharedSteps,
) -> RouteResult {
    let Some(route_steps) = steps.routes.get(route_index) else {
        return RouteResult::Send(msg.clone());
    };
    let classes = &steps.shares[route_index];
    let wanted = &steps.wanted[route_index];
    let first = records.len();
    // Take over the most steps another route already ran for this one.
    let taken = (0..classes.len())
        .rev()
        .find_map(|k| shared.find(classes[k], k).map(|d| (k, &d.2, d.3)));
    let (done, mut copy) = match taken {
        None => (0, msg.clone()),
        Some((k, state, from)) => {
            let copied: Vec<StepRecord> = records[from..=from + k]
                .iter()
                .map(|r| StepRecord {
                    route: route.to_string(),
                    ..r.clone()
                })
                .collect();
            records.extend(copied);
            match state {
                Ok(m) => (k + 1, m.clone()),
                Err(reason) => return RouteResult::Dropped(reason.clone()),
            }
        }
    };
    // Keeps what step `k` made for the later routes that share it.
    let mut remember = |k: usize, state: Result<&Message, &str>| {
        if wanted.get(k) == Some(&true) && shared.find(classes[k], k).is_none() {
            let state = state.cloned().map_err(str::to_owned);
            shared.done.push((classes[k], k, state, first));
        }
    };
    let mut last = payload_of(&copy);
    for (k, s) in route_steps.iter().enumerate().skip(done) {
        let ctx = StepContext {
            route: route.clone(),
            control_id: control_id.clone(),
            settings: s.settings.clone(),
            tables: steps.tables.clone(),
        };
        let record = |outcome: StepOutcome, reason: Option<String>| StepRecord {
            route: route.to_string(),
            step: s.step.name().to_owned(),
            kind: s.kind.to_owned(),
            content_hash: s.step.content_hash().to_owned(),
            outcome,
            reason,
        };
        let started = std::time::Instant::now();
        let ran = s.step.run(&mut copy, &ctx);
        crate::metrics::METRICS.step(
            route,
            s.step.name(),
            s.kind,
            started.elapsed(),
            ran.as_ref().err().map(|e| e.kind.word()),
        );
        match ran {
            Ok(Outcome::Keep) => {
                let now = payload_of(&copy);
                if now == last {
                    records.push(record(StepOutcome::Kept, None));
                } else {
                    records.push(record(StepOutcome::Changed(now.clone()), None));
                    last = now;
                }
                remember(k, Ok(&copy));
            }
            Ok(Outcome::Drop { reason }) => {
                let reason = redact(&reason, msg);
                records.push(record(StepOutcome::Dropped, Some(reason.clone())));
                let dropped = format!("{}: {reason}", s.step.name());
                remember(k, Err(&dropped));
                return RouteResult::Dropped(dropped);
            }
            Err(e) => {
                let reason = redact(&e.to_string(), msg);
                warn!(
                    route = %route,
                    control_id = %control_id,
                    step = %s.step.name(),
                    kind = ?e.kind,
                    error = %reason,
                    "step failed; the message is not sent on this route"
                );
                records.push(record(StepOutcome::Error, Some(reason.clone())));
                return RouteResult::Failed(reason);
            }
        }
    }
    RouteResult::Send(copy)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A step that counts its calls; deterministic or not, and dropping or not.
    struct Fake {
        name: &'static str,
        deterministic: bool,
        drops: bool,
        calls: AtomicUsize,
    }

    fn fake(name: &'static str, deterministic: bool, drops: bool) -> Arc<Fake> {
        Arc::new(Fake {
            name,
            deterministic,
            drops,
            calls: AtomicUsize::new(0),
        })
    }

    impl Step for Fake {
        fn name(&self) -> &str {
            self.name
        }
        fn content_hash(&self) -> &str {
            "0"
        }
        fn run(
            &self,
            msg: &mut Message,
            _: &StepContext,
        ) -> Result<Outcome, courier_plugin::StepError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.drops {
                return Ok(Outcome::Drop {
                    reason: "not for this route".into(),
                });
            }
            // Appends its name to PID-2, so the order of the steps shows in the output.
            let now = msg.get(&pid2()).unwrap_or_default();
            msg.set(&pid2(), &format!("{now}{}", self.name)).unwrap();
            Ok(Outcome::Keep)
        }
        fn deterministic(&self) -> bool {
            self.deterministic
        }
    }

    fn pid2() -> courier_hl7::Path {
        courier_hl7::Path::parse("PID-2").unwrap()
    }

    fn step(s: &Arc<Fake>, setting: &str) -> LoadedStep {
        let mut settings = serde_json::Map::new();
        settings.insert("x".into(), setting.into());
        LoadedStep {
            step: Arc::clone(s) as Arc<dyn Step>,
            kind: "rhai",
            settings: Arc::new(settings),
        }
    }

    fn steps(routes: Vec<Vec<LoadedStep>>) -> Steps {
        let (shares, wanted) = shared_prefixes(&routes);
        Steps {
            routes,
            shares,
            wanted,
            tables: Arc::new(Tables::default()),
            _runtime: None,
        }
    }

    #[test]
    fn steps_are_shared_while_the_same_deterministic_steps_have_the_same_settings() {
        let a = fake("a", true, false);
        let b = fake("b", true, false);
        let clocked = fake("clocked", false, false);
        let s = steps(vec![
            vec![step(&a, "1")],                      // 0
            vec![step(&a, "1")],                      // 1: the same as 0
            vec![step(&a, "2")],                      // 2: other settings
            vec![step(&b, "1")],                      // 3: another step, the same settings
            vec![],                                   // 4: no steps
            vec![step(&a, "1"), step(&b, "1")],       // 5: 0's first step, then its own
            vec![step(&clocked, "1")],                // 6: not deterministic
            vec![step(&clocked, "1")],                // 7: the same, still not shared
            vec![step(&a, "1"), step(&b, "1")],       // 8: the same as 5
            vec![step(&a, "1"), step(&clocked, "1")], // 9: 0's first step, then not shared
            vec![step(&clocked, "1"), step(&a, "1")], // 10: nothing after a clocked step
        ]);
        let expected: Vec<Vec<usize>> = vec![
            vec![0],
            vec![0],
            vec![2],
            vec![3],
            vec![],
            vec![0, 5],
            vec![],
            vec![],
            vec![0, 5],
            vec![0],
            vec![],
        ];
        assert_eq!(s.shares, expected);
        assert_eq!(s.wanted[0], vec![true]);
        assert_eq!(s.wanted[2], vec![false]);
        assert_eq!(s.wanted[5], vec![true, true]);
        assert_eq!(s.wanted[9], vec![true]);
    }

    #[test]
    fn each_shared_step_runs_once_per_message_and_every_route_gets_its_records() {
        let a = fake("a", true, false);
        let b = fake("b", true, false);
        let c = fake("c", true, false);
        let drop = fake("d", true, true);
        let s = steps(vec![
            vec![step(&a, "1"), step(&b, "1")],    // 0
            vec![step(&a, "1"), step(&c, "1")],    // 1: shares a with 0
            vec![step(&a, "1"), step(&b, "1")],    // 2: shares a and b with 0
            vec![step(&drop, "1"), step(&b, "1")], // 3
            vec![step(&drop, "1"), step(&c, "1")], // 4: shares the drop with 3
        ]);
        let msg = Message::parse(&b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1\rPID|1|X\r"[..])
            .unwrap();
        let id: Arc<str> = "1".into();
        let mut records = Vec::new();
        let mut shared = SharedSteps::default();
        let outputs: Vec<String> = (0..5)
            .map(|i| {
                let route: Arc<str> = format!("r{i}").into();
                match run_route_shared(&s, i, &route, &id, &msg, &mut records, &mut shared) {
                    RouteResult::Send(m) => m.get(&pid2()).unwrap_or_default(),
                    RouteResult::Dropped(reason) => format!("dropped: {reason}"),
                    RouteResult::Failed(reason) => format!("failed: {reason}"),
                }
            })
            .collect();
        assert_eq!(
            outputs,
            [
                "Xab",
                "Xac",
                "Xab",
                "dropped: d: not for this route",
                "dropped: d: not for this route"
            ]
        );
        let calls = |f: &Fake| f.calls.load(Ordering::SeqCst);
        assert_eq!(
            (calls(&a), calls(&b), calls(&c), calls(&drop)),
            (1, 1, 1, 1)
        );
        let per_route: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.route.clone(), r.step.clone()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("r0", "a"),
            ("r0", "b"),
            ("r1", "a"),
            ("r1", "c"),
            ("r2", "a"),
            ("r2", "b"),
            ("r3", "d"),
            ("r4", "d"),
        ]
        .iter()
        .map(|(r, s)| (r.to_string(), s.to_string()))
        .collect();
        assert_eq!(per_route, expected);
        // The records taken over are the ones made: the same outputs.
        assert_eq!(records[4].outcome, records[0].outcome);
        assert_eq!(records[5].outcome, records[1].outcome);
        assert_eq!(records[2].outcome, records[0].outcome);
        assert_eq!(records[7].outcome, StepOutcome::Dropped);

        // The next message runs them again.
        let mut shared = SharedSteps::default();
        let mut records = Vec::new();
        for i in 0..5 {
            let route: Arc<str> = format!("r{i}").into();
            run_route_shared(&s, i, &route, &id, &msg, &mut records, &mut shared);
        }
        assert_eq!(
            (calls(&a), calls(&b), calls(&c), calls(&drop)),
            (2, 2, 2, 2)
        );
    }
}
