//! Helpers shared by the store tests: messages, processing results and fixed times.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_store::{
    Claim, ClaimedDelivery, DeliveryOrder, MessageId, NewDelivery, NewMessage, Processing,
    ProcessingStatus, SqliteStore, Store, StoreSettings,
};

/// A fixed point in time plus `secs`, so tests do not depend on the clock.
pub fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

pub fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir, StoreSettings::default()).expect("open store")
}

pub fn open_arc(dir: &Path) -> Arc<dyn Store> {
    Arc::new(open(dir))
}

/// An ADT^A01 from REG/CLINIC with this control id and patient.
pub fn message(control_id: &str, patient_id: &str) -> NewMessage {
    message_at(control_id, patient_id, t(0))
}

pub fn message_at(control_id: &str, patient_id: &str, received_at: SystemTime) -> NewMessage {
    NewMessage {
        received_at,
        listener: "adt-in".into(),
        peer: "10.0.0.7:40000".into(),
        control_id: control_id.into(),
        message_type: "ADT^A01^ADT_A01".into(),
        sending_application: "REG".into(),
        sending_facility: "CLINIC".into(),
        patient_id: patient_id.into(),
        raw: Bytes::from(format!(
            "MSH|^~\\&|REG|CLINIC|EMR|CLINIC|20240101||ADT^A01^ADT_A01|{control_id}|P|2.5\r\
             PID|1||{patient_id}^^^CLINIC||DOE^JANE\r"
        )),
        ack: None,
    }
}

pub fn delivery(destination: &str, order_key: &str, payload: &str) -> NewDelivery {
    NewDelivery {
        route: "adt-route".into(),
        destination: destination.into(),
        payload: Bytes::from(payload.to_owned()).into(),
        order_key: order_key.into(),
    }
}

pub fn processed(deliveries: Vec<NewDelivery>) -> Processing {
    Processing {
        status: ProcessingStatus::Processed,
        reason: None,
        steps: Vec::new(),
        deliveries,
    }
}

/// Journals a message and queues one delivery of `payload` to `destination` with `key`.
pub async fn queue(
    store: &dyn Store,
    destination: &str,
    key: &str,
    payload: &str,
) -> (MessageId, courier_store::DeliveryId) {
    let id = store.journal(message(payload, key)).await.expect("journal");
    let ids = store
        .complete_processing(id, processed(vec![delivery(destination, key, payload)]))
        .await
        .expect("complete");
    (id, ids[0])
}

/// Claims and expects a delivery.
pub async fn claim(
    store: &dyn Store,
    destination: &str,
    order: DeliveryOrder,
    now: SystemTime,
) -> ClaimedDelivery {
    match store
        .claim_next(destination, order, now)
        .await
        .expect("claim")
    {
        Claim::Ready(d) => d,
        other => panic!("expected a delivery for {destination}, got {other:?}"),
    }
}

pub fn payload(d: &ClaimedDelivery) -> &str {
    std::str::from_utf8(&d.payload).expect("utf-8 payload")
}
