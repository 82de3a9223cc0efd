//! Alert rules (`[[alert]]`): checked every `[alerts] check_every`; a notice goes to the log
//! and the webhook when a rule starts to hold — once per incident, not once per message — and
//! a recovery notice when it stops.
//!
//! Rules are read from the running config at each check, so a reload changes them; a rule
//! that is firing and keeps its name keeps its state. Notices name the rule, the destination,
//! listener or route, the value and the threshold — never message content.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{AlertKind, AlertRule};
use crate::metrics::METRICS;
use crate::runtime::EngineView;

/// How long one webhook delivery may take, and how often it is tried.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const WEBHOOK_ATTEMPTS: u32 = 5;

/// What one check of a rule found.
struct Reading {
    holds: bool,
    /// The rule's subject, e.g. `destination emr`.
    subject: String,
    /// The value checked, in words (`queued 120`, `failing for 95 s`).
    value: String,
}

/// One rule's memory between checks.
#[derive(Default)]
struct State {
    firing: bool,
    /// Step-failure totals seen, oldest first (for `within` windows).
    samples: Vec<(Instant, u64)>,
}

/// Runs the rules until `stop`.
pub(crate) fn spawn(engine: EngineView, tracker: &TaskTracker, stop: CancellationToken) {
    tracker.spawn(async move {
        let started = Instant::now();
        let mut states: HashMap<String, State> = HashMap::new();
        let notify = tokio_util::task::TaskTracker::new();
        loop {
            let config = engine.config();
            let every = config.alerts.check_every;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let config = engine.config();
            let depths = match engine.store() {
                Some(store) => store.queue_depths().await.ok(),
                None => None,
            };
            states.retain(|name, _| config.alert_rules.iter().any(|r| r.get_ref().name == *name));
            for rule in &config.alert_rules {
                let rule = rule.get_ref();
                let state = states.entry(rule.name.clone()).or_default();
                let reading = check(rule, state, started, depths.as_deref(), &engine);
                if reading.holds == state.firing {
                    continue;
                }
                state.firing = reading.holds;
                let status = if reading.holds { "firing" } else { "resolved" };
                if reading.holds {
                    warn!(alert = %rule.name, subject = %reading.subject, value = %reading.value, threshold = %threshold(rule), "alert firing");
                } else {
                    info!(alert = %rule.name, subject = %reading.subject, value = %reading.value, "alert resolved");
                }
                if let Some(url) = &config.alerts.webhook {
                    let body = json!({
                        "alert": rule.name,
                        "status": status,
                        "kind": format!("{:?}", rule.when),
                        "subject": reading.subject,
                        "value": reading.value,
                        "threshold": threshold(rule),
                        "at": DateTime::<Utc>::from(SystemTime::now()).to_rfc3339_opts(SecondsFormat::Millis, true),
                        "engine": config.source.display().to_string(),
                    });
                    let url = url.get_ref().clone();
                    let name = rule.name.clone();
                    notify.spawn(async move { deliver(&url, &name, status, body.to_string()).await });
                }
            }
        }
        notify.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), notify.wait()).await;
    });
}

fn threshold(rule: &AlertRule) -> String {
    match rule.when {
        AlertKind::QueueDepth | AlertKind::DeadLetters => format!("above {}", rule.above),
        AlertKind::DestinationDown => format!("failing for {:?}", lasting(rule)),
        AlertKind::ListenerSilent => format!("silent for {:?}", lasting(rule)),
        AlertKind::StepFailures => format!("above {} within {:?}", rule.above, within(rule)),
    }
}

fn lasting(rule: &AlertRule) -> Duration {
    rule.lasting.unwrap_or(match rule.when {
        AlertKind::ListenerSilent => Duration::from_secs(15 * 60),
        _ => Duration::from_secs(60),
    })
}

fn within(rule: &AlertRule) -> Duration {
    rule.within.unwrap_or(Duration::from_secs(5 * 60))
}

fn check(
    rule: &AlertRule,
    state: &mut State,
    started: Instant,
    depths: Option<&[courier_store::QueueDepth]>,
    engine: &EngineView,
) -> Reading {
    let name = |v: &Option<toml::Spanned<String>>| {
        v.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default()
    };
    match rule.when {
        AlertKind::QueueDepth | AlertKind::DeadLetters => {
            let destination = name(&rule.destination);
            let depth = depths.and_then(|d| d.iter().find(|q| q.destination == destination));
            let value = match (rule.when, depth) {
                (AlertKind::QueueDepth, Some(q)) => q.unfinished(),
                (AlertKind::DeadLetters, Some(q)) => q.errored,
                (AlertKind::QueueDepth, None) if depths.is_none() => {
                    engine.memory_depth(&destination).unwrap_or(0) as u64
                }
                _ => 0,
            };
            let word = if rule.when == AlertKind::QueueDepth {
                "unfinished"
            } else {
                "dead-lettered"
            };
            Reading {
                holds: value > rule.above,
                subject: format!("destination {destination}"),
                value: format!("{value} {word}"),
            }
        }
        AlertKind::DestinationDown => {
            let destination = name(&rule.destination);
            let failing = METRICS.failing_since(&destination).map(|t| t.elapsed());
            Reading {
                holds: failing.is_some_and(|d| d >= lasting(rule)),
                subject: format!("destination {destination}"),
                value: failing.map_or_else(
                    || "delivering".to_owned(),
                    |d| format!("every attempt failing for {} s", d.as_secs()),
                ),
            }
        }
        AlertKind::ListenerSilent => {
            let listener = name(&rule.listener);
            let silent = METRICS
                .last_received(&listener)
                .unwrap_or(started)
                .max(started)
                .elapsed();
            Reading {
                holds: silent >= lasting(rule),
                subject: format!("listener {listener}"),
                value: format!("nothing received for {} s", silent.as_secs()),
            }
        }
        AlertKind::StepFailures => {
            let route = rule.route.as_ref().map(|r| r.get_ref().as_str());
            let now = Instant::now();
            let total = METRICS.step_failures(route);
            state.samples.push((now, total));
            let window = within(rule);
            // Keep the newest sample at or before the window's start as the baseline.
            while state.samples.len() > 1 && now.duration_since(state.samples[1].0) >= window {
                state.samples.remove(0);
            }
            let base = state.samples.first().map_or(total, |(_, n)| *n);
            let recent = total.saturating_sub(base);
            Reading {
                holds: recent > rule.above,
                subject: route.map_or_else(|| "all routes".to_owned(), |r| format!("route {r}")),
                value: format!("{recent} step failures in the last {} s", window.as_secs()),
            }
        }
    }
}

/// POSTs one notice, retrying a few times; gives up with a log line.
async fn deliver(url: &str, alert: &str, status: &str, body: String) {
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        match tokio::time::timeout(WEBHOOK_TIMEOUT, post(url, body.clone())).await {
            Ok(Ok(code)) if (200..300).contains(&code) => return,
            Ok(Ok(code)) => {
                warn!(%alert, status, attempt, http_status = code, "alert webhook refused the notice")
            }
            Ok(Err(e)) => warn!(%alert, status, attempt, error = %e, "alert webhook unreachable"),
            Err(_) => warn!(%alert, status, attempt, "alert webhook timed out"),
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    warn!(%alert, status, "alert notice not delivered to the webhook; it is in this log");
}

async fn post(url: &str, body: String) -> anyhow::Result<u16> {
    let uri: hyper::Uri = url.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("no host in {url}"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let request = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "courier-alerts")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // Read the answer to the end so the receiver sees a clean exchange.
    let _ = response.into_body().collect().await;
    Ok(status)
}
