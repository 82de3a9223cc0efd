//! Courier's message store: the durable journal of inbound messages, one durable queue per
//! destination, and the search and retention behind the CLI and admin API.
//!
//! The engine talks to the [`Store`] trait only (as an `Arc<dyn Store>`), handing in bytes and
//! the fields it extracted; this crate knows nothing of HL7, plugins or the engine.
//! [`SqliteStore`] is the embedded implementation (SQLite in WAL mode, one writer thread with
//! group commit, a pool of readers); a shared-database backend can implement the same trait.
//!
//! ```no_run
//! # async fn demo() -> Result<(), courier_store::StoreError> {
//! use std::sync::Arc;
//! use courier_store::{SqliteStore, Store, StoreSettings};
//!
//! let store: Arc<dyn Store> =
//!     Arc::new(SqliteStore::open("data".as_ref(), StoreSettings::default())?);
//! for d in store.recover_in_flight().await? {
//!     // log: delivery d.id to d.destination may be a duplicate
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
mod sqlite;
mod store;
mod types;

pub use error::{StoreError, UnavailableCause};
pub use sqlite::{SqliteStore, StoreSettings, StoreStats};
pub use store::Store;
pub use types::{
    AuditEntry, Claim, ClaimedDelivery, DeliveryCounts, DeliveryDetail, DeliveryId, DeliveryOrder,
    DeliveryStatus, Duplicate, Journaled, MessageDetail, MessageId, MessageStatus, MessageSummary,
    NewDelivery, NewMessage, Payload, Processing, ProcessingStatus, QueueDepth, RecoveredDelivery,
    Search, Settle, Settlement, StepDetail, StepOutcome, StepRecord, StoredMessage, TypeFilter,
    UnknownName,
};
