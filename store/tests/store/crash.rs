//! kill -9 while writes flow: everything the store confirmed before the kill is there after a
//! reopen, and every delivery claimed but not confirmed finished comes back (flagged) or is
//! finished. The test binary runs itself as the child that writes, reports each confirmed
//! write on stdout, and is killed mid-stream.
//!
//! A killed process keeps its page cache, so this proves "confirmed means committed"; that a
//! commit also survives power loss rests on `synchronous=FULL` in WAL mode.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use courier_store::{Claim, DeliveryId, DeliveryOrder, DeliveryStatus, MessageId, Store};

use crate::common::*;

const CHILD_ENV: &str = "COURIER_STORE_CRASH_CHILD";
const TEST_NAME: &str = "crash::killed_mid_stream_loses_nothing_confirmed";

#[test]
fn killed_mid_stream_loses_nothing_confirmed() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(dir.as_ref());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut journaled: HashMap<MessageId, String> = HashMap::new();
    let mut claimed: HashSet<DeliveryId> = HashSet::new();
    let mut delivered: HashSet<DeliveryId> = HashSet::new();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["journaled", id, control] => {
                journaled.insert(MessageId(id.parse().unwrap()), control.to_owned());
            }
            ["claimed", id] => {
                claimed.insert(DeliveryId(id.parse().unwrap()));
            }
            ["delivered", id] => {
                delivered.insert(DeliveryId(id.parse().unwrap()));
            }
            _ => continue,
        }
        if journaled.len() >= 600 && delivered.len() >= 100 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(journaled.len() >= 600, "the child stopped early");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_arc(dir.path());
        for (id, control) in &journaled {
            let m = store.message(*id).await.unwrap();
            assert_eq!(
                m.map(|m| m.control_id).as_ref(),
                Some(control),
                "message {id} lost"
            );
        }
        let recovered: HashSet<_> = store
            .recover_in_flight()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let statuses = delivery_statuses(&*store).await;
        for id in &claimed {
            let status = statuses[id];
            if delivered.contains(id) {
                assert_eq!(
                    status,
                    DeliveryStatus::Delivered,
                    "delivery {id} lost its completion"
                );
            } else {
                // Sent or not, it is either finished (committed just before the kill) or
                // back in the queue as a possible duplicate.
                assert!(
                    status == DeliveryStatus::Delivered || recovered.contains(id),
                    "claimed delivery {id} is {status} and was not recovered"
                );
            }
        }
        for id in &recovered {
            assert!(claimed.contains(id) || !delivered.contains(id));
        }
        // And the queue works on: everything left can be delivered.
        loop {
            match store
                .claim_next("lab", DeliveryOrder::Strict, t(0))
                .await
                .unwrap()
            {
                Claim::Ready(d) => store.delivered(d.id, Bytes::new()).await.unwrap(),
                Claim::Empty => break,
                other => panic!("{other:?}"),
            }
        }
    });
}

/// Every delivery's status, read through the messages.
async fn delivery_statuses(store: &dyn Store) -> HashMap<DeliveryId, DeliveryStatus> {
    let all = courier_store::Search {
        limit: 100_000,
        ..Default::default()
    };
    let mut statuses = HashMap::new();
    for m in store.search(&all).await.unwrap() {
        for d in store.message(m.id).await.unwrap().unwrap().deliveries {
            statuses.insert(d.id, d.status);
        }
    }
    statuses
}

/// The child: journals and processes from several tasks while one sender claims and delivers,
/// printing each confirmed write, until it is killed.
fn child(dir: &std::path::Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = open_arc(dir);
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let say = move |line: String| {
            let mut out = out.lock().unwrap();
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        };
        for w in 0..8 {
            let (store, say) = (store.clone(), say.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let control = format!("W{w}-{i}");
                    let id = store.journal(message(&control, "P")).await.unwrap();
                    say(format!("journaled {id} {control}"));
                    store
                        .complete_processing(id, processed(vec![delivery("lab", "", &control)]))
                        .await
                        .unwrap();
                }
            });
        }
        loop {
            match store
                .claim_next("lab", DeliveryOrder::Strict, t(0))
                .await
                .unwrap()
            {
                Claim::Ready(d) => {
                    say(format!("claimed {}", d.id));
                    store.delivered(d.id, Bytes::new()).await.unwrap();
                    say(format!("delivered {}", d.id));
                }
                _ => tokio::task::yield_now().await,
            }
        }
    });
}
