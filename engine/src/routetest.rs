//! Route tests: cases kept next to a config (`tests/*.toml`), each a message and what the
//! config's routes must make of it, run through the production path — the listener's parse
//! options, [`Router::select`] and [`run_route`] with the steps compiled by [`Steps::load`] —
//! without sockets or a store. `courier test` (engine/src/cli/test.rs) finds the files, runs
//! the cases and prints the reports; the format is documented in docs/route-tests.md.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use courier_hl7::{Message, Path, split_messages};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{Config, ConfigError, line_col};
use crate::route::{Envelope, Router};
use crate::steps::{RouteResult, StepLoadError, Steps, run_route};

/// A test file that cannot be used: unreadable, malformed, or naming what the config lacks.
/// The same errors, with file, line and key, as a config file's.
pub type TestFileError = ConfigError;

/// Why the routes of a config could not be set up for testing.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The routes' matching rules did not compile.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A plugin or script did not load.
    #[error(transparent)]
    Steps(#[from] StepLoadError),
}

/// What a route did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    /// Its steps kept the message: it goes to the route's destinations.
    Send,
    /// A step dropped (filtered) it.
    Drop,
    /// A step failed.
    Error,
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutcomeKind::Send => "send",
            OutcomeKind::Drop => "drop",
            OutcomeKind::Error => "error",
        })
    }
}

/// One test file: `[[case]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// The cases, in file order.
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<CaseSpec>>,
}

/// One `[[case]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    /// What the case checks, shown in the report.
    name: Spanned<String>,
    /// A file holding the message, relative to the test file.
    #[serde(default)]
    message: Option<Spanned<PathBuf>>,
    /// The message inline; `\n` ends a segment.
    #[serde(default)]
    hl7: Option<Spanned<String>>,
    /// The listener the message comes in on; default: the config's first.
    #[serde(default)]
    listener: Option<Spanned<String>>,
    /// Exactly the routes that match (any order).
    #[serde(default)]
    routes: Option<Spanned<Vec<Spanned<String>>>>,
    /// `true`: no route matches; `false`: at least one does.
    #[serde(default)]
    unrouted: Option<Spanned<bool>>,
    /// Per route: what it must do with the message.
    #[serde(default, rename = "route")]
    expect: BTreeMap<Spanned<String>, Spanned<RouteSpec>>,
}

/// One `[case.route.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    /// `send` (default), `drop` or `error`.
    #[serde(default)]
    outcome: Option<Spanned<OutcomeKind>>,
    /// A text the drop or error reason must contain.
    #[serde(default)]
    reason: Option<Spanned<String>>,
    /// Values the sent message must have at these paths.
    #[serde(default)]
    values: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Paths that must be absent or empty in the sent message.
    #[serde(default)]
    absent: Vec<Spanned<String>>,
    /// Texts that must appear nowhere in the sent message.
    #[serde(default)]
    not_contains: Vec<Spanned<String>>,
    /// `true`: the message is sent exactly as it came in.
    #[serde(default)]
    unchanged: Option<Spanned<bool>>,
}

/// A loaded test file.
#[derive(Debug)]
pub struct TestFile {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Its cases, in file order.
    pub cases: Vec<Case>,
}

/// One test case, resolved against the config.
#[derive(Debug)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// The test file.
    pub file: PathBuf,
    /// 1-based line of its `[[case]]`.
    pub line: usize,
    /// The listener the message comes in on.
    pub listener: String,
    /// The message as the listener would receive it (segments end with `\r`).
    pub input: Bytes,
    /// Exactly the routes that must match; `Some(empty)` for `unrouted = true`.
    pub routes: Option<Vec<String>>,
    /// `unrouted = false`: at least one route must match.
    pub routed: bool,
    /// What each named route must do, in config order.
    pub expect: Vec<RouteExpect>,
}

/// What one route must do with a case's message.
#[derive(Debug)]
pub struct RouteExpect {
    /// The route's name.
    pub route: String,
    /// Send, drop or error.
    pub outcome: OutcomeKind,
    /// A text the drop or error reason must contain.
    pub reason: Option<String>,
    /// `(path, expected value)` on the sent message.
    pub values: Vec<(Path, String)>,
    /// Paths absent or empty on the sent message.
    pub absent: Vec<Path>,
    /// Texts found nowhere in the sent message.
    pub not_contains: Vec<String>,
    /// The sent message equals the input byte for byte.
    pub unchanged: bool,
}

impl TestFile {
    /// Reads and validates a test file against `config`: listeners and routes must exist,
    /// paths must parse, message files must hold exactly one message.
    pub fn load(path: &FsPath, config: &Config) -> Result<TestFile, TestFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TestFileError::Io {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, config)
    }

    /// Parses and validates test-file text; `path` names it in errors and anchors `message`
    /// paths.
    pub fn parse(text: &str, path: &FsPath, config: &Config) -> Result<TestFile, TestFileError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().unwrap_or(0..0).start);
            TestFileError::Syntax {
                file: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
                text: text.lines().nth(line - 1).unwrap_or("").trim().to_owned(),
            }
        })?;
        let v = Resolver { text, file: path };
        if spec.cases.is_empty() {
            return Err(v.err(0..0, "case".into(), "no [[case]] in this file"));
        }
        let cases = spec
            .cases
            .iter()
            .enumerate()
            .map(|(i, c)| v.case(i, c, config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TestFile {
            path: path.to_owned(),
            cases,
        })
    }
}

struct Resolver<'a> {
    text: &'a str,
    file: &'a FsPath,
}

impl Resolver<'_> {
    fn err(&self, span: Range<usize>, key: String, message: impl Into<String>) -> TestFileError {
        TestFileError::Invalid {
            file: self.file.to_owned(),
            line: line_col(self.text, span.start).0,
            key,
            message: message.into(),
        }
    }

    fn case(
        &self,
        i: usize,
        c: &Spanned<CaseSpec>,
        config: &Config,
    ) -> Result<Case, TestFileError> {
        let spec = c.get_ref();
        let key = |k: &str| format!("case[{i}].{k}");
        let name = spec.name.get_ref().trim();
        if name.is_empty() {
            return Err(self.err(spec.name.span(), key("name"), "must not be empty"));
        }
        let input = match (&spec.message, &spec.hl7) {
            (Some(m), None) => self.message_file(m, key("message"))?,
            (None, Some(h)) => self.inline(h, key("hl7"))?,
            _ => {
                return Err(self.err(
                    c.span(),
                    key("message"),
                    "a case has exactly one of message = \"file.hl7\" or hl7 = '''...'''",
                ));
            }
        };
        let listener = match &spec.listener {
            Some(l) => {
                if !config
                    .listeners
                    .iter()
                    .any(|x| &x.get_ref().name == l.get_ref())
                {
                    return Err(self.err(
                        l.span(),
                        key("listener"),
                        format!(
                            "no listener named `{}` in {}",
                            l.get_ref(),
                            config.source.display()
                        ),
                    ));
                }
                l.get_ref().clone()
            }
            None => match config.listeners.first() {
                Some(l) => l.get_ref().name.clone(),
                None => {
                    return Err(self.err(
                        c.span(),
                        key("listener"),
                        format!("{} has no listener", config.source.display()),
                    ));
                }
            },
        };
        let route_index = |name: &Spanned<String>, k: String| {
            config
                .routes
                .iter()
                .position(|r| &r.get_ref().name == name.get_ref())
                .ok_or_else(|| {
                    self.err(
                        name.span(),
                        k,
                        format!(
                            "no route named `{}` in {}",
                            name.get_ref(),
                            config.source.display()
                        ),
                    )
                })
        };
        let mut routes = match &spec.routes {
            Some(list) => {
                let mut names = Vec::new();
                for (j, r) in list.get_ref().iter().enumerate() {
                    route_index(r, key(&format!("routes[{j}]")))?;
                    names.push(r.get_ref().clone());
                }
                Some(names)
            }
            None => None,
        };
        let mut routed = false;
        if let Some(u) = &spec.unrouted {
            if *u.get_ref() {
                if routes.as_ref().is_some_and(|r| !r.is_empty()) || !spec.expect.is_empty() {
                    return Err(self.err(
                        u.span(),
                        key("unrouted"),
                        "unrouted = true means no route matches: leave out routes and [case.route.*]",
                    ));
                }
                routes = Some(Vec::new());
            } else {
                routed = true;
            }
        }
        let mut expect = Vec::new();
        for (route, r) in &spec.expect {
            let index = route_index(route, key(&format!("route.{}", route.get_ref())))?;
            if let Some(list) = &routes
                && !list.contains(route.get_ref())
            {
                return Err(self.err(
                    route.span(),
                    key(&format!("route.{}", route.get_ref())),
                    "this route is not in the case's `routes` list, so it cannot match",
                ));
            }
            expect.push((
                index,
                self.route(r, &key(&format!("route.{}", route.get_ref())), route)?,
            ));
        }
        expect.sort_by_key(|(index, _)| *index);
        if routes.is_none() && !routed && expect.is_empty() {
            return Err(self.err(
                c.span(),
                key("name"),
                "the case expects nothing: add routes = [...], unrouted = true|false or a [case.route.NAME] table",
            ));
        }
        Ok(Case {
            name: name.to_owned(),
            file: self.file.to_owned(),
            line: line_col(self.text, c.span().start).0,
            listener,
            input,
            routes,
            routed,
            expect: expect.into_iter().map(|(_, e)| e).collect(),
        })
    }

    fn route(
        &self,
        r: &Spanned<RouteSpec>,
        key: &str,
        name: &Spanned<String>,
    ) -> Result<RouteExpect, TestFileError> {
        let spec = r.get_ref();
        let outcome = spec
            .outcome
            .as_ref()
            .map_or(OutcomeKind::Send, |o| *o.get_ref());
        let checks_message = !spec.values.is_empty()
            || !spec.absent.is_empty()
            || !spec.not_contains.is_empty()
            || spec.unchanged.is_some();
        if outcome != OutcomeKind::Send && checks_message {
            return Err(self.err(
                r.span(),
                key.to_owned(),
                format!(
                    "values, absent, not_contains and unchanged check the message a route sends; outcome = \"{outcome}\" sends nothing"
                ),
            ));
        }
        if let Some(reason) = &spec.reason
            && outcome == OutcomeKind::Send
        {
            return Err(self.err(
                reason.span(),
                format!("{key}.reason"),
                "a reason belongs to outcome = \"drop\" or \"error\"",
            ));
        }
        let parse = |p: &Spanned<String>, k: String| {
            Path::parse(p.get_ref().trim()).map_err(|e| self.err(p.span(), k, e.to_string()))
        };
        let mut values = spec
            .values
            .iter()
            .map(|(p, v)| {
                let path = parse(p, format!("{key}.values.\"{}\"", p.get_ref()))?;
                Ok((p.span().start, path, v.get_ref().clone()))
            })
            .collect::<Result<Vec<_>, TestFileError>>()?;
        // Report in file order, not the map's alphabetical one.
        values.sort_by_key(|(at, _, _)| *at);
        let absent = spec
            .absent
            .iter()
            .enumerate()
            .map(|(j, p)| parse(p, format!("{key}.absent[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        for (j, t) in spec.not_contains.iter().enumerate() {
            if t.get_ref().is_empty() {
                return Err(self.err(
                    t.span(),
                    format!("{key}.not_contains[{j}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(RouteExpect {
            route: name.get_ref().clone(),
            outcome,
            reason: spec.reason.as_ref().map(|r| r.get_ref().clone()),
            values: values.into_iter().map(|(_, p, v)| (p, v)).collect(),
            absent,
            not_contains: spec
                .not_contains
                .iter()
                .map(|t| t.get_ref().clone())
                .collect(),
            unchanged: spec.unchanged.as_ref().is_some_and(|u| *u.get_ref()),
        })
    }

    fn message_file(&self, m: &Spanned<PathBuf>, key: String) -> Result<Bytes, TestFileError> {
        let base = self.file.parent().unwrap_or(FsPath::new(""));
        let file = base.join(m.get_ref());
        let mut messages = crate::messagefile::read_messages(&file)
            .map_err(|e| self.err(m.span(), key.clone(), format!("{e:#}")))?;
        match messages.len() {
            1 => Ok(messages.remove(0)),
            n => Err(self.err(
                m.span(),
                key,
                format!("{} holds {n} messages; a case takes one", file.display()),
            )),
        }
    }

    fn inline(&self, h: &Spanned<String>, key: String) -> Result<Bytes, TestFileError> {
        // Indentation is for the reader: no segment starts with white space.
        let text: String = h
            .get_ref()
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\r");
        let mut batch = split_messages(Bytes::from(text), &courier_hl7::ParseOptions::default())
            .map_err(|e| self.err(h.span(), key.clone(), e.to_string()))?;
        match batch.messages.len() {
            1 => Ok(batch.messages.remove(0)),
            n => Err(self.err(
                h.span(),
                key,
                format!("holds {n} messages; a case takes one"),
            )),
        }
    }
}

/// The config's routes and steps, loaded once for all cases.
pub struct Harness<'c> {
    config: &'c Config,
    router: Router,
    steps: Steps,
}

impl<'c> Harness<'c> {
    /// Compiles the config's routes and every plugin and script, as `courier run` does (but
    /// without the on-disk plugin cache: tests leave no files behind).
    pub fn new(config: &'c Config) -> Result<Harness<'c>, HarnessError> {
        let router = Router::new(config, |name| {
            config
                .destinations
                .iter()
                .position(|d| d.get_ref().name == name)
        })?;
        let steps = Steps::load(config, None)?;
        Ok(Harness {
            config,
            router,
            steps,
        })
    }

    /// Runs one case and compares what the routes did with what it expects.
    pub fn run(&self, case: &Case) -> CaseReport {
        let mut report = CaseReport {
            file: case.file.display().to_string(),
            line: case.line,
            name: case.name.clone(),
            passed: false,
            routes: Vec::new(),
            failures: Vec::new(),
        };
        let msg = match self.receive(case) {
            Ok(m) => m,
            Err(reason) => {
                report.failures.push(Failure::Refused {
                    listener: case.listener.clone(),
                    reason,
                });
                return report;
            }
        };
        let env = Envelope::of(&msg);
        let control_id: Arc<str> = msg.control_id().unwrap_or_default().into();
        // The step records go to the store in production; here only the results matter.
        let mut records = Vec::new();
        let results: Vec<(String, RouteResult)> = self
            .router
            .select(&case.listener, &env, &msg)
            .map(|route| {
                let result = run_route(
                    &self.steps,
                    route.index,
                    &route.name,
                    &control_id,
                    &msg,
                    &mut records,
                );
                (route.name.to_string(), result)
            })
            .collect();
        report.routes = results
            .iter()
            .map(|(route, result)| RouteReport {
                route: route.clone(),
                outcome: kind(result),
                reason: match result {
                    RouteResult::Send(_) => None,
                    RouteResult::Dropped(r) | RouteResult::Failed(r) => Some(r.clone()),
                },
            })
            .collect();
        let matched: Vec<String> = results.iter().map(|(r, _)| r.clone()).collect();

        if let Some(expected) = &case.routes {
            let mut want: Vec<&String> = expected.iter().collect();
            let mut got: Vec<&String> = matched.iter().collect();
            want.sort();
            got.sort();
            if want != got {
                report.failures.push(Failure::Routes {
                    expected: self.in_config_order(expected),
                    actual: matched.clone(),
                });
            }
        }
        if case.routed && matched.is_empty() {
            report.failures.push(Failure::Unrouted);
        }
        for e in &case.expect {
            match results.iter().find(|(r, _)| r == &e.route) {
                None => report.failures.push(Failure::NotMatched {
                    route: e.route.clone(),
                    expected: e.outcome,
                }),
                Some((_, result)) => check_route(e, result, &msg, &mut report.failures),
            }
        }
        report.passed = report.failures.is_empty();
        report
    }

    /// The message as the case's listener would accept it, or why it would refuse it (the
    /// listener's own checks: its parse options, MSH-9 and MSH-10 valued).
    fn receive(&self, case: &Case) -> Result<Message, String> {
        let options = self
            .config
            .listeners
            .iter()
            .find(|l| l.get_ref().name == case.listener)
            .map(|l| l.get_ref().parse_options())
            .unwrap_or_default();
        let msg = Message::parse_with(case.input.clone(), &options).map_err(|e| e.to_string())?;
        crate::runtime::check_required_fields(&msg).map_err(|e| e.text)?;
        Ok(msg)
    }

    fn in_config_order(&self, names: &[String]) -> Vec<String> {
        self.router
            .routes()
            .iter()
            .map(|r| r.name.to_string())
            .filter(|n| names.contains(n))
            .collect()
    }
}

fn kind(result: &RouteResult) -> OutcomeKind {
    match result {
        RouteResult::Send(_) => OutcomeKind::Send,
        RouteResult::Dropped(_) => OutcomeKind::Drop,
        RouteResult::Failed(_) => OutcomeKind::Error,
    }
}

fn check_route(e: &RouteExpect, result: &RouteResult, input: &Message, out: &mut Vec<Failure>) {
    let route = || e.route.clone();
    let actual = kind(result);
    if actual != e.outcome {
        out.push(Failure::Outcome {
            route: route(),
            expected: e.outcome,
            actual,
            reason: match result {
                RouteResult::Send(_) => None,
                RouteResult::Dropped(r) | RouteResult::Failed(r) => Some(r.clone()),
            },
        });
        return;
    }
    let sent = match result {
        RouteResult::Send(m) => m,
        RouteResult::Dropped(reason) | RouteResult::Failed(reason) => {
            if let Some(want) = &e.reason
                && !reason.contains(want.as_str())
            {
                out.push(Failure::Reason {
                    route: route(),
                    outcome: actual,
                    expected: want.clone(),
                    actual: reason.clone(),
                });
            }
            return;
        }
    };
    for (path, want) in &e.values {
        let got = sent.get(path);
        if got.as_deref() != Some(want.as_str()) {
            out.push(Failure::Value {
                route: route(),
                path: path.to_string(),
                expected: want.clone(),
                actual: got,
            });
        }
    }
    for path in &e.absent {
        if let Some(got) = sent.get(path).filter(|v| !v.is_empty()) {
            out.push(Failure::NotAbsent {
                route: route(),
                path: path.to_string(),
                actual: got,
            });
        }
    }
    for text in &e.not_contains {
        if let Some(seg) = sent
            .segments()
            .find(|s| String::from_utf8_lossy(s.raw()).contains(text.as_str()))
        {
            out.push(Failure::Contains {
                route: route(),
                text: text.clone(),
                segment: segment_name(seg.id(), seg.occurrence()),
            });
        }
    }
    if e.unchanged {
        let (before, after) = (input.encode(), sent.encode());
        if before != after {
            out.push(first_difference(route(), input, sent));
        }
    }
}

fn segment_name(id: &str, occurrence: usize) -> String {
    if occurrence > 1 {
        format!("{id}[{occurrence}]")
    } else {
        id.to_owned()
    }
}

/// The first segment where the sent message differs from the input.
fn first_difference(route: String, input: &Message, sent: &Message) -> Failure {
    let er7 = |m: &Message, i: usize| m.segment_at(i).map(|s| s.er7());
    let count = input.segment_count().max(sent.segment_count());
    for i in 0..count {
        let (want, got) = (er7(input, i), er7(sent, i));
        if want != got {
            let seg = input.segment_at(i).or_else(|| sent.segment_at(i));
            return Failure::Changed {
                route,
                segment: seg.map_or_else(String::new, |s| segment_name(s.id(), s.occurrence())),
                expected: want,
                actual: got,
            };
        }
    }
    // Same segments, different bytes: only the terminators changed.
    Failure::Changed {
        route,
        segment: "segment terminators".into(),
        expected: None,
        actual: None,
    }
}

/// What one matching route did.
#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// The route's name.
    pub route: String,
    /// Send, drop or error.
    pub outcome: OutcomeKind,
    /// The step and its reason, for a drop or an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The test file.
    pub file: String,
    /// 1-based line of the case.
    pub line: usize,
    /// The case's name.
    pub name: String,
    /// No failures.
    pub passed: bool,
    /// The routes that matched, in config order, and what each did.
    pub routes: Vec<RouteReport>,
    /// Each expectation that did not hold.
    pub failures: Vec<Failure>,
}

/// An expectation that did not hold: expected against actual.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The listener would refuse the message (NAK), so no route sees it.
    Refused {
        /// The case's listener.
        listener: String,
        /// The parse error or missing field.
        reason: String,
    },
    /// Other routes matched than the case lists.
    Routes {
        /// The case's `routes`, in config order.
        expected: Vec<String>,
        /// The routes that matched, in config order.
        actual: Vec<String>,
    },
    /// `unrouted = false`, but no route matched.
    Unrouted,
    /// A route with expectations did not match the message.
    NotMatched {
        /// The route.
        route: String,
        /// What the case expected of it.
        expected: OutcomeKind,
    },
    /// The route sent, dropped or failed other than expected.
    Outcome {
        /// The route.
        route: String,
        /// What the case expected.
        expected: OutcomeKind,
        /// What happened.
        actual: OutcomeKind,
        /// The step's reason, for a drop or an error.
        reason: Option<String>,
    },
    /// The drop or error reason lacks the expected text.
    Reason {
        /// The route.
        route: String,
        /// Drop or error.
        outcome: OutcomeKind,
        /// The text the reason should contain.
        expected: String,
        /// The reason given.
        actual: String,
    },
    /// A value on the sent message differs.
    Value {
        /// The route.
        route: String,
        /// The path.
        path: String,
        /// The expected value.
        expected: String,
        /// The value sent; `None` when absent.
        actual: Option<String>,
    },
    /// A path expected absent or empty has a value.
    NotAbsent {
        /// The route.
        route: String,
        /// The path.
        path: String,
        /// Its value.
        actual: String,
    },
    /// The sent message contains a text it must not.
    Contains {
        /// The route.
        route: String,
        /// The text.
        text: String,
        /// The first segment containing it.
        segment: String,
    },
    /// The sent message differs from the input though `unchanged = true`.
    Changed {
        /// The route.
        route: String,
        /// The first differing segment.
        segment: String,
        /// That segment as it came in; `None` when the input has no such segment.
        expected: Option<String>,
        /// That segment as sent; `None` when the route removed it.
        actual: Option<String>,
    },
}

fn quoted(v: Option<&str>) -> String {
    v.map_or_else(|| "(absent)".to_owned(), |v| format!("\"{v}\""))
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused { listener, reason } => {
                write!(f, "listener {listener} refuses the message: {reason}")
            }
            Failure::Routes { expected, actual } => {
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "(none)".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                write!(
                    f,
                    "routes: expected {}; matched {}",
                    list(expected),
                    list(actual)
                )?;
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|r| !actual.contains(r))
                    .cloned()
                    .collect();
                let extra: Vec<String> = actual
                    .iter()
                    .filter(|r| !expected.contains(r))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    write!(f, " (not matched: {})", missing.join(", "))?;
                }
                if !extra.is_empty() {
                    write!(f, " (not expected: {})", extra.join(", "))?;
                }
                Ok(())
            }
            Failure::Unrouted => write!(f, "routes: expected at least one; none matched"),
            Failure::NotMatched { route, expected } => write!(
                f,
                "route {route}: expected {expected}, but the route did not match the message"
            ),
            Failure::Outcome {
                route,
                expected,
                actual,
                reason,
            } => {
                write!(f, "route {route}: expected {expected}, got {actual}")?;
                match reason {
                    Some(r) => write!(f, " ({r})"),
                    None => Ok(()),
                }
            }
            Failure::Reason {
                route,
                outcome,
                expected,
                actual,
            } => write!(
                f,
                "route {route}: {outcome} reason: expected it to contain \"{expected}\", got \"{actual}\""
            ),
            Failure::Value {
                route,
                path,
                expected,
                actual,
            } => write!(
                f,
                "route {route}: {path}: expected \"{expected}\", got {}",
                quoted(actual.as_deref())
            ),
            Failure::NotAbsent {
                route,
                path,
                actual,
            } => write!(
                f,
                "route {route}: {path}: expected absent or empty, got \"{actual}\""
            ),
            Failure::Contains {
                route,
                text,
                segment,
            } => write!(
                f,
                "route {route}: the message sent contains \"{text}\" (in {segment})"
            ),
            Failure::Changed {
                route,
                segment,
                expected,
                actual,
            } => write!(
                f,
                "route {route}: expected the message unchanged; {segment} differs: expected {}, got {}",
                quoted(expected.as_deref()),
                quoted(actual.as_deref())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with a Rhai step that drops test patients and upper-cases PID-5.1, written
    /// beside its script in `dir`.
    fn config(dir: &FsPath) -> Config {
        std::fs::write(
            dir.join("upper.rhai"),
            r#"if msg.get("PID-5.1") == "TEST" { drop("test patient"); }
if msg.get("PID-5.1") == "FAIL" { fail("cannot map"); }
msg.set("PID-5.1", msg.get("PID-5.1").to_upper());"#,
        )
        .unwrap();
        let text = r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"

[[listener]]
name = "strict"
bind = "127.0.0.1:0"
default_charset = "ASCII"

[[destination]]
name = "emr"
address = "127.0.0.1:2576"

[[route]]
name = "to-emr"
message_types = ["ADT^A0*"]
destinations = ["emr"]
  [[route.step]]
  script = "upper.rhai"

[[route]]
name = "copy"
message_types = ["ADT"]
listeners = ["in"]
destinations = ["emr"]
"#;
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap()
    }

    fn parse(dir: &FsPath, cfg: &Config, text: &str) -> Result<TestFile, TestFileError> {
        TestFile::parse(text, &dir.join("t.toml"), cfg)
    }

    const ADT: &str = "hl7 = '''\nMSH|^~\\&|REG|F|C|R|20260101||ADT^A04|C1|P|2.5.1\n  PID|1||42^^^RIVERSIDE^MR||Doe^Jane\n'''\n";

    fn run_one(text: &str) -> CaseReport {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let file = parse(tmp.path(), &cfg, text).unwrap();
        Harness::new(&cfg).unwrap().run(&file.cases[0])
    }

    #[test]
    fn a_passing_case_reports_each_route() {
        let r = run_one(&format!(
            "[[case]]\nname = \"adt\"\n{ADT}routes = [\"copy\", \"to-emr\"]\n\
             [case.route.to-emr]\nvalues = {{ \"PID-5.1\" = \"DOE\", \"PID-5.2\" = \"Jane\" }}\nabsent = [\"PID-6\"]\n\
             [case.route.copy]\nunchanged = true\nnot_contains = [\"DOE\"]\n"
        ));
        assert!(r.passed, "{:?}", r.failures);
        assert_eq!(r.line, 1);
        let did: Vec<_> = r
            .routes
            .iter()
            .map(|x| (x.route.as_str(), x.outcome))
            .collect();
        assert_eq!(
            did,
            [("to-emr", OutcomeKind::Send), ("copy", OutcomeKind::Send)]
        );
    }

    #[test]
    fn failures_name_route_path_expected_and_actual() {
        let r = run_one(&format!(
            "[[case]]\nname = \"adt\"\n{ADT}routes = [\"to-emr\"]\n\
             [case.route.to-emr]\nvalues = {{ \"PID-5.1\" = \"Doe\", \"PID-7\" = \"1980\" }}\nabsent = [\"PID-5.2\"]\nnot_contains = [\"Jane\"]\nunchanged = true\n"
        ));
        assert!(!r.passed);
        let text: Vec<String> = r.failures.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "routes: expected to-emr; matched to-emr, copy (not expected: copy)",
                "route to-emr: PID-5.1: expected \"Doe\", got \"DOE\"",
                "route to-emr: PID-7: expected \"1980\", got (absent)",
                "route to-emr: PID-5.2: expected absent or empty, got \"Jane\"",
                "route to-emr: the message sent contains \"Jane\" (in PID)",
                "route to-emr: expected the message unchanged; PID differs: expected \"PID|1||42^^^RIVERSIDE^MR||Doe^Jane\", got \"PID|1||42^^^RIVERSIDE^MR||DOE^Jane\"",
            ]
        );
    }

    #[test]
    fn outcomes_and_reasons_are_compared() {
        let msg = |family: &str| ADT.replace("Doe^Jane", &format!("{family}^Jane"));
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}[case.route.to-emr]\noutcome = \"send\"\n",
            msg("TEST")
        ));
        assert_eq!(
            r.failures[0].to_string(),
            "route to-emr: expected send, got drop (upper.rhai: test patient)"
        );
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}[case.route.to-emr]\noutcome = \"drop\"\nreason = \"staff\"\n",
            msg("TEST")
        ));
        assert_eq!(
            r.failures[0].to_string(),
            "route to-emr: drop reason: expected it to contain \"staff\", got \"upper.rhai: test patient\""
        );
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}[case.route.to-emr]\noutcome = \"error\"\nreason = \"cannot map\"\n",
            msg("FAIL")
        ));
        assert!(r.passed, "{:?}", r.failures);
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}[case.route.to-emr]\noutcome = \"drop\"\n",
            msg("Doe")
        ));
        assert_eq!(
            r.failures[0].to_string(),
            "route to-emr: expected drop, got send"
        );
    }

    #[test]
    fn routing_is_per_listener_and_unrouted_is_checked() {
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{ADT}listener = \"strict\"\nroutes = [\"to-emr\"]\n"
        ));
        assert!(r.passed, "{:?}", r.failures);
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}unrouted = true\n",
            ADT.replace("ADT^A04", "ORU^R01")
        ));
        assert!(r.passed, "{:?}", r.failures);
        let r = run_one(&format!("[[case]]\nname = \"t\"\n{ADT}unrouted = true\n"));
        assert_eq!(
            r.failures[0].to_string(),
            "routes: expected (none); matched to-emr, copy (not expected: to-emr, copy)"
        );
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}[case.route.to-emr]\n",
            ADT.replace("ADT^A04", "ORU^R01")
        ));
        assert_eq!(
            r.failures[0].to_string(),
            "route to-emr: expected send, but the route did not match the message"
        );
    }

    #[test]
    fn the_listeners_parse_options_apply() {
        // An ASCII listener refuses UTF-8 bytes, as it would on the wire.
        let r = run_one(&format!(
            "[[case]]\nname = \"t\"\n{}listener = \"strict\"\nroutes = [\"to-emr\"]\n",
            ADT.replace("Jane", "Jané")
        ));
        assert!(
            r.failures[0]
                .to_string()
                .starts_with("listener strict refuses the message:"),
            "{}",
            r.failures[0]
        );
    }

    #[test]
    fn bad_test_files_name_file_line_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        let err = |text: &str| parse(tmp.path(), &cfg, text).unwrap_err().to_string();
        let t = tmp.path().join("t.toml").display().to_string();

        let e = err(&format!(
            "[[case]]\nname = \"a\"\n{ADT}[case.route.to-emr]\nvaluse = {{}}\n"
        ));
        assert!(
            e.starts_with(&format!("{t}:8:1: unknown field `valuse`")),
            "{e}"
        );
        let e = err(&format!(
            "[[case]]\nname = \"a\"\n{ADT}\n[case.route.nope]\n"
        ));
        assert_eq!(
            e,
            format!(
                "{t}:8: case[0].route.nope: no route named `nope` in {}",
                cfg.source.display()
            )
        );
        let e = err(&format!(
            "[[case]]\nname = \"a\"\n{ADT}listener = \"x\"\nunrouted = true\n"
        ));
        assert!(
            e.starts_with(&format!("{t}:7: case[0].listener: no listener named `x`")),
            "{e}"
        );
        let e = err(&format!(
            "[[case]]\nname = \"a\"\n{ADT}[case.route.to-emr]\nvalues = {{ \"PID-0\" = \"x\" }}\n"
        ));
        assert!(
            e.starts_with(&format!("{t}:8: case[0].route.to-emr.values.\"PID-0\":")),
            "{e}"
        );
        let e = err("[[case]]\nname = \"a\"\nmessage = \"missing.hl7\"\nunrouted = true\n");
        assert!(
            e.starts_with(&format!("{t}:3: case[0].message: reading ")),
            "{e}"
        );
        let e = err(&format!("[[case]]\nname = \"a\"\n{ADT}"));
        assert!(e.contains("the case expects nothing"), "{e}");
        let e = err(&format!(
            "[[case]]\nname = \"a\"\n{ADT}[case.route.to-emr]\noutcome = \"drop\"\nvalues = {{ \"PID-5\" = \"x\" }}\n"
        ));
        assert!(e.contains("outcome = \"drop\" sends nothing"), "{e}");
        let e = err(&format!(
            "[[case]]\nname = \"a\"\n{ADT}routes = [\"copy\"]\n[case.route.to-emr]\n"
        ));
        assert!(e.contains("not in the case's `routes` list"), "{e}");
    }
}
