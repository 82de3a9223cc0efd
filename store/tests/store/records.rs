//! The journal → processing → queue → delivery round trip, what `message` and `search` show,
//! duplicate detection, and the operator actions (resend, retry of dead letters).

use bytes::Bytes;
use courier_store::{
    Claim, DeliveryOrder, DeliveryStatus, MessageStatus, Processing, ProcessingStatus, QueueDepth,
    Search, StepOutcome, StepRecord, StoreError, TypeFilter,
};

use crate::common::*;

#[tokio::test]
async fn journal_process_claim_deliver_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let id = store.journal(message("C1", "PAT1")).await.unwrap();
    store
        .record_ack(id, Bytes::from_static(b"MSH|...\rMSA|AA|C1\r"))
        .await
        .unwrap();
    assert_eq!(store.unprocessed().await.unwrap().len(), 1);

    let processing = Processing {
        status: ProcessingStatus::Processed,
        reason: None,
        steps: vec![
            StepRecord {
                route: "adt-route".into(),
                step: "only-adults".into(),
                kind: "rhai-filter".into(),
                content_hash: "sha256:aaaa".into(),
                outcome: StepOutcome::Kept,
                reason: None,
            },
            StepRecord {
                route: "adt-route".into(),
                step: "map-ids".into(),
                kind: "wasm-transform".into(),
                content_hash: "sha256:bbbb".into(),
                outcome: StepOutcome::Changed(Bytes::from_static(b"MSH|changed").into()),
                reason: None,
            },
        ],
        deliveries: vec![
            delivery("lab", "PAT1", "to-lab"),
            delivery("emr", "PAT1", "to-emr"),
        ],
    };
    let deliveries = store.complete_processing(id, processing).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries[0] < deliveries[1], "ids follow the order given");
    assert!(store.unprocessed().await.unwrap().is_empty());

    let lab = claim(&*store, "lab", DeliveryOrder::Strict, t(1)).await;
    assert_eq!(lab.id, deliveries[0]);
    assert_eq!(lab.message_id, id);
    assert_eq!(payload(&lab), "to-lab");
    assert_eq!(lab.control_id, "C1");
    assert_eq!(lab.message_type, "ADT^A01^ADT_A01");
    assert_eq!(lab.route, "adt-route");
    assert_eq!(lab.order_key, "PAT1");
    assert_eq!(lab.attempts, 1);
    assert!(!lab.possible_duplicate);
    assert_eq!(
        store.queue_depths().await.unwrap(),
        vec![
            QueueDepth {
                destination: "emr".into(),
                queued: 1,
                in_flight: 0,
                errored: 0
            },
            QueueDepth {
                destination: "lab".into(),
                queued: 0,
                in_flight: 1,
                errored: 0
            },
        ]
    );
    store
        .delivered(lab.id, Bytes::from_static(b"MSA|AA|C1"))
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_next("lab", DeliveryOrder::Strict, t(2))
            .await
            .unwrap(),
        Claim::Empty
    );

    let detail = store.message(id).await.unwrap().expect("stored");
    assert_eq!(detail.status, MessageStatus::Processed);
    assert_eq!(detail.patient_id, "PAT1");
    assert!(detail.raw.starts_with(b"MSH|^~\\&|REG|CLINIC"));
    assert_eq!(detail.ack.as_deref(), Some(&b"MSH|...\rMSA|AA|C1\r"[..]));
    assert!(detail.processed_at.is_some());
    assert_eq!(detail.steps.len(), 2);
    assert_eq!(detail.steps[0].seq, 1);
    assert_eq!(detail.steps[0].kind, "rhai-filter");
    assert_eq!(detail.steps[0].outcome, StepOutcome::Kept);
    assert_eq!(detail.steps[1].content_hash, "sha256:bbbb");
    assert_eq!(
        detail.steps[1].outcome,
        StepOutcome::Changed(Bytes::from_static(b"MSH|changed").into())
    );
    let [lab_d, emr_d] = &detail.deliveries[..] else {
        panic!("two deliveries: {:?}", detail.deliveries)
    };
    assert_eq!(lab_d.status, DeliveryStatus::Delivered);
    assert_eq!(lab_d.attempts, 1);
    assert_eq!(lab_d.ack.as_deref(), Some(&b"MSA|AA|C1"[..]));
    assert_eq!(lab_d.last_attempt_at, Some(t(1)));
    assert!(lab_d.finished_at.is_some());
    assert_eq!(&lab_d.payload[..], b"to-lab");
    assert_eq!(emr_d.status, DeliveryStatus::Queued);
    assert_eq!(emr_d.attempts, 0);
    assert!(emr_d.finished_at.is_none());

    assert_eq!(
        store.message(courier_store::MessageId(999)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn processing_is_recorded_once_and_finishing_needs_a_claim() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let (id, d) = queue(&*store, "lab", "", "p").await;
    let again = store
        .complete_processing(id, processed(vec![delivery("lab", "", "p")]))
        .await;
    assert!(
        matches!(
            again,
            Err(StoreError::AlreadyProcessed {
                status: MessageStatus::Processed,
                ..
            })
        ),
        "{again:?}"
    );
    let missing = store
        .complete_processing(courier_store::MessageId(42), processed(vec![]))
        .await;
    assert!(
        matches!(missing, Err(StoreError::MessageNotFound(_))),
        "{missing:?}"
    );

    // Not claimed: a `delivered` now would be a stale or doubled completion.
    let err = store.delivered(d, Bytes::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongDeliveryState {
                status: DeliveryStatus::Queued,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store.retry_later(d, "x", t(5)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::WrongDeliveryState { .. }),
        "{err:?}"
    );
    let err = store
        .delivered(courier_store::DeliveryId(777), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DeliveryNotFound(_)), "{err:?}");
    let err = store
        .record_ack(courier_store::MessageId(777), Bytes::new())
        .await;
    assert!(
        matches!(err, Err(StoreError::MessageNotFound(_))),
        "{err:?}"
    );

    // A refused request in a batch does not disturb the others: the queue is intact.
    let c = claim(&*store, "lab", DeliveryOrder::Strict, t(1)).await;
    assert_eq!(c.id, d);
    store.delivered(d, Bytes::new()).await.unwrap();
    let err = store.delivered(d, Bytes::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongDeliveryState {
                status: DeliveryStatus::Delivered,
                ..
            }
        ),
        "{err:?}"
    );
}

/// `journal_processed_once` checks and writes in one job: a copy is refused whether the
/// original was committed earlier or runs just before it in the same batch, and only copies
/// within the window count.
#[tokio::test]
async fn journal_processed_once_stores_one_of_several_copies() {
    use courier_store::Journaled;
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let mut first = message_at("C1", "P", t(100));
    first.ack = Some(Bytes::from_static(b"MSA|AA|C1"));
    let once = |m| {
        let store = store.clone();
        async move {
            store
                .journal_processed_once(m, processed(vec![delivery("emr", "P", "x")]), t(0))
                .await
        }
    };
    let Journaled::Stored { id, deliveries } = once(first).await.unwrap() else {
        panic!("the first copy is stored");
    };
    assert_eq!(deliveries.len(), 1);
    let again = once(message_at("C1", "P", t(150))).await.unwrap();
    let Journaled::Duplicate(original) = again else {
        panic!("a later copy is a duplicate: {again:?}");
    };
    assert_eq!(original.id, id);
    assert_eq!(original.ack.as_deref(), Some(&b"MSA|AA|C1"[..]));

    // Eight copies sent at once (most share a batch): one is stored, the rest find it.
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..8 {
        copies.spawn(once(message_at("C2", "P", t(200))));
    }
    let results = copies.join_all().await;
    let stored: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Ok(Journaled::Stored { .. })))
        .collect();
    assert_eq!(stored.len(), 1, "{results:?}");
    assert!(results.iter().all(|r| matches!(
        r,
        Ok(Journaled::Stored { .. }) | Ok(Journaled::Duplicate(_))
    )));

    // Outside the window, or another sender: stored.
    let late = store
        .journal_processed_once(message_at("C1", "P", t(300)), processed(vec![]), t(101))
        .await
        .unwrap();
    assert!(matches!(late, Journaled::Stored { .. }), "{late:?}");
    let mut other = message_at("C2", "P", t(300));
    other.sending_application = "LAB".into();
    let other = store
        .journal_processed_once(other, processed(vec![]), t(0))
        .await
        .unwrap();
    assert!(matches!(other, Journaled::Stored { .. }), "{other:?}");
    assert_eq!(store.search(&Search::default()).await.unwrap().len(), 4);
}

#[tokio::test]
async fn duplicates_are_found_with_the_ack_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    assert_eq!(
        store
            .find_duplicate("REG", "CLINIC", "C1", t(0))
            .await
            .unwrap(),
        None
    );
    let first = store.journal(message_at("C1", "P", t(100))).await.unwrap();
    // Journaled but no ACK recorded yet (e.g. a crash in between).
    let found = store
        .find_duplicate("REG", "CLINIC", "C1", t(0))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(
        (found.id, found.status, found.ack),
        (first, MessageStatus::Received, None)
    );

    store
        .record_ack(first, Bytes::from_static(b"MSA|AA|C1"))
        .await
        .unwrap();
    let found = store
        .find_duplicate("REG", "CLINIC", "C1", t(50))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.ack.as_deref(), Some(&b"MSA|AA|C1"[..]));
    // The window: received before `since` does not count.
    assert_eq!(
        store
            .find_duplicate("REG", "CLINIC", "C1", t(101))
            .await
            .unwrap(),
        None
    );
    // Every part of the key counts.
    assert_eq!(
        store
            .find_duplicate("REG", "OTHER", "C1", t(0))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_duplicate("LAB", "CLINIC", "C1", t(0))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_duplicate("REG", "CLINIC", "C2", t(0))
            .await
            .unwrap(),
        None
    );

    // With several, the most recent answers (it may have succeeded where the first failed).
    let second = store.journal(message_at("C1", "P", t(200))).await.unwrap();
    let found = store
        .find_duplicate("REG", "CLINIC", "C1", t(0))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, second);
}

#[tokio::test]
async fn search_filters_and_pages_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let mut ids = Vec::new();
    for (i, (ty, patient)) in [
        ("ADT^A01^ADT_A01", "P1"),
        ("ADT^A08^ADT_A01", "P2"),
        ("ORU^R01^ORU_R01", "P1"),
        ("ORM^O01", "P3"),
        ("AD*^X", "P4"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = message_at(&format!("C{i}"), patient, t(10 * i as u64));
        m.message_type = ty.into();
        if i == 3 {
            m.listener = "orders-in".into();
        }
        ids.push(store.journal(m).await.unwrap());
    }
    // C0 processed with a dead-lettered delivery to lab, C1 filtered, C2 processed and queued
    // to emr, C3 and C4 unprocessed.
    store
        .complete_processing(ids[0], processed(vec![delivery("lab", "P1", "x")]))
        .await
        .unwrap();
    let c = claim(&*store, "lab", DeliveryOrder::Strict, t(100)).await;
    store
        .dead_letter(c.id, "AR: unknown patient", None)
        .await
        .unwrap();
    store
        .complete_processing(
            ids[1],
            Processing {
                status: ProcessingStatus::Filtered,
                reason: Some("A08 not wanted".into()),
                steps: vec![],
                deliveries: vec![],
            },
        )
        .await
        .unwrap();
    store
        .complete_processing(ids[2], processed(vec![delivery("emr", "P1", "y")]))
        .await
        .unwrap();

    let find = |f: Search| {
        let store = store.clone();
        async move {
            store
                .search(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        }
    };
    let all = find(Search::default()).await;
    assert_eq!(
        all,
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );

    let prefix = |p: &str| Search {
        message_type: Some(TypeFilter::Prefix(p.into())),
        ..Search::default()
    };
    assert_eq!(find(prefix("ADT")).await, vec![ids[1], ids[0]]);
    assert_eq!(find(prefix("ADT^A01")).await, vec![ids[0]]);
    // Glob characters in a prefix match literally.
    assert_eq!(find(prefix("AD*")).await, vec![ids[4]]);
    assert_eq!(find(prefix("O")).await, vec![ids[3], ids[2]]);
    let exact = Search {
        message_type: Some(TypeFilter::Exact("ORM^O01".into())),
        ..Search::default()
    };
    assert_eq!(find(exact).await, vec![ids[3]]);
    let exact_partial = Search {
        message_type: Some(TypeFilter::Exact("ADT".into())),
        ..Search::default()
    };
    assert!(find(exact_partial).await.is_empty());

    let status = |s| Search {
        status: Some(s),
        ..Search::default()
    };
    assert_eq!(
        find(status(MessageStatus::Received)).await,
        vec![ids[4], ids[3]]
    );
    assert_eq!(find(status(MessageStatus::Filtered)).await, vec![ids[1]]);
    assert_eq!(
        find(status(MessageStatus::Processed)).await,
        vec![ids[2], ids[0]]
    );

    let control = Search {
        control_id: Some("C2".into()),
        ..Search::default()
    };
    assert_eq!(find(control).await, vec![ids[2]]);
    let patient = Search {
        patient_id: Some("P1".into()),
        ..Search::default()
    };
    assert_eq!(find(patient).await, vec![ids[2], ids[0]]);
    let listener = Search {
        listener: Some("orders-in".into()),
        ..Search::default()
    };
    assert_eq!(find(listener).await, vec![ids[3]]);

    let window = Search {
        since: Some(t(10)),
        until: Some(t(30)),
        ..Search::default()
    };
    assert_eq!(
        find(window).await,
        vec![ids[2], ids[1]],
        "since inclusive, until exclusive"
    );

    let failed = Search {
        delivery_status: Some(DeliveryStatus::Error),
        ..Search::default()
    };
    assert_eq!(find(failed).await, vec![ids[0]]);
    let to_emr = Search {
        destination: Some("emr".into()),
        ..Search::default()
    };
    assert_eq!(find(to_emr).await, vec![ids[2]]);
    let queued_to_lab = Search {
        destination: Some("lab".into()),
        delivery_status: Some(DeliveryStatus::Queued),
        ..Search::default()
    };
    assert!(find(queued_to_lab).await.is_empty());

    let page = |offset| Search {
        limit: 2,
        offset,
        ..Search::default()
    };
    assert_eq!(find(page(0)).await, vec![ids[4], ids[3]]);
    assert_eq!(find(page(2)).await, vec![ids[2], ids[1]]);
    assert_eq!(find(page(4)).await, vec![ids[0]]);

    // A summary carries the status, reason and delivery counts, and no patient field.
    let hits = store.search(&Search::default()).await.unwrap();
    let c0 = hits.iter().find(|s| s.id == ids[0]).unwrap();
    assert_eq!((c0.deliveries.error, c0.deliveries.queued), (1, 0));
    let c1 = hits.iter().find(|s| s.id == ids[1]).unwrap();
    assert_eq!(c1.reason.as_deref(), Some("A08 not wanted"));
    let c2 = hits.iter().find(|s| s.id == ids[2]).unwrap();
    assert_eq!(c2.deliveries.queued, 1);
    assert_eq!(c2.received_at, t(20));
}

#[tokio::test]
async fn resend_copies_payloads_and_retry_errored_requeues_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let id = store.journal(message("C1", "P1")).await.unwrap();
    let original = store
        .complete_processing(
            id,
            processed(vec![
                delivery("lab", "P1", "to-lab"),
                delivery("emr", "P1", "to-emr"),
            ]),
        )
        .await
        .unwrap();
    for dest in ["lab", "emr"] {
        let c = claim(&*store, dest, DeliveryOrder::Strict, t(1)).await;
        store
            .delivered(c.id, Bytes::from_static(b"AA"))
            .await
            .unwrap();
    }

    // To one destination.
    let again = store.resend(id, Some("lab")).await.unwrap();
    assert_eq!(again.len(), 1);
    let c = claim(&*store, "lab", DeliveryOrder::Strict, t(2)).await;
    assert_eq!((c.id, payload(&c), c.attempts), (again[0], "to-lab", 1));
    assert_eq!(c.order_key, "P1");
    store.delivered(c.id, Bytes::new()).await.unwrap();
    // To every destination it went to: one copy each (in the order of the deliveries copied),
    // however often it was resent before.
    let all = store.resend(id, None).await.unwrap();
    let [emr_copy, lab_copy] = all[..] else {
        panic!("two copies: {all:?}")
    };
    let detail = store.message(id).await.unwrap().unwrap();
    let from = |copy| detail.deliveries.iter().find(|d| d.id == copy).unwrap();
    assert_eq!(from(emr_copy).resent_from, Some(original[1]));
    assert_eq!(
        from(lab_copy).resent_from,
        Some(again[0]),
        "copies the latest lab delivery"
    );
    assert_eq!(from(lab_copy).status, DeliveryStatus::Queued);
    assert_eq!(&from(emr_copy).payload[..], b"to-emr");
    // Nothing to that destination: no deliveries, not an error. Unknown message: an error.
    assert!(store.resend(id, Some("billing")).await.unwrap().is_empty());
    let err = store
        .resend(courier_store::MessageId(99), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MessageNotFound(_)), "{err:?}");

    // Dead letters: one by a rejecting ACK after two attempts, one taken out by an operator
    // while queued.
    let c = claim(&*store, "lab", DeliveryOrder::Strict, t(3)).await;
    assert_eq!(c.id, lab_copy);
    store.retry_later(c.id, "timeout", t(3)).await.unwrap();
    let c = claim(&*store, "lab", DeliveryOrder::Strict, t(4)).await;
    assert_eq!(c.attempts, 2);
    store
        .dead_letter(c.id, "AR: rejected", Some(Bytes::from_static(b"MSA|AR")))
        .await
        .unwrap();
    store
        .dead_letter(emr_copy, "operator: skip", None)
        .await
        .unwrap();
    let depths = store.queue_depths().await.unwrap();
    assert!(
        depths.iter().all(|d| d.errored == 1 && d.unfinished() == 0),
        "{depths:?}"
    );
    let err = store
        .dead_letter(emr_copy, "again", None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongDeliveryState { .. }),
        "{err:?}"
    );

    assert_eq!(store.retry_errored(Some("lab")).await.unwrap(), 1);
    let c = claim(&*store, "lab", DeliveryOrder::Strict, t(5)).await;
    assert_eq!((c.id, c.attempts), (lab_copy, 1), "attempts start again");
    store.delivered(c.id, Bytes::new()).await.unwrap();
    let d = store.message(id).await.unwrap().unwrap();
    let lab = d.deliveries.iter().find(|d| d.id == lab_copy).unwrap();
    assert_eq!(
        lab.last_error.as_deref(),
        Some("AR: rejected"),
        "the history stays"
    );
    assert_eq!(lab.ack.as_deref(), Some(&b""[..]));
    assert_eq!(store.retry_errored(None).await.unwrap(), 1);
    assert_eq!(store.retry_errored(None).await.unwrap(), 0);
    let c = claim(&*store, "emr", DeliveryOrder::Strict, t(6)).await;
    assert_eq!(c.id, emr_copy);
}

/// A delivery of the message as received, or of what its route's last changing step made of
/// it, stores no copy of its own: claims, the message view and resends read the body or the
/// step's output instead. Any other payload is stored as it is.
#[tokio::test]
async fn pass_through_deliveries_share_the_message_body() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(dir.path());
    let db = sqlite.path().to_owned();
    let store: std::sync::Arc<dyn courier_store::Store> = std::sync::Arc::new(sqlite);
    let m = message("C1", "P1");
    let raw = m.raw.clone();
    let as_received = |dest: &str| courier_store::NewDelivery {
        payload: raw.clone().into(),
        ..delivery(dest, "P1", "")
    };
    // In one commit with the message, and (below) processed after journaling.
    let (id, ids) = store
        .journal_processed(
            m,
            processed(vec![
                as_received("billing"),
                delivery("emr", "P1", "mapped"),
            ]),
        )
        .await
        .unwrap();
    let later = store.journal(message("C2", "P2")).await.unwrap();
    let raw2 = message("C2", "P2").raw;
    store
        .complete_processing(
            later,
            processed(vec![courier_store::NewDelivery {
                payload: raw2.clone().into(),
                ..delivery("billing", "P2", "")
            }]),
        )
        .await
        .unwrap();

    // A route whose step changed the message: the delivery sends the step's output.
    let mapped = store.journal(message("C3", "P3")).await.unwrap();
    let step = |out: &'static str| courier_store::StepRecord {
        route: "adt-route".into(),
        step: "map".into(),
        kind: "wasm-transform".into(),
        content_hash: "sha256:cccc".into(),
        outcome: StepOutcome::Changed(Bytes::from_static(out.as_bytes()).into()),
        reason: None,
    };
    let other_route = courier_store::StepRecord {
        route: "other-route".into(),
        ..step("other")
    };
    store
        .complete_processing(
            mapped,
            Processing {
                steps: vec![step("first"), step("by-the-step"), other_route],
                ..processed(vec![delivery("lab", "P3", "by-the-step")])
            },
        )
        .await
        .unwrap();

    let rows = payload_rows(&db);
    assert_eq!(rows, 1, "only the changed payload has a row of its own");

    let billing = claim(&*store, "billing", DeliveryOrder::Strict, t(1)).await;
    assert_eq!((billing.id, &billing.payload), (ids[0], &raw));
    let emr = claim(&*store, "emr", DeliveryOrder::Strict, t(1)).await;
    assert_eq!(payload(&emr), "mapped");
    store.delivered(billing.id, Bytes::new()).await.unwrap();
    let second = claim(&*store, "billing", DeliveryOrder::Strict, t(1)).await;
    assert_eq!(second.payload, raw2);

    let detail = store.message(id).await.unwrap().unwrap();
    let payloads: Vec<&[u8]> = detail.deliveries.iter().map(|d| &d.payload[..]).collect();
    assert_eq!(payloads, [&raw[..], b"mapped"]);
    let copy = store.resend(id, Some("billing")).await.unwrap();
    store.delivered(second.id, Bytes::new()).await.unwrap();
    let resent = claim(&*store, "billing", DeliveryOrder::Strict, t(2)).await;
    assert_eq!((resent.id, &resent.payload), (copy[0], &raw));

    let lab = claim(&*store, "lab", DeliveryOrder::Strict, t(2)).await;
    assert_eq!(payload(&lab), "by-the-step");
    let detail = store.message(mapped).await.unwrap().unwrap();
    assert_eq!(&detail.deliveries[0].payload[..], b"by-the-step");
}

/// Payloads held as pieces (a large changed message sharing the received buffer) are written
/// as their bytes one after the other, large and small alike, and compared with a step's
/// output by content, however each is split.
#[tokio::test]
async fn payloads_in_pieces_are_written_whole() {
    use courier_store::Payload;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(dir.path());
    let db = sqlite.path().to_owned();
    let store: std::sync::Arc<dyn courier_store::Store> = std::sync::Arc::new(sqlite);

    // A 200 KiB "message" and a version of it with a few bytes changed in the middle, as
    // pieces: a slice before, the new bytes, a slice after.
    let body: Vec<u8> = (0..200 * 1024).map(|i| b'A' + (i % 26) as u8).collect();
    let raw = Bytes::from(body);
    let changed = Payload::from_pieces(vec![
        raw.slice(..1000),
        Bytes::from_static(b"CHANGED"),
        raw.slice(1007..),
    ]);
    let mut expected = raw.to_vec();
    expected[1000..1007].copy_from_slice(b"CHANGED");
    // The same bytes split elsewhere, as the delivery's payload.
    let resplit = Payload::from_pieces(vec![
        Bytes::copy_from_slice(&expected[..5]),
        Bytes::copy_from_slice(&expected[5..]),
    ]);
    assert_eq!(changed, resplit);
    assert!(changed.eq_bytes(&expected));
    let small = Payload::from_pieces(vec![
        Bytes::from_static(b"MSH|^~\\&|"),
        Bytes::new(),
        Bytes::from_static(b"small"),
        Bytes::from_static(b"\r"),
    ]);
    let large_other = Payload::from_pieces(vec![raw.slice(..70_000), Bytes::from_static(b"!")]);

    let id = store.journal(message("C1", "P1")).await.unwrap();
    let step = courier_store::StepRecord {
        route: "adt-route".into(),
        step: "map".into(),
        kind: "wasm-transform".into(),
        content_hash: "sha256:cccc".into(),
        outcome: StepOutcome::Changed(changed.clone()),
        reason: None,
    };
    let with = |dest: &str, payload: Payload| courier_store::NewDelivery {
        payload,
        ..delivery(dest, "P1", "")
    };
    store
        .complete_processing(
            id,
            Processing {
                steps: vec![step],
                ..processed(vec![
                    with("emr", resplit),
                    with("lab", small),
                    with("research", large_other.clone()),
                ])
            },
        )
        .await
        .unwrap();

    let rows = payload_rows(&db);
    assert_eq!(rows, 2, "the step's output is not written twice");
    let emr = claim(&*store, "emr", DeliveryOrder::Strict, t(1)).await;
    assert!(emr.payload[..] == expected[..], "the step's output, whole");
    let lab = claim(&*store, "lab", DeliveryOrder::Strict, t(1)).await;
    assert_eq!(payload(&lab), "MSH|^~\\&|small\r");
    let research = claim(&*store, "research", DeliveryOrder::Strict, t(1)).await;
    assert!(research.payload == large_other.to_bytes());
    let detail = store.message(id).await.unwrap().unwrap();
    match &detail.steps[0].outcome {
        StepOutcome::Changed(out) => assert!(out.eq_bytes(&expected)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn claims_of_equal_large_payloads_share_one_buffer_while_it_is_held() {
    use courier_store::Payload;
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn courier_store::Store> = std::sync::Arc::new(open(dir.path()));

    // Two routes whose steps made the same 200 KiB (two step rows, equal bytes), and a
    // third delivery of the same length that differs in one byte (a row of its own).
    let body: Vec<u8> = (0..200 * 1024).map(|i| b'A' + (i % 26) as u8).collect();
    let same = Bytes::from(body.clone());
    let mut other = body.clone();
    other[150_000] = b'!';
    let step = |route: &str| courier_store::StepRecord {
        route: route.into(),
        step: "map".into(),
        kind: "wasm-transform".into(),
        content_hash: "sha256:cccc".into(),
        outcome: StepOutcome::Changed(Payload::from(Bytes::copy_from_slice(&body))),
        reason: None,
    };
    let to = |route: &str, dest: &str, payload: Bytes| courier_store::NewDelivery {
        route: route.into(),
        payload: payload.into(),
        ..delivery(dest, "P1", "")
    };
    let id = store.journal(message("C1", "P1")).await.unwrap();
    store
        .complete_processing(
            id,
            Processing {
                steps: vec![step("chart"), step("portal")],
                ..processed(vec![
                    to("chart", "emr", same.clone()),
                    to("portal", "portal", same.clone()),
                    to("portal", "archive", same.clone()),
                    to("chart", "research", Bytes::from(other.clone())),
                ])
            },
        )
        .await
        .unwrap();

    let emr = claim(&*store, "emr", DeliveryOrder::Strict, t(1)).await;
    let portal = claim(&*store, "portal", DeliveryOrder::Strict, t(1)).await;
    let research = claim(&*store, "research", DeliveryOrder::Strict, t(1)).await;
    assert!(emr.payload == same && portal.payload == same);
    assert_eq!(
        emr.payload.as_ptr(),
        portal.payload.as_ptr(),
        "equal bytes from another row, while the first is held: one buffer"
    );
    assert!(
        research.payload[..] == other[..],
        "one byte differs: its own bytes"
    );
    assert_ne!(research.payload.as_ptr(), emr.payload.as_ptr());
    // Once no delivery holds them, a claim reads its own again, whole and right.
    drop((emr, portal, research));
    let archive = claim(&*store, "archive", DeliveryOrder::Strict, t(1)).await;
    assert!(archive.payload == same);
}

/// How many deliveries have a payload row of their own.
fn payload_rows(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM delivery_payloads", [], |r| r.get(0))
        .unwrap()
}
