//! The durable destination worker: claims deliveries from the store's queue for its
//! destination, sends each and records the outcome.
//!
//! The store marks a delivery in flight (and counts the attempt) durably before it is sent,
//! so after a crash a delivery that may already have reached the receiver is sent again and
//! flagged as a possible duplicate. Under load the worker claims up to `claim_batch`
//! deliveries in one commit, sends them one by one, and records their outcomes in the commit
//! that claims the next batch: one sync per batch instead of two per message. Order and what a failure holds back follow the
//! destination's `ordering`. The worker wakes when a delivery is queued for it, when an
//! operator changes its queue (resume, retry, resend), when a retry falls due, and once a
//! second to pick up what another process (the CLI) queued. Under strict order a head waiting
//! for its retry holds back everything queued behind it, so while it waits a newly queued
//! delivery does not wake the worker: the claim it would make could only say "wait".

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_store::{
    Claim, ClaimedDelivery, DeliveryId, DeliveryOrder, Settle, Settlement, Store, StoreError,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use super::waiters::{Finished, Waiters};
use super::{Attempt, Transport, backoff_after};
use crate::admin::Paused;
use crate::config::{DestinationConfig, OrderingConfig, RetryConfig};
use crate::metrics::{DeliveryOutcome, METRICS};

/// How often an idle worker looks at the store without being woken (and how soon it tries
/// again to record outcomes the store refused).
const POLL: Duration = Duration::from_secs(1);

/// How long a stopping worker waits for the store to record its last outcomes.
const LAST_SETTLE: Duration = Duration::from_secs(2);

/// The handle the intake and the admin API use to wake a destination's worker.
#[derive(Debug, Clone)]
pub struct Wake {
    queued: Arc<Notify>,
    changed: Arc<Notify>,
}

impl Wake {
    fn new() -> Wake {
        Wake {
            queued: Arc::new(Notify::new()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Deliveries were queued for this destination, behind those already queued.
    pub fn queued(&self) {
        self.queued.notify_one();
    }

    /// An operator changed this destination's queue or state (resumed it, queued dead letters
    /// again, resent a message): the worker looks at its queue at once, whatever it waits for.
    pub fn changed(&self) {
        self.changed.notify_one();
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
    paused: Arc<Paused>,
    after: Option<JoinHandle<()>>,
) -> (Wake, JoinHandle<()>) {
    let wake = Wake::new();
    let worker = Worker {
        name: cfg.name.clone(),
        order: match cfg.ordering {
            OrderingConfig::Strict => DeliveryOrder::Strict,
            OrderingConfig::SetAside => DeliveryOrder::SetAside,
            OrderingConfig::ByKey => DeliveryOrder::ByKey,
        },
        client: Transport::for_config(cfg),
        ack_timeout: cfg.ack_timeout,
        release: cfg.mllp_release,
        retry: cfg.retry.clone(),
        batch: cfg.claim_batch,
        store,
        waiters,
        wake: wake.clone(),
        stops,
        paused,
        unsettled: Vec::new(),
    };
    let span = info_span!("destination", destination = %cfg.name, target = %cfg.target());
    let task = tracker.spawn(
        async move {
            if let Some(previous) = after {
                let _ = previous.await;
            }
            worker.run().await;
        }
        .instrument(span),
    );
    (wake, task)
}

struct Worker {
    name: String,
    order: DeliveryOrder,
    client: Transport,
    ack_timeout: Duration,
    /// MLLP release: 2 waits for a commit acknowledgement instead of an HL7 ACK.
    release: u8,
    retry: RetryConfig,
    /// Deliveries claimed per store commit.
    batch: usize,
    store: Arc<dyn Store>,
    waiters: Arc<Waiters>,
    wake: Wake,
    stops: Stops,
    /// An operator paused this destination: claim nothing until resumed (woken).
    paused: Arc<Paused>,
    /// Outcomes not yet recorded in the store, with what to tell a waiting listener once they
    /// are. They are written together with the next claim.
    unsettled: Vec<(Settlement, Option<Finished>)>,
}

impl Worker {
    async fn run(mut self) {
        let stop = self.stops.stop.clone();
        let retire = self.stops.retire.clone();
        loop {
            if stop.is_cancelled() || retire.is_cancelled() {
                self.last_settle().await;
                return;
            }
            let claimed = if self.paused.is_paused(&self.name) {
                self.settle_now().await;
                Ok(Claim::Blocked)
            } else {
                self.settle_and_claim().await
            };
            // Under strict order, a head that waits for its retry time holds back what is
            // queued behind it: a delivery queued meanwhile cannot go sooner, and claiming on
            // its account would only cost the store a query per message taken in.
            let head_waits =
                self.order == DeliveryOrder::Strict && matches!(claimed, Ok(Claim::WaitUntil(_)));
            let wait_until = match claimed {
                Ok(Claim::Ready(batch)) => {
                    if !self.send_batch(batch).await {
                        self.last_settle().await;
                        return;
                    }
                    continue;
                }
                Ok(Claim::WaitUntil(t)) => Some(t),
                Ok(Claim::Blocked | Claim::Empty) => None,
                Err(e) => {
                    error!(error = %e, "cannot read the queue; trying again");
                    Some(SystemTime::now() + POLL)
                }
            };
            // Nothing is ready now. While draining for shutdown, that means done, once every
            // outcome is recorded.
            if self.stops.drain.is_cancelled() && self.unsettled.is_empty() {
                return;
            }
            let sleep = wait_until
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(POLL)
                .min(POLL);
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = retire.cancelled() => {}
                _ = self.stops.drain.cancelled(), if self.unsettled.is_empty() => {}
                _ = self.wake.changed.notified() => {}
                _ = self.wake.queued.notified(), if !head_waits => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Records the outcomes so far and claims the next batch, usually in one store commit.
    async fn settle_and_claim(&mut self) -> Result<Claim<Vec<ClaimedDelivery>>, StoreError> {
        let claim = self
            .store
            .claim_batch(&self.name, self.order, SystemTime::now(), self.batch);
        if self.unsettled.is_empty() {
            return claim.await;
        }
        let settle = self.store.settle(self.pending());
        // `join` polls the settlement first, so the store applies it before the claim: under
        // strict order the claim then sees the finished head.
        let (settled, claimed) = futures::future::join(settle, claim).await;
        self.settled(settled);
        claimed
    }

    /// Records the outcomes so far on their own (a listener is waiting for them).
    async fn settle_now(&mut self) {
        if !self.unsettled.is_empty() {
            let settled = self.store.settle(self.pending()).await;
            self.settled(settled);
        }
    }

    /// Records what is left when stopping, without waiting long for a sick store: what is not
    /// recorded stays in flight and is sent again after a restart, flagged.
    async fn last_settle(&mut self) {
        if self.unsettled.is_empty() {
            return;
        }
        match tokio::time::timeout(LAST_SETTLE, self.store.settle(self.pending())).await {
            Ok(settled) => self.settled(settled),
            Err(_) => warn!(
                deliveries = self.unsettled.len(),
                "stopping before their outcomes were recorded; they are sent again after a restart"
            ),
        }
    }

    fn pending(&self) -> Vec<Settlement> {
        self.unsettled.iter().map(|(s, _)| s.clone()).collect()
    }

    fn settled(&mut self, settled: Result<Vec<(DeliveryId, StoreError)>, StoreError>) {
        match settled {
            Ok(refused) => {
                for (id, e) in &refused {
                    warn!(delivery = %id, error = %e, "the delivery changed while it was being sent (an operator?); its outcome is not recorded");
                }
                for (s, finished) in self.unsettled.drain(..) {
                    if let Some(f) = finished
                        && !refused.iter().any(|(id, _)| *id == s.id)
                    {
                        self.waiters.finish(s.id, f);
                    }
                }
            }
            Err(e) => {
                error!(deliveries = self.unsettled.len(), error = %e, "cannot record the deliveries' outcomes; trying again");
            }
        }
    }

    /// Sends a batch in order; false when told to stop at once. A delivery that fails ends the
    /// batch (the rest go back to the queue unsent), so under strict order nothing overtakes
    /// it, and under the other orders the next claim skips it while it waits for its retry.
    async fn send_batch(&mut self, batch: Vec<ClaimedDelivery>) -> bool {
        let stop = self.stops.stop.clone();
        let mut rest = batch.into_iter();
        while let Some(mut d) = rest.next() {
            if stop.is_cancelled() || self.stops.retire.is_cancelled() {
                self.unsent(std::iter::once(d).chain(rest));
                return true;
            }
            let outcome = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // Left in flight: it may have gone out, so it is sent again after a
                    // restart, flagged.
                    warn!(control_id = %d.control_id, "stopping mid-send; it is sent again after a restart");
                    self.unsent(rest);
                    return false;
                }
                o = self.send(&mut d) => o,
            };
            let failed = matches!(outcome, Attempt::Retry { .. });
            let (settlement, finished) = self.judge(&d, outcome);
            self.unsettled.push((
                Settlement {
                    id: d.id,
                    outcome: settlement,
                },
                finished,
            ));
            if failed {
                self.unsent(rest);
                return true;
            }
            if self.waiters.is_enabled() {
                // A listener may be holding its sender's ACK for this outcome.
                self.settle_now().await;
            }
        }
        true
    }

    fn unsent(&mut self, rest: impl Iterator<Item = ClaimedDelivery>) {
        for d in rest {
            self.unsettled.push((
                Settlement {
                    id: d.id,
                    outcome: Settle::Unsent,
                },
                None,
            ));
        }
    }

    /// Sends `d`, giving its payload to the transport (nothing after the attempt reads it).
    async fn send(&mut self, d: &mut ClaimedDelivery) -> Attempt {
        if d.possible_duplicate {
            warn!(
                route = %d.route,
                control_id = %d.control_id,
                delivery = %d.id,
                "possible duplicate: this delivery may have reached the receiver before a crash; sending it again"
            );
        }
        self.client
            .attempt(
                std::mem::take(&mut d.payload),
                &d.control_id,
                &d.message_type,
                self.ack_timeout,
                self.release,
            )
            .await
    }

    /// Logs an outcome and says how to record it.
    fn judge(&self, d: &ClaimedDelivery, outcome: Attempt) -> (Settle, Option<Finished>) {
        match outcome {
            Attempt::Delivered(ack) => {
                METRICS.delivery(
                    &self.name,
                    DeliveryOutcome::Delivered,
                    SystemTime::now().duration_since(d.received_at).ok(),
                );
                info!(
                    route = %d.route,
                    control_id = %d.control_id,
                    message_type = %d.message_type,
                    attempt = d.attempts,
                    possible_duplicate = d.possible_duplicate,
                    "delivered"
                );
                (
                    Settle::Delivered(ack.clone()),
                    Some(Finished::Delivered(ack)),
                )
            }
            Attempt::Rejected { ack, reason } => {
                METRICS.delivery(&self.name, DeliveryOutcome::DeadLetter, None);
                error!(
                    route = %d.route,
                    control_id = %d.control_id,
                    message_type = %d.message_type,
                    attempt = d.attempts,
                    %reason,
                    "destination rejected the message; not retrying (dead letter)"
                );
                (
                    Settle::DeadLetter {
                        error: reason,
                        ack: Some(ack.clone()),
                    },
                    Some(Finished::Failed(Some(ack))),
                )
            }
            Attempt::Retry { reason } => {
                if self.retry.max_attempts.is_some_and(|max| d.attempts >= max) {
                    METRICS.delivery(&self.name, DeliveryOutcome::DeadLetter, None);
                    error!(
                        route = %d.route,
                        control_id = %d.control_id,
                        message_type = %d.message_type,
                        attempt = d.attempts,
                        %reason,
                        "delivery failed; retry.max_attempts reached (dead letter)"
                    );
                    (
                        Settle::DeadLetter {
                            error: format!("{reason} (after {} attempts)", d.attempts),
                            ack: None,
                        },
                        Some(Finished::Failed(None)),
                    )
                } else {
                    METRICS.delivery(&self.name, DeliveryOutcome::Retried, None);
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
                        Settle::Retry {
                            error: reason,
                            next_attempt: SystemTime::now() + wait,
                        },
                        None,
                    )
                }
            }
        }
    }
}
