//! The in-memory destination queue, used when the store is off (`[store] enabled = false`):
//! a bounded channel per destination. When it is full, whoever enqueues waits, which slows
//! the listener and so the sender (backpressure) instead of dropping anything. What is still
//! queued at the end of the shutdown grace period is logged by control id and lost — which
//! is why the store is on by default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use super::{Attempt, Transport};
use crate::metrics::{DeliveryOutcome, METRICS};

use crate::config::{DestinationConfig, RetryConfig};

/// One message on its way to one destination.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The ER7 bytes to send.
    pub message: Bytes,
    /// MSH-10 of the message, which the receiver's MSA-2 must echo.
    pub control_id: Arc<str>,
    /// MSH-9 as `code^trigger`, for logs.
    pub message_type: Arc<str>,
    /// The route that sent it here.
    pub route: Arc<str>,
    /// When the engine received the message.
    pub received: Instant,
}

/// The enqueueing end of a destination.
#[derive(Debug, Clone)]
pub struct DestinationHandle {
    name: Arc<str>,
    tx: mpsc::Sender<Delivery>,
}

/// Why an enqueue did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The destination's worker is gone (the engine is stopping).
    #[error("destination {destination} is stopped")]
    Stopped {
        /// The destination.
        destination: Arc<str>,
    },
}

impl DestinationHandle {
    /// The destination's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Queues a delivery, waiting while the queue is full.
    pub async fn enqueue(&self, d: Delivery) -> Result<(), EnqueueError> {
        self.tx.send(d).await.map_err(|_| EnqueueError::Stopped {
            destination: self.name.clone(),
        })
    }

    /// Messages waiting for this destination (not counting the one being sent).
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Starts the worker for one destination on `tracker`. The worker delivers until every
/// handle is dropped and its queue is empty, or until `stop` is cancelled.
pub fn spawn(
    cfg: &DestinationConfig,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> DestinationHandle {
    let name: Arc<str> = cfg.name.as_str().into();
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let worker = Worker {
        name: name.clone(),
        client: Transport::for_config(cfg),
        ack_timeout: cfg.ack_timeout,
        release: cfg.mllp_release,
        retry: cfg.retry.clone(),
        stop,
    };
    let span = info_span!("destination", destination = %name, target = %cfg.target());
    tracker.spawn(worker.run(rx).instrument(span));
    DestinationHandle { name, tx }
}

struct Worker {
    name: Arc<str>,
    client: Transport,
    ack_timeout: Duration,
    /// MLLP release: 2 waits for a commit acknowledgement instead of an HL7 ACK.
    release: u8,
    retry: RetryConfig,
    stop: CancellationToken,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Delivery>) {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => None,
                d = rx.recv() => d,
            };
            let Some(d) = next else { break };
            if !self.deliver(&d).await {
                self.abandon(d, &mut rx);
                return;
            }
        }
        if self.stop.is_cancelled() {
            self.abandon_rest(&mut rx, 0);
        }
    }

    /// Delivers one message; false when stopped before it was done.
    async fn deliver(&mut self, d: &Delivery) -> bool {
        let mut backoff = self.retry.initial;
        let mut attempt: u32 = 0;
        let stop = self.stop.clone();
        loop {
            attempt += 1;
            let outcome = tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                o = self.attempt(d) => o,
            };
            match outcome {
                Attempt::Delivered(_) => {
                    METRICS.delivery(
                        &self.name,
                        DeliveryOutcome::Delivered,
                        Some(d.received.elapsed()),
                    );
                    info!(
                        route = %d.route,
                        control_id = %d.control_id,
                        message_type = %d.message_type,
                        attempt,
                        latency_ms = d.received.elapsed().as_millis() as u64,
                        "delivered"
                    );
                    return true;
                }
                Attempt::Rejected { reason, .. } => {
                    METRICS.delivery(&self.name, DeliveryOutcome::DeadLetter, None);
                    error!(
                        route = %d.route,
                        control_id = %d.control_id,
                        message_type = %d.message_type,
                        attempt,
                        %reason,
                        "destination rejected the message; not retrying"
                    );
                    return true;
                }
                Attempt::Retry { reason } => {
                    if self.retry.max_attempts.is_some_and(|max| attempt >= max) {
                        METRICS.delivery(&self.name, DeliveryOutcome::DeadLetter, None);
                        error!(
                            route = %d.route,
                            control_id = %d.control_id,
                            message_type = %d.message_type,
                            attempt,
                            %reason,
                            "delivery failed; retry.max_attempts reached, giving up"
                        );
                        return true;
                    }
                    METRICS.delivery(&self.name, DeliveryOutcome::Retried, None);
                    warn!(
                        route = %d.route,
                        control_id = %d.control_id,
                        attempt,
                        retry_in_ms = backoff.as_millis() as u64,
                        %reason,
                        "delivery failed; will retry"
                    );
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = super::next_backoff(backoff, &self.retry);
                }
            }
        }
    }

    async fn attempt(&mut self, d: &Delivery) -> Attempt {
        self.client
            .attempt(
                d.message.clone(),
                &d.control_id,
                &d.message_type,
                self.ack_timeout,
                self.release,
            )
            .await
    }

    fn abandon(&self, current: Delivery, rx: &mut mpsc::Receiver<Delivery>) {
        warn!(
            route = %current.route,
            control_id = %current.control_id,
            "stopping with this message undelivered"
        );
        self.abandon_rest(rx, 1);
    }

    fn abandon_rest(&self, rx: &mut mpsc::Receiver<Delivery>, already: usize) {
        rx.close();
        let mut ids = Vec::new();
        let mut count = 0usize;
        while let Ok(d) = rx.try_recv() {
            count += 1;
            // Enough ids to find the messages; the count says how many there were.
            if ids.len() < 100 {
                ids.push(d.control_id);
            }
        }
        if count + already > 0 {
            warn!(
                undelivered = count + already,
                control_ids = %ids.join(","),
                "shutdown grace period over; queued messages were not delivered"
            );
        }
    }
}
