//! The SQL of every store operation, as plain functions on a connection.
//!
//! Write operations run on the writer thread inside the batch transaction (see `writer.rs`), so
//! each one's reads and writes are atomic with respect to every other write — the pruner's
//! "nothing queued" check and its delete, for instance, cannot be split by a new delivery. Read
//! operations run on a pooled read connection.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::convert::{
    OpError, OpResult, count_u32, delivery_status, message_status, micros, now_micros,
    step_outcome, time,
};
use crate::error::StoreError;
use crate::types::{
    AuditEntry, Claim, ClaimedDelivery, DeliveryCounts, DeliveryDetail, DeliveryId, DeliveryOrder,
    DeliveryStatus, Duplicate, Journaled, MessageDetail, MessageId, MessageStatus, MessageSummary,
    NewMessage, Processing, QueueDepth, RecoveredDelivery, Search, Settle, Settlement, StepDetail,
    StepOutcome, StoredMessage, TypeFilter,
};

/// The unfinished-delivery condition, verbatim as in the partial indexes' WHERE: SQLite uses a
/// partial index only when the query's WHERE contains the index's term.
macro_rules! pending {
    ($alias:literal) => {
        concat!($alias, "status IN ('queued', 'in_flight')")
    };
}

/// A column (`"p.payload"` or `"p.delivery_id"`) of the delivery's own payload row, and one
/// (`"s.output"` or `"s.id"`) of the last step of its route that changed the message (`d` is
/// the delivery): the two places [`payload!`] and [`payload_source!`] look, in that order.
macro_rules! own_then_last_change {
    ($own:literal, $step:literal) => {
        concat!(
            "(SELECT ",
            $own,
            " FROM delivery_payloads p WHERE p.delivery_id = d.id),
             (SELECT ",
            $step,
            " FROM steps s
              WHERE s.message_id = d.message_id AND s.route = d.route AND s.outcome = 'changed'
              ORDER BY s.seq DESC LIMIT 1)"
        )
    };
}

/// A delivery's payload (`d` is the delivery): its own row when it has one, else the output of
/// the last step of its route that changed the message, else the message as received. This is
/// the rule `record_processing` relies on when it leaves the row out.
macro_rules! payload {
    () => {
        concat!(
            "coalesce(",
            own_then_last_change!("p.payload", "s.output"),
            ", (SELECT b.raw FROM message_bodies b WHERE b.message_id = d.message_id))"
        )
    };
}

/// Where a delivery's payload is kept, by the rule of [`payload!`]: the rowid of its own
/// payload row, else of its route's last changing step (the message as received when both are
/// NULL). Claims read the bytes from there with [`read_payload`].
macro_rules! payload_source {
    () => {
        own_then_last_change!("p.delivery_id", "s.id")
    };
}

/// Blobs from this size on are written in two moves: the row is inserted with a zeroblob of the
/// blob's length, then the bytes go straight into its pages through SQLite's incremental blob
/// I/O ([`fill_large`]). Bound as a parameter, SQLite copies a blob twice before it reaches
/// the pages (the bound value, then the record it builds): for a 1 MiB message that was 2 MiB
/// of the engine's peak memory, for one write.
const LARGE_BLOB: usize = 64 * 1024;

/// A blob parameter (its pieces in order): the bytes themselves when small, a zeroblob of
/// their length when large (then filled by [`fill_large`] once the row exists).
struct BlobParam<'a>(&'a [Bytes]);

impl BlobParam<'_> {
    fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }
}

impl rusqlite::ToSql for BlobParam<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        let len = self.len();
        if len >= LARGE_BLOB {
            return Ok(ToSqlOutput::ZeroBlob(len as u64));
        }
        Ok(match self.0 {
            [] => ToSqlOutput::Borrowed(ValueRef::Blob(&[])),
            [one] => ToSqlOutput::Borrowed(ValueRef::Blob(one)),
            pieces => ToSqlOutput::Owned(Value::Blob(pieces.concat())),
        })
    }
}

/// Writes a large blob (its pieces in order) into the zeroblob [`BlobParam`] left in
/// `table.column` of row `rowid`; nothing to do for a small one.
fn fill_large(
    conn: &Connection,
    table: &'static str,
    column: &'static str,
    rowid: i64,
    pieces: &[Bytes],
) -> OpResult<()> {
    if BlobParam(pieces).len() >= LARGE_BLOB {
        let mut blob = conn.blob_open(rusqlite::MAIN_DB, table, column, rowid, false)?;
        let mut at = 0;
        for p in pieces {
            blob.write_at(p, at)?;
            at += p.len();
        }
        LARGE_WRITTEN.set(true);
    }
    Ok(())
}

thread_local! {
    /// Whether this thread's connection wrote a large blob since [`take_large_written`] last
    /// asked: the writer then releases its page cache after the commit.
    static LARGE_WRITTEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a large blob was written on this thread since the last call.
pub(crate) fn take_large_written() -> bool {
    LARGE_WRITTEN.replace(false)
}

/// Gives back the pages a large blob left in the connection's page cache. SQLite keeps up to
/// `cache_size` of pages per connection (2 MiB for readers, 1 MiB for the writer) for good
/// once they are filled, and a 1 MiB body passing through fills them with pages no one will
/// read again; ordinary
/// messages fill it with a few hot index pages, which this drops too, so it is only done
/// after large bodies. Clean pages only: dirty ones stay until the commit.
pub(crate) fn release_cache(conn: &Connection) {
    if let Err(e) = conn.release_memory() {
        tracing::debug!(error = %e, "store: releasing the page cache failed");
    }
}

/// A delivery's payload from the place [`payload_source!`] found: a small one read as a
/// column; a large one read through blob I/O into a buffer of its exact size, rather than
/// assembled from its overflow pages by SQLite and then copied again into a `Vec`, or shared
/// with a payload of the same message claimed earlier and still held (see [`Held`]).
fn read_payload(
    conn: &Connection,
    own: Option<i64>,
    step: Option<i64>,
    message: i64,
) -> OpResult<Bytes> {
    let (sql, table, column, rowid) = match (own, step) {
        (Some(id), _) => (
            "SELECT length(payload), CASE WHEN length(payload) < ?2 THEN payload END
             FROM delivery_payloads WHERE delivery_id = ?1",
            "delivery_payloads",
            "payload",
            id,
        ),
        (None, Some(id)) => (
            "SELECT length(output), CASE WHEN length(output) < ?2 THEN output END
             FROM steps WHERE id = ?1",
            "steps",
            "output",
            id,
        ),
        (None, None) => (
            "SELECT length(raw), CASE WHEN length(raw) < ?2 THEN raw END
             FROM message_bodies WHERE message_id = ?1",
            "message_bodies",
            "raw",
            message,
        ),
    };
    let (len, small): (i64, Option<Vec<u8>>) = conn
        .prepare_cached(sql)?
        .query_row(params![rowid, LARGE_BLOB as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if let Some(bytes) = small {
        return Ok(Bytes::from(bytes));
    }
    let len = usize::try_from(len).unwrap_or_default();
    let blob = conn.blob_open(rusqlite::MAIN_DB, table, column, rowid, true)?;
    HELD.with_borrow_mut(|held| {
        held.retain(|h| h.bytes.strong_count() > 0);
        for h in held.iter().filter(|h| h.message == message) {
            if let Some(bytes) = h.bytes.upgrade()
                && bytes.len() == len
                && blob_equals(conn, &blob, &bytes)?
            {
                return Ok(Bytes::from_owner(Shared(bytes)));
            }
        }
        let mut buf = vec![0; len];
        // Read in chunks, handing the chunk's pages back to SQLite's allocator after each:
        // read at once, a 1 MiB body filled the page cache with 1 MiB of pages no one will
        // read again, beside the buffer it was read into (0.7-0.9 MiB of the engine's peak
        // per claim).
        for (i, chunk) in buf.chunks_mut(READ_CHUNK).enumerate() {
            blob.read_at_exact(chunk, i * READ_CHUNK)?;
            release_cache(conn);
        }
        let bytes = std::sync::Arc::new(buf);
        held.push(Held {
            message,
            bytes: std::sync::Arc::downgrade(&bytes),
        });
        Ok(Bytes::from_owner(Shared(bytes)))
    })
}

/// Whether `blob` holds the bytes of `held`, read in chunks as [`read_payload`] reads.
fn blob_equals(conn: &Connection, blob: &rusqlite::blob::Blob<'_>, held: &[u8]) -> OpResult<bool> {
    let mut chunk = vec![0; READ_CHUNK.min(held.len())];
    for (i, want) in held.chunks(READ_CHUNK).enumerate() {
        let got = &mut chunk[..want.len()];
        blob.read_at_exact(got, i * READ_CHUNK)?;
        release_cache(conn);
        if got != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A large payload a claim read, while some delivery still holds it. The same message's
/// deliveries often carry the same bytes from different rows: its routes' outputs when their
/// steps made the same message (the example clinic's chart and portal both map lab codes),
/// or the message as received. A later claim whose blob is, byte for byte, one of these
/// shares it instead of reading a buffer of its own: a 1 MiB report queued for three
/// destinations is then one or two buffers in memory, not three. The bytes are compared
/// every time, never assumed from where they came from (rows are deleted and their ids
/// reused). Only a weak reference is kept, so a payload goes when its last delivery is done
/// with it.
struct Held {
    message: i64,
    bytes: std::sync::Weak<Vec<u8>>,
}

thread_local! {
    /// The claiming thread's [`Held`] payloads (claims run on the store's writer thread).
    static HELD: std::cell::RefCell<Vec<Held>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A shared payload buffer as the bytes of a [`Bytes`].
struct Shared(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// How much of a large blob [`read_payload`] reads between two releases of the page cache.
const READ_CHUNK: usize = 128 * 1024;

/// The ACK sent for message `m` (body `b`): beside the body, or for a large body (schema
/// version 3) in its own row.
macro_rules! ack_of_m {
    () => {
        "coalesce(b.ack, (SELECT a.ack FROM message_acks a WHERE a.message_id = m.id))"
    };
}

/// The hot queries, named so a test can check their plans use the indexes.
pub(crate) mod sql {
    pub(crate) const FIND_DUPLICATE: &str = concat!(
        "SELECT m.id, m.status, ",
        ack_of_m!(),
        " FROM messages m JOIN message_bodies b ON b.message_id = m.id
         WHERE m.sending_application = ?1 AND m.sending_facility = ?2
           AND m.control_id = ?3 AND m.received_at >= ?4
         ORDER BY m.received_at DESC, m.id DESC LIMIT 1"
    );

    pub(crate) const UNPROCESSED: &str = "SELECT m.id, m.received_at, m.listener, m.peer,
                m.control_id, m.message_type, m.sending_application, m.sending_facility,
                m.patient_id, b.raw
         FROM messages m JOIN message_bodies b ON b.message_id = m.id
         WHERE m.status = 'received' AND m.status <> 'processed'
         ORDER BY m.id";

    pub(crate) const IN_FLIGHT: &str =
        "SELECT d.id, d.message_id, d.destination, m.control_id, d.attempts
         FROM deliveries d JOIN messages m ON m.id = d.message_id
         WHERE d.status = 'in_flight' AND d.status <> 'delivered'
         ORDER BY d.id";

    pub(crate) const STRICT_HEAD: &str = concat!(
        "SELECT id, status, next_attempt_at FROM deliveries
         WHERE destination = ?1 AND ",
        pending!(""),
        " ORDER BY id LIMIT ?2"
    );

    pub(crate) const SET_ASIDE_DUE: &str = concat!(
        "SELECT id FROM deliveries
         WHERE destination = ?1 AND ",
        pending!(""),
        " AND status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= ?2)
         ORDER BY id LIMIT ?3"
    );

    pub(crate) const SET_ASIDE_NEXT: &str = concat!(
        "SELECT min(next_attempt_at) FROM deliveries
         WHERE destination = ?1 AND ",
        pending!(""),
        " AND status = 'queued'"
    );

    /// Heads of their keys: queued, and no older unfinished delivery with the same key (an
    /// empty key never waits for another).
    macro_rules! key_heads {
        () => {
            concat!(
                " FROM deliveries d
                 WHERE d.destination = ?1 AND ",
                pending!("d."),
                " AND d.status = 'queued'
                   AND (d.order_key = '' OR NOT EXISTS (
                        SELECT 1 FROM deliveries e
                        WHERE e.destination = d.destination AND e.order_key = d.order_key
                          AND ",
                pending!("e."),
                " AND e.id < d.id))"
            )
        };
    }

    pub(crate) const BY_KEY_DUE: &str = concat!(
        "SELECT d.id",
        key_heads!(),
        " AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?2) ORDER BY d.id LIMIT ?3"
    );

    pub(crate) const BY_KEY_NEXT: &str = concat!("SELECT min(d.next_attempt_at)", key_heads!());

    pub(crate) const ANY_QUEUED: &str = concat!(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE destination = ?1 AND ",
        pending!(""),
        " AND status = 'queued')"
    );

    pub(crate) const QUEUE_DEPTHS: &str = "SELECT status, destination, count(*) FROM deliveries
         WHERE status <> 'delivered'
         GROUP BY status, destination";

    pub(crate) const PRUNE: &str = "DELETE FROM messages WHERE id IN (
             SELECT m.id FROM messages m
             WHERE m.received_at < ?1
               AND m.status IN ('processed', 'filtered', 'unrouted')
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.message_id = m.id AND d.status <> 'delivered')
             LIMIT ?2)";

    /// Every named query, for the plan test.
    #[cfg(test)]
    pub(crate) const ALL: &[(&str, &str)] = &[
        ("FIND_DUPLICATE", FIND_DUPLICATE),
        ("UNPROCESSED", UNPROCESSED),
        ("IN_FLIGHT", IN_FLIGHT),
        ("STRICT_HEAD", STRICT_HEAD),
        ("SET_ASIDE_DUE", SET_ASIDE_DUE),
        ("SET_ASIDE_NEXT", SET_ASIDE_NEXT),
        ("BY_KEY_DUE", BY_KEY_DUE),
        ("BY_KEY_NEXT", BY_KEY_NEXT),
        ("ANY_QUEUED", ANY_QUEUED),
        ("QUEUE_DEPTHS", QUEUE_DEPTHS),
        ("PRUNE", PRUNE),
    ];
}

// ---------------------------------------------------------------------------------------------
// Journal and processing

pub(crate) fn journal(conn: &Connection, m: &NewMessage) -> OpResult<MessageId> {
    journal_as(conn, m, None)
}

/// Journals a message, already processed when `processed` is given: its row is written with
/// the final status at once, rather than as `received` and then updated in the same commit
/// (a second write of the row and of its status index entry).
fn journal_as(
    conn: &Connection,
    m: &NewMessage,
    processed: Option<&Processing>,
) -> OpResult<MessageId> {
    let status = processed.map_or(MessageStatus::Received, |p| MessageStatus::from(p.status));
    conn.prepare_cached(
        "INSERT INTO messages (received_at, listener, peer, control_id, message_type,
             sending_application, sending_facility, patient_id, status, reason, processed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        micros(m.received_at),
        m.listener,
        m.peer,
        m.control_id,
        m.message_type,
        m.sending_application,
        m.sending_facility,
        m.patient_id,
        status.as_str(),
        processed.and_then(|p| p.reason.as_deref()),
        processed.map(|_| now_micros()),
    ])?;
    let id = conn.last_insert_rowid();
    // A large body's ACK goes in a row of its own (schema version 3), so that nothing
    // follows the zeroblob and SQLite never materialises it.
    let (ack_beside, ack_apart) = if m.raw.len() >= LARGE_BLOB {
        (None, m.ack.as_deref())
    } else {
        (m.ack.as_deref(), None)
    };
    conn.prepare_cached("INSERT INTO message_bodies (message_id, raw, ack) VALUES (?1, ?2, ?3)")?
        .execute(params![
            id,
            BlobParam(std::slice::from_ref(&m.raw)),
            ack_beside
        ])?;
    fill_large(
        conn,
        "message_bodies",
        "raw",
        id,
        std::slice::from_ref(&m.raw),
    )?;
    if let Some(ack) = ack_apart {
        conn.prepare_cached("INSERT INTO message_acks (message_id, ack) VALUES (?1, ?2)")?
            .execute(params![id, ack])?;
    }
    Ok(MessageId(id))
}

/// Records what processing made of a journaled message and queues its deliveries.
pub(crate) fn complete_processing(
    conn: &Connection,
    id: MessageId,
    p: &Processing,
) -> OpResult<Vec<DeliveryId>> {
    let status = message_status_of(conn, id)?;
    if status != MessageStatus::Received {
        return Err(StoreError::AlreadyProcessed { id, status }.into());
    }
    conn.prepare_cached(
        "UPDATE messages SET status = ?2, reason = ?3, processed_at = ?4 WHERE id = ?1",
    )?
    .execute(params![
        id.0,
        MessageStatus::from(p.status).as_str(),
        p.reason,
        now_micros()
    ])?;
    record_processing(conn, id, p, None)
}

/// Journals a message together with what processing made of it, in one job.
pub(crate) fn journal_processed(
    conn: &Connection,
    m: &NewMessage,
    p: &Processing,
) -> OpResult<(MessageId, Vec<DeliveryId>)> {
    let id = journal_as(conn, m, Some(p))?;
    Ok((id, record_processing(conn, id, p, Some(&m.raw))?))
}

/// [`journal_processed`], unless [`find_duplicate`] finds an earlier copy received at or after
/// `since`. On the writer's connection the check sees every write committed and every job run
/// before it in the open transaction, so a copy can never slip in between check and write.
pub(crate) fn journal_processed_once(
    conn: &Connection,
    m: &NewMessage,
    p: &Processing,
    since: SystemTime,
) -> OpResult<Journaled> {
    if let Some(found) = find_duplicate(
        conn,
        &m.sending_application,
        &m.sending_facility,
        &m.control_id,
        since,
    )? {
        return Ok(Journaled::Duplicate(found));
    }
    let (id, deliveries) = journal_processed(conn, m, p)?;
    Ok(Journaled::Stored { id, deliveries })
}

/// The steps and deliveries of a processed message (its status is already recorded). `raw`:
/// the message as received, when the caller has it at hand (otherwise it is read back if a
/// delivery needs it).
///
/// A delivery whose payload is what its route's steps already recorded gets no payload row of
/// its own: the output of the route's last step that changed the message, or the message as
/// received when none did. The readers fall back the same way ([`payload!`]), so each
/// version of a message is written once, not once as a step's output and again as a payload.
fn record_processing(
    conn: &Connection,
    id: MessageId,
    p: &Processing,
    raw: Option<&[u8]>,
) -> OpResult<Vec<DeliveryId>> {
    let now = now_micros();
    let mut insert_step = conn.prepare_cached(
        "INSERT INTO steps (message_id, seq, route, step, kind, content_hash, outcome, output,
             reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (i, s) in p.steps.iter().enumerate() {
        let output = match &s.outcome {
            StepOutcome::Changed(out) => Some(out.pieces()),
            _ => None,
        };
        insert_step.execute(params![
            id.0,
            i as i64 + 1,
            s.route,
            s.step,
            s.kind,
            s.content_hash,
            s.outcome.as_str(),
            output.map(BlobParam),
            s.reason,
        ])?;
        if let Some(output) = output {
            fill_large(conn, "steps", "output", conn.last_insert_rowid(), output)?;
        }
    }
    let read_back;
    let raw = match raw {
        Some(raw) => Some(raw),
        None if p.deliveries.is_empty() => None,
        // Every delivery's route changed the message: the body is not needed.
        None if p.deliveries.iter().all(|d| {
            p.steps
                .iter()
                .any(|s| s.route == d.route && matches!(s.outcome, StepOutcome::Changed(_)))
        }) =>
        {
            None
        }
        None => {
            read_back = conn
                .prepare_cached("SELECT raw FROM message_bodies WHERE message_id = ?1")?
                .query_row([id.0], |r| r.get::<_, Vec<u8>>(0))?;
            Some(&read_back[..])
        }
    };
    let mut ids = Vec::with_capacity(p.deliveries.len());
    for d in &p.deliveries {
        let delivery =
            insert_delivery(conn, id, &d.route, &d.destination, &d.order_key, now, None)?;
        let last_change = p.steps.iter().rev().find_map(|s| match &s.outcome {
            StepOutcome::Changed(out) if s.route == d.route => Some(out),
            _ => None,
        });
        let kept = match (last_change, raw) {
            (Some(out), _) => *out == d.payload,
            (None, Some(raw)) => d.payload.eq_bytes(raw),
            (None, None) => false,
        };
        if !kept {
            let pieces = d.payload.pieces();
            conn.prepare_cached(
                "INSERT INTO delivery_payloads (delivery_id, payload) VALUES (?1, ?2)",
            )?
            .execute(params![delivery.0, BlobParam(pieces)])?;
            fill_large(conn, "delivery_payloads", "payload", delivery.0, pieces)?;
        }
        ids.push(delivery);
    }
    Ok(ids)
}

fn insert_delivery(
    conn: &Connection,
    message: MessageId,
    route: &str,
    destination: &str,
    order_key: &str,
    now: i64,
    resent_from: Option<DeliveryId>,
) -> OpResult<DeliveryId> {
    conn.prepare_cached(
        "INSERT INTO deliveries (message_id, route, destination, order_key, created_at,
             resent_from)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        message.0,
        route,
        destination,
        order_key,
        now,
        resent_from.map(|d| d.0)
    ])?;
    Ok(DeliveryId(conn.last_insert_rowid()))
}

fn message_status_of(conn: &Connection, id: MessageId) -> OpResult<MessageStatus> {
    let word: Option<String> = conn
        .prepare_cached("SELECT status FROM messages WHERE id = ?1")?
        .query_row([id.0], |r| r.get(0))
        .optional()?;
    match word {
        Some(w) => Ok(message_status(0, &w)?),
        None => Err(StoreError::MessageNotFound(id).into()),
    }
}

pub(crate) fn record_ack(conn: &Connection, id: MessageId, ack: &[u8]) -> OpResult<()> {
    // Beside a small body, as before (length() of a blob reads the row's header, not the
    // body). Beside a large one the update would rewrite the whole row: its ACK goes in a row
    // of its own (schema version 3).
    let changed = conn
        .prepare_cached(
            "UPDATE message_bodies SET ack = ?2 WHERE message_id = ?1 AND length(raw) < ?3",
        )?
        .execute(params![id.0, ack, LARGE_BLOB as i64])?;
    if changed > 0 {
        return Ok(());
    }
    let exists = conn
        .prepare_cached("SELECT 1 FROM message_bodies WHERE message_id = ?1")?
        .exists([id.0])?;
    if !exists {
        return Err(StoreError::MessageNotFound(id).into());
    }
    conn.prepare_cached(
        "INSERT INTO message_acks (message_id, ack) VALUES (?1, ?2)
         ON CONFLICT (message_id) DO UPDATE SET ack = excluded.ack",
    )?
    .execute(params![id.0, ack])?;
    // A row from before version 3 may hold an ACK beside its body, which is read first.
    conn.prepare_cached(
        "UPDATE message_bodies SET ack = NULL WHERE message_id = ?1 AND ack IS NOT NULL",
    )?
    .execute([id.0])?;
    Ok(())
}

pub(crate) fn find_duplicate(
    conn: &Connection,
    sending_application: &str,
    sending_facility: &str,
    control_id: &str,
    since: SystemTime,
) -> OpResult<Option<Duplicate>> {
    let found = conn
        .prepare_cached(sql::FIND_DUPLICATE)?
        .query_row(
            params![
                sending_application,
                sending_facility,
                control_id,
                micros(since)
            ],
            |r| {
                Ok(Duplicate {
                    id: MessageId(r.get(0)?),
                    status: message_status(1, &r.get::<_, String>(1)?)?,
                    ack: r.get::<_, Option<Vec<u8>>>(2)?.map(Bytes::from),
                })
            },
        )
        .optional()?;
    Ok(found)
}

pub(crate) fn unprocessed(conn: &Connection) -> OpResult<Vec<StoredMessage>> {
    let mut stmt = conn.prepare_cached(sql::UNPROCESSED)?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredMessage {
            id: MessageId(r.get(0)?),
            message: NewMessage {
                received_at: time(r.get(1)?),
                listener: r.get(2)?,
                peer: r.get(3)?,
                control_id: r.get(4)?,
                message_type: r.get(5)?,
                sending_application: r.get(6)?,
                sending_facility: r.get(7)?,
                patient_id: r.get(8)?,
                raw: Bytes::from(r.get::<_, Vec<u8>>(9)?),
                ack: None,
            },
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

// ---------------------------------------------------------------------------------------------
// Queues

pub(crate) fn recover_in_flight(conn: &Connection) -> OpResult<Vec<RecoveredDelivery>> {
    let recovered = conn
        .prepare_cached(sql::IN_FLIGHT)?
        .query_map([], |r| {
            Ok(RecoveredDelivery {
                id: DeliveryId(r.get(0)?),
                message_id: MessageId(r.get(1)?),
                destination: r.get(2)?,
                control_id: r.get(3)?,
                attempts: count_u32(r.get(4)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // The same transaction as the select, so exactly these rows change.
    conn.prepare_cached(
        "UPDATE deliveries SET status = 'queued', possible_duplicate = 1
         WHERE status = 'in_flight' AND status <> 'delivered'",
    )?
    .execute([])?;
    Ok(recovered)
}

pub(crate) fn claim_batch(
    conn: &Connection,
    destination: &str,
    order: DeliveryOrder,
    now: SystemTime,
    limit: usize,
) -> OpResult<Claim<Vec<ClaimedDelivery>>> {
    let now = micros(now);
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let ids = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> OpResult<Vec<i64>> {
        Ok(conn
            .prepare_cached(sql)?
            .query_map(args, |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?)
    };
    let picked: Vec<i64> = match order {
        DeliveryOrder::Strict => {
            // The head decides; behind it, the run of deliveries that are due (a later one with
            // a retry time of its own, after an operator's retry, ends the run).
            let mut stmt = conn.prepare_cached(sql::STRICT_HEAD)?;
            let run: Vec<(i64, String, Option<i64>)> = stmt
                .query_map(params![destination, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            match run.first() {
                None => return Ok(Claim::Empty),
                Some((_, status, _)) if status == "in_flight" => return Ok(Claim::Blocked),
                Some((_, _, Some(next))) if *next > now => {
                    return Ok(Claim::WaitUntil(time(*next)));
                }
                Some(_) => run
                    .iter()
                    .take_while(|(_, status, next)| {
                        status == "queued" && next.is_none_or(|t| t <= now)
                    })
                    .map(|(id, _, _)| *id)
                    .collect(),
            }
        }
        DeliveryOrder::SetAside => {
            let due = ids(sql::SET_ASIDE_DUE, &[&destination, &now, &limit])?;
            if due.is_empty() {
                let next: Option<i64> = conn
                    .prepare_cached(sql::SET_ASIDE_NEXT)?
                    .query_row([destination], |r| r.get(0))?;
                return Ok(next.map_or(Claim::Empty, |t| Claim::WaitUntil(time(t))));
            }
            due
        }
        DeliveryOrder::ByKey => {
            let due = ids(sql::BY_KEY_DUE, &[&destination, &now, &limit])?;
            if due.is_empty() {
                let next: Option<i64> = conn
                    .prepare_cached(sql::BY_KEY_NEXT)?
                    .query_row([destination], |r| r.get(0))?;
                if let Some(t) = next {
                    return Ok(Claim::WaitUntil(time(t)));
                }
                let queued: bool = conn
                    .prepare_cached(sql::ANY_QUEUED)?
                    .query_row([destination], |r| r.get(0))?;
                return Ok(if queued { Claim::Blocked } else { Claim::Empty });
            }
            due
        }
    };
    let mut mark = conn.prepare_cached(
        "UPDATE deliveries
         SET status = 'in_flight', attempts = attempts + 1, last_attempt_at = ?2
         WHERE id = ?1",
    )?;
    let mut read = conn.prepare_cached(concat!(
        "SELECT d.id, d.message_id, d.route, d.destination, ",
        payload_source!(),
        ", m.control_id, m.message_type, d.order_key, d.attempts, d.possible_duplicate,
                m.received_at
             FROM deliveries d
             JOIN messages m ON m.id = d.message_id
             WHERE d.id = ?1"
    ))?;
    let mut batch = Vec::with_capacity(picked.len());
    for id in picked {
        mark.execute(params![id, now])?;
        let (mut delivery, own, step) = read.query_row([id], |r| {
            let delivery = ClaimedDelivery {
                id: DeliveryId(r.get(0)?),
                message_id: MessageId(r.get(1)?),
                route: r.get(2)?,
                destination: r.get(3)?,
                payload: Bytes::new(),
                control_id: r.get(6)?,
                message_type: r.get(7)?,
                order_key: r.get(8)?,
                attempts: count_u32(r.get(9)?),
                possible_duplicate: r.get(10)?,
                received_at: time(r.get(11)?),
            };
            Ok((delivery, r.get(4)?, r.get(5)?))
        })?;
        delivery.payload = read_payload(conn, own, step, delivery.message_id.0)?;
        batch.push(delivery);
    }
    Ok(Claim::Ready(batch))
}

/// Applies each settlement whose delivery is in flight; returns the others with the reason.
pub(crate) fn settle(
    conn: &Connection,
    settlements: &[Settlement],
) -> OpResult<Vec<(DeliveryId, StoreError)>> {
    let mut refused = Vec::new();
    for s in settlements {
        let applied = match &s.outcome {
            Settle::Delivered(ack) => delivered(conn, s.id, ack),
            Settle::Retry {
                error,
                next_attempt,
            } => retry_later(conn, s.id, error, *next_attempt),
            Settle::DeadLetter { error, ack } => finish_delivery(
                conn,
                "settle",
                s.id,
                &[DeliveryStatus::InFlight],
                DEAD_LETTER,
                &[&s.id.0, error, &ack.as_deref(), &now_micros()],
            ),
            Settle::Unsent => finish_delivery(
                conn,
                "settle",
                s.id,
                &[DeliveryStatus::InFlight],
                "UPDATE deliveries SET status = 'queued', attempts = max(attempts - 1, 0)
                 WHERE id = ?1",
                &[&s.id.0],
            ),
        };
        match applied {
            Ok(()) => {}
            Err(OpError::Store(
                e @ (StoreError::WrongDeliveryState { .. } | StoreError::DeliveryNotFound(_)),
            )) => refused.push((s.id, e)),
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Moves a delivery from one of `from` to its next state, or says why it cannot.
fn finish_delivery(
    conn: &Connection,
    operation: &'static str,
    id: DeliveryId,
    from: &[DeliveryStatus],
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> OpResult<()> {
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM deliveries WHERE id = ?1")?
        .query_row([id.0], |r| r.get(0))
        .optional()?;
    let status = match status {
        Some(word) => delivery_status(0, &word)?,
        None => return Err(StoreError::DeliveryNotFound(id).into()),
    };
    if !from.contains(&status) {
        return Err(StoreError::WrongDeliveryState {
            operation,
            id,
            status,
        }
        .into());
    }
    conn.prepare_cached(sql)?.execute(args)?;
    Ok(())
}

pub(crate) fn delivered(conn: &Connection, id: DeliveryId, ack: &[u8]) -> OpResult<()> {
    finish_delivery(
        conn,
        "delivered",
        id,
        &[DeliveryStatus::InFlight],
        "UPDATE deliveries SET status = 'delivered', ack = ?2, finished_at = ?3 WHERE id = ?1",
        &[&id.0, &ack, &now_micros()],
    )
}

pub(crate) fn retry_later(
    conn: &Connection,
    id: DeliveryId,
    error: &str,
    next_attempt: SystemTime,
) -> OpResult<()> {
    finish_delivery(
        conn,
        "retry_later",
        id,
        &[DeliveryStatus::InFlight],
        "UPDATE deliveries SET status = 'queued', last_error = ?2, next_attempt_at = ?3
         WHERE id = ?1",
        &[&id.0, &error, &micros(next_attempt)],
    )
}

const DEAD_LETTER: &str = "UPDATE deliveries
     SET status = 'error', last_error = ?2, ack = coalesce(?3, ack), finished_at = ?4
     WHERE id = ?1";

pub(crate) fn dead_letter(
    conn: &Connection,
    id: DeliveryId,
    error: &str,
    ack: Option<&[u8]>,
) -> OpResult<()> {
    finish_delivery(
        conn,
        "dead_letter",
        id,
        &[DeliveryStatus::InFlight, DeliveryStatus::Queued],
        DEAD_LETTER,
        &[&id.0, &error, &ack, &now_micros()],
    )
}

pub(crate) fn queue_depths(conn: &Connection) -> OpResult<Vec<QueueDepth>> {
    let mut stmt = conn.prepare_cached(sql::QUEUE_DEPTHS)?;
    let mut depths: BTreeMap<String, QueueDepth> = BTreeMap::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let status = delivery_status(0, &r.get::<_, String>(0)?)?;
        let destination: String = r.get(1)?;
        let n = u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0);
        let depth = depths
            .entry(destination.clone())
            .or_insert_with(|| QueueDepth {
                destination,
                queued: 0,
                in_flight: 0,
                errored: 0,
            });
        match status {
            DeliveryStatus::Queued => depth.queued = n,
            DeliveryStatus::InFlight => depth.in_flight = n,
            DeliveryStatus::Error => depth.errored = n,
            DeliveryStatus::Delivered => {}
        }
    }
    Ok(depths.into_values().collect())
}

// ---------------------------------------------------------------------------------------------
// Search and detail

/// Escapes GLOB's special characters so a prefix matches literally.
fn glob_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        match c {
            '*' | '?' | '[' => {
                pattern.push('[');
                pattern.push(c);
                pattern.push(']');
            }
            _ => pattern.push(c),
        }
    }
    pattern.push('*');
    pattern
}

pub(crate) fn search(conn: &Connection, f: &Search) -> OpResult<Vec<MessageSummary>> {
    let (sql, args) = search_query(f);
    // A handful of filter combinations occur, so caching by SQL text pays off.
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut found = stmt
        .query_map(params_from_iter(args), |r| {
            Ok(MessageSummary {
                id: MessageId(r.get(0)?),
                received_at: time(r.get(1)?),
                processed_at: r.get::<_, Option<i64>>(2)?.map(time),
                listener: r.get(3)?,
                peer: r.get(4)?,
                control_id: r.get(5)?,
                message_type: r.get(6)?,
                sending_application: r.get(7)?,
                sending_facility: r.get(8)?,
                status: message_status(9, &r.get::<_, String>(9)?)?,
                reason: r.get(10)?,
                deliveries: DeliveryCounts::default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut counts = conn.prepare_cached(
        "SELECT status, count(*) FROM deliveries WHERE message_id = ?1 GROUP BY status",
    )?;
    for summary in &mut found {
        let mut rows = counts.query([summary.id.0])?;
        while let Some(r) = rows.next()? {
            let n = count_u32(r.get(1)?);
            let c = &mut summary.deliveries;
            match delivery_status(0, &r.get::<_, String>(0)?)? {
                DeliveryStatus::Queued => c.queued = n,
                DeliveryStatus::InFlight => c.in_flight = n,
                DeliveryStatus::Delivered => c.delivered = n,
                DeliveryStatus::Error => c.error = n,
            }
        }
    }
    Ok(found)
}

/// The SQL of a search and its arguments.
pub(crate) fn search_query(f: &Search) -> (String, Vec<Value>) {
    let mut sql = String::from(
        "SELECT m.id, m.received_at, m.processed_at, m.listener, m.peer, m.control_id,
                m.message_type, m.sending_application, m.sending_facility, m.status, m.reason
         FROM messages m WHERE 1 = 1",
    );
    let mut args: Vec<Value> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(s) = f.status {
        arg(&mut sql, " AND m.status = ?", s.as_str().to_owned().into());
        if s != MessageStatus::Processed {
            // The status index holds every status but this one (schema version 6); SQLite
            // uses it only when the query repeats its WHERE term.
            sql.push_str(" AND m.status <> 'processed'");
        }
    }
    match &f.message_type {
        Some(TypeFilter::Exact(t)) => arg(&mut sql, " AND m.message_type = ?", t.clone().into()),
        // GLOB is case-sensitive like the index, so SQLite turns it into an index range.
        Some(TypeFilter::Prefix(p)) => arg(
            &mut sql,
            " AND m.message_type GLOB ?",
            glob_prefix(p).into(),
        ),
        None => {}
    }
    if let Some(c) = &f.control_id {
        arg(&mut sql, " AND m.control_id = ?", c.clone().into());
    }
    if let Some(p) = &f.patient_id {
        arg(&mut sql, " AND m.patient_id = ?", p.clone().into());
    }
    if let Some(l) = &f.listener {
        arg(&mut sql, " AND m.listener = ?", l.clone().into());
    }
    if let Some(t) = f.since {
        arg(&mut sql, " AND m.received_at >= ?", micros(t).into());
    }
    if let Some(t) = f.until {
        arg(&mut sql, " AND m.received_at < ?", micros(t).into());
    }
    if f.delivery_status.is_some() || f.destination.is_some() {
        sql.push_str(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id");
        if let Some(s) = f.delivery_status {
            arg(&mut sql, " AND d.status = ?", s.as_str().to_owned().into());
        }
        if let Some(d) = &f.destination {
            arg(&mut sql, " AND d.destination = ?", d.clone().into());
        }
        sql.push(')');
    }
    arg(
        &mut sql,
        " ORDER BY m.id DESC LIMIT ?",
        i64::from(f.limit).into(),
    );
    arg(&mut sql, " OFFSET ?", i64::from(f.offset).into());
    (sql, args)
}

pub(crate) fn message(conn: &Connection, id: MessageId) -> OpResult<Option<MessageDetail>> {
    let found = conn
        .prepare_cached(concat!(
            "SELECT m.id, m.received_at, m.processed_at, m.listener, m.peer, m.control_id,
                    m.message_type, m.sending_application, m.sending_facility, m.patient_id,
                    m.status, m.reason, b.raw, ",
            ack_of_m!(),
            " FROM messages m JOIN message_bodies b ON b.message_id = m.id
             WHERE m.id = ?1"
        ))?
        .query_row([id.0], |r| {
            Ok(MessageDetail {
                id: MessageId(r.get(0)?),
                received_at: time(r.get(1)?),
                processed_at: r.get::<_, Option<i64>>(2)?.map(time),
                listener: r.get(3)?,
                peer: r.get(4)?,
                control_id: r.get(5)?,
                message_type: r.get(6)?,
                sending_application: r.get(7)?,
                sending_facility: r.get(8)?,
                patient_id: r.get(9)?,
                status: message_status(10, &r.get::<_, String>(10)?)?,
                reason: r.get(11)?,
                raw: Bytes::from(r.get::<_, Vec<u8>>(12)?),
                ack: r.get::<_, Option<Vec<u8>>>(13)?.map(Bytes::from),
                steps: Vec::new(),
                deliveries: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut detail) = found else {
        return Ok(None);
    };
    detail.steps = conn
        .prepare_cached(
            "SELECT seq, route, step, kind, content_hash, outcome, output, reason
             FROM steps WHERE message_id = ?1 ORDER BY seq",
        )?
        .query_map([id.0], |r| {
            Ok(StepDetail {
                seq: count_u32(r.get(0)?),
                route: r.get(1)?,
                step: r.get(2)?,
                kind: r.get(3)?,
                content_hash: r.get(4)?,
                outcome: step_outcome(5, &r.get::<_, String>(5)?, r.get(6)?)?,
                reason: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    detail.deliveries = conn
        .prepare_cached(concat!(
            "SELECT d.id, d.route, d.destination, d.order_key, d.status, d.attempts,
                    d.possible_duplicate, d.created_at, d.last_attempt_at, d.next_attempt_at,
                    d.finished_at, d.last_error, d.ack, ",
            payload!(),
            ", d.resent_from
                 FROM deliveries d
                 WHERE d.message_id = ?1 ORDER BY d.id"
        ))?
        .query_map([id.0], delivery_detail)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(detail))
}

fn delivery_detail(r: &Row<'_>) -> rusqlite::Result<DeliveryDetail> {
    Ok(DeliveryDetail {
        id: DeliveryId(r.get(0)?),
        route: r.get(1)?,
        destination: r.get(2)?,
        order_key: r.get(3)?,
        status: delivery_status(4, &r.get::<_, String>(4)?)?,
        attempts: count_u32(r.get(5)?),
        possible_duplicate: r.get(6)?,
        created_at: time(r.get(7)?),
        last_attempt_at: r.get::<_, Option<i64>>(8)?.map(time),
        next_attempt_at: r.get::<_, Option<i64>>(9)?.map(time),
        finished_at: r.get::<_, Option<i64>>(10)?.map(time),
        last_error: r.get(11)?,
        ack: r.get::<_, Option<Vec<u8>>>(12)?.map(Bytes::from),
        payload: Bytes::from(r.get::<_, Vec<u8>>(13)?),
        resent_from: r.get::<_, Option<i64>>(14)?.map(DeliveryId),
    })
}

// ---------------------------------------------------------------------------------------------
// Operator actions and retention

pub(crate) fn resend(
    conn: &Connection,
    id: MessageId,
    destination: Option<&str>,
) -> OpResult<Vec<DeliveryId>> {
    message_status_of(conn, id)?;
    // The latest delivery per (route, destination): resending a message resent before sends
    // it once more, not once per earlier copy.
    let sources: Vec<(i64, String, String, String)> = conn
        .prepare_cached(
            "SELECT d.id, d.route, d.destination, d.order_key FROM deliveries d
             WHERE d.id IN (SELECT max(id) FROM deliveries WHERE message_id = ?1
                            GROUP BY route, destination)
               AND (?2 IS NULL OR d.destination = ?2)
             ORDER BY d.id",
        )?
        .query_map(params![id.0, destination], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let now = now_micros();
    let mut ids = Vec::with_capacity(sources.len());
    for (source, route, dest, key) in sources {
        let new = insert_delivery(conn, id, &route, &dest, &key, now, Some(DeliveryId(source)))?;
        // No payload row to copy means the source sent the message as received; so does
        // the copy.
        conn.prepare_cached(
            "INSERT INTO delivery_payloads (delivery_id, payload)
             SELECT ?1, payload FROM delivery_payloads WHERE delivery_id = ?2",
        )?
        .execute(params![new.0, source])?;
        ids.push(new);
    }
    Ok(ids)
}

pub(crate) fn retry_errored(conn: &Connection, destination: Option<&str>) -> OpResult<u64> {
    let n = conn
        .prepare_cached(
            "UPDATE deliveries
             SET status = 'queued', attempts = 0, next_attempt_at = NULL, finished_at = NULL
             WHERE status = 'error' AND status <> 'delivered'
               AND (?1 IS NULL OR destination = ?1)",
        )?
        .execute(params![destination])?;
    Ok(n as u64)
}

/// Deletes up to `limit` finished messages received before `older_than`; returns how many.
///
/// The check and the delete are one statement in the writer's transaction, so a delivery
/// queued or retried concurrently cannot slip between them.
pub(crate) fn prune_chunk(conn: &Connection, older_than: SystemTime, limit: u32) -> OpResult<u64> {
    let n = conn
        .prepare_cached(sql::PRUNE)?
        .execute(params![micros(older_than), limit])?;
    Ok(n as u64)
}

/// Hands up to `pages` free pages back to the file system; returns how many remain free.
pub(crate) fn vacuum_step(conn: &Connection, pages: u32) -> OpResult<u64> {
    // The pragma does its work as it is stepped; execute_batch steps it to the end.
    conn.execute_batch(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok(u64::try_from(free).unwrap_or(0))
}

pub(crate) fn audit(conn: &Connection, e: &AuditEntry) -> OpResult<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, message_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        micros(e.at),
        e.actor,
        e.action,
        e.message_id.map(|m| m.0),
        e.detail
    ])?;
    Ok(())
}

pub(crate) fn audit_log(
    conn: &Connection,
    message: Option<MessageId>,
    limit: u32,
) -> OpResult<Vec<AuditEntry>> {
    let row = |r: &Row<'_>| -> rusqlite::Result<AuditEntry> {
        Ok(AuditEntry {
            at: time(r.get(0)?),
            actor: r.get(1)?,
            action: r.get(2)?,
            message_id: r.get::<_, Option<i64>>(3)?.map(MessageId),
            detail: r.get(4)?,
        })
    };
    let entries = match message {
        Some(m) => conn
            .prepare_cached(
                "SELECT at, actor, action, message_id, detail FROM audit
                 WHERE message_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![m.0, limit], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        None => conn
            .prepare_cached(
                "SELECT at, actor, action, message_id, detail FROM audit
                 ORDER BY id DESC LIMIT ?1",
            )?
            .query_map(params![limit], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?,
    };
    Ok(entries)
}
