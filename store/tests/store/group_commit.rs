//! Group commit: many concurrent writers share few commits, and every one of their writes is
//! stored.

use std::collections::HashSet;
use std::sync::Arc;

use courier_store::{Search, SqliteStore, Store};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_journals_share_commits() {
    const TASKS: usize = 32;
    const PER_TASK: usize = 2_000 / TASKS + 1; // 63 × 32 = 2,016
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let before = store.stats();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let m = message(&format!("T{task}-{i}"), "P");
                ids.push(store.journal(m).await.expect("journal"));
            }
            ids
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    let total = TASKS * PER_TASK;
    assert_eq!(ids.len(), total);

    let stats = store.stats();
    let commits = stats.commits - before.commits;
    println!(
        "{total} journals from {TASKS} tasks: {commits} commits, largest batch {}",
        stats.largest_batch
    );
    assert!(
        commits * 4 < total as u64,
        "{commits} commits for {total} concurrent journals: group commit is not grouping"
    );
    assert!(stats.largest_batch > 1);

    // All there, also after a reopen.
    let all = Search {
        limit: 10_000,
        ..Search::default()
    };
    assert_eq!(store.search(&all).await.unwrap().len(), total);
    drop(Arc::into_inner(store).expect("last handle"));
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path(), Default::default()).unwrap());
    let found: HashSet<_> = store
        .search(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(found, ids);
}
