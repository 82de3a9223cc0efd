//! The engine's metrics, in Prometheus text format at the admin server's `/metrics`.
//!
//! One set per process (an engine is a process), so every part of the engine records where it
//! is without a handle threaded through: listeners count what they receive and answer, routes
//! what they send, filter or fail, steps their call time and failures, destinations what they
//! deliver, retry or dead-letter. Queue depths and the store's size are read from the store
//! when scraped. Labels are names from the config and fixed words, never message content.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use courier_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabel {
    listener: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    destination: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    destination: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    route: String,
    step: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepFailureLabel {
    route: String,
    step: String,
    kind: String,
    error: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the engine keeps.
pub struct Metrics {
    registry: Registry,
    received: Family<ListenerLabel, Counter>,
    acks: Family<AckLabel, Counter>,
    ack_seconds: HistogramFamily<ListenerLabel>,
    routed: Family<RouteLabel, Counter>,
    deliveries: Family<DeliveryLabel, Counter>,
    delivery_seconds: HistogramFamily<DestinationLabel>,
    step_seconds: HistogramFamily<StepLabel>,
    step_failures: Family<StepFailureLabel, Counter>,
    queue_depth: Family<QueueLabel, Gauge>,
    store_bytes: Gauge,
    store_commits: Counter,
    store_writes: Counter,
    store_reruns: Counter,
    health: Mutex<Health>,
}

/// What the alert rules read besides the counters.
#[derive(Default)]
struct Health {
    /// When each listener last received a frame.
    last_received: HashMap<String, Instant>,
    /// Since when every attempt to each destination has failed (absent: it last succeeded).
    failing_since: HashMap<String, Instant>,
    /// Step failures so far, by route.
    step_failures: HashMap<String, u64>,
}

/// 100 µs to ~53 s: an ACK after a sync, a delivery after hours of retries lands in +Inf.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// 10 µs to ~10 s: a script's few microseconds up to a plugin's timeout.
fn step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("courier");
        let received = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "received",
            "Frames received, per listener",
            received.clone(),
        );
        let acks = Family::<AckLabel, Counter>::default();
        registry.register(
            "acks",
            "Acknowledgements sent, per listener and code (AA, AE, AR, CA, CE, CR, commit_ack, commit_nak, none)",
            acks.clone(),
        );
        let ack_seconds: HistogramFamily<ListenerLabel> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "ack_seconds",
            "Time from receiving a message to sending its acknowledgement",
            ack_seconds.clone(),
        );
        let routed = Family::<RouteLabel, Counter>::default();
        registry.register(
            "route_messages",
            "Messages per route and outcome: sent, filtered (a step dropped it), error (a step failed)",
            routed.clone(),
        );
        let deliveries = Family::<DeliveryLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts per destination and outcome: delivered, retried, dead_letter",
            deliveries.clone(),
        );
        let delivery_seconds: HistogramFamily<DestinationLabel> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "delivery_seconds",
            "Time from receiving a message to its destination acknowledging it",
            delivery_seconds.clone(),
        );
        let step_seconds: HistogramFamily<StepLabel> = Family::new_with_constructor(step_buckets);
        registry.register(
            "step_seconds",
            "Time one call of a route step (plugin or script) took",
            step_seconds.clone(),
        );
        let step_failures = Family::<StepFailureLabel, Counter>::default();
        registry.register(
            "step_failures",
            "Route step calls that failed, by error kind (trap, timeout, memory, ...)",
            step_failures.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_depth",
            "Deliveries per destination and state (queued, in_flight, error), read from the store",
            queue_depth.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "Size of the message store on disk",
            store_bytes.clone(),
        );
        let store_commits = Counter::default();
        registry.register(
            "store_commits",
            "Store transactions committed (each one sync with fsync on)",
            store_commits.clone(),
        );
        let store_writes = Counter::default();
        registry.register(
            "store_writes",
            "Store write requests (journal, claims, outcomes, ...); per commit: how well they group",
            store_writes.clone(),
        );
        let store_reruns = Counter::default();
        registry.register(
            "store_batch_reruns",
            "Store batches run again with a savepoint per request because one of their requests failed",
            store_reruns.clone(),
        );
        Metrics {
            registry,
            received,
            acks,
            ack_seconds,
            routed,
            deliveries,
            delivery_seconds,
            step_seconds,
            step_failures,
            queue_depth,
            store_bytes,
            store_commits,
            store_writes,
            store_reruns,
            health: Mutex::default(),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When `listener` last received a frame, if it has.
    pub fn last_received(&self, listener: &str) -> Option<Instant> {
        self.health().last_received.get(listener).copied()
    }

    /// Since when every attempt to `destination` has failed, if its last one did.
    pub fn failing_since(&self, destination: &str) -> Option<Instant> {
        self.health().failing_since.get(destination).copied()
    }

    /// Step failures so far, on `route` or on all routes.
    pub fn step_failures(&self, route: Option<&str>) -> u64 {
        let health = self.health();
        match route {
            Some(r) => health.step_failures.get(r).copied().unwrap_or(0),
            None => health.step_failures.values().sum(),
        }
    }

    /// A listener received a frame.
    pub fn received(&self, listener: &str) {
        // Every message passes here: update in place, allocate the key only once.
        let now = Instant::now();
        let mut health = self.health();
        match health.last_received.get_mut(listener) {
            Some(t) => *t = now,
            None => {
                health.last_received.insert(listener.to_owned(), now);
            }
        }
        drop(health);
        self.received
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .inc();
    }

    /// A listener answered a frame with `code` after `elapsed`.
    pub fn acked(&self, listener: &str, code: &'static str, elapsed: Duration) {
        self.acks
            .get_or_create(&AckLabel {
                listener: listener.to_owned(),
                code,
            })
            .inc();
        self.ack_seconds
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A route sent, filtered or failed a message.
    pub fn routed(&self, route: &str, outcome: RouteOutcome) {
        self.routed
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A destination attempt ended; `since_received` for a delivered one.
    pub fn delivery(
        &self,
        destination: &str,
        outcome: DeliveryOutcome,
        since_received: Option<Duration>,
    ) {
        match outcome {
            DeliveryOutcome::Delivered => {
                self.health().failing_since.remove(destination);
            }
            DeliveryOutcome::Retried => {
                self.health()
                    .failing_since
                    .entry(destination.to_owned())
                    .or_insert_with(Instant::now);
            }
            DeliveryOutcome::DeadLetter => {}
        }
        self.deliveries
            .get_or_create(&DeliveryLabel {
                destination: destination.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
        if let Some(d) = since_received {
            self.delivery_seconds
                .get_or_create(&DestinationLabel {
                    destination: destination.to_owned(),
                })
                .observe(d.as_secs_f64());
        }
    }

    /// One call of a route step; `failure` names the error kind if it failed.
    pub fn step(&self, route: &str, step: &str, kind: &str, took: Duration, failure: Option<&str>) {
        self.step_seconds
            .get_or_create(&StepLabel {
                route: route.to_owned(),
                step: step.to_owned(),
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
        if let Some(error) = failure {
            *self
                .health()
                .step_failures
                .entry(route.to_owned())
                .or_default() += 1;
            self.step_failures
                .get_or_create(&StepFailureLabel {
                    route: route.to_owned(),
                    step: step.to_owned(),
                    kind: kind.to_owned(),
                    error: error.to_owned(),
                })
                .inc();
        }
    }

    /// The text exposition, with queue depths and the store's size read now.
    pub async fn render(&self, store: Option<&dyn Store>) -> String {
        if let Some(store) = store {
            match store.queue_depths().await {
                Ok(depths) => {
                    // A destination whose queue emptied must read 0, not its last value.
                    self.queue_depth.clear();
                    for d in depths {
                        for (state, n) in [
                            ("queued", d.queued),
                            ("in_flight", d.in_flight),
                            ("error", d.errored),
                        ] {
                            self.queue_depth
                                .get_or_create(&QueueLabel {
                                    destination: d.destination.clone(),
                                    state,
                                })
                                .set(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read queue depths"),
            }
            match store.size_bytes().await {
                Ok(n) => {
                    self.store_bytes.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read the store's size"),
            }
            if let Some(stats) = store.writer_stats() {
                // The store counts; the counters catch up with it at each scrape.
                for (counter, now) in [
                    (&self.store_commits, stats.commits),
                    (&self.store_writes, stats.writes),
                    (&self.store_reruns, stats.reruns),
                ] {
                    counter.inc_by(now.saturating_sub(counter.get()));
                }
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What a route did with a message.
#[derive(Debug, Clone, Copy)]
pub enum RouteOutcome {
    /// Copies queued for its destinations.
    Sent,
    /// A step dropped it.
    Filtered,
    /// A step failed.
    Error,
}

impl RouteOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RouteOutcome::Sent => "sent",
            RouteOutcome::Filtered => "filtered",
            RouteOutcome::Error => "error",
        }
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryOutcome {
    /// The destination acknowledged it.
    Delivered,
    /// It failed and will be tried again.
    Retried,
    /// Rejected, or out of attempts.
    DeadLetter,
}

impl DeliveryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retried => "retried",
            DeliveryOutcome::DeadLetter => "dead_letter",
        }
    }
}

/// The acknowledgement code of a reply frame, for the `acks` metric.
pub fn ack_code(reply: Option<&[u8]>) -> &'static str {
    let Some(reply) = reply else {
        return "none";
    };
    if reply == courier_mllp::COMMIT_ACK {
        return "commit_ack";
    }
    if reply == courier_mllp::COMMIT_NAK {
        return "commit_nak";
    }
    let Some(at) = memchr::memmem::find(reply, b"\rMSA|") else {
        return "other";
    };
    match reply.get(at + 5..at + 7) {
        Some(b"AA") => "AA",
        Some(b"AE") => "AE",
        Some(b"AR") => "AR",
        Some(b"CA") => "CA",
        Some(b"CE") => "CE",
        Some(b"CR") => "CR",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_codes_are_read_from_msa_1() {
        let ack = b"MSH|^~\\&|C|C|S|S|20260101||ACK|1|P|2.5\rMSA|AE|X1\rERR|||207\r";
        assert_eq!(ack_code(Some(ack)), "AE");
        assert_eq!(ack_code(Some(b"MSH|^~\\&|C\rMSA|CA|1\r")), "CA");
        assert_eq!(ack_code(Some(courier_mllp::COMMIT_NAK)), "commit_nak");
        assert_eq!(ack_code(None), "none");
        assert_eq!(ack_code(Some(b"garbage")), "other");
    }
}
