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
use courier_store::{StepOutcome, StepRecord};
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
    /// `shares[i]`: the first route (`j <= i`) whose steps are the same as route `i`'s —
    /// the same loaded plugins and scripts in the same order, with the same settings — when
    /// every one of them is [`Step::deterministic`]; `None` for a route without steps or with
    /// a step that is not. Routes that share a chain make the same result of the same
    /// message, so the engine runs the chain once per message for all of them.
    pub shares: Vec<Option<usize>>,
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
        Ok(Steps {
            shares: shared_chains(&routes),
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

/// [`Steps::shares`] for these routes' steps.
fn shared_chains(routes: &[Vec<LoadedStep>]) -> Vec<Option<usize>> {
    let same = |a: &[LoadedStep], b: &[LoadedStep]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| Arc::ptr_eq(&x.step, &y.step) && x.settings == y.settings)
    };
    routes
        .iter()
        .map(|chain| {
            if chain.is_empty() || !chain.iter().all(|s| s.step.deterministic()) {
                return None;
            }
            routes.iter().position(|other| same(other, chain))
        })
        .collect()
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
#[derive(Clone)]
pub enum RouteResult {
    /// Send this message (changed or not) to the route's destinations.
    Send(Message),
    /// A step dropped it (filtered); the reason has no patient data.
    Dropped(String),
    /// A step failed; the reason names the step and has no patient data.
    Failed(String),
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
    let mut copy = msg.clone();
    let Some(route_steps) = steps.routes.get(route_index) else {
        return RouteResult::Send(copy);
    };
    let mut last = msg.encode();
    for s in route_steps {
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
                let now = copy.encode();
                if now == last {
                    records.push(record(StepOutcome::Kept, None));
                } else {
                    records.push(record(StepOutcome::Changed(now.clone()), None));
                    last = now;
                }
            }
            Ok(Outcome::Drop { reason }) => {
                let reason = redact(&reason, msg);
                records.push(record(StepOutcome::Dropped, Some(reason.clone())));
                return RouteResult::Dropped(format!("{}: {reason}", s.step.name()));
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
    use super::*;

    struct Fake(bool);

    impl Step for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn content_hash(&self) -> &str {
            "0"
        }
        fn run(
            &self,
            _: &mut Message,
            _: &StepContext,
        ) -> Result<Outcome, courier_plugin::StepError> {
            Ok(Outcome::Keep)
        }
        fn deterministic(&self) -> bool {
            self.0
        }
    }

    fn step(s: &Arc<dyn Step>, setting: &str) -> LoadedStep {
        let mut settings = serde_json::Map::new();
        settings.insert("x".into(), setting.into());
        LoadedStep {
            step: Arc::clone(s),
            kind: "rhai",
            settings: Arc::new(settings),
        }
    }

    #[test]
    fn only_the_same_deterministic_steps_with_the_same_settings_are_shared() {
        let a: Arc<dyn Step> = Arc::new(Fake(true));
        let b: Arc<dyn Step> = Arc::new(Fake(true));
        let clocked: Arc<dyn Step> = Arc::new(Fake(false));
        let routes = vec![
            vec![step(&a, "1")],                      // 0
            vec![step(&a, "1")],                      // 1: the same as 0
            vec![step(&a, "2")],                      // 2: other settings
            vec![step(&b, "1")],                      // 3: another step, the same settings
            vec![],                                   // 4: no steps
            vec![step(&a, "1"), step(&b, "1")],       // 5: a longer chain
            vec![step(&clocked, "1")],                // 6: not deterministic
            vec![step(&clocked, "1")],                // 7: the same, still not shared
            vec![step(&a, "1"), step(&b, "1")],       // 8: the same as 5
            vec![step(&a, "2")],                      // 9: the same as 2
            vec![step(&a, "1"), step(&clocked, "1")], // 10: one step not deterministic
        ];
        assert_eq!(
            shared_chains(&routes),
            vec![
                Some(0),
                Some(0),
                Some(2),
                Some(3),
                None,
                Some(5),
                None,
                None,
                Some(5),
                Some(2),
                None
            ]
        );
    }
}
