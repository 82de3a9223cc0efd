//! Listeners with `ack_policy = "after-delivery"` wait for their message's deliveries to
//! finish; destination workers report each finished delivery here.
//!
//! A delivery can finish before its listener starts waiting (the worker may claim it the
//! moment it is queued), so a result with no waiter yet is kept until the waiter comes — only
//! while some listener uses after-delivery, so nothing accumulates otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use courier_store::DeliveryId;
use tokio::sync::oneshot;

/// How a delivery ended.
#[derive(Debug, Clone)]
pub enum Finished {
    /// The receiver accepted it; its ACK.
    Delivered(Bytes),
    /// The receiver rejected it (AR/CR), or attempts ran out; its ACK if there was one.
    Failed(Option<Bytes>),
}

enum Slot {
    Waiting(oneshot::Sender<Finished>),
    Done(Finished),
}

/// Finished deliveries, by id, for whoever waits for them.
#[derive(Default)]
pub struct Waiters {
    enabled: AtomicBool,
    slots: Mutex<HashMap<DeliveryId, Slot>>,
}

impl Waiters {
    /// Starts keeping results (some listener waits for deliveries).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Whether some listener waits for deliveries (then workers report each outcome as soon
    /// as it is recorded rather than with the next batch).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// A worker reports a finished delivery.
    pub fn finish(&self, id: DeliveryId, result: Finished) {
        if !self.enabled.load(Ordering::SeqCst) {
            return;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(result);
            }
            _ => {
                slots.insert(id, Slot::Done(result));
            }
        }
    }

    /// Waits for a delivery to finish.
    pub fn wait(&self, id: DeliveryId) -> oneshot::Receiver<Finished> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.remove(&id) {
            Some(Slot::Done(result)) => {
                let _ = tx.send(result);
            }
            _ => {
                slots.insert(id, Slot::Waiting(tx));
            }
        }
        rx
    }

    /// Forgets a delivery nobody waits for any more (the listener gave up).
    pub fn forget(&self, id: DeliveryId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(&id);
    }
}
