//! Versioned migrations: a fresh store gets the latest schema, reopening is a no-op, a store
//! written by a newer Courier is refused and left untouched.

use courier_store::{SqliteStore, Store, StoreError, StoreSettings};
use rusqlite::Connection;

use crate::common::*;

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
    assert_eq!(pragma(dir.path(), "user_version"), "3");
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
    assert_eq!(pragma(dir.path(), "user_version"), "3");
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
    assert_eq!((*found, *supported), (7, 3));
    assert!(
        err.to_string().contains("newer than this Courier supports"),
        "{err}"
    );
    assert_eq!(pragma(dir.path(), "user_version"), "7", "left untouched");
    // And the refusal released the store's lock.
    Connection::open(dir.path().join("courier.db"))
        .unwrap()
        .pragma_update(None, "user_version", 3)
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
    assert_eq!(pragma(dir.path(), "user_version"), "3");
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
    assert_eq!(pragma(dir.path(), "user_version"), "3");
}
