//! The values that go into and come out of a [`Store`](crate::Store): ids, the message the
//! engine journals, what processing decided, queue claims, search filters and results.
//!
//! Nothing here knows SQLite; a second backend speaks the same types. Types that carry message
//! bytes or patient fields have hand-written `Debug` impls that print lengths and `<redacted>`
//! instead, so a stray `{:?}` in a log line cannot leak PHI.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;

/// The store's id of one journaled message: ascending in journal order, never reused (also not
/// after pruning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub i64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The store's id of one delivery (one message's payload for one destination): ascending in
/// queue order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId(pub i64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Formats a byte payload for `Debug` without its content.
struct Len<'a>(&'a [u8]);

impl fmt::Debug for Len<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// A version of a message the store is to write: one buffer, or pieces written one after the
/// other. A large message a step changed in a few fields is held as pieces: the runs it shares
/// with the message as received are slices of that buffer, so each version does not cost a
/// second message-sized buffer before it is written. Compared by content.
#[derive(Clone, Default)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    Whole(Bytes),
    Pieces {
        pieces: std::sync::Arc<[Bytes]>,
        len: usize,
    },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Whole(Bytes::new())
    }
}

impl Payload {
    /// The pieces in order; empty ones are left out, and a single piece is held as it is.
    pub fn from_pieces(pieces: Vec<Bytes>) -> Payload {
        let mut pieces: Vec<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        match pieces.len() {
            0 => Payload::default(),
            1 => Payload(Repr::Whole(pieces.remove(0))),
            _ => {
                let len = pieces.iter().map(Bytes::len).sum();
                Payload(Repr::Pieces {
                    pieces: pieces.into(),
                    len,
                })
            }
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Whole(b) => b.len(),
            Repr::Pieces { len, .. } => *len,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces in order (one for a whole buffer), none of them empty.
    pub fn pieces(&self) -> &[Bytes] {
        match &self.0 {
            Repr::Whole(b) if b.is_empty() => &[],
            Repr::Whole(b) => std::slice::from_ref(b),
            Repr::Pieces { pieces, .. } => pieces,
        }
    }

    /// The bytes in one buffer: the buffer itself when there is one piece, else a copy.
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Whole(b) => b.clone(),
            Repr::Pieces { pieces, .. } => Bytes::from(pieces.concat()),
        }
    }

    /// Whether these are the bytes `other`.
    pub fn eq_bytes(&self, other: &[u8]) -> bool {
        if self.len() != other.len() {
            return false;
        }
        let mut rest = other;
        self.pieces().iter().all(|p| {
            let (head, tail) = rest.split_at(p.len());
            rest = tail;
            head == &p[..]
        })
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        if let (Repr::Pieces { pieces: a, .. }, Repr::Pieces { pieces: b, .. }) =
            (&self.0, &other.0)
            && std::sync::Arc::ptr_eq(a, b)
        {
            return true;
        }
        if self.len() != other.len() {
            return false;
        }
        match (self.pieces(), other.pieces()) {
            ([a], _) => other.eq_bytes(a),
            (_, [b]) => self.eq_bytes(b),
            (a, b) => {
                // Walk both sequences of pieces at once.
                let (mut a, mut b) = (a.iter().map(|p| &p[..]), b.iter().map(|p| &p[..]));
                let (mut x, mut y): (&[u8], &[u8]) = (&[], &[]);
                loop {
                    if x.is_empty() {
                        x = a.next().unwrap_or_default();
                    }
                    if y.is_empty() {
                        y = b.next().unwrap_or_default();
                    }
                    if x.is_empty() || y.is_empty() {
                        return x.is_empty() && y.is_empty();
                    }
                    let n = x.len().min(y.len());
                    if x[..n] != y[..n] {
                        return false;
                    }
                    (x, y) = (&x[n..], &y[n..]);
                }
            }
        }
    }
}

impl Eq for Payload {}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Payload {
        Payload(Repr::Whole(b))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        Payload(Repr::Whole(v.into()))
    }
}

impl From<&'static [u8]> for Payload {
    fn from(s: &'static [u8]) -> Payload {
        Payload(Repr::Whole(Bytes::from_static(s)))
    }
}

impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Payload {
        Payload(Repr::Whole(Bytes::from_static(s.as_bytes())))
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.len())
    }
}

/// Formats a patient field for `Debug` without its content.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("<redacted>")
        }
    }
}

/// An inbound message as the engine hands it to [`Store::journal`](crate::Store::journal): the raw
/// bytes plus the fields the engine extracted for routing, duplicate detection and search (the
/// store never parses HL7).
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// When the listener received the complete frame.
    pub received_at: SystemTime,
    /// The listener's name from the config.
    pub listener: String,
    /// The sender's address (`ip:port`).
    pub peer: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-9 as the engine spells it (e.g. `ADT^A01^ADT_A01`); searched exactly or by prefix.
    pub message_type: String,
    /// MSH-3 (part of the duplicate key).
    pub sending_application: String,
    /// MSH-4 (part of the duplicate key).
    pub sending_facility: String,
    /// PID-3.1 (empty when the message has none); kept for search only, never logged.
    pub patient_id: String,
    /// The message exactly as received.
    pub raw: Bytes,
    /// The ACK the sender gets, when it is decided before the message is stored (it does not
    /// wait for a delivery): kept in the same commit for duplicate replay, so answering needs
    /// no second write (see [`Store::record_ack`](crate::Store::record_ack) for the others).
    pub ack: Option<Bytes>,
}

impl fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("received_at", &self.received_at)
            .field("listener", &self.listener)
            .field("peer", &self.peer)
            .field("control_id", &self.control_id)
            .field("message_type", &self.message_type)
            .field("sending_application", &self.sending_application)
            .field("sending_facility", &self.sending_facility)
            .field("patient_id", &Redacted(&self.patient_id))
            .field("raw", &Len(&self.raw))
            .field("ack", &self.ack.as_deref().map(Len))
            .finish()
    }
}

/// A journaled message that was never processed (see [`Store::unprocessed`](crate::Store::unprocessed)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id.
    pub id: MessageId,
    /// What was journaled.
    pub message: NewMessage,
}

/// Where a message is in its life. The strings ([`as_str`](Self::as_str), `FromStr`) are the
/// words the CLI and admin API use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    /// Journaled, not processed yet (after a crash: to be processed on start).
    Received,
    /// The routes ran; its deliveries (if any) were queued.
    Processed,
    /// Every matching route's filter dropped it.
    Filtered,
    /// No route matched it.
    Unrouted,
    /// Processing failed (a transform or filter error); the reason says why.
    Error,
}

impl MessageStatus {
    /// Every status, in life order.
    pub const ALL: [MessageStatus; 5] = [
        MessageStatus::Received,
        MessageStatus::Processed,
        MessageStatus::Filtered,
        MessageStatus::Unrouted,
        MessageStatus::Error,
    ];

    /// The status's word: `received`, `processed`, `filtered`, `unrouted`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Received => "received",
            MessageStatus::Processed => "processed",
            MessageStatus::Filtered => "filtered",
            MessageStatus::Unrouted => "unrouted",
            MessageStatus::Error => "error",
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName::new("message status", s, &Self::ALL.map(Self::as_str)))
    }
}

/// How processing ended; becomes the message's [`MessageStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessingStatus {
    /// The routes ran; deliveries (if any) are queued.
    Processed,
    /// Dropped by filters.
    Filtered,
    /// No route matched.
    Unrouted,
    /// A step failed.
    Error,
}

impl From<ProcessingStatus> for MessageStatus {
    fn from(s: ProcessingStatus) -> Self {
        match s {
            ProcessingStatus::Processed => MessageStatus::Processed,
            ProcessingStatus::Filtered => MessageStatus::Filtered,
            ProcessingStatus::Unrouted => MessageStatus::Unrouted,
            ProcessingStatus::Error => MessageStatus::Error,
        }
    }
}

/// Everything processing decided about one message, recorded in one transaction by
/// [`Store::complete_processing`](crate::Store::complete_processing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processing {
    /// How it ended.
    pub status: ProcessingStatus,
    /// Why (filter or error reason), for the admin view and `messages show`.
    pub reason: Option<String>,
    /// Each step that ran, in order.
    pub steps: Vec<StepRecord>,
    /// The deliveries to queue, in the order they should be sent.
    pub deliveries: Vec<NewDelivery>,
}

/// What one step (filter or transform) did to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The route the step belongs to.
    pub route: String,
    /// The step's name in the route.
    pub step: String,
    /// What kind of step it is, as the engine names it (e.g. `rhai-filter`, `wasm-transform`).
    pub kind: String,
    /// The content hash of the script or plugin version that ran.
    pub content_hash: String,
    /// What it did.
    pub outcome: StepOutcome,
    /// Why it dropped or failed (or any note the step gave).
    pub reason: Option<String>,
}

/// What a step did.
#[derive(Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Passed the message on unchanged.
    Kept,
    /// Changed it; the bytes are its output.
    Changed(Payload),
    /// Dropped it (a filter said no).
    Dropped,
    /// Failed (trap, deadline, script error).
    Error,
}

impl StepOutcome {
    /// The outcome's word: `kept`, `changed`, `dropped`, `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepOutcome::Kept => "kept",
            StepOutcome::Changed(_) => "changed",
            StepOutcome::Dropped => "dropped",
            StepOutcome::Error => "error",
        }
    }
}

impl fmt::Debug for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepOutcome::Changed(out) => f.debug_tuple("Changed").field(out).finish(),
            other => f.write_str(match other {
                StepOutcome::Kept => "Kept",
                StepOutcome::Dropped => "Dropped",
                _ => "Error",
            }),
        }
    }
}

/// One delivery to queue: a payload for one destination.
#[derive(Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The route that produced it.
    pub route: String,
    /// The destination's name from the config; each destination is one queue.
    pub destination: String,
    /// The bytes to send.
    pub payload: Payload,
    /// The key [`DeliveryOrder::ByKey`] orders by (e.g. the patient's PID-3.1); empty = no
    /// ordering constraint beyond its own.
    pub order_key: String,
}

impl fmt::Debug for NewDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDelivery")
            .field("route", &self.route)
            .field("destination", &self.destination)
            .field("payload", &self.payload)
            .field("order_key", &Redacted(&self.order_key))
            .finish()
    }
}

/// How a destination's queue hands out work (see [`Store::claim_batch`](crate::Store::claim_batch)).
///
/// Named `DeliveryOrder` rather than `Ordering` so it does not collide with
/// `std::cmp::Ordering` or `std::sync::atomic::Ordering` where it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeliveryOrder {
    /// FIFO; the oldest unfinished delivery blocks the rest (while it waits for its retry,
    /// nothing else goes).
    #[default]
    Strict,
    /// FIFO among deliveries whose retry time has come; a failing one waits its backoff while
    /// later ones flow.
    SetAside,
    /// Strict per order key: a delivery goes only when no older unfinished delivery with the
    /// same key exists for its destination; other keys flow. An empty key is its own key.
    ByKey,
}

/// The answer of [`Store::claim_next`](crate::Store::claim_next) (one delivery) and
/// [`Store::claim_batch`](crate::Store::claim_batch) (`Claim<Vec<ClaimedDelivery>>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim<T = ClaimedDelivery> {
    /// Work to send now, in this order (a batch is never empty); it is in flight and its
    /// attempt is counted durably.
    Ready(T),
    /// Nothing can go now; the earliest queued retry becomes due at this time (new deliveries
    /// may be claimable sooner under `SetAside` and `ByKey`).
    WaitUntil(SystemTime),
    /// Deliveries are queued but wait behind older ones still in flight (claimed and not yet
    /// finished); claim again when those finish.
    Blocked,
    /// Nothing is queued for this destination.
    Empty,
}

/// A delivery handed to a destination sender.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The delivery.
    pub id: DeliveryId,
    /// The message it came from.
    pub message_id: MessageId,
    /// The route that produced it.
    pub route: String,
    /// Its destination.
    pub destination: String,
    /// The bytes to send.
    pub payload: Bytes,
    /// The inbound message's MSH-10 (for logs; a transform may have given the payload another).
    pub control_id: String,
    /// The inbound message's MSH-9.
    pub message_type: String,
    /// Its order key.
    pub order_key: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// It may have been sent before (it was in flight at a crash): log it, and let the
    /// destination know where the protocol allows.
    pub possible_duplicate: bool,
    /// When the message it came from was received (for end-to-end latency).
    pub received_at: SystemTime,
}

impl fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("id", &self.id)
            .field("message_id", &self.message_id)
            .field("route", &self.route)
            .field("destination", &self.destination)
            .field("payload", &Len(&self.payload))
            .field("control_id", &self.control_id)
            .field("message_type", &self.message_type)
            .field("order_key", &Redacted(&self.order_key))
            .field("attempts", &self.attempts)
            .field("possible_duplicate", &self.possible_duplicate)
            .field("received_at", &self.received_at)
            .finish()
    }
}

/// How a claimed delivery ended, for [`Store::settle`](crate::Store::settle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The destination acknowledged it; its ACK. (As [`Store::delivered`](crate::Store::delivered).)
    Delivered(Bytes),
    /// It failed and goes back to the queue, claimable from `next_attempt`. (As
    /// [`Store::retry_later`](crate::Store::retry_later).)
    Retry {
        /// Why it failed.
        error: String,
        /// When it may be claimed again.
        next_attempt: SystemTime,
    },
    /// Dead-lettered, with the destination's ACK if it rejected it. (As
    /// [`Store::dead_letter`](crate::Store::dead_letter), for an in-flight delivery.)
    DeadLetter {
        /// Why.
        error: String,
        /// The rejecting ACK, if any.
        ack: Option<Bytes>,
    },
    /// Claimed in a batch but never sent (an earlier one failed under strict order, or the
    /// sender is stopping): back to its place in the queue, the attempt not counted.
    Unsent,
}

/// One entry of [`Store::settle`](crate::Store::settle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The in-flight delivery.
    pub id: DeliveryId,
    /// How it ended.
    pub outcome: Settle,
}

/// A delivery that was in flight at a crash and is queued again, flagged possible duplicate
/// (see [`Store::recover_in_flight`](crate::Store::recover_in_flight)); enough to log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredDelivery {
    /// The delivery.
    pub id: DeliveryId,
    /// Its message.
    pub message_id: MessageId,
    /// Its destination.
    pub destination: String,
    /// The inbound message's MSH-10.
    pub control_id: String,
    /// Attempts counted so far (the interrupted one included).
    pub attempts: u32,
}

/// An earlier message with the same (MSH-3, MSH-4, MSH-10) (see
/// [`Store::find_duplicate`](crate::Store::find_duplicate)).
#[derive(Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The earlier message (the most recent one when there are several).
    pub id: MessageId,
    /// Its status: an original that ended in `Error` may deserve processing again.
    pub status: MessageStatus,
    /// The ACK we sent for it, to replay; `None` if none was recorded (e.g. a crash came
    /// between journal and ACK).
    pub ack: Option<Bytes>,
}

impl fmt::Debug for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Duplicate")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("ack", &self.ack.as_deref().map(Len))
            .finish()
    }
}

/// What [`Store::journal_processed_once`](crate::Store::journal_processed_once) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Journaled {
    /// The message is stored, its deliveries queued (their ids in the order given).
    Stored {
        /// The new message.
        id: MessageId,
        /// Its deliveries.
        deliveries: Vec<DeliveryId>,
    },
    /// An earlier message had the same (MSH-3, MSH-4, MSH-10) within the window: nothing was
    /// written.
    Duplicate(Duplicate),
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting to be sent (first time or retry).
    Queued,
    /// Claimed by a sender; may have been sent.
    InFlight,
    /// The destination acknowledged it.
    Delivered,
    /// Dead-lettered: rejected (AR/CR), attempts exhausted or set aside by an operator.
    Error,
}

impl DeliveryStatus {
    /// Every status, in life order.
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Queued,
        DeliveryStatus::InFlight,
        DeliveryStatus::Delivered,
        DeliveryStatus::Error,
    ];

    /// The status's word: `queued`, `in_flight`, `delivered`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::InFlight => "in_flight",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Error => "error",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownName::new("delivery status", s, &Self::ALL.map(Self::as_str)))
    }
}

/// A status word that names no status (from `FromStr`), with the words that do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}` (expected one of: {expected})")]
pub struct UnknownName {
    /// What was being parsed.
    pub kind: &'static str,
    /// The word given.
    pub name: String,
    /// The accepted words, comma-separated.
    pub expected: String,
}

impl UnknownName {
    fn new(kind: &'static str, name: &str, expected: &[&str]) -> Self {
        UnknownName {
            kind,
            name: name.to_owned(),
            expected: expected.join(", "),
        }
    }
}

/// One destination's queue (see [`Store::queue_depths`](crate::Store::queue_depths)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The destination.
    pub destination: String,
    /// Deliveries waiting (first time or retry).
    pub queued: u64,
    /// Deliveries claimed by a sender.
    pub in_flight: u64,
    /// Dead-lettered deliveries (not unfinished, but an operator wants to see them).
    pub errored: u64,
}

impl QueueDepth {
    /// Deliveries not finished yet: queued + in flight.
    pub fn unfinished(&self) -> u64 {
        self.queued + self.in_flight
    }
}

/// How [`Search::message_type`] matches MSH-9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeFilter {
    /// The whole stored type (e.g. `ADT^A01^ADT_A01`).
    Exact(String),
    /// The type starts with this (e.g. `ADT` or `ADT^A01`).
    Prefix(String),
}

/// Filters for [`Store::search`](crate::Store::search); every filter given must match. Results
/// come newest (most recently journaled) first.
#[derive(Clone, PartialEq, Eq)]
pub struct Search {
    /// Message status.
    pub status: Option<MessageStatus>,
    /// MSH-9, exact or prefix.
    pub message_type: Option<TypeFilter>,
    /// MSH-10, exact.
    pub control_id: Option<String>,
    /// PID-3.1, exact.
    pub patient_id: Option<String>,
    /// The listener it arrived on.
    pub listener: Option<String>,
    /// Only messages with a delivery in this status (e.g. `Error`: failed deliveries).
    pub delivery_status: Option<DeliveryStatus>,
    /// Only messages with a delivery to this destination.
    pub destination: Option<String>,
    /// Received at or after this time.
    pub since: Option<SystemTime>,
    /// Received before this time.
    pub until: Option<SystemTime>,
    /// At most this many results (default 100).
    pub limit: u32,
    /// Skip this many results first (paging).
    pub offset: u32,
}

impl Default for Search {
    fn default() -> Self {
        Search {
            status: None,
            message_type: None,
            control_id: None,
            patient_id: None,
            listener: None,
            delivery_status: None,
            destination: None,
            since: None,
            until: None,
            limit: 100,
            offset: 0,
        }
    }
}

impl fmt::Debug for Search {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Search")
            .field("status", &self.status)
            .field("message_type", &self.message_type)
            .field("control_id", &self.control_id)
            .field("patient_id", &self.patient_id.as_deref().map(Redacted))
            .field("listener", &self.listener)
            .field("delivery_status", &self.delivery_status)
            .field("destination", &self.destination)
            .field("since", &self.since)
            .field("until", &self.until)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish()
    }
}

/// How many of a message's deliveries are in each status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryCounts {
    /// Waiting.
    pub queued: u32,
    /// Claimed by a sender.
    pub in_flight: u32,
    /// Acknowledged by the destination.
    pub delivered: u32,
    /// Dead-lettered.
    pub error: u32,
}

/// One search hit: the message's header fields and status, no bytes and no patient fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    /// Its id.
    pub id: MessageId,
    /// When it was received.
    pub received_at: SystemTime,
    /// When its processing was recorded.
    pub processed_at: Option<SystemTime>,
    /// The listener it arrived on.
    pub listener: String,
    /// The sender's address.
    pub peer: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-9.
    pub message_type: String,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// Its status.
    pub status: MessageStatus,
    /// Why it was filtered or failed.
    pub reason: Option<String>,
    /// Its deliveries by status.
    pub deliveries: DeliveryCounts,
}

/// One recorded step of a message (see [`MessageDetail::steps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDetail {
    /// Position in the message's processing, from 1.
    pub seq: u32,
    /// The route.
    pub route: String,
    /// The step's name.
    pub step: String,
    /// The step's kind.
    pub kind: String,
    /// The script or plugin version that ran.
    pub content_hash: String,
    /// What it did (with its output if it changed the message).
    pub outcome: StepOutcome,
    /// Why it dropped or failed.
    pub reason: Option<String>,
}

/// One delivery of a message (see [`MessageDetail::deliveries`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DeliveryDetail {
    /// The delivery.
    pub id: DeliveryId,
    /// The route that produced it.
    pub route: String,
    /// Its destination.
    pub destination: String,
    /// Its order key.
    pub order_key: String,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// It was in flight at a crash and may have been sent twice.
    pub possible_duplicate: bool,
    /// When it was queued.
    pub created_at: SystemTime,
    /// When its last attempt started.
    pub last_attempt_at: Option<SystemTime>,
    /// When its retry is due (set by [`Store::retry_later`](crate::Store::retry_later));
    /// `None` when it may go at once.
    pub next_attempt_at: Option<SystemTime>,
    /// When it was delivered or dead-lettered.
    pub finished_at: Option<SystemTime>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// The destination's ACK (on delivery, or the rejecting one on dead letter).
    pub ack: Option<Bytes>,
    /// The bytes sent.
    pub payload: Bytes,
    /// The delivery this one re-sends (see [`Store::resend`](crate::Store::resend)).
    pub resent_from: Option<DeliveryId>,
}

impl fmt::Debug for DeliveryDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryDetail")
            .field("id", &self.id)
            .field("route", &self.route)
            .field("destination", &self.destination)
            .field("order_key", &Redacted(&self.order_key))
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("possible_duplicate", &self.possible_duplicate)
            .field("created_at", &self.created_at)
            .field("last_attempt_at", &self.last_attempt_at)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("finished_at", &self.finished_at)
            .field("last_error", &self.last_error)
            .field("ack", &self.ack.as_deref().map(Len))
            .field("payload", &Len(&self.payload))
            .field("resent_from", &self.resent_from)
            .finish()
    }
}

/// Everything stored about one message (see [`Store::message`](crate::Store::message)).
#[derive(Clone, PartialEq, Eq)]
pub struct MessageDetail {
    /// Its id.
    pub id: MessageId,
    /// When it was received.
    pub received_at: SystemTime,
    /// When its processing was recorded.
    pub processed_at: Option<SystemTime>,
    /// The listener it arrived on.
    pub listener: String,
    /// The sender's address.
    pub peer: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-9.
    pub message_type: String,
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// PID-3.1.
    pub patient_id: String,
    /// Its status.
    pub status: MessageStatus,
    /// Why it was filtered or failed.
    pub reason: Option<String>,
    /// The message as received.
    pub raw: Bytes,
    /// The ACK we sent.
    pub ack: Option<Bytes>,
    /// Its steps, in order.
    pub steps: Vec<StepDetail>,
    /// Its deliveries, oldest first.
    pub deliveries: Vec<DeliveryDetail>,
}

impl fmt::Debug for MessageDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageDetail")
            .field("id", &self.id)
            .field("received_at", &self.received_at)
            .field("processed_at", &self.processed_at)
            .field("listener", &self.listener)
            .field("peer", &self.peer)
            .field("control_id", &self.control_id)
            .field("message_type", &self.message_type)
            .field("sending_application", &self.sending_application)
            .field("sending_facility", &self.sending_facility)
            .field("patient_id", &Redacted(&self.patient_id))
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("raw", &Len(&self.raw))
            .field("ack", &self.ack.as_deref().map(Len))
            .field("steps", &self.steps)
            .field("deliveries", &self.deliveries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_compare_by_content_however_split() {
        let whole = Payload::from(Bytes::from_static(b"MSH|one\rPID|two\r"));
        let split = |at: &[usize]| {
            let bytes = whole.to_bytes();
            let mut pieces = Vec::new();
            let mut from = 0;
            for &to in at.iter().chain([&bytes.len()]) {
                pieces.push(bytes.slice(from..to));
                from = to;
            }
            Payload::from_pieces(pieces)
        };
        for a in [&[][..], &[3], &[0, 3, 3, 8], &[1, 2, 3, 4, 5]] {
            for b in [&[][..], &[7], &[2, 9, 16]] {
                assert_eq!(split(a), split(b), "{a:?} against {b:?}");
            }
            assert_eq!(split(a), whole);
            assert_eq!(split(a).to_bytes(), whole.to_bytes());
            assert_eq!(split(a).len(), whole.len());
            assert!(split(a).pieces().iter().all(|p| !p.is_empty()));
        }
        let other = Payload::from_pieces(vec![
            Bytes::from_static(b"MSH|one\r"),
            Bytes::from_static(b"PID|tw0\r"),
        ]);
        assert_ne!(other, whole);
        assert_ne!(split(&[3]), other);
        assert!(!other.eq_bytes(b"MSH|one\rPID|two\r"));
        assert!(!whole.eq_bytes(b"MSH|one\rPID|two"));
        assert!(Payload::from_pieces(vec![Bytes::new(), Bytes::new()]).is_empty());
        assert_eq!(format!("{:?}", split(&[4])), "<16 bytes>");
    }

    #[test]
    fn statuses_round_trip_through_their_words() {
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>(), Ok(s));
        }
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>(), Ok(s));
        }
        let err = "sent".parse::<DeliveryStatus>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown delivery status `sent` (expected one of: queued, in_flight, delivered, error)"
        );
    }

    #[test]
    fn debug_never_prints_bytes_or_patient_fields() {
        let m = NewMessage {
            received_at: SystemTime::UNIX_EPOCH,
            listener: "adt".into(),
            peer: "10.0.0.1:5000".into(),
            control_id: "CTRL1".into(),
            message_type: "ADT^A01".into(),
            sending_application: "REG".into(),
            sending_facility: "CLINIC".into(),
            patient_id: "PAT-SECRET".into(),
            raw: Bytes::from_static(
                b"MSH|^~\\&|REG|CLINIC|||||ADT^A01|CTRL1|P|2.5\rPID|||PAT-SECRET",
            ),
            ack: None,
        };
        let shown = format!("{m:?}");
        assert!(!shown.contains("PAT-SECRET"), "{shown}");
        assert!(!shown.contains("MSH|"), "{shown}");
        assert!(
            shown.contains("CTRL1") && shown.contains("bytes>"),
            "{shown}"
        );
        let out = format!("{:?}", StepOutcome::Changed(m.raw.clone().into()));
        assert!(!out.contains("MSH|"), "{out}");
    }
}

/// One entry of the audit log: who did what to which message (see
/// [`Store::audit`](crate::Store::audit)). Never carries patient data: `detail` names ids,
/// destinations and filters by field name, not values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: SystemTime,
    /// Who: the authenticated identity and where from, e.g. `admin@127.0.0.1`.
    pub actor: String,
    /// What: `view`, `resend`, `retry`, `pause`, `resume`, `reload`, `search`.
    pub action: String,
    /// The message concerned, if one.
    pub message_id: Option<MessageId>,
    /// The rest, e.g. `to=emr` or `destination=lab`.
    pub detail: String,
}
