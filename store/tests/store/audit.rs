//! The audit log: kept in order, found by message, and not removed with pruned messages.

use courier_store::{AuditEntry, Store};

use crate::common::*;

fn entry(at: u64, action: &str, message: Option<courier_store::MessageId>) -> AuditEntry {
    AuditEntry {
        at: t(at),
        actor: "admin@127.0.0.1".into(),
        action: action.into(),
        message_id: message,
        detail: String::new(),
    }
}

#[tokio::test]
async fn audit_entries_come_back_newest_first_and_outlive_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_arc(dir.path());
    let s: &dyn Store = &*store;
    let (m1, _) = queue(s, "lab", "", "A").await;
    let (m2, _) = queue(s, "lab", "", "B").await;
    s.audit(entry(1, "view", Some(m1))).await.unwrap();
    s.audit(entry(2, "resend", Some(m1))).await.unwrap();
    s.audit(entry(3, "view", Some(m2))).await.unwrap();
    s.audit(entry(4, "reload", None)).await.unwrap();

    let all = s.audit_log(None, 10).await.unwrap();
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["reload", "view", "resend", "view"]);
    assert_eq!(all[0], entry(4, "reload", None));
    assert_eq!(s.audit_log(None, 2).await.unwrap().len(), 2);

    let of_m1 = s.audit_log(Some(m1), 10).await.unwrap();
    assert_eq!(
        of_m1.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["resend", "view"]
    );

    // Deliver both and prune them: the audit of who looked at them stays.
    for _ in 0..2 {
        let d = claim(s, "lab", courier_store::DeliveryOrder::Strict, t(0)).await;
        s.delivered(d.id, bytes::Bytes::new()).await.unwrap();
    }
    assert_eq!(s.prune(t(1_000_000)).await.unwrap(), 2);
    assert!(s.message(m1).await.unwrap().is_none());
    assert_eq!(s.audit_log(Some(m1), 10).await.unwrap().len(), 2);
}
