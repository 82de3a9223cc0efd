//! The [`Store`] trait: the one narrow interface the engine uses for the journal, the
//! per-destination delivery queues, search and retention.
//!
//! The engine holds an `Arc<dyn Store>`; [`SqliteStore`](crate::SqliteStore) is the embedded
//! implementation. The contract below is written so that a shared-database backend (several
//! nodes on one PostgreSQL, claiming queue work with `FOR UPDATE SKIP LOCKED`) can implement it
//! without callers changing: every write is its own atomic unit, claims are explicit, and
//! nothing exposes SQL, connections or files.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::types::{
    AuditEntry, Claim, ClaimedDelivery, DeliveryId, DeliveryOrder, Duplicate, Journaled,
    MessageDetail, MessageId, MessageSummary, NewMessage, Processing, QueueDepth,
    RecoveredDelivery, Search, Settlement, StoredMessage,
};

/// Courier's message store: the durable journal of inbound messages, one durable FIFO queue per
/// destination, and the search and retention behind the CLI and admin API.
///
/// # Durability
/// Every write has happened durably (committed and, with the default settings, synced to disk)
/// when its future returns `Ok`; on `Err` none of it happened. Concurrent writes share commits
/// (group commit), so many connections cost few syncs. A write handed to the store is not
/// undone by dropping its future; the caller just does not learn the outcome.
///
/// Writes from one task are applied in the order their futures are first polled, so a sender
/// can overlap finishing one batch with claiming the next — `tokio::join!(store.settle(..),
/// store.claim_batch(..))` — and usually have both share one commit.
///
/// # Errors
/// [`StoreError::Unavailable`] means the storage could not take the write (full or failing
/// disk); the store keeps running and later calls are tried afresh. Reads go on working while
/// writes fail, where the storage allows.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Journals an inbound message (status `received`) and returns its id once it is durable:
    /// only then may the sender get AA/CA.
    async fn journal(&self, message: NewMessage) -> Result<MessageId, StoreError>;

    /// Records, in one transaction, how processing ended: the message's status and reason,
    /// each step's record, and the deliveries to queue (returned in the order given). Fails with
    /// [`StoreError::AlreadyProcessed`] unless the message is still `received`, so a message is
    /// never queued twice.
    async fn complete_processing(
        &self,
        id: MessageId,
        processing: Processing,
    ) -> Result<Vec<DeliveryId>, StoreError>;

    /// Journals a message that has already been processed, and records how processing ended,
    /// in one write: what [`journal`](Self::journal) then
    /// [`complete_processing`](Self::complete_processing) do, for one commit instead of two.
    /// When it returns `Ok` the raw message is durable (the sender may get AA/CA) and its
    /// deliveries are queued; on `Err` nothing is stored.
    async fn journal_processed(
        &self,
        message: NewMessage,
        processing: Processing,
    ) -> Result<(MessageId, Vec<DeliveryId>), StoreError>;

    /// [`journal_processed`](Self::journal_processed), unless a message with the same MSH-3,
    /// MSH-4 and MSH-10 was received at or after `since` (as
    /// [`find_duplicate`](Self::find_duplicate) finds it): then nothing is written and that
    /// message is returned. The check and the write are one atomic unit, so of two copies
    /// arriving together exactly one is stored, and an intake needs no read of its own before
    /// it writes.
    async fn journal_processed_once(
        &self,
        message: NewMessage,
        processing: Processing,
        since: SystemTime,
    ) -> Result<Journaled, StoreError>;

    /// Records the ACK we sent for a message, for replay to a duplicate.
    async fn record_ack(&self, id: MessageId, ack: Bytes) -> Result<(), StoreError>;

    /// The most recent message received at or after `since` with the same MSH-3, MSH-4 and
    /// MSH-10, with the ACK we sent for it. Call it before journaling the new arrival. Two
    /// copies arriving at the same instant may both find none: an intake that can have
    /// copies in flight at once uses [`journal_processed_once`](Self::journal_processed_once).
    async fn find_duplicate(
        &self,
        sending_application: &str,
        sending_facility: &str,
        control_id: &str,
        since: SystemTime,
    ) -> Result<Option<Duplicate>, StoreError>;

    /// Messages journaled but never processed, oldest first: after a crash, process them before
    /// accepting new traffic. (While the engine runs, messages being processed are here too.)
    async fn unprocessed(&self) -> Result<Vec<StoredMessage>, StoreError>;

    /// Queues again every delivery that was in flight (claimed, not finished) when the store was
    /// last closed, flagged `possible_duplicate`, and returns them for the log. Call it once at
    /// start, before any sender claims. (A shared-database backend recovers only this node's
    /// claims, or claims whose lease expired.)
    async fn recover_in_flight(&self) -> Result<Vec<RecoveredDelivery>, StoreError>;

    /// Claims up to `limit` deliveries (at least one) for `destination` that may go now under
    /// `order`, as of `now`, in the order to send them: under `Strict` the run of due deliveries
    /// from the head of the queue; under `SetAside` the oldest due ones; under `ByKey` the
    /// oldest due heads of their keys (so one per key). Every delivery of a [`Claim::Ready`]
    /// batch is marked in flight and its attempt counted durably before this returns, so after
    /// a crash it is known each may have been sent; one commit covers the batch.
    ///
    /// Finish every claimed delivery with [`settle`](Self::settle) (several at once) or with
    /// [`delivered`](Self::delivered), [`retry_later`](Self::retry_later) or
    /// [`dead_letter`](Self::dead_letter). Deliveries claimed but not sent go back with
    /// [`Settle::Unsent`](crate::Settle::Unsent): under `Strict` order, a sender must not send the rest of a batch
    /// after one of it fails.
    async fn claim_batch(
        &self,
        destination: &str,
        order: DeliveryOrder,
        now: SystemTime,
        limit: usize,
    ) -> Result<Claim<Vec<ClaimedDelivery>>, StoreError>;

    /// Claims the next delivery: [`claim_batch`](Self::claim_batch) with a limit of one.
    async fn claim_next(
        &self,
        destination: &str,
        order: DeliveryOrder,
        now: SystemTime,
    ) -> Result<Claim, StoreError> {
        Ok(match self.claim_batch(destination, order, now, 1).await? {
            Claim::Ready(mut batch) => match batch.pop() {
                Some(d) => Claim::Ready(d),
                None => Claim::Empty,
            },
            Claim::WaitUntil(t) => Claim::WaitUntil(t),
            Claim::Blocked => Claim::Blocked,
            Claim::Empty => Claim::Empty,
        })
    }

    /// Finishes several claimed deliveries in one write. An entry whose delivery is no longer
    /// in flight (an operator dead-lettered it meanwhile) or does not exist is left as it is
    /// and returned with the reason; the others are applied. `Err` means none was.
    async fn settle(
        &self,
        settlements: Vec<Settlement>,
    ) -> Result<Vec<(DeliveryId, StoreError)>, StoreError>;

    /// The destination acknowledged a claimed delivery; `ack` is its ACK. Fails with
    /// [`StoreError::WrongDeliveryState`] unless the delivery is in flight.
    async fn delivered(&self, id: DeliveryId, ack: Bytes) -> Result<(), StoreError>;

    /// A claimed delivery failed (AE, timeout, connection refused); it is queued again and may
    /// be claimed from `next_attempt`. Its attempts stay counted.
    async fn retry_later(
        &self,
        id: DeliveryId,
        error: &str,
        next_attempt: SystemTime,
    ) -> Result<(), StoreError>;

    /// Dead-letters a delivery (status `error`): rejected by the destination (AR/CR, whose ACK
    /// can be kept) or attempts exhausted. Applies to an in-flight delivery, and to a queued one
    /// so an operator can take a stuck head out of a strict queue.
    async fn dead_letter(
        &self,
        id: DeliveryId,
        error: &str,
        ack: Option<Bytes>,
    ) -> Result<(), StoreError>;

    /// Queued, in-flight and dead-lettered deliveries per destination that has any, by name.
    /// Cheap (indexed); meant for metrics.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;

    /// Messages matching the filter, newest first.
    async fn search(&self, filter: &Search) -> Result<Vec<MessageSummary>, StoreError>;

    /// Everything stored about one message: raw bytes, steps, deliveries.
    async fn message(&self, id: MessageId) -> Result<Option<MessageDetail>, StoreError>;

    /// Queues the message again: one new delivery per (route, destination) it has deliveries
    /// for — to `destination` only, if given — copying the latest such delivery's payload and
    /// order key. Fails with [`StoreError::MessageNotFound`] for an unknown message; returns no
    /// ids when it has no delivery to that destination.
    async fn resend(
        &self,
        id: MessageId,
        destination: Option<&str>,
    ) -> Result<Vec<DeliveryId>, StoreError>;

    /// Queues every dead-lettered delivery (to `destination`, or to all) again with its attempts
    /// reset; they go back to their place in the queue. Returns how many.
    async fn retry_errored(&self, destination: Option<&str>) -> Result<u64, StoreError>;

    /// Deletes messages received before `older_than` that are finished with: status processed,
    /// filtered or unrouted, and every delivery delivered (or none). Never one with a queued,
    /// in-flight or dead-lettered delivery, nor an unprocessed or errored message. Returns how
    /// many messages it deleted and gives the space back so the store stays bounded.
    async fn prune(&self, older_than: SystemTime) -> Result<u64, StoreError>;

    /// The store's size on disk, in bytes.
    async fn size_bytes(&self) -> Result<u64, StoreError>;

    /// The writer's counters so far (commits, write requests), for a store that keeps them.
    fn writer_stats(&self) -> Option<crate::StoreStats> {
        None
    }

    /// Appends to the audit log (kept apart from messages: pruning does not remove it).
    async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// The audit log, newest first: at most `limit` entries, about one message if given.
    async fn audit_log(
        &self,
        message: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}
