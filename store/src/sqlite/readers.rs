//! A small pool of read connections. Reads run on the blocking thread pool, each on its own
//! connection; in WAL mode they read the last committed state without waiting for the writer,
//! so search and the admin API stay responsive under write load, and still answer when the
//! disk is full.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::convert::{OpResult, classify};
use super::schema::prepare_reader;
use crate::error::StoreError;

pub(crate) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    /// Idle connections; opened lazily, at most `permits` of them exist.
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, size: usize, busy_timeout: Duration) -> Arc<Readers> {
        Arc::new(Readers {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        })
    }

    /// Runs `read` on a pooled connection off the async threads.
    pub(crate) async fn run<T, F>(
        self: &Arc<Self>,
        operation: &'static str,
        read: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> OpResult<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let conn = match pool.take() {
                Some(conn) => conn,
                None => pool.open().map_err(|e| classify(operation, &e))?,
            };
            let result = read(&conn).map_err(|e| e.into_store(operation));
            // A connection whose read panicked is dropped instead, and reopened next time.
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        });
        task.await.map_err(|_| StoreError::Backend {
            operation,
            detail: "the read panicked".into(),
        })?
    }

    fn take(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Read-write (made read-only by `query_only`): a WAL reader must be able to update
        // the shared-memory index, which a read-only open may not be allowed to create.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        prepare_reader(&conn, self.busy_timeout)?;
        Ok(conn)
    }
}
