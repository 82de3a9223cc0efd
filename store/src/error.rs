//! [`StoreError`]: what can go wrong in the store, named so the engine can act on it.
//!
//! The one distinction the engine must draw is [`StoreError::Unavailable`]: the storage cannot
//! take the write right now (disk full, I/O error, read-only, locked), so a message that was not
//! journaled gets AE, never AA. Errors carry the operation that failed and the backend's own
//! message as text (never message bytes or patient fields), which keeps them `Clone` — a failed
//! group commit answers every request in the batch with the same error — and keeps backend types
//! out of the interface.

use std::fmt;
use std::path::PathBuf;

use crate::types::{DeliveryId, DeliveryStatus, MessageId, MessageStatus};

/// Why the storage is unavailable (see [`StoreError::Unavailable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnavailableCause {
    /// The disk (or the store's configured size limit) is full.
    Full,
    /// The disk failed a read, write or sync.
    Io,
    /// The storage is read-only or not permitted.
    ReadOnly,
    /// Another process holds the database locked beyond the busy timeout.
    Busy,
    /// The backend ran out of memory.
    OutOfMemory,
}

impl fmt::Display for UnavailableCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnavailableCause::Full => "storage full",
            UnavailableCause::Io => "I/O error",
            UnavailableCause::ReadOnly => "storage read-only",
            UnavailableCause::Busy => "database locked by another process",
            UnavailableCause::OutOfMemory => "out of memory",
        })
    }
}

/// What failed in a store operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage cannot serve the operation now; nothing of it was stored. Later requests
    /// are tried again (the store keeps running), so this clears once space is freed or the
    /// disk recovers. A message that got this from `journal` must be answered AE.
    #[error("store unavailable ({cause}) during {operation}: {detail}")]
    Unavailable {
        /// The store operation, e.g. `journal`.
        operation: &'static str,
        /// Why.
        cause: UnavailableCause,
        /// The backend's message.
        detail: String,
    },
    /// The database file is damaged or not a Courier store; an operator must look at it.
    #[error("store damaged during {operation}: {detail}")]
    Corrupt {
        /// The store operation.
        operation: &'static str,
        /// The backend's message.
        detail: String,
    },
    /// Any other backend failure (a bug more likely than a sick disk).
    #[error("store error during {operation}: {detail}")]
    Backend {
        /// The store operation.
        operation: &'static str,
        /// The backend's message.
        detail: String,
    },
    /// No message has this id (never journaled, or pruned).
    #[error("message {0} not found in the store")]
    MessageNotFound(MessageId),
    /// No delivery has this id.
    #[error("delivery {0} not found in the store")]
    DeliveryNotFound(DeliveryId),
    /// `complete_processing` for a message whose processing was already recorded: recording it
    /// again would queue its deliveries twice.
    #[error("message {id} was already processed (status {status})")]
    AlreadyProcessed {
        /// The message.
        id: MessageId,
        /// Its status.
        status: MessageStatus,
    },
    /// A delivery is not in a state the operation applies to (e.g. `delivered` for one that is
    /// not in flight: a stale or doubled completion).
    #[error("cannot {operation} delivery {id}: it is {status}")]
    WrongDeliveryState {
        /// The store operation.
        operation: &'static str,
        /// The delivery.
        id: DeliveryId,
        /// Its status.
        status: DeliveryStatus,
    },
    /// The store could not be opened or created.
    #[error("cannot open the store at {path}: {detail}")]
    Open {
        /// The data directory or database file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Another process has this store open (two engines on one store would deliver twice).
    #[error("the store at {path} is in use by another process")]
    InUse {
        /// The lock file.
        path: PathBuf,
    },
    /// The database was written by a newer Courier; this one will not guess at its schema.
    #[error(
        "the store at {path} has schema version {found}, newer than this Courier supports \
         ({supported}); run the newer Courier or restore a backup"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The store has shut down (its writer stopped); nothing more can be written.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// True for [`StoreError::Unavailable`]: a sick disk, not a bad request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// The same failure, reported to another request of a group commit that it took down.
    pub(crate) fn for_batch_member(&self, operation: &'static str) -> StoreError {
        let detail = format!("its batch was rolled back: {self}");
        match self {
            StoreError::Unavailable { cause, .. } => StoreError::Unavailable {
                operation,
                cause: *cause,
                detail,
            },
            StoreError::Corrupt { .. } => StoreError::Corrupt { operation, detail },
            _ => StoreError::Backend { operation, detail },
        }
    }
}
