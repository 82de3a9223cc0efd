//! A secondary opener (the operator's CLI) works beside the engine's primary store: no
//! exclusive lock, no migration, and what it queues is seen by the primary.

use std::time::SystemTime;

use bytes::Bytes;
use courier_store::{
    Claim, DeliveryOrder, MessageStatus, NewDelivery, NewMessage, Processing, ProcessingStatus,
    Search, SqliteStore, Store, StoreError, StoreSettings,
};

fn message(control_id: &str) -> NewMessage {
    NewMessage {
        received_at: SystemTime::now(),
        listener: "in".into(),
        peer: "127.0.0.1:1".into(),
        control_id: control_id.into(),
        message_type: "ADT^A04".into(),
        sending_application: "REG".into(),
        sending_facility: "FAC".into(),
        patient_id: "1".into(),
        raw: Bytes::from_static(b"MSH|^~\\&|REG|FAC\r"),
        ack: None,
    }
}

#[tokio::test]
async fn secondary_opens_beside_the_primary_and_its_writes_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let primary = SqliteStore::open(dir.path(), StoreSettings::default()).unwrap();
    // A second primary is refused...
    assert!(matches!(
        SqliteStore::open(dir.path(), StoreSettings::default()),
        Err(StoreError::InUse { .. })
    ));
    // ...a secondary is not.
    let secondary = SqliteStore::open_secondary(dir.path(), StoreSettings::default()).unwrap();

    let id = primary.journal(message("S1")).await.unwrap();
    primary
        .complete_processing(
            id,
            Processing {
                status: ProcessingStatus::Processed,
                reason: None,
                steps: vec![],
                deliveries: vec![NewDelivery {
                    route: "r".into(),
                    destination: "emr".into(),
                    payload: Bytes::from_static(b"x").into(),
                    order_key: String::new(),
                }],
            },
        )
        .await
        .unwrap();
    let Claim::Ready(d) = primary
        .claim_next("emr", DeliveryOrder::Strict, SystemTime::now())
        .await
        .unwrap()
    else {
        panic!("expected a claim")
    };
    primary
        .delivered(d.id, Bytes::from_static(b"ack"))
        .await
        .unwrap();

    let found = secondary.search(&Search::default()).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].status, MessageStatus::Processed);
    let resent = secondary.resend(id, Some("emr")).await.unwrap();
    assert_eq!(resent.len(), 1);
    match primary
        .claim_next("emr", DeliveryOrder::Strict, SystemTime::now())
        .await
        .unwrap()
    {
        Claim::Ready(again) => assert_eq!(again.id, resent[0]),
        other => panic!("the primary does not see the resend: {other:?}"),
    }
}

#[test]
fn secondary_refuses_a_store_that_does_not_exist_yet_in_this_schema() {
    let dir = tempfile::tempdir().unwrap();
    // A fresh directory has schema version 0: the secondary will not migrate it.
    let e = SqliteStore::open_secondary(dir.path(), StoreSettings::default()).unwrap_err();
    assert!(e.to_string().contains("start the engine once"), "{e}");
}
