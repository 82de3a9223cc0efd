//! The SQLite schema, its versioned migrations, and the settings each connection gets.
//!
//! Migrations are a list of SQL steps; the database's `PRAGMA user_version` says how many have
//! run. Opening applies the missing ones in order inside one transaction (so an upgrade is all or
//! nothing), does nothing for an up-to-date database, and refuses a database newer than this
//! code rather than guess at its shape. Append new steps; never edit a released one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreSettings;
use super::convert::classify;
use crate::error::StoreError;

/// One migration step: its SQL, then what SQL alone cannot do.
pub(crate) struct Migration {
    sql: &'static str,
    then: Option<fn(&Connection) -> rusqlite::Result<()>>,
}

/// The migration steps; step `i` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        sql: V1,
        then: None,
    },
    Migration {
        sql: V2,
        then: None,
    },
    Migration {
        sql: V3,
        then: None,
    },
    Migration {
        sql: V4,
        then: None,
    },
    Migration {
        sql: V5,
        then: Some(rewrite_checks),
    },
    Migration {
        sql: V6,
        then: None,
    },
];

/// The schema version this code writes.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Version 1: messages, their bodies, steps, deliveries and their payloads.
///
/// Bodies and payloads live in their own tables so status updates (every claim, every delivery)
/// rewrite small rows, and searches scan small rows, instead of dragging kilobytes of message
/// along. AUTOINCREMENT keeps ids from being reused after pruning; ids also give queue order.
/// Times are integer microseconds since the Unix epoch.
const V1: &str = r#"
CREATE TABLE messages (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at         INTEGER NOT NULL,
    listener            TEXT NOT NULL,
    peer                TEXT NOT NULL,
    control_id          TEXT NOT NULL,
    message_type        TEXT NOT NULL,
    sending_application TEXT NOT NULL,
    sending_facility    TEXT NOT NULL,
    patient_id          TEXT NOT NULL,
    status              TEXT NOT NULL DEFAULT 'received'
        CHECK (status IN ('received', 'processed', 'filtered', 'unrouted', 'error')),
    reason              TEXT,
    processed_at        INTEGER
);

CREATE TABLE message_bodies (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    raw        BLOB NOT NULL,
    ack        BLOB
);

CREATE TABLE steps (
    id           INTEGER PRIMARY KEY,
    message_id   INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    route        TEXT NOT NULL,
    step         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('kept', 'changed', 'dropped', 'error')),
    output       BLOB,
    reason       TEXT
);

CREATE TABLE deliveries (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id         INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    route              TEXT NOT NULL,
    destination        TEXT NOT NULL,
    order_key          TEXT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'in_flight', 'delivered', 'error')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    -- When a retry is due (set by retry_later); NULL: may go at once. Claims compare it with
    -- the caller's clock, so a fresh delivery must not carry the store's.
    next_attempt_at    INTEGER,
    last_attempt_at    INTEGER,
    finished_at        INTEGER,
    last_error         TEXT,
    ack                BLOB,
    resent_from        INTEGER
);

CREATE TABLE delivery_payloads (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    payload     BLOB NOT NULL
);

-- Duplicate detection: (MSH-3, MSH-4, MSH-10) within a time window.
CREATE INDEX messages_duplicate
    ON messages (sending_application, sending_facility, control_id, received_at);
-- Search fields.
CREATE INDEX messages_control_id ON messages (control_id);
CREATE INDEX messages_patient ON messages (patient_id);
CREATE INDEX messages_type ON messages (message_type);
CREATE INDEX messages_status ON messages (status);
-- Search by time and the pruner.
CREATE INDEX messages_received ON messages (received_at);

CREATE INDEX steps_message ON steps (message_id, seq);

-- The queues. Partial indexes hold only unfinished deliveries, so claiming stays cheap however
-- much delivered history the table keeps. Queries repeat the index's WHERE term verbatim:
-- SQLite uses a partial index only when the query's WHERE contains it.
CREATE INDEX deliveries_pending
    ON deliveries (destination, id) WHERE status IN ('queued', 'in_flight');
CREATE INDEX deliveries_pending_key
    ON deliveries (destination, order_key, id) WHERE status IN ('queued', 'in_flight');
-- Depths, recovery, retry of dead letters.
CREATE INDEX deliveries_status ON deliveries (status, destination);
-- A message's deliveries (detail, the pruner's check, cascading deletes).
CREATE INDEX deliveries_message ON deliveries (message_id, status);
"#;

/// Version 2: the audit log of what operators did (viewed, resent, retried, paused, reloaded).
///
/// No foreign key to `messages`: the record of who looked at a message outlives the message
/// when the pruner removes it.
const V2: &str = r#"
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    message_id INTEGER,
    detail     TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_message ON audit (message_id) WHERE message_id IS NOT NULL;
"#;

/// Version 3: the ACK of a large message, in a row of its own.
///
/// `message_bodies` has `ack` after `raw`. SQLite writes a zeroblob placeholder (filled later
/// through blob I/O) without materialising it only when nothing but NULLs follows it in the
/// row, so a large body with its ACK beside it was built in memory twice over; and writing
/// the ACK later rewrote the whole row, body included. From version 3 the ACK of a body of
/// 64 KiB or more goes here; smaller ones stay in `message_bodies.ack`, read first.
const V3: &str = r#"
CREATE TABLE message_acks (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    ack        BLOB NOT NULL
);
"#;

/// Version 4: fewer index pages written per message and per delivery outcome.
///
/// - Nearly every delivery ends `delivered`, and nothing looks deliveries up by that status,
///   yet the status index kept an entry for every delivery ever made, and each claim and
///   outcome moved an entry within it and within `deliveries_message` (which carried the
///   status too). Now the status index holds only unfinished and failed deliveries (queries
///   repeat its WHERE term verbatim, as for the queues), and a message's deliveries are found
///   by its id alone: a status change touches neither.
/// - The duplicate check's index leads with the control id, so it also serves a search by
///   control id, which had an index of its own: one index written per message instead of two.
const V4: &str = r#"
DROP INDEX deliveries_status;
CREATE INDEX deliveries_unfinished
    ON deliveries (status, destination) WHERE status IN ('queued', 'in_flight', 'error');
DROP INDEX deliveries_message;
CREATE INDEX deliveries_message ON deliveries (message_id);
DROP INDEX messages_duplicate;
DROP INDEX messages_control_id;
CREATE INDEX messages_control_id
    ON messages (control_id, sending_application, sending_facility, received_at);
"#;

/// Version 5: no temporary b-tree per row written.
///
/// SQLite evaluates an `IN` list of three or more constants through a temporary b-tree it
/// builds for each statement run. The status and outcome CHECK constraints of `messages`,
/// `steps` and `deliveries` were such lists, and so was version 4's partial index, so every
/// row written there (every claim and outcome too) opened and filled one: about nine per
/// message, 18 allocations each. The constraints become comparisons
/// ([`CHECKS_AS_COMPARISONS`], applied by [`rewrite_checks`]) and the index's WHERE a single
/// one. The index holds only unfinished and failed deliveries, so rebuilding it is cheap.
const V5: &str = r#"
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished
    ON deliveries (status, destination) WHERE status <> 'delivered';
"#;

/// Version 6: the status index leaves out processed messages.
///
/// Nearly every message is journaled `processed`, and the searches that filter on that status
/// find such messages at once by scanning from the newest; what the index is for is finding
/// the few that are not (received but not yet routed, errors, filtered, unrouted). Each commit
/// wrote a page of it for the processed entries alone. Queries for another status repeat the
/// index's WHERE term verbatim, as SQLite uses a partial index only then.
const V6: &str = r#"
DROP INDEX messages_status;
CREATE INDEX messages_status ON messages (status) WHERE status <> 'processed';
"#;

/// The CHECK constraints of version 1 rewritten by version 5 (old text, new text), each in
/// the `CREATE TABLE` statement of its table. SQLite cannot alter a constraint, but allows
/// changing its text through `writable_schema` when the new constraint accepts exactly the
/// rows the old one did (<https://sqlite.org/lang_altertable.html#otheralter>), as these do.
/// A table whose text does not contain the old constraint verbatim keeps it.
const CHECKS_AS_COMPARISONS: &[(&str, &str, &str)] = &[
    (
        "messages",
        "CHECK (status IN ('received', 'processed', 'filtered', 'unrouted', 'error'))",
        "CHECK (status = 'received' OR status = 'processed' OR status = 'filtered'
            OR status = 'unrouted' OR status = 'error')",
    ),
    (
        "steps",
        "CHECK (outcome IN ('kept', 'changed', 'dropped', 'error'))",
        "CHECK (outcome = 'kept' OR outcome = 'changed' OR outcome = 'dropped'
            OR outcome = 'error')",
    ),
    (
        "deliveries",
        "CHECK (status IN ('queued', 'in_flight', 'delivered', 'error'))",
        "CHECK (status = 'queued' OR status = 'in_flight' OR status = 'delivered'
            OR status = 'error')",
    ),
];

/// Version 5's constraint rewrite ([`CHECKS_AS_COMPARISONS`]), inside the migration's
/// transaction: the schema text changes, then the schema version moves on so that every
/// connection, this one included, reads the schema again.
fn rewrite_checks(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "writable_schema", true)?;
    let mut changed = 0;
    for (table, old, new) in CHECKS_AS_COMPARISONS {
        changed += conn.execute(
            "UPDATE sqlite_schema SET sql = replace(sql, ?2, ?3)
             WHERE type = 'table' AND name = ?1 AND instr(sql, ?2) > 0",
            rusqlite::params![table, old, new],
        )?;
    }
    if changed > 0 {
        let version: i64 = conn.pragma_query_value(None, "schema_version", |r| r.get(0))?;
        conn.pragma_update(None, "schema_version", version + 1)?;
    }
    conn.pragma_update(None, "writable_schema", false)
}

/// Settings for the writer connection, then the migrations.
pub(crate) fn prepare_writer(
    conn: &mut Connection,
    path: &Path,
    settings: &StoreSettings,
    migrate_schema: bool,
) -> Result<(), StoreError> {
    let sql = |e: rusqlite::Error| classify("open", &e);
    // Must come before the first table exists; on an existing database it changes nothing.
    // INCREMENTAL lets the pruner hand freed pages back to the file system.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(sql)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            detail: format!("the file system does not support WAL mode (got `{mode}`)"),
        });
    }
    // FULL syncs the WAL on every commit: a commit that returned survives power loss. NORMAL
    // survives a process crash but may lose the last commits on power loss.
    let sync = if settings.fsync { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync).map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql)?;
    // A batch run again after a job failed runs each job in a savepoint, whose statement
    // journal holds a copy of every page the job changes until it is released: in memory, not
    // in a temporary file written per job.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sql)?;
    // The page cache holds a transaction's dirty pages until they spill, so its size is what
    // writing a large message costs here beyond the message: 2 MiB by default, for 1 MiB
    // reports held in the same commit as their route outputs. 1 MiB still holds every hot
    // page of the tables and indexes an ordinary message touches (a few dozen).
    conn.pragma_update(None, "cache_size", -1024).map_err(sql)?;
    // A checkpoint copies each page changed since the last one from the WAL into the
    // database file (and syncs it). Under load the same index and table pages change in
    // nearly every commit; checkpointing every 4,000 WAL pages (16 MiB) instead of SQLite's
    // 1,000 copies such a page once per 4,000 pages written rather than once per 1,000: the
    // writer thread's CPU per message fell about 4% (docs/performance.md, 2026-12-04
    // evening).
    conn.pragma_update(None, "wal_autocheckpoint", 4000)
        .map_err(sql)?;
    // Without a limit the WAL file keeps the size of its largest burst forever.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(sql)?;
    common(conn, settings.busy_timeout).map_err(sql)?;
    if migrate_schema {
        migrate(conn, path)?;
    } else {
        require_latest(conn, path)?;
    }
    if let Some(max) = settings.max_size_bytes {
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(sql)?;
        let pages = i64::try_from(max).unwrap_or(i64::MAX) / page_size.max(1);
        conn.pragma_update(None, "max_page_count", pages.max(1))
            .map_err(sql)?;
    }
    Ok(())
}

/// Settings for a read connection.
pub(crate) fn prepare_reader(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    // Reads never write; this makes a slip a clear error instead of a lock fight.
    conn.pragma_update(None, "query_only", "ON")?;
    common(conn, busy_timeout)
}

fn common(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Plans must not depend on bound values. Without this, SQLite (built with STAT4) marks a
    // statement whose plan looked at a `LIMIT ?` or an indexed range's value for re-preparing
    // when its bindings change, and rusqlite's cache clears the bindings of every statement it
    // takes back, so each use of the duplicate check and the queue queries parsed and planned
    // them again: 13% of the engine's CPU under load. The plans are fixed by the indexes
    // anyway (`hot_queries_use_indexes` checks them with no values bound).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Applies the missing migration steps in one transaction.
/// A secondary opener (the CLI beside a running engine) never migrates: the schema must be
/// the one this code knows.
fn require_latest(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| classify("open", &e))?;
    let latest = latest_version();
    if found > latest {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: latest,
        });
    }
    if found < latest {
        return Err(StoreError::Open {
            path: path.to_owned(),
            detail: format!(
                "schema version {found} is older than this courier's {latest}; start the engine once to migrate it"
            ),
        });
    }
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |e: rusqlite::Error| classify("migrate", &e);
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    let latest = latest_version();
    if found > latest {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: latest,
        });
    }
    if found == latest {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    // `found` is in 0..latest here, so it indexes MIGRATIONS.
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(step.sql).map_err(sql)?;
        if let Some(then) = step.then {
            then(&tx).map_err(sql)?;
        }
        tracing::info!(version = i + 1, "store schema migrated");
    }
    // user_version lives in the database header, so it commits (or not) with the steps.
    tx.pragma_update(None, "user_version", latest)
        .map_err(sql)?;
    tx.commit().map_err(sql)?;
    // A step that moved the schema version on (a rewritten constraint) left this connection's
    // parsed schema stale until a statement checks the version: do that now, so that no
    // statement is first compiled against the old schema and then prepared again.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(sql)
}
