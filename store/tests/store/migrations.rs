//! Versioned migrations: a fresh store gets the latest schema, reopening is a no-op, a store
//! written by a newer Courier is refused and left untouched.

use bytes::Bytes;
use courier_store::{DeliveryOrder, SqliteStore, Store, StoreError, StoreSettings};
use rusqlite::Connection;

use crate::common::*;

/// Gives a store made by this code the constraints of versions 1 to 4 (`IN` lists, which
/// version 5 rewrote).
fn constraints_of_version_4(conn: &Connection) {
    let version: i64 = conn
        .pragma_query_value(None, "schema_version", |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "writable_schema", true).unwrap();
    for (table, column, values) in [
        (
            "messages",
            "status",
            "'received', 'processed', 'filtered', 'unrouted', 'error'",
        ),
        ("steps", "outcome", "'kept', 'changed', 'dropped', 'error'"),
        (
            "deliveries",
            "status",
            "'queued', 'in_flight', 'delivered', 'error'",
        ),
    ] {
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        let start = sql.find("CHECK (").expect("a CHECK constraint");
        let end = start + sql[start..].find("')").unwrap() + 2;
        let old = sql.replace(&sql[start..end], &format!("CHECK ({column} IN ({values}))"));
        conn.execute(
            "UPDATE sqlite_schema SET sql = ?2 WHERE name = ?1",
            [table, &old],
        )
        .unwrap();
    }
    conn.pragma_update(None, "schema_version", version + 1)
        .unwrap();
    conn.pragma_update(None, "writable_schema", false).unwrap();
}

/// Gives a store made by this code the status index of versions 1 to 5 (every message).
fn status_index_of_version_5(conn: &Connection) {
    conn.execute_batch(
        "DROP INDEX messages_status;
         CREATE INDEX messages_status ON messages (status);",
    )
    .unwrap();
}

/// Gives a store made by this code the schema of version 4.
fn schema_of_version_4(conn: &Connection) {
    status_index_of_version_5(conn);
    constraints_of_version_4(conn);
    conn.execute_batch(
        "DROP INDEX deliveries_unfinished;
         CREATE INDEX deliveries_unfinished ON deliveries (status, destination)
             WHERE status IN ('queued', 'in_flight', 'error');",
    )
    .unwrap();
}

/// Gives a store made by this code the indexes and constraints a version 3 store has (what
/// versions 4 and 5 changed), so that an upgrade from an older version can be tested on it.
fn schema_of_version_3(conn: &Connection) {
    status_index_of_version_5(conn);
    constraints_of_version_4(conn);
    conn.execute_batch(
        "DROP INDEX deliveries_unfinished;
         DROP INDEX deliveries_message;
         DROP INDEX messages_control_id;
         CREATE INDEX messages_duplicate
             ON messages (sending_application, sending_facility, control_id, received_at);
         CREATE INDEX messages_control_id ON messages (control_id);
         CREATE INDEX deliveries_status ON deliveries (status, destination);
         CREATE INDEX deliveries_message ON deliveries (message_id, status);",
    )
    .unwrap();
}

fn index_names(dir: &std::path::Path) -> Vec<String> {
    let conn = Connection::open(dir.join("courier.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn pragma(dir: &std::path::Path, name: &str) -> String {
    let conn = Connection::open(dir.join("courier.db")).unwrap();
    conn.pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0))
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .unwrap()
}

#[tokio::test]
async fn fresh_store_gets_the_schema_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.journal(message("C1", "P")).await.unwrap();
    assert_eq!(store.path(), dir.path().join("courier.db"));
    drop(store);
    assert_eq!(pragma(dir.path(), "user_version"), "6");
    assert_eq!(pragma(dir.path(), "journal_mode"), "wal");
    assert_eq!(pragma(dir.path(), "auto_vacuum"), "2", "incremental");
}

#[tokio::test]
async fn reopening_an_up_to_date_store_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        store.journal(message("C1", "P")).await.unwrap()
    };
    let schema = |dir: &std::path::Path| {
        let conn = Connection::open(dir.join("courier.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT sql FROM sqlite_schema ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get::<_, Option<String>>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let before = schema(dir.path());
    for _ in 0..2 {
        let store = open(dir.path());
        assert_eq!(store.message(id).await.unwrap().unwrap().control_id, "C1");
    }
    assert_eq!(schema(dir.path()), before);
    assert_eq!(pragma(dir.path(), "user_version"), "6");
}

#[tokio::test]
async fn a_store_from_a_newer_courier_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    Connection::open(dir.path().join("courier.db"))
        .unwrap()
        .pragma_update(None, "user_version", 7)
        .unwrap();
    let err = SqliteStore::open(dir.path(), StoreSettings::default()).unwrap_err();
    let StoreError::SchemaTooNew {
        found, supported, ..
    } = &err
    else {
        panic!("expected SchemaTooNew, got {err:?}")
    };
    assert_eq!((*found, *supported), (7, 6));
    assert!(
        err.to_string().contains("newer than this Courier supports"),
        "{err}"
    );
    assert_eq!(pragma(dir.path(), "user_version"), "7", "left untouched");
    // And the refusal released the store's lock.
    Connection::open(dir.path().join("courier.db"))
        .unwrap()
        .pragma_update(None, "user_version", 6)
        .unwrap();
    open(dir.path());
}

#[tokio::test]
async fn a_version_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        store.journal(message("C1", "P")).await.unwrap()
    };
    // What a store written before the audit log looks like.
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    schema_of_version_3(&conn);
    conn.execute_batch("DROP TABLE message_acks; DROP TABLE audit; PRAGMA user_version = 1;")
        .unwrap();
    drop(conn);
    let store = open(dir.path());
    assert_eq!(store.message(id).await.unwrap().unwrap().control_id, "C1");
    store
        .audit(courier_store::AuditEntry {
            at: t(1),
            actor: "admin".into(),
            action: "view".into(),
            message_id: Some(id),
            detail: String::new(),
        })
        .await
        .unwrap();
    drop(store);
    assert_eq!(pragma(dir.path(), "user_version"), "6");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("courier.db"), vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(dir.path(), StoreSettings::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. } | StoreError::Open { .. }),
        "{err:?}"
    );
}

/// A version 2 store (ACKs only beside the body) gets the table for large bodies' ACKs, and
/// the ACKs it already holds are still found.
#[tokio::test]
async fn a_version_2_store_is_upgraded_and_keeps_its_acks() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(dir.path());
        store.journal(message("C1", "P")).await.unwrap()
    };
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    schema_of_version_3(&conn);
    conn.execute_batch(
        "DROP TABLE message_acks; PRAGMA user_version = 2;
         UPDATE message_bodies SET ack = X'4D53417C41417C4331';",
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path());
    let detail = store.message(id).await.unwrap().unwrap();
    assert_eq!(detail.ack.as_deref(), Some(&b"MSA|AA|C1"[..]));
    drop(store);
    assert_eq!(pragma(dir.path(), "user_version"), "6");
}

/// A version 3 store gets the indexes and constraints of versions 4 and 5, and what it holds is found and claimed as
/// before: queued, in-flight, dead-lettered and delivered deliveries, and a duplicate.
#[tokio::test]
async fn a_version_3_store_is_upgraded_and_its_queues_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let now = t(10);
    let (delivered, dead, in_flight, queued) = {
        let store = open(dir.path());
        let (delivered, d1) = queue(&store, "emr", "P1", "one").await;
        let (dead, d2) = queue(&store, "emr", "P2", "two").await;
        let (in_flight, _) = queue(&store, "emr", "P3", "three").await;
        let (queued, _) = queue(&store, "lab", "P4", "four").await;
        for expect in [d1, d2] {
            let got = claim(&store, "emr", DeliveryOrder::SetAside, now).await;
            assert_eq!(got.id, expect);
        }
        store
            .delivered(d1, Bytes::from_static(b"MSA|AA|one"))
            .await
            .unwrap();
        store.dead_letter(d2, "rejected", None).await.unwrap();
        claim(&store, "emr", DeliveryOrder::SetAside, now).await;
        (delivered, dead, in_flight, queued)
    };
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    schema_of_version_3(&conn);
    conn.pragma_update(None, "user_version", 3).unwrap();
    drop(conn);

    let store = open(dir.path());
    assert_eq!(pragma(dir.path(), "user_version"), "6");
    let names = index_names(dir.path());
    for gone in ["deliveries_status", "messages_duplicate"] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} is still there: {names:?}"
        );
    }
    for new in [
        "deliveries_unfinished",
        "deliveries_message",
        "messages_control_id",
    ] {
        assert!(
            names.iter().any(|n| n == new),
            "{new} is missing: {names:?}"
        );
    }
    let recovered = store.recover_in_flight().await.unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].message_id, in_flight);
    let mut depths = store.queue_depths().await.unwrap();
    depths.sort_by(|a, b| a.destination.cmp(&b.destination));
    let depths: Vec<_> = depths
        .iter()
        .map(|d| (d.destination.as_str(), d.queued, d.in_flight, d.errored))
        .collect();
    assert_eq!(depths, [("emr", 1, 0, 1), ("lab", 1, 0, 0)]);
    let found = store
        .search(&courier_store::Search {
            delivery_status: Some(courier_store::DeliveryStatus::Error),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [dead]);
    let found = store
        .search(&courier_store::Search {
            control_id: Some("one".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [delivered]);
    assert_eq!(store.retry_errored(Some("emr")).await.unwrap(), 1);
    let again = claim(&store, "emr", DeliveryOrder::SetAside, now).await;
    assert_eq!(again.message_id, dead);
    assert_eq!(payload(&again), "two");
    let next = claim(&store, "lab", DeliveryOrder::Strict, now).await;
    assert_eq!(next.message_id, queued);
    // The duplicate check finds a message by its control id and sender.
    let dup = store
        .find_duplicate("REG", "CLINIC", "four", t(0))
        .await
        .unwrap()
        .expect("a duplicate");
    assert_eq!(dup.id, queued);
}

/// A version 4 store gets version 5's partial index and constraints (and version 6's status
/// index); its dead letters and queue are still counted and found.
#[tokio::test]
async fn a_version_4_store_is_upgraded_to_comparisons() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let (_, dead) = queue(&store, "emr", "P1", "one").await;
        queue(&store, "emr", "P2", "two").await;
        claim(&store, "emr", DeliveryOrder::SetAside, t(1)).await;
        store.dead_letter(dead, "rejected", None).await.unwrap();
    }
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    schema_of_version_4(&conn);
    conn.pragma_update(None, "user_version", 4).unwrap();
    drop(conn);

    let store = open(dir.path());
    assert_eq!(pragma(dir.path(), "user_version"), "6");
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    let index: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'deliveries_unfinished'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(index.contains("WHERE status <> 'delivered'"), "{index}");
    let tables: String = conn
        .query_row(
            "SELECT group_concat(sql, ' ') FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!tables.contains(" IN ('"), "{tables}");
    let depths = store.queue_depths().await.unwrap();
    assert_eq!(
        depths
            .iter()
            .map(|d| (d.destination.as_str(), d.queued, d.in_flight, d.errored))
            .collect::<Vec<_>>(),
        [("emr", 1, 0, 1)]
    );
    let next = claim(&store, "emr", DeliveryOrder::SetAside, t(2)).await;
    assert_eq!(payload(&next), "two");
}

/// A version 5 store gets version 6's status index, which leaves processed messages out:
/// messages of every status are still found by status, and one left `received` is still
/// processed after the restart.
#[tokio::test]
async fn a_version_5_store_gets_the_partial_status_index() {
    use courier_store::{MessageStatus, ProcessingStatus, Search};
    let dir = tempfile::tempdir().unwrap();
    let received = {
        let store = open(dir.path());
        for (control_id, status) in [
            ("P", ProcessingStatus::Processed),
            ("F", ProcessingStatus::Filtered),
            ("U", ProcessingStatus::Unrouted),
            ("E", ProcessingStatus::Error),
        ] {
            let id = store.journal(message(control_id, "P1")).await.unwrap();
            let mut p = processed(Vec::new());
            p.status = status;
            store.complete_processing(id, p).await.unwrap();
        }
        store.journal(message("R", "P1")).await.unwrap()
    };
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    status_index_of_version_5(&conn);
    conn.pragma_update(None, "user_version", 5).unwrap();
    drop(conn);

    let store = open(dir.path());
    assert_eq!(pragma(dir.path(), "user_version"), "6");
    let conn = Connection::open(dir.path().join("courier.db")).unwrap();
    let (index, entries): (String, i64) = conn
        .query_row(
            "SELECT (SELECT sql FROM sqlite_schema WHERE name = 'messages_status'),
                    (SELECT count(*) FROM messages INDEXED BY messages_status
                     WHERE status <> 'processed')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(index.contains("WHERE status <> 'processed'"), "{index}");
    assert_eq!(entries, 4, "every message but the processed one");
    for (status, control_id) in [
        (MessageStatus::Processed, "P"),
        (MessageStatus::Filtered, "F"),
        (MessageStatus::Unrouted, "U"),
        (MessageStatus::Error, "E"),
        (MessageStatus::Received, "R"),
    ] {
        let found = store
            .search(&Search {
                status: Some(status),
                ..Search::default()
            })
            .await
            .unwrap();
        assert_eq!(
            found
                .iter()
                .map(|m| m.control_id.as_str())
                .collect::<Vec<_>>(),
            [control_id],
            "{status:?}"
        );
    }
    let left = store.unprocessed().await.unwrap();
    assert_eq!(left.iter().map(|m| m.id).collect::<Vec<_>>(), [received]);
}
