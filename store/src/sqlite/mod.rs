//! [`SqliteStore`]: the embedded [`Store`], one SQLite file in WAL mode in the data directory.
//!
//! Layout: `writer.rs` owns the write connection and does group commit; `readers.rs` is the
//! pool that serves reads beside it; `ops.rs` holds the SQL of each operation; `schema.rs` the
//! tables, indexes and migrations; `convert.rs` the mapping of errors, times and statuses.
//! Nothing SQLite-specific leaves this module.

mod convert;
mod ops;
mod readers;
mod schema;
mod writer;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::Connection;

use self::convert::classify;
use self::readers::Readers;
use self::writer::{Counters, Writer};
use crate::error::StoreError;
use crate::store::Store;
use crate::types::{
    AuditEntry, Claim, ClaimedDelivery, DeliveryId, DeliveryOrder, Duplicate, Journaled,
    MessageDetail, MessageId, MessageSummary, NewMessage, Processing, QueueDepth,
    RecoveredDelivery, Search, Settlement, StoredMessage,
};

/// Settings of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Sync every commit to disk (`synchronous=FULL`): a write that returned survives power
    /// loss. Off (`NORMAL`), it survives a crash of the process but the last commits may be lost
    /// with the machine. Default on.
    pub fsync: bool,
    /// The most write requests that share one transaction (and one sync). Default 256.
    pub max_batch: usize,
    /// How long to wait for a lock held by another process (e.g. an operator's `sqlite3`)
    /// before answering [`StoreError::Unavailable`]. Default 5 s.
    pub busy_timeout: Duration,
    /// Read connections, i.e. reads that can run at once. Default 4.
    pub readers: usize,
    /// A cap on the database file's size; beyond it writes fail with
    /// [`StoreError::Unavailable`] (cause `Full`) as on a full disk, so the store cannot fill
    /// the disk it shares with other software. Default none.
    pub max_size_bytes: Option<u64>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            fsync: true,
            max_batch: 256,
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            max_size_bytes: None,
        }
    }
}

/// Counters of the store's writer, for metrics and for tests of group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Transactions committed (each one sync with `fsync` on).
    pub commits: u64,
    /// Write requests handled (journal, claim, delivered, ...), failed ones included.
    pub writes: u64,
    /// The most requests one commit carried.
    pub largest_batch: u64,
    /// Batches run a second time, each request in a savepoint of its own, because one of
    /// their requests failed.
    pub reruns: u64,
}

/// The embedded store: SQLite (bundled) in WAL mode, `courier.db` in the data directory.
///
/// One writer thread does all writes with group commit; a small pool of read connections
/// serves search, detail and duplicate lookups beside it. A lock file (`courier.lock`) keeps a
/// second process from opening the same store. Dropping the store finishes the queued writes
/// and closes the database.
pub struct SqliteStore {
    // Field order is drop order: the writer finishes before the lock is released.
    writer: Writer,
    readers: Arc<Readers>,
    counters: Arc<Counters>,
    path: PathBuf,
    /// The engine's exclusive claim on the store; `None` for a secondary opener.
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Messages the pruner deletes per transaction, so writes of live traffic interleave.
const PRUNE_CHUNK: u32 = 500;
/// Pages handed back to the file system per transaction after pruning.
const VACUUM_CHUNK: u32 = 2048;

impl SqliteStore {
    /// The database file's name in the data directory.
    pub const FILE_NAME: &'static str = "courier.db";

    /// Opens (creating if needed) the store in `dir`: creates the directory and database, sets
    /// WAL mode and the sync level, and brings the schema up to date. Fails with
    /// [`StoreError::InUse`] if another process has it open and
    /// [`StoreError::SchemaTooNew`] if a newer Courier wrote it.
    pub fn open(dir: &Path, settings: StoreSettings) -> Result<SqliteStore, StoreError> {
        Self::open_as(dir, settings, true)
    }

    /// Opens a store that an engine may be running on, for an operator's tool (`courier
    /// messages`): no exclusive lock and no migration (the schema must be current). SQLite's
    /// own locking keeps its writes atomic beside the engine's; the engine's workers pick up
    /// what it queues on their next poll. Use it for occasional operations, never to run a
    /// second engine.
    pub fn open_secondary(dir: &Path, settings: StoreSettings) -> Result<SqliteStore, StoreError> {
        Self::open_as(dir, settings, false)
    }

    fn open_as(
        dir: &Path,
        settings: StoreSettings,
        primary: bool,
    ) -> Result<SqliteStore, StoreError> {
        let open_err = |path: &Path, e: std::io::Error| StoreError::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(dir, e))?;
        let lock = if primary {
            let lock_path = dir.join("courier.lock");
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| open_err(&lock_path, e))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Err(StoreError::InUse { path: lock_path }),
                Err(TryLockError::Error(e)) => return Err(open_err(&lock_path, e)),
            }
            Some(lock)
        } else {
            None
        };

        let path = dir.join(Self::FILE_NAME);
        let mut conn = Connection::open(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            detail: classify("open", &e).to_string(),
        })?;
        schema::prepare_writer(&mut conn, &path, &settings, primary)?;
        // The directory entries of a new database and WAL must survive a power cut too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| open_err(dir, e))?;

        let counters = Arc::new(Counters::default());
        let writer = Writer::start(conn, settings.max_batch, Arc::clone(&counters))
            .map_err(|e| open_err(&path, e))?;
        let readers = Readers::new(path.clone(), settings.readers, settings.busy_timeout);
        tracing::info!(path = %path.display(), "store opened");
        Ok(SqliteStore {
            writer,
            readers,
            counters,
            path,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
            reruns: self.counters.reruns.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn journal(&self, message: NewMessage) -> Result<MessageId, StoreError> {
        self.writer
            .submit("journal", move |c| ops::journal(c, &message))
            .await
    }

    async fn complete_processing(
        &self,
        id: MessageId,
        processing: Processing,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        self.writer
            .submit("complete_processing", move |c| {
                ops::complete_processing(c, id, &processing)
            })
            .await
    }

    async fn journal_processed(
        &self,
        message: NewMessage,
        processing: Processing,
    ) -> Result<(MessageId, Vec<DeliveryId>), StoreError> {
        self.writer
            .submit("journal_processed", move |c| {
                ops::journal_processed(c, &message, &processing)
            })
            .await
    }

    async fn journal_processed_once(
        &self,
        message: NewMessage,
        processing: Processing,
        since: SystemTime,
    ) -> Result<Journaled, StoreError> {
        self.writer
            .submit("journal_processed", move |c| {
                ops::journal_processed_once(c, &message, &processing, since)
            })
            .await
    }

    async fn record_ack(&self, id: MessageId, ack: Bytes) -> Result<(), StoreError> {
        self.writer
            .submit("record_ack", move |c| ops::record_ack(c, id, &ack))
            .await
    }

    async fn find_duplicate(
        &self,
        sending_application: &str,
        sending_facility: &str,
        control_id: &str,
        since: SystemTime,
    ) -> Result<Option<Duplicate>, StoreError> {
        let (app, facility, control) = (
            sending_application.to_owned(),
            sending_facility.to_owned(),
            control_id.to_owned(),
        );
        self.readers
            .run("find_duplicate", move |c| {
                ops::find_duplicate(c, &app, &facility, &control, since)
            })
            .await
    }

    async fn unprocessed(&self) -> Result<Vec<StoredMessage>, StoreError> {
        self.readers.run("unprocessed", ops::unprocessed).await
    }

    async fn recover_in_flight(&self) -> Result<Vec<RecoveredDelivery>, StoreError> {
        let recovered = self
            .writer
            .submit("recover_in_flight", ops::recover_in_flight)
            .await?;
        if !recovered.is_empty() {
            tracing::warn!(
                deliveries = recovered.len(),
                "deliveries in flight at the last stop queued again as possible duplicates"
            );
        }
        Ok(recovered)
    }

    async fn claim_batch(
        &self,
        destination: &str,
        order: DeliveryOrder,
        now: SystemTime,
        limit: usize,
    ) -> Result<Claim<Vec<ClaimedDelivery>>, StoreError> {
        let destination = destination.to_owned();
        self.writer
            .submit("claim_batch", move |c| {
                ops::claim_batch(c, &destination, order, now, limit)
            })
            .await
    }

    async fn settle(
        &self,
        settlements: Vec<Settlement>,
    ) -> Result<Vec<(DeliveryId, StoreError)>, StoreError> {
        self.writer
            .submit("settle", move |c| ops::settle(c, &settlements))
            .await
    }

    async fn delivered(&self, id: DeliveryId, ack: Bytes) -> Result<(), StoreError> {
        self.writer
            .submit("delivered", move |c| ops::delivered(c, id, &ack))
            .await
    }

    async fn retry_later(
        &self,
        id: DeliveryId,
        error: &str,
        next_attempt: SystemTime,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.writer
            .submit("retry_later", move |c| {
                ops::retry_later(c, id, &error, next_attempt)
            })
            .await
    }

    async fn dead_letter(
        &self,
        id: DeliveryId,
        error: &str,
        ack: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.writer
            .submit("dead_letter", move |c| {
                ops::dead_letter(c, id, &error, ack.as_deref())
            })
            .await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.readers.run("queue_depths", ops::queue_depths).await
    }

    async fn search(&self, filter: &Search) -> Result<Vec<MessageSummary>, StoreError> {
        let filter = filter.clone();
        self.readers
            .run("search", move |c| ops::search(c, &filter))
            .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<MessageDetail>, StoreError> {
        self.readers
            .run("message", move |c| ops::message(c, id))
            .await
    }

    async fn resend(
        &self,
        id: MessageId,
        destination: Option<&str>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let destination = destination.map(str::to_owned);
        self.writer
            .submit("resend", move |c| {
                ops::resend(c, id, destination.as_deref())
            })
            .await
    }

    async fn retry_errored(&self, destination: Option<&str>) -> Result<u64, StoreError> {
        let destination = destination.map(str::to_owned);
        self.writer
            .submit("retry_errored", move |c| {
                ops::retry_errored(c, destination.as_deref())
            })
            .await
    }

    async fn prune(&self, older_than: SystemTime) -> Result<u64, StoreError> {
        let started = Instant::now();
        let mut pruned = 0;
        // In chunks, each its own transaction, so live traffic is not held up behind a large
        // deletion; each chunk checks "nothing unfinished" atomically with its delete.
        loop {
            let n = self
                .writer
                .submit("prune", move |c| {
                    ops::prune_chunk(c, older_than, PRUNE_CHUNK)
                })
                .await?;
            pruned += n;
            if n < u64::from(PRUNE_CHUNK) {
                break;
            }
        }
        // Freed pages go back to the file system (auto_vacuum=INCREMENTAL), so the file shrinks
        // instead of only ceasing to grow.
        let mut free = u64::MAX;
        loop {
            let left = self
                .writer
                .submit("prune", |c| ops::vacuum_step(c, VACUUM_CHUNK))
                .await?;
            // Stop when done, or if a step made no progress (never loop forever).
            if left == 0 || left >= free {
                break;
            }
            free = left;
        }
        tracing::info!(
            messages = pruned,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store pruned"
        );
        Ok(pruned)
    }

    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.writer
            .submit("audit", move |c| ops::audit(c, &entry))
            .await
    }

    async fn audit_log(
        &self,
        message: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.readers
            .run("audit_log", move |c| ops::audit_log(c, message, limit))
            .await
    }

    fn writer_stats(&self) -> Option<StoreStats> {
        Some(self.stats())
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for suffix in ["", "-wal"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            match tokio::fs::metadata(&file).await {
                Ok(m) => total += m.len(),
                // No WAL file between a clean close and the next write.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
                Err(e) => {
                    return Err(StoreError::Backend {
                        operation: "size_bytes",
                        detail: e.to_string(),
                    });
                }
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageStatus;

    /// A new database with the latest schema and the writer's settings.
    fn fresh_schema() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        let mut conn = Connection::open(&path).unwrap();
        schema::prepare_writer(&mut conn, &path, &StoreSettings::default(), true).unwrap();
        (dir, conn)
    }

    /// The lines of `EXPLAIN QUERY PLAN` for `sql`, with every parameter NULL.
    fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(params), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A hot query is parsed once per connection, not once per use. rusqlite's statement cache
    /// clears a statement's bindings when it is returned; SQLite expires a statement whose plan
    /// looked at a bound value (a `LIMIT ?`, a range on an indexed column) when its bindings
    /// are cleared, so without the query planner stability guarantee every use re-prepared it.
    #[test]
    fn hot_queries_are_not_reprepared() {
        use rusqlite::types::Value;
        let (_dir, conn) = fresh_schema();
        for (name, sql) in ops::sql::ALL {
            let mut reprepared = 0;
            for i in 0..10_i64 {
                let mut stmt = conn.prepare_cached(sql).unwrap();
                // Different values on each use: text for the first parameter (a destination or
                // an application), growing integers for the rest (times, limits).
                let params: Vec<Value> = (0..stmt.parameter_count())
                    .map(|k| match k {
                        0 => Value::Text(format!("x{i}")),
                        _ => Value::Integer(i * 1000 + k as i64),
                    })
                    .collect();
                let mut rows = stmt.query(rusqlite::params_from_iter(params)).unwrap();
                while rows.next().unwrap().is_some() {}
                drop(rows);
                reprepared = stmt.get_status(rusqlite::StatementStatus::RePrepare);
            }
            assert_eq!(reprepared, 0, "{name} was prepared again on reuse");
        }
    }

    /// Every hot query reads through an index: no full scan of a table, and the queue queries
    /// walk the partial indexes of unfinished deliveries in id order (no sort).
    #[test]
    fn hot_queries_use_indexes() {
        let (_dir, conn) = fresh_schema();
        for (name, sql) in ops::sql::ALL {
            let plan = query_plan(&conn, sql);
            let text = plan.join("\n");
            for line in &plan {
                assert!(
                    !line.starts_with("SCAN")
                        || line.contains("INDEX")
                        || line == "SCAN CONSTANT ROW",
                    "{name} scans a table:\n{text}"
                );
            }
            if name.starts_with("STRICT") {
                assert!(text.contains("deliveries_pending "), "{name}:\n{text}");
            }
            if name.starts_with("SET_ASIDE") {
                // Either index yields one destination's queued deliveries in id order.
                assert!(
                    text.contains("deliveries_pending ") || text.contains("deliveries_unfinished"),
                    "{name}:\n{text}"
                );
            }
            if *name == "IN_FLIGHT" || *name == "QUEUE_DEPTHS" {
                // Delivered deliveries have no entry there: the index stays small.
                assert!(text.contains("deliveries_unfinished"), "{name}:\n{text}");
            }
            if *name == "FIND_DUPLICATE" {
                assert!(text.contains("messages_control_id"), "{name}:\n{text}");
                assert!(!text.contains("TEMP B-TREE"), "{name} sorts:\n{text}");
            }
            if name.starts_with("BY_KEY") {
                assert!(text.contains("deliveries_pending_key"), "{name}:\n{text}");
            }
            if name.ends_with("_DUE") || *name == "STRICT_HEAD" {
                assert!(!text.contains("TEMP B-TREE"), "{name} sorts:\n{text}");
            }
        }
    }

    /// A search for a status other than `processed` (and the restart's look for messages
    /// left `received`) goes through the status index, which holds only such messages.
    #[test]
    fn unfinished_statuses_are_found_through_the_partial_status_index() {
        let (_dir, conn) = fresh_schema();
        for status in [
            MessageStatus::Received,
            MessageStatus::Error,
            MessageStatus::Filtered,
            MessageStatus::Unrouted,
        ] {
            let (sql, _) = ops::search_query(&Search {
                status: Some(status),
                ..Search::default()
            });
            let text = query_plan(&conn, &sql).join("\n");
            assert!(text.contains("messages_status"), "{status:?}:\n{text}");
        }
        let text = query_plan(&conn, ops::sql::UNPROCESSED).join("\n");
        assert!(text.contains("messages_status"), "{text}");
        let index: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'messages_status'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(index.contains("WHERE status <> 'processed'"), "{index}");
    }

    /// Writing a row of the tables every message and delivery writes (the journal, its steps,
    /// its deliveries, each claim and outcome) builds no temporary b-tree: SQLite builds one
    /// per statement run for an `IN` list of three or more constants in a CHECK constraint or
    /// a partial index's WHERE. Checked on the connection that created the schema and on one
    /// opened afterwards; the constraints still refuse a value outside their lists.
    #[test]
    fn row_writes_build_no_temporary_btree() {
        let (dir, conn) = fresh_schema();
        let writes = [
            "INSERT INTO messages (received_at, listener, peer, control_id, message_type,
                 sending_application, sending_facility, patient_id, status)
             VALUES (1, 'l', 'p', 'c', 't', 'a', 'f', 'x', 'processed')",
            "INSERT INTO steps (message_id, seq, route, step, kind, content_hash, outcome)
             VALUES (1, 1, 'r', 's', 'k', 'h', 'kept')",
            "INSERT INTO deliveries (message_id, route, destination, order_key, created_at)
             VALUES (1, 'r', 'd', '', 1)",
            "UPDATE deliveries SET status = 'in_flight', attempts = attempts + 1 WHERE id = 1",
            "UPDATE deliveries SET status = 'delivered' WHERE id = 1",
        ];
        let reopened = Connection::open(dir.path().join("plan.db")).unwrap();
        for conn in [&conn, &reopened] {
            for sql in writes {
                let opcodes: Vec<String> = conn
                    .prepare(&format!("EXPLAIN {sql}"))
                    .unwrap()
                    .query_map([], |r| r.get::<_, String>(1))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert!(
                    !opcodes.iter().any(|op| op == "OpenEphemeral"),
                    "{sql} builds a temporary b-tree: {opcodes:?}"
                );
            }
        }
        for sql in writes {
            conn.execute(sql, []).unwrap();
        }
        for bad in [
            "UPDATE deliveries SET status = 'lost' WHERE id = 1",
            "UPDATE messages SET status = 'lost' WHERE id = 1",
            "UPDATE steps SET outcome = 'lost' WHERE message_id = 1",
        ] {
            let err = conn.execute(bad, []).unwrap_err();
            assert!(
                err.to_string().contains("CHECK constraint failed"),
                "{bad}: {err}"
            );
        }
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
