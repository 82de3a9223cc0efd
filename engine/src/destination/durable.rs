//! The durable destination worker: claims deliveries from the store's queue for its
//! destination, sends each and records the outcome.
//!
//! The store marks a delivery in flight (and counts the attempt) durably before it is sent,
//! so after a crash a delivery that may already have reached the receiver is sent again and
//! flagged as a possible duplicate. Order and what a failure holds back follow the
//! destination's `ordering`. The worker wakes when a delivery is queued for it, when a retry
//! falls due, and once a second to pick up what another process (the CLI) queued.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_mllp::MllpClient;
use courier_store::{Claim, ClaimedDelivery, DeliveryOrder, Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use super::waiters::{Finished, Waiters};
use super::{Attempt, backoff_after, client_for};
use crate::config::{DestinationConfig, OrderingConfig, RetryConfig};

/// How often an idle worker looks at the store without being woken.
const POLL: Duration = Duration::from_secs(1);

/// The handle the intake uses to wake a destination's worker.
#[derive(Debug, Clone)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// Something was queued for this destination.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Tokens that end a worker: `drain` when the listeners are closed (stop once nothing is
/// ready to send), `stop` when the shutdown grace period is over (stop now).
#[derive(Debug, Clone)]
pub struct Stops {
    /// Finish what is ready, then stop.
    pub drain: CancellationToken,
    /// Stop at once; a send in progress is abandoned (and resent after a restart).
    pub stop: CancellationToken,
    /// This worker alone is done (a reload removed or changed its destination): stop after
    /// the send in progress is recorded, leaving the rest of the queue in the store.
    pub retire: CancellationToken,
}

/// Starts the durable worker for one destination; with `after`, once that task (the
/// destination's previous worker) has ended, so that two workers never share a queue.
pub fn spawn(
    cfg: &DestinationConfig,
    store: Arc<dyn Store>,
    waiters: Arc<Waiters>,
    tracker: &TaskTracker,
    stops: Stops,
    after: Option<JoinHandle<()>>,
) -> (Wake, JoinHandle<()>) {
    let notify = Arc::new(Notify::new());
    let worker = Worker {
        name: cfg.name.clone(),
        order: match cfg.ordering {
            OrderingConfig::Strict => DeliveryOrder::Strict,
            OrderingConfig::SetAside => DeliveryOrder::SetAside,
            OrderingConfig::ByKey => DeliveryOrder::ByKey,
        },
        client: client_for(cfg),
        ack_timeout: cfg.ack_timeout,
        release: cfg.mllp_release,
        retry: cfg.retry.clone(),
        store,
        waiters,
        notify: notify.clone(),
        stops,
    };
    let span = info_span!("destination", destination = %cfg.name, address = %cfg.address.get_ref());
    let task = tracker.spawn(
        async move {
            if let Some(previous) = after {
                let _ = previous.await;
            }
            worker.run().await;
        }
        .instrument(span),
    );
    (Wake(notify), task)
}

struct Worker {
    name: String,
    order: DeliveryOrder,
    client: MllpClient,
    ack_timeout: Duration,
    /// MLLP release: 2 waits for a commit acknowledgement instead of an HL7 ACK.
    release: u8,
    retry: RetryConfig,
    store: Arc<dyn Store>,
    waiters: Arc<Waiters>,
    notify: Arc<Notify>,
    stops: Stops,
}

impl Worker {
    async fn run(mut self) {
        let stop = self.stops.stop.clone();
        let retire = self.stops.retire.clone();
        loop {
            if stop.is_cancelled() || retire.is_cancelled() {
                return;
            }
            let claim = self
                .store
                .claim_next(&self.name, self.order, SystemTime::now())
                .await;
            let wait_until = match claim {
                Ok(Claim::Ready(d)) => {
                    let outcome = tokio::select! {
                        biased;
                        _ = stop.cancelled() => {
                            warn!(control_id = %d.control_id, "stopping mid-send; it is sent again after a restart");
                            return;
                        }
                        o = self.send(&d) => o,
                    };
                    self.record(&d, outcome).await;
                    continue;
                }
                Ok(Claim::WaitUntil(t)) => Some(t),
                Ok(Claim::Blocked | Claim::Empty) => None,
                Err(e) => {
                    error!(error = %e, "cannot read the queue; trying again");
                    Some(SystemTime::now() + POLL)
                }
            };
            // Nothing is ready now. While draining for shutdown, that means done.
            if self.stops.drain.is_cancelled() {
                return;
            }
            let sleep = wait_until
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(POLL)
                .min(POLL);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = retire.cancelled() => return,
                _ = self.stops.drain.cancelled() => {}
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn send(&mut self, d: &ClaimedDelivery) -> Attempt {
        if d.possible_duplicate {
            warn!(
                route = %d.route,
                control_id = %d.control_id,
                delivery = %d.id,
                "possible duplicate: this delivery may have reached the receiver before a crash; sending it again"
            );
        }
        super::attempt(
            &mut self.client,
            &d.payload,
            &d.control_id,
            self.ack_timeout,
            self.release,
        )
        .await
    }

    /// Records the outcome; a store that fails is retried until it answers (or we are
    /// stopped), so an outcome is never forgotten while the engine runs.
    async fn record(&self, d: &ClaimedDelivery, outcome: Attempt) {
        let (result, finished) = match &outcome {
            Attempt::Delivered(ack) => {
                info!(
                    route = %d.route,
                    control_id = %d.control_id,
                    message_type = %d.message_type,
                    attempt = d.attempts,
                    possible_duplicate = d.possible_duplicate,
                    "delivered"
                );
                (
                    Outcome::Delivered(ack.clone()),
                    Some(Finished::Delivered(ack.clone())),
                )
            }
            Attempt::Rejected { ack, reason } => {
                error!(
                    route = %d.route,
                    control_id = %d.control_id,
                    message_type = %d.message_type,
                    attempt = d.attempts,
                    %reason,
                    "destination rejected the message; not retrying (dead letter)"
                );
                (
                    Outcome::DeadLetter(reason.clone(), Some(ack.clone())),
                    Some(Finished::Failed(Some(ack.clone()))),
                )
            }
            Attempt::Retry { reason } => {
                if self.retry.max_attempts.is_some_and(|max| d.attempts >= max) {
                    error!(
                        route = %d.route,
                        control_id = %d.control_id,
                        message_type = %d.message_type,
                        attempt = d.attempts,
                        %reason,
                        "delivery failed; retry.max_attempts reached (dead letter)"
                    );
                    (
                        Outcome::DeadLetter(
                            format!("{reason} (after {} attempts)", d.attempts),
                            None,
                        ),
                        Some(Finished::Failed(None)),
                    )
                } else {
                    let wait = backoff_after(d.attempts, &self.retry);
                    warn!(
                        route = %d.route,
                        control_id = %d.control_id,
                        attempt = d.attempts,
                        retry_in_ms = wait.as_millis() as u64,
                        %reason,
                        "delivery failed; will retry"
                    );
                    (
                        Outcome::Retry(reason.clone(), SystemTime::now() + wait),
                        None,
                    )
                }
            }
        };
        let mut pause = Duration::from_millis(100);
        loop {
            let written: Result<(), StoreError> = match &result {
                Outcome::Delivered(ack) => self.store.delivered(d.id, ack.clone()).await,
                Outcome::DeadLetter(reason, ack) => {
                    self.store.dead_letter(d.id, reason, ack.clone()).await
                }
                Outcome::Retry(reason, at) => self.store.retry_later(d.id, reason, *at).await,
            };
            match written {
                Ok(()) => break,
                Err(e) => {
                    error!(delivery = %d.id, error = %e, "cannot record the delivery's outcome; trying again");
                    tokio::select! {
                        _ = self.stops.stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some(f) = finished {
            self.waiters.finish(d.id, f);
        }
    }
}

enum Outcome {
    Delivered(bytes::Bytes),
    DeadLetter(String, Option<bytes::Bytes>),
    Retry(String, SystemTime),
}
