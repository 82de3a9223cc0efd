//! The three queue orders: Strict blocks behind a failing head, SetAside flows past it, ByKey
//! holds back only the failing delivery's key. Destinations never hold each other up.

use bytes::Bytes;
use courier_store::{Claim, DeliveryOrder, Store};

use crate::common::*;

async fn next(store: &dyn Store, order: DeliveryOrder, now: u64) -> Claim {
    store.claim_next("lab", order, t(now)).await.unwrap()
}

async fn ready(store: &dyn Store, order: DeliveryOrder, now: u64) -> String {
    payload(&claim(store, "lab", order, t(now)).await).to_owned()
}

#[tokio::test]
async fn strict_blocks_behind_a_failing_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    let strict = DeliveryOrder::Strict;
    queue(s, "lab", "", "A").await;
    let (_, b_id) = queue(s, "lab", "", "B").await;
    queue(s, "lab", "", "C").await;
    queue(s, "emr", "", "other").await;

    let a = claim(s, "lab", strict, t(0)).await;
    assert_eq!(payload(&a), "A");
    // While A is in flight nothing else goes.
    assert_eq!(next(s, strict, 0).await, Claim::Blocked);
    store
        .retry_later(a.id, "AE: try later", t(10))
        .await
        .unwrap();
    // While A waits for its retry nothing else goes either.
    assert_eq!(next(s, strict, 1).await, Claim::WaitUntil(t(10)));
    assert_eq!(next(s, strict, 9).await, Claim::WaitUntil(t(10)));
    // Another destination is its own queue.
    assert_eq!(payload(&claim(s, "emr", strict, t(1)).await), "other");

    let a = claim(s, "lab", strict, t(10)).await;
    assert_eq!((payload(&a), a.attempts), ("A", 2));
    store.delivered(a.id, Bytes::new()).await.unwrap();
    assert_eq!(ready(s, strict, 10).await, "B");
    // A dead-lettered head stops blocking.
    store.dead_letter(b_id, "AR", None).await.unwrap();
    assert_eq!(ready(s, strict, 10).await, "C");
}

#[tokio::test]
async fn set_aside_flows_past_a_failing_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    let aside = DeliveryOrder::SetAside;
    for p in ["A", "B", "C"] {
        queue(s, "lab", "", p).await;
    }
    let a = claim(s, "lab", aside, t(0)).await;
    assert_eq!(payload(&a), "A");
    // In flight does not block here.
    let b = claim(s, "lab", aside, t(0)).await;
    assert_eq!(payload(&b), "B");
    store.retry_later(a.id, "timeout", t(10)).await.unwrap();
    store.delivered(b.id, Bytes::new()).await.unwrap();
    let c = claim(s, "lab", aside, t(1)).await;
    assert_eq!(payload(&c), "C");
    store.delivered(c.id, Bytes::new()).await.unwrap();
    assert_eq!(next(s, aside, 1).await, Claim::WaitUntil(t(10)));
    // FIFO among the due: a later arrival waits for the older retry once that is due.
    queue(s, "lab", "", "D").await;
    assert_eq!(ready(s, aside, 2).await, "D");
    queue(s, "lab", "", "E").await;
    assert_eq!(ready(s, aside, 10).await, "A");
    assert_eq!(ready(s, aside, 10).await, "E");
    assert_eq!(next(s, aside, 10).await, Claim::Empty);
}

#[tokio::test]
async fn by_key_holds_back_only_the_failing_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    let by_key = DeliveryOrder::ByKey;
    // Queue order: P1-a, P2-a, P1-b, none-a, P2-b, none-b
    for (key, p) in [
        ("P1", "P1-a"),
        ("P2", "P2-a"),
        ("P1", "P1-b"),
        ("", "none-a"),
        ("P2", "P2-b"),
        ("", "none-b"),
    ] {
        queue(s, "lab", key, p).await;
    }
    let p1a = claim(s, "lab", by_key, t(0)).await;
    assert_eq!(payload(&p1a), "P1-a");
    store.retry_later(p1a.id, "AE", t(10)).await.unwrap();

    // P1's later message waits; everyone else's flow, in queue order.
    let mut sent = Vec::new();
    for _ in 0..4 {
        let d = claim(s, "lab", by_key, t(1)).await;
        sent.push(payload(&d).to_owned());
        store.delivered(d.id, Bytes::new()).await.unwrap();
    }
    assert_eq!(sent, ["P2-a", "none-a", "P2-b", "none-b"]);
    assert_eq!(next(s, by_key, 1).await, Claim::WaitUntil(t(10)));

    // In flight holds its key too, and only its key.
    let p1a = claim(s, "lab", by_key, t(10)).await;
    assert_eq!((payload(&p1a), p1a.attempts), ("P1-a", 2));
    assert_eq!(next(s, by_key, 10).await, Claim::Blocked);
    queue(s, "lab", "P3", "P3-a").await;
    queue(s, "lab", "", "none-c").await;
    assert_eq!(ready(s, by_key, 10).await, "P3-a");
    assert_eq!(ready(s, by_key, 10).await, "none-c");
    assert_eq!(next(s, by_key, 10).await, Claim::Blocked);
    store.delivered(p1a.id, Bytes::new()).await.unwrap();
    assert_eq!(ready(s, by_key, 10).await, "P1-b");
    assert_eq!(next(s, by_key, 10).await, Claim::Empty);
}

/// A sender can finish one delivery and claim the next in one go: both requests reach the
/// writer in poll order, so the claim sees the head finished.
#[tokio::test]
async fn finishing_and_claiming_together_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    for p in ["A", "B", "C"] {
        queue(s, "lab", "", p).await;
    }
    let mut current = claim(s, "lab", DeliveryOrder::Strict, t(0)).await;
    let mut sent = vec![payload(&current).to_owned()];
    loop {
        let (done, claimed) = tokio::join!(
            store.delivered(current.id, Bytes::new()),
            store.claim_next("lab", DeliveryOrder::Strict, t(0))
        );
        done.unwrap();
        match claimed.unwrap() {
            Claim::Ready(d) => {
                sent.push(payload(&d).to_owned());
                current = d;
            }
            Claim::Empty => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, ["A", "B", "C"]);
}
