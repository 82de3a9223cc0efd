//! Journal throughput with fsync on, with 1 and 16 concurrent writers. Ignored by default; run
//! with `cargo test --release -p courier-store --test store throughput -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_store::{SqliteStore, Store, StoreSettings};

use crate::common::*;

async fn run(writers: usize, per_writer: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), StoreSettings::default()).unwrap());
    // A typical ADT is 1–2 KB.
    let raw = Bytes::from(vec![b'x'; 1_500]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let mut m = message(&format!("{w}-{i}"), "P");
                m.raw = raw.clone();
                store.journal(m).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    let rate = (writers * per_writer) as f64 / elapsed.as_secs_f64();
    (rate, store.stats().commits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
async fn journal_throughput() {
    for (writers, per_writer) in [(1, 2_000), (16, 1_000)] {
        let (rate, commits) = run(writers, per_writer).await;
        println!(
            "journal, fsync on, {writers:>2} writer(s): {rate:>8.0} messages/s \
             ({} messages, {commits} commits)",
            writers * per_writer
        );
    }
}
