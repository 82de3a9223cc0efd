//! Retention: the pruner deletes only what is finished with, and steady traffic with pruning
//! keeps the file from growing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use courier_store::{
    DeliveryOrder, MessageId, Processing, ProcessingStatus, SqliteStore, Store, StoreSettings,
};

use crate::common::*;

async fn exists(store: &dyn Store, id: MessageId) -> bool {
    store.message(id).await.unwrap().is_some()
}

#[tokio::test]
async fn prune_removes_only_finished_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s = &*store;
    let old = t(0);
    let cutoff = t(1000);
    let journal = |c: &'static str, at| {
        let store = store.clone();
        async move { store.journal(message_at(c, "P", at)).await.unwrap() }
    };
    let finish = |id, status, deliveries| {
        let store = store.clone();
        async move {
            store
                .complete_processing(
                    id,
                    Processing {
                        status,
                        reason: None,
                        steps: vec![],
                        deliveries,
                    },
                )
                .await
                .unwrap()
        }
    };

    // Old and finished with: to be pruned.
    let delivered = journal("delivered", old).await;
    finish(
        delivered,
        ProcessingStatus::Processed,
        vec![delivery("lab", "", "x")],
    )
    .await;
    let c = claim(s, "lab", DeliveryOrder::Strict, t(1)).await;
    store.delivered(c.id, Bytes::new()).await.unwrap();
    let filtered = journal("filtered", old).await;
    finish(filtered, ProcessingStatus::Filtered, vec![]).await;
    let unrouted = journal("unrouted", old).await;
    finish(unrouted, ProcessingStatus::Unrouted, vec![]).await;
    // Old but not finished with: to be kept.
    let in_flight = journal("in-flight", old).await;
    finish(
        in_flight,
        ProcessingStatus::Processed,
        vec![delivery("emr", "", "x")],
    )
    .await;
    claim(s, "emr", DeliveryOrder::Strict, t(1)).await;
    let queued = journal("queued", old).await;
    finish(
        queued,
        ProcessingStatus::Processed,
        vec![delivery("emr", "", "x")],
    )
    .await;
    let errored_delivery = journal("dead-letter", old).await;
    let ids = finish(
        errored_delivery,
        ProcessingStatus::Processed,
        vec![delivery("bill", "", "x")],
    )
    .await;
    claim(s, "bill", DeliveryOrder::Strict, t(1)).await;
    store.dead_letter(ids[0], "AR", None).await.unwrap();
    let half_delivered = journal("half-delivered", old).await;
    finish(
        half_delivered,
        ProcessingStatus::Processed,
        vec![delivery("lab", "", "x"), delivery("lis", "", "x")],
    )
    .await;
    let c = claim(s, "lab", DeliveryOrder::Strict, t(1)).await;
    store.delivered(c.id, Bytes::new()).await.unwrap();
    let errored = journal("errored", old).await;
    finish(errored, ProcessingStatus::Error, vec![]).await;
    let unprocessed = journal("unprocessed", old).await;
    // Finished with, but not old enough.
    let recent = journal("recent", cutoff).await;
    finish(recent, ProcessingStatus::Filtered, vec![]).await;

    assert_eq!(store.prune(cutoff).await.unwrap(), 3);
    for gone in [delivered, filtered, unrouted] {
        assert!(!exists(s, gone).await, "{gone} should be pruned");
    }
    for kept in [
        in_flight,
        queued,
        errored_delivery,
        half_delivered,
        errored,
        unprocessed,
        recent,
    ] {
        assert!(exists(s, kept).await, "{kept} must be kept");
    }
    // Their deliveries are intact: the queues still work.
    assert_eq!(
        store
            .queue_depths()
            .await
            .unwrap()
            .iter()
            .map(|d| d.unfinished())
            .sum::<u64>(),
        3
    );
    assert_eq!(store.unprocessed().await.unwrap().len(), 1);
    assert_eq!(store.prune(cutoff).await.unwrap(), 0);
    // Ids are not reused after pruning.
    let next = journal("next", cutoff).await;
    assert!(next > recent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_with_pruning_keeps_the_file_bounded() {
    const CYCLES: usize = 14;
    const PER_CYCLE: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    // This test is about space, not durability: without a sync per commit its 8,000
    // sequential writes take a second instead of a minute.
    let settings = StoreSettings {
        fsync: false,
        ..StoreSettings::default()
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), settings).unwrap());
    let body = "X".repeat(4_000);
    let mut sizes = Vec::new();
    for cycle in 0..CYCLES {
        let mut pending = Vec::new();
        for i in 0..PER_CYCLE {
            let mut m = message_at(&format!("{cycle}-{i}"), "P", SystemTime::now());
            m.raw = Bytes::from(body.clone());
            let id = store.journal(m).await.unwrap();
            store
                .complete_processing(id, processed(vec![delivery("lab", "P", &body)]))
                .await
                .unwrap();
            pending.push(id);
        }
        for _ in 0..PER_CYCLE {
            let c = claim(&*store, "lab", DeliveryOrder::Strict, SystemTime::now()).await;
            store
                .delivered(c.id, Bytes::from_static(b"AA"))
                .await
                .unwrap();
        }
        let pruned = store
            .prune(SystemTime::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(pruned, PER_CYCLE as u64);
        sizes.push(store.size_bytes().await.unwrap());
    }
    println!("store size after each cycle: {sizes:?}");
    // One cycle writes ~1.2 MB of bodies; unpruned, 14 cycles would be ~17 MB. After the WAL
    // has reached its working size the file must stop growing.
    let settled = sizes[3];
    let last = *sizes.last().unwrap();
    assert!(
        last <= settled + settled / 4,
        "the store kept growing under steady traffic with pruning: {sizes:?}"
    );
    let db = std::fs::metadata(dir.path().join("courier.db"))
        .unwrap()
        .len();
    assert!(
        db < 2 * 1024 * 1024,
        "database file {db} bytes after pruning everything"
    );
}
