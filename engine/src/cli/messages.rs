//! `courier messages`: find, show, resend and retry messages in the store.
//!
//! Works beside a running engine: SQLite's own locking keeps the few writes (resend, retry)
//! safe across processes, and the engine's destination workers pick new queue entries up
//! within a second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use chrono::{DateTime, Local};
use clap::Subcommand;
use courier::config::Config;
use courier_store::{
    AuditEntry, DeliveryStatus, MessageId, MessageStatus, Search, SqliteStore, Store,
    StoreSettings, TypeFilter,
};

/// What to do with the store.
#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// List messages, newest first.
    List {
        /// Only messages with this status: received, processed, filtered, unrouted, error.
        #[arg(long)]
        status: Option<String>,
        /// Only messages whose MSH-9 starts with this, e.g. `ADT` or `ADT^A04`.
        #[arg(long = "type")]
        message_type: Option<String>,
        /// Only the message with this MSH-10.
        #[arg(long)]
        control_id: Option<String>,
        /// Only messages for this patient identifier (PID-3.1).
        #[arg(long)]
        patient: Option<String>,
        /// Only messages with a delivery in this state: queued, in_flight, delivered, error.
        #[arg(long)]
        delivery: Option<String>,
        /// Only messages received within this long (e.g. `2h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// At most this many.
        #[arg(long, default_value = "50")]
        limit: u32,
    },
    /// Show one message: its bytes, each step's result and each delivery.
    Show {
        /// The message's store id (from `list`).
        id: i64,
    },
    /// Queue a message again for its destinations (or one of them).
    Resend {
        /// The message's store id.
        id: i64,
        /// Only to this destination.
        #[arg(long = "to")]
        destination: Option<String>,
    },
    /// The audit log: who viewed, resent or retried what, and when (newest first).
    Audit {
        /// Only entries about this message.
        #[arg(long)]
        message: Option<i64>,
        /// At most this many.
        #[arg(long, default_value = "50")]
        limit: u32,
    },
    /// Queue errored (dead-lettered) deliveries again.
    Retry {
        /// Which deliveries: only `error` is supported.
        #[arg(long, default_value = "error", value_parser = ["error"])]
        status: String,
        /// Only this destination's.
        #[arg(long)]
        destination: Option<String>,
    },
}

/// Runs a `messages` subcommand on the store of `config` (or `store_dir`).
pub fn messages(
    config: Option<&Path>,
    store_dir: Option<PathBuf>,
    command: MessagesCommand,
) -> anyhow::Result<ExitCode> {
    let dir = match (store_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => Config::load(c)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .store_dir(),
        (None, None) => bail!("say which store: --config FILE or --store-dir DIR"),
    };
    if !dir.join(SqliteStore::FILE_NAME).exists() {
        bail!("no message store in {}", dir.display());
    }
    super::runtime()?.block_on(async {
        let store = SqliteStore::open_secondary(&dir, StoreSettings::default())
            .with_context(|| format!("opening the store in {}", dir.display()))?;
        let mut out = std::io::stdout().lock();
        match command {
            MessagesCommand::List {
                status,
                message_type,
                control_id,
                patient,
                delivery,
                since,
                limit,
            } => {
                let search = Search {
                    status: status
                        .map(|s| s.parse::<MessageStatus>())
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--status: {e}"))?,
                    message_type: message_type.map(TypeFilter::Prefix),
                    control_id,
                    patient_id: patient,
                    delivery_status: delivery
                        .map(|s| s.parse::<DeliveryStatus>())
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--delivery: {e}"))?,
                    since: since.and_then(|d| SystemTime::now().checked_sub(d)),
                    limit,
                    ..Search::default()
                };
                let found = store.search(&search).await?;
                writeln!(
                    out,
                    "{:>8}  {:<19}  {:<9}  {:<16}  {:<22}  {:<24}  deliveries",
                    "id", "received", "status", "type", "control id", "from"
                )?;
                for m in &found {
                    let d = &m.deliveries;
                    writeln!(
                        out,
                        "{:>8}  {:<19}  {:<9}  {:<16}  {:<22}  {:<24}  {} delivered, {} queued, {} in flight, {} error",
                        m.id.0,
                        local(m.received_at),
                        m.status.as_str(),
                        m.message_type,
                        m.control_id,
                        format!("{}/{}", m.sending_application, m.sending_facility),
                        d.delivered,
                        d.queued,
                        d.in_flight,
                        d.error,
                    )?;
                }
                eprintln!("{} message(s)", found.len());
            }
            MessagesCommand::Show { id } => {
                let Some(m) = store.message(MessageId(id)).await? else {
                    bail!("no message {id} in the store");
                };
                audit(&store, "view", Some(m.id), String::new()).await;
                writeln!(out, "message {}", m.id.0)?;
                writeln!(out, "  received   {} on {} from {}", local(m.received_at), m.listener, m.peer)?;
                writeln!(out, "  type       {}", m.message_type)?;
                writeln!(out, "  control id {}", m.control_id)?;
                writeln!(out, "  sender     {}/{}", m.sending_application, m.sending_facility)?;
                writeln!(
                    out,
                    "  status     {}{}",
                    m.status.as_str(),
                    m.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                )?;
                writeln!(out, "\nraw ({} bytes):", m.raw.len())?;
                for seg in String::from_utf8_lossy(&m.raw).split(['\r', '\n']) {
                    if !seg.is_empty() {
                        writeln!(out, "  {seg}")?;
                    }
                }
                if !m.steps.is_empty() {
                    writeln!(out, "\nsteps:")?;
                }
                for s in &m.steps {
                    writeln!(
                        out,
                        "  {}. {} {} ({} {}) -> {}{}",
                        s.seq,
                        s.route,
                        s.step,
                        s.kind,
                        &s.content_hash[..s.content_hash.len().min(12)],
                        s.outcome.as_str(),
                        s.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                    )?;
                }
                writeln!(out, "\ndeliveries:")?;
                for d in &m.deliveries {
                    let ack = d
                        .ack
                        .as_ref()
                        .and_then(|a| courier_hl7::ReceivedAck::parse(a).ok())
                        .map(|a| a.code.as_str().to_owned())
                        .unwrap_or_else(|| "-".into());
                    writeln!(
                        out,
                        "  #{} {} via {}: {} after {} attempt(s), ACK {}{}{}",
                        d.id.0,
                        d.destination,
                        d.route,
                        d.status.as_str(),
                        d.attempts,
                        ack,
                        if d.possible_duplicate { ", possible duplicate" } else { "" },
                        d.last_error
                            .as_deref()
                            .map(|e| format!(", last error: {e}"))
                            .unwrap_or_default()
                    )?;
                }
            }
            MessagesCommand::Resend { id, destination } => {
                let ids = store.resend(MessageId(id), destination.as_deref()).await?;
                if !ids.is_empty() {
                    let detail = destination.as_ref().map(|d| format!("to={d}")).unwrap_or_default();
                    audit(&store, "resend", Some(MessageId(id)), detail).await;
                }
                if ids.is_empty() {
                    bail!("message {id} has no delivery to resend{}", destination.map(|d| format!(" to {d}")).unwrap_or_default());
                }
                writeln!(out, "queued {} new deliver{} for message {id}", ids.len(), if ids.len() == 1 { "y" } else { "ies" })?;
            }
            MessagesCommand::Audit { message, limit } => {
                for e in store.audit_log(message.map(MessageId), limit).await? {
                    writeln!(
                        out,
                        "{}  {:<24}  {:<7}  {:>8}  {}",
                        local(e.at),
                        e.actor,
                        e.action,
                        e.message_id.map(|m| m.0.to_string()).unwrap_or_else(|| "-".into()),
                        e.detail
                    )?;
                }
            }
            MessagesCommand::Retry { destination, .. } => {
                let n = store.retry_errored(destination.as_deref()).await?;
                let detail = destination.as_ref().map_or_else(|| "all".to_owned(), |d| format!("destination={d}"));
                audit(&store, "retry", None, format!("{detail} requeued={n}")).await;
                writeln!(out, "queued {n} errored deliver{} again", if n == 1 { "y" } else { "ies" })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Records an operator's action in the store's audit log, as the admin API does; the actor
/// is the local user. A failure to record is reported but does not undo the action.
async fn audit(store: &SqliteStore, action: &str, message: Option<MessageId>, detail: String) {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let entry = AuditEntry {
        at: SystemTime::now(),
        actor: format!("cli:{user}"),
        action: action.to_owned(),
        message_id: message,
        detail,
    };
    if let Err(e) = store.audit(entry).await {
        eprintln!("warning: could not record this in the audit log: {e}");
    }
}

fn local(t: SystemTime) -> String {
    DateTime::<Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}
