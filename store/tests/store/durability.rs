//! What was committed is there after the store is closed and opened again; a delivery that was
//! in flight at the "crash" comes back flagged as a possible duplicate; a second process cannot
//! open the same store.

use bytes::Bytes;
use courier_store::{
    Claim, DeliveryOrder, DeliveryStatus, MessageStatus, SqliteStore, StoreError, StoreSettings,
};

use crate::common::*;

#[tokio::test]
async fn everything_survives_reopen_and_in_flight_comes_back_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (processed_id, waiting_id, in_flight, queued_behind);
    {
        let store = open_arc(dir.path());
        let (id, d1) = queue(&*store, "lab", "P1", "first").await;
        let (_, d2) = queue(&*store, "lab", "P1", "second").await;
        store
            .record_ack(id, Bytes::from_static(b"ACK1"))
            .await
            .unwrap();
        waiting_id = store.journal(message("C-unprocessed", "P2")).await.unwrap();
        let c = claim(&*store, "lab", DeliveryOrder::Strict, t(1)).await;
        assert_eq!(c.id, d1);
        (processed_id, in_flight, queued_behind) = (id, d1, d2);
        // The store goes away with the claim unfinished, as in a crash mid-send.
    }

    let store = open_arc(dir.path());
    let detail = store
        .message(processed_id)
        .await
        .unwrap()
        .expect("survived");
    assert_eq!(detail.status, MessageStatus::Processed);
    assert_eq!(detail.ack.as_deref(), Some(&b"ACK1"[..]));
    assert_eq!(detail.deliveries[0].status, DeliveryStatus::InFlight);

    let unprocessed = store.unprocessed().await.unwrap();
    assert_eq!(unprocessed.len(), 1);
    assert_eq!(unprocessed[0].id, waiting_id);
    assert_eq!(unprocessed[0].message.control_id, "C-unprocessed");
    assert_eq!(unprocessed[0].message.patient_id, "P2");
    assert_eq!(unprocessed[0].message.received_at, t(0));
    assert!(unprocessed[0].message.raw.starts_with(b"MSH|"));

    // Until recovered, the in-flight head holds its strict queue.
    assert_eq!(
        store
            .claim_next("lab", DeliveryOrder::Strict, t(2))
            .await
            .unwrap(),
        Claim::Blocked
    );
    let recovered = store.recover_in_flight().await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].id, in_flight);
    assert_eq!(recovered[0].destination, "lab");
    assert_eq!(recovered[0].control_id, "first");
    assert_eq!(recovered[0].attempts, 1);
    assert!(
        store.recover_in_flight().await.unwrap().is_empty(),
        "only once"
    );

    let again = claim(&*store, "lab", DeliveryOrder::Strict, t(2)).await;
    assert_eq!(
        again.id, in_flight,
        "order kept: the interrupted one goes first"
    );
    assert!(again.possible_duplicate);
    assert_eq!(again.attempts, 2);
    store.delivered(again.id, Bytes::new()).await.unwrap();
    let next = claim(&*store, "lab", DeliveryOrder::Strict, t(2)).await;
    assert_eq!(next.id, queued_behind);
    assert!(!next.possible_duplicate);
    let detail = store.message(processed_id).await.unwrap().unwrap();
    assert!(
        detail.deliveries[0].possible_duplicate,
        "the flag is kept in the store"
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = SqliteStore::open(dir.path(), StoreSettings::default()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    drop(store);
    SqliteStore::open(dir.path(), StoreSettings::default()).expect("free again after close");
}
