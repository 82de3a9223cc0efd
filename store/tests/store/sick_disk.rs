//! A full disk (simulated by the store's size cap, which fails writes with SQLITE_FULL as a
//! full disk does): writes get `Unavailable`, nothing reported stored is missing, nothing
//! refused is half there, reads keep working, and writes work again once space is freed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use courier_store::{
    DeliveryOrder, Search, SqliteStore, Store, StoreError, StoreSettings, UnavailableCause,
};

use crate::common::*;

fn big(control_id: &str, at: SystemTime) -> courier_store::NewMessage {
    let mut m = message_at(control_id, "P", at);
    m.raw = Bytes::from(vec![b'x'; 8_000]);
    m
}

fn assert_full(err: &StoreError) {
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        matches!(
            err,
            StoreError::Unavailable {
                cause: UnavailableCause::Full,
                operation: "journal",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        max_size_bytes: Some(1024 * 1024),
        ..StoreSettings::default()
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), settings).unwrap());

    // Old, delivered traffic the pruner may free later.
    for i in 0..20 {
        let id = store.journal(big(&format!("old-{i}"), t(0))).await.unwrap();
        let body = "y".repeat(8_000);
        store
            .complete_processing(id, processed(vec![delivery("lab", "", &body)]))
            .await
            .unwrap();
        let c = claim(&*store, "lab", DeliveryOrder::Strict, t(1)).await;
        store.delivered(c.id, Bytes::new()).await.unwrap();
    }

    // Fill the store up.
    let mut stored = HashSet::new();
    let err = loop {
        match store.journal(big("fill", SystemTime::now())).await {
            Ok(id) => assert!(stored.insert(id)),
            Err(e) => break e,
        }
        assert!(stored.len() < 1_000, "the size cap is not enforced");
    };
    assert_full(&err);
    assert!(err.to_string().contains("storage full"), "{err}");

    // Concurrent writers at the edge share batches: whatever was answered Ok is stored, and
    // whatever failed is not there at all.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        let mut m = big(&format!("edge-{i}"), SystemTime::now());
        m.raw = Bytes::from(vec![b'z'; 100 + i * 200]);
        tasks.push(tokio::spawn(async move { store.journal(m).await }));
    }
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(id) => assert!(stored.insert(id)),
            Err(e) => {
                assert_full(&e);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the store should still be full");

    // Reads go on.
    let all = Search {
        limit: 10_000,
        ..Search::default()
    };
    let found: HashSet<_> = store
        .search(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .filter(|id| !id_is_old(*id))
        .collect();
    assert_eq!(found, stored, "exactly the journals answered Ok are stored");
    for id in &stored {
        assert!(store.message(*id).await.unwrap().is_some());
    }
    assert_eq!(store.queue_depths().await.unwrap().len(), 0);
    assert_eq!(store.unprocessed().await.unwrap().len(), stored.len());
    // Still full: refused again, but the writer is alive.
    assert_full(
        &store
            .journal(big("still-full", SystemTime::now()))
            .await
            .unwrap_err(),
    );

    // Freeing space brings writes back without a restart.
    assert_eq!(store.prune(t(500)).await.unwrap(), 20);
    let id = store
        .journal(big("after", SystemTime::now()))
        .await
        .unwrap();
    assert!(store.message(id).await.unwrap().is_some());
    for id in &stored {
        assert!(store.message(*id).await.unwrap().is_some(), "{id} lost");
    }
}

/// The first 20 messages of the test are the old, delivered ones.
fn id_is_old(id: courier_store::MessageId) -> bool {
    id.0 <= 20
}
