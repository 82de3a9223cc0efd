//! Batched claims and settlements: one commit marks several deliveries in flight and one
//! finishes them, without changing what each queue order lets go, and a batch in flight at a
//! crash comes back whole, flagged.

use bytes::Bytes;
use courier_store::{
    Claim, ClaimedDelivery, DeliveryOrder, DeliveryStatus, MessageStatus, Settle, Settlement,
    Store, StoreError,
};

use crate::common::*;

async fn batch(
    store: &dyn Store,
    order: DeliveryOrder,
    now: u64,
    limit: usize,
) -> Vec<ClaimedDelivery> {
    match store
        .claim_batch("lab", order, t(now), limit)
        .await
        .unwrap()
    {
        Claim::Ready(b) => {
            assert!(!b.is_empty(), "a ready batch is never empty");
            b
        }
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn payloads(b: &[ClaimedDelivery]) -> Vec<&str> {
    b.iter().map(payload).collect()
}

fn delivered(d: &ClaimedDelivery) -> Settlement {
    Settlement {
        id: d.id,
        outcome: Settle::Delivered(Bytes::from_static(b"MSA|AA")),
    }
}

fn unsent(d: &ClaimedDelivery) -> Settlement {
    Settlement {
        id: d.id,
        outcome: Settle::Unsent,
    }
}

async fn status_of(store: &dyn Store, d: &ClaimedDelivery) -> (DeliveryStatus, u32) {
    let detail = store.message(d.message_id).await.unwrap().unwrap();
    let row = detail.deliveries.iter().find(|x| x.id == d.id).unwrap();
    (row.status, row.attempts)
}

#[tokio::test]
async fn strict_claims_a_run_from_the_head_and_unsent_ones_keep_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s: &dyn Store = &store;
    let strict = DeliveryOrder::Strict;
    for p in ["A", "B", "C", "D", "E"] {
        queue(s, "lab", "", p).await;
    }
    let commits = store.stats().commits;
    let b = batch(s, strict, 0, 3).await;
    assert_eq!(
        store.stats().commits,
        commits + 1,
        "one commit claims the batch"
    );
    assert_eq!(payloads(&b), ["A", "B", "C"]);
    assert!(b.iter().all(|d| d.attempts == 1));
    // While any of it is in flight, nothing else goes.
    assert_eq!(
        s.claim_batch("lab", strict, t(0), 3).await.unwrap(),
        Claim::Blocked
    );

    // A delivered; B failed (so C, behind it, was never sent).
    let refused = s
        .settle(vec![
            delivered(&b[0]),
            Settlement {
                id: b[1].id,
                outcome: Settle::Retry {
                    error: "AE".into(),
                    next_attempt: t(10),
                },
            },
            unsent(&b[2]),
        ])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(status_of(s, &b[0]).await.0, DeliveryStatus::Delivered);
    assert_eq!(
        status_of(s, &b[2]).await,
        (DeliveryStatus::Queued, 0),
        "an unsent delivery's attempt is not counted"
    );
    // B heads the queue again and waits for its retry; C and the rest wait behind it.
    assert_eq!(
        s.claim_batch("lab", strict, t(5), 10).await.unwrap(),
        Claim::WaitUntil(t(10))
    );
    let b2 = batch(s, strict, 10, 10).await;
    assert_eq!(payloads(&b2), ["B", "C", "D", "E"]);
    assert_eq!(
        b2.iter().map(|d| d.attempts).collect::<Vec<_>>(),
        [2, 1, 1, 1]
    );
}

#[tokio::test]
async fn set_aside_batches_skip_what_waits_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    let aside = DeliveryOrder::SetAside;
    for p in ["A", "B", "C"] {
        queue(s, "lab", "", p).await;
    }
    let b = batch(s, aside, 0, 1).await;
    s.settle(vec![Settlement {
        id: b[0].id,
        outcome: Settle::Retry {
            error: "timeout".into(),
            next_attempt: t(10),
        },
    }])
    .await
    .unwrap();
    queue(s, "lab", "", "D").await;
    let b = batch(s, aside, 1, 10).await;
    assert_eq!(payloads(&b), ["B", "C", "D"]);
    s.settle(b.iter().map(delivered).collect()).await.unwrap();
    assert_eq!(payloads(&batch(s, aside, 10, 10).await), ["A"]);
}

#[tokio::test]
async fn by_key_batches_take_one_head_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    let by_key = DeliveryOrder::ByKey;
    queue(s, "lab", "p1", "p1-a").await;
    queue(s, "lab", "p2", "p2-a").await;
    queue(s, "lab", "p1", "p1-b").await;
    queue(s, "lab", "", "nokey-a").await;
    queue(s, "lab", "", "nokey-b").await;
    queue(s, "lab", "p3", "p3-a").await;
    let b = batch(s, by_key, 0, 10).await;
    // p1-b waits for p1-a; deliveries without a key never wait for each other.
    assert_eq!(payloads(&b), ["p1-a", "p2-a", "nokey-a", "nokey-b", "p3-a"]);
    s.settle(b.iter().map(delivered).collect()).await.unwrap();
    assert_eq!(payloads(&batch(s, by_key, 0, 10).await), ["p1-b"]);
}

#[tokio::test]
async fn settle_applies_what_it_can_and_names_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    for p in ["A", "B"] {
        queue(s, "lab", "", p).await;
    }
    let b = batch(s, DeliveryOrder::SetAside, 0, 2).await;
    // An operator dead-letters B while it is in flight.
    s.dead_letter(b[1].id, "taken out by an operator", None)
        .await
        .unwrap();
    let refused = s
        .settle(vec![delivered(&b[0]), delivered(&b[1])])
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, b[1].id);
    assert!(
        matches!(
            refused[0].1,
            StoreError::WrongDeliveryState {
                status: DeliveryStatus::Error,
                ..
            }
        ),
        "{:?}",
        refused[0].1
    );
    assert_eq!(status_of(s, &b[0]).await.0, DeliveryStatus::Delivered);
    assert_eq!(status_of(s, &b[1]).await.0, DeliveryStatus::Error);
}

#[tokio::test]
async fn a_batch_in_flight_at_a_crash_comes_back_whole_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_arc(dir.path());
        for p in ["A", "B", "C", "D"] {
            queue(&*store, "lab", "", p).await;
        }
        let b = batch(&*store, DeliveryOrder::Strict, 0, 3).await;
        // A was acknowledged and recorded; B and C were in flight when the process died.
        store.settle(vec![delivered(&b[0])]).await.unwrap();
    }
    let store = open_arc(dir.path());
    let recovered = store.recover_in_flight().await.unwrap();
    assert_eq!(recovered.len(), 2);
    let b = batch(&*store, DeliveryOrder::Strict, 0, 10).await;
    assert_eq!(payloads(&b), ["B", "C", "D"]);
    assert_eq!(
        b.iter().map(|d| d.possible_duplicate).collect::<Vec<_>>(),
        [true, true, false]
    );
}

#[tokio::test]
async fn journal_processed_is_one_commit_and_queues_the_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let commits = store.stats().commits;
    let (id, deliveries) = store
        .journal_processed(
            message("M1", "P1"),
            processed(vec![
                delivery("lab", "P1", "to-lab"),
                delivery("emr", "P1", "to-emr"),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(store.stats().commits, commits + 1);
    assert_eq!(deliveries.len(), 2);
    let detail = store.message(id).await.unwrap().unwrap();
    assert_eq!(detail.status, MessageStatus::Processed);
    assert!(store.unprocessed().await.unwrap().is_empty());
    assert!(detail.processed_at.is_some());
    let d = claim(&store, "emr", DeliveryOrder::Strict, t(0)).await;
    assert_eq!(payload(&d), "to-emr");

    // A filtered one keeps its reason, and the ACK decided before the write is kept with it.
    let mut m = message("M2", "P2");
    m.ack = Some(Bytes::from_static(b"MSH|^~\\&|ACK\rMSA|AA|M2\r"));
    let (id, deliveries) = store
        .journal_processed(
            m,
            courier_store::Processing {
                status: courier_store::ProcessingStatus::Filtered,
                reason: Some("test patient".into()),
                steps: Vec::new(),
                deliveries: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert!(deliveries.is_empty());
    let detail = store.message(id).await.unwrap().unwrap();
    assert_eq!(detail.status, MessageStatus::Filtered);
    assert_eq!(detail.reason.as_deref(), Some("test patient"));
    assert_eq!(
        detail.ack.as_deref(),
        Some(&b"MSH|^~\\&|ACK\rMSA|AA|M2\r"[..])
    );
}

/// Large bodies (written and read through SQLite's blob I/O) come back byte for byte from each
/// place a payload can be kept: the message as received, a step's output, a payload of its own.
#[tokio::test]
async fn large_payloads_round_trip_from_each_place_they_are_kept() {
    use courier_store::{NewDelivery, Processing, ProcessingStatus, StepOutcome, StepRecord};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let big = |fill: u8, len: usize| -> Bytes {
        // Not one repeated byte: an offset mistake would show.
        Bytes::from(
            (0..len)
                .map(|i| fill.wrapping_add((i % 251) as u8))
                .collect::<Vec<u8>>(),
        )
    };
    let mut m = message("BIG1", "P1");
    m.raw = big(1, 300_000);
    let stepped = big(2, 200_000);
    let own = big(3, 150_000);
    let small = big(4, 1_000);
    let to = |route: &str, destination: &str, payload: &Bytes| NewDelivery {
        route: route.into(),
        destination: destination.into(),
        payload: payload.clone().into(),
        order_key: String::new(),
    };
    let (id, _) = store
        .journal_processed(
            m.clone(),
            Processing {
                status: ProcessingStatus::Processed,
                reason: None,
                steps: vec![StepRecord {
                    route: "mapped".into(),
                    step: "map".into(),
                    kind: "wasm-transform".into(),
                    content_hash: "h".into(),
                    outcome: StepOutcome::Changed(stepped.clone().into()),
                    reason: None,
                }],
                deliveries: vec![
                    to("as-received", "raw", &m.raw),
                    to("mapped", "step", &stepped),
                    to("other", "own", &own),
                    to("other", "small", &small),
                ],
            },
        )
        .await
        .unwrap();
    for (destination, want) in [
        ("raw", &m.raw),
        ("step", &stepped),
        ("own", &own),
        ("small", &small),
    ] {
        let d = claim(&store, destination, DeliveryOrder::Strict, t(0)).await;
        assert_eq!(d.payload.len(), want.len(), "{destination}");
        assert!(d.payload == *want, "{destination}: the bytes differ");
    }
    let detail = store.message(id).await.unwrap().unwrap();
    assert!(detail.raw == m.raw);
}

/// The ACK of a large message (kept apart from its body, schema version 3) is found for a
/// duplicate and shown with the message, whether it was stored with the message or recorded
/// after its deliveries; a small message's stays beside its body.
#[tokio::test]
async fn large_messages_keep_their_acks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let big = Bytes::from(vec![b'A'; 200_000]);
    let ack = |c: &str| Bytes::from(format!("MSH|^~\\&|ACK\rMSA|AA|{c}\r"));

    // Stored in the message's own commit.
    let mut m = message("BIG1", "P1");
    m.raw = big.clone();
    m.ack = Some(ack("BIG1"));
    let id = store.journal(m).await.unwrap();
    let dup = store
        .find_duplicate("REG", "CLINIC", "BIG1", t(0))
        .await
        .unwrap()
        .expect("found");
    assert_eq!((dup.id, dup.ack), (id, Some(ack("BIG1"))));
    let detail = store.message(id).await.unwrap().unwrap();
    assert!(detail.raw == big);
    assert_eq!(detail.ack, Some(ack("BIG1")));

    // Recorded later (after-delivery), then recorded again: the last one counts.
    let mut m = message("BIG2", "P1");
    m.raw = big.clone();
    let id = store.journal(m).await.unwrap();
    assert_eq!(store.message(id).await.unwrap().unwrap().ack, None);
    store.record_ack(id, ack("first")).await.unwrap();
    store.record_ack(id, ack("BIG2")).await.unwrap();
    let dup = store
        .find_duplicate("REG", "CLINIC", "BIG2", t(0))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(dup.ack, Some(ack("BIG2")));
    assert!(store.message(id).await.unwrap().unwrap().raw == big);

    // A small one, as before.
    let mut m = message("SMALL1", "P1");
    m.ack = Some(ack("SMALL1"));
    let id = store.journal(m).await.unwrap();
    assert_eq!(
        store.message(id).await.unwrap().unwrap().ack,
        Some(ack("SMALL1"))
    );
}
