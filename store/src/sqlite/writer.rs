//! The single writer and its group commit.
//!
//! One thread owns the write connection. Callers send a job over a channel and await a oneshot.
//! The thread takes the first job, drains whatever else is waiting (up to `max_batch`), runs
//! them in one transaction and commits once, so a whole batch costs one fsync. Only then are
//! the jobs answered: nothing is reported done that was not committed. While a batch is
//! syncing, new jobs queue up and form the next batch, so batches grow by themselves under load.
//!
//! One failing job is undone alone. A batch first runs without savepoints (a savepoint copies
//! every page a job touches, which cost the writer 6% of its time); if a job fails, the whole
//! transaction is rolled back and the batch runs again with a SAVEPOINT per job, so that only
//! the failing job's work is undone. Jobs are therefore closures that may run more than once;
//! only the work of the run that committed remains.
//!
//! SQLite rolls back the whole transaction after some failures (a full disk, an I/O error, out
//! of memory); the jobs already run in it are then answered with that error too, and the rest
//! of the batch continues in a fresh transaction. The thread survives every error, panics in a
//! job included, so the next requests are tried again — a disk that filled up and was freed
//! serves writes again without a restart.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::convert::{OpResult, classify};
use crate::error::StoreError;

/// Counts kept by the writer, read through [`SqliteStore::stats`](super::SqliteStore::stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) largest_batch: AtomicU64,
    /// Batches run a second time, a savepoint per job, because one of their jobs failed.
    pub(crate) reruns: AtomicU64,
}

/// The longest a batch waits for the callers of the previous batch to send their next jobs.
const GATHER: std::time::Duration = std::time::Duration::from_micros(200);

/// A type-erased write request: run inside the batch, then answered after the commit.
trait Job: Send {
    fn operation(&self) -> &'static str;
    /// Does the work inside the open transaction and keeps the result until [`Job::answer`].
    fn run(&mut self, conn: &Connection) -> Result<(), StoreError>;
    /// Replaces the result with a failure (its work was rolled back).
    fn fail(&mut self, error: StoreError);
    fn answer(self: Box<Self>);
}

struct Typed<T, F> {
    operation: &'static str,
    work: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnMut(&Connection) -> OpResult<T> + Send,
{
    fn operation(&self) -> &'static str {
        self.operation
    }

    fn run(&mut self, conn: &Connection) -> Result<(), StoreError> {
        match (self.work)(conn) {
            Ok(value) => {
                self.result = Some(Ok(value));
                Ok(())
            }
            Err(e) => {
                let e = e.into_store(self.operation);
                self.result = Some(Err(e.clone()));
                Err(e)
            }
        }
    }

    fn fail(&mut self, error: StoreError) {
        self.result = Some(Err(error));
    }

    fn answer(self: Box<Self>) {
        let result = self.result.unwrap_or_else(|| {
            Err(StoreError::Backend {
                operation: self.operation,
                detail: "write job was never run".into(),
            })
        });
        // The caller may have stopped waiting; the work is done either way.
        let _ = self.reply.send(result);
    }
}

/// The handle callers use; dropping it lets the thread finish its queue and close.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    /// The writer thread, woken after each job is sent while it gathers a batch.
    waker: std::thread::Thread,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        max_batch: usize,
        counters: Arc<Counters>,
    ) -> std::io::Result<Writer> {
        let max_batch = max_batch.max(1);
        // Room for a few batches: enough to fill the next batch while one syncs; beyond that,
        // callers wait (backpressure) rather than pile up memory.
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let thread = std::thread::Builder::new()
            .name("courier-store-writer".into())
            .spawn(move || run(conn, rx, max_batch, &counters))?;
        Ok(Writer {
            tx: Some(tx),
            waker: thread.thread().clone(),
            thread: Some(thread),
        })
    }

    /// Runs `work` in the next batch and returns its result once the batch is committed.
    ///
    /// `work` runs a second time when another job of its batch fails (the batch is rolled
    /// back and run again, a savepoint per job): it must leave nothing behind but its writes
    /// to the connection, which the rollback undoes.
    ///
    /// The job is handed over before the first `.await` that can pend (when the channel has
    /// room), so jobs from one task keep the order their futures were first polled in.
    pub(crate) async fn submit<T, F>(
        &self,
        operation: &'static str,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> OpResult<T> + Send + 'static,
    {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Typed {
            operation,
            work,
            result: None,
            reply,
        });
        tx.send(job).await.map_err(|_| StoreError::Closed)?;
        // An atomic swap unless the writer is parked waiting for this batch's stragglers.
        self.waker.unpark();
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queued jobs are done; waiting for
        // it means the connection is closed (WAL checkpointed) before a reopen.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
    counters: &Counters,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    // How many jobs the last batch carried: the callers it answered are likely to send their
    // next jobs at once, so a batch waits a moment (at most GATHER) for that many to arrive
    // rather than committing the first few on their own and making the rest wait a whole sync.
    let mut last = 1;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        let gather_until = Instant::now() + GATHER;
        loop {
            match rx.try_recv() {
                Ok(job) => {
                    batch.push(job);
                    if batch.len() >= max_batch {
                        break;
                    }
                }
                Err(_) if batch.len() < last => {
                    // Sleep until a caller sends (`submit` unparks this thread) or the wait is
                    // over. Spinning here instead cost a core's worth of CPU the callers needed.
                    let left = gather_until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::park_timeout(left);
                }
                Err(_) => break,
            }
        }
        last = batch.len();
        let started = Instant::now();
        let committed = commit_batch(&conn, &mut batch, counters);
        if committed {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        if super::ops::take_large_written() {
            super::ops::release_cache(&conn);
        }
        counters
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        tracing::trace!(
            jobs = batch.len(),
            committed,
            elapsed_us = started.elapsed().as_micros() as u64,
            "store batch"
        );
        for job in batch.drain(..) {
            job.answer();
        }
    }
    tracing::debug!("store writer stopped");
}

/// Runs the batch in one transaction; returns whether a commit happened. Each job's result is
/// final when this returns.
fn commit_batch(conn: &Connection, jobs: &mut [Box<dyn Job>], counters: &Counters) -> bool {
    match without_savepoints(conn, jobs) {
        Fast::Committed => true,
        Fast::Failed => false,
        Fast::JobFailed(i, e) if jobs.len() == 1 => {
            // The rollback undid the job's work, and there is no other work to keep.
            log_failure(jobs[i].operation(), &e);
            jobs[i].fail(e);
            false
        }
        Fast::JobFailed(..) => {
            counters.reruns.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                jobs = jobs.len(),
                "a job failed; running its batch again with a savepoint per job"
            );
            with_savepoints(conn, jobs)
        }
    }
}

/// How a batch run without savepoints ended.
enum Fast {
    /// Every job succeeded and the transaction committed.
    Committed,
    /// BEGIN or COMMIT failed: every job is answered with that error, as
    /// [`with_savepoints`] would answer it.
    Failed,
    /// Job `.0` failed (or panicked) with `.1`, and the transaction is rolled back: nothing of
    /// the batch remains, and it must run again job by job.
    JobFailed(usize, StoreError),
}

/// The common case: the batch's jobs one after the other in one transaction, without the
/// savepoints that would let one of them be undone alone.
fn without_savepoints(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> Fast {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        fail_from(jobs, 0, &e);
        return Fast::Failed;
    }
    for (i, job) in jobs.iter_mut().enumerate() {
        if let Err(e) = run_caught(conn, &mut **job) {
            if !conn.is_autocommit() {
                // If even this fails, the connection is unusable and the next BEGIN says so.
                let _ = exec(conn, "ROLLBACK");
            }
            return Fast::JobFailed(i, e);
        }
    }
    match exec(conn, "COMMIT") {
        Ok(()) => Fast::Committed,
        Err(e) => {
            commit_failed(conn, jobs, 0, &vec![true; jobs.len()], &e);
            Fast::Failed
        }
    }
}

/// The batch again after a job failed: each job in its own savepoint, so that a failing one is
/// undone alone.
fn with_savepoints(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> bool {
    let mut ok = vec![false; jobs.len()];
    // The first job of the open transaction: jobs before it are settled either way.
    let mut from = 0;
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        fail_from(jobs, 0, &e);
        return false;
    }
    for i in 0..jobs.len() {
        match run_one(conn, &mut *jobs[i]) {
            Ok(()) => ok[i] = true,
            Err(e) => {
                log_failure(jobs[i].operation(), &e);
                if conn.is_autocommit() {
                    // SQLite rolled back the whole transaction, not just this job: the jobs run
                    // before it in this transaction lost their work as well.
                    for j in from..i {
                        if ok[j] {
                            ok[j] = false;
                            let err = e.for_batch_member(jobs[j].operation());
                            jobs[j].fail(err);
                        }
                    }
                    from = i + 1;
                    if from < jobs.len() {
                        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
                            fail_from(jobs, from, &e);
                            return false;
                        }
                    } else {
                        return false;
                    }
                }
            }
        }
    }
    match exec(conn, "COMMIT") {
        Ok(()) => true,
        Err(e) => {
            commit_failed(conn, jobs, from, &ok, &e);
            false
        }
    }
}

/// A failed COMMIT: the transaction is rolled back and the jobs from `from` on that had
/// succeeded in it (`ok`) are answered with the commit's error.
fn commit_failed(
    conn: &Connection,
    jobs: &mut [Box<dyn Job>],
    from: usize,
    ok: &[bool],
    e: &rusqlite::Error,
) {
    tracing::error!(error = %classify("commit", e), "store commit failed");
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for j in from..jobs.len() {
        if ok[j] {
            let err = classify(jobs[j].operation(), e);
            jobs[j].fail(err);
        }
    }
}

/// Runs one statement of transaction control (`BEGIN`, `SAVEPOINT`, …) from the statement
/// cache: `execute_batch` would parse it again on every call, four times per job.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs one job inside its own savepoint, undoing just its work if it fails.
fn run_one(conn: &Connection, job: &mut dyn Job) -> Result<(), StoreError> {
    let operation = job.operation();
    if let Err(e) = exec(conn, "SAVEPOINT job") {
        let e = classify(operation, &e);
        job.fail(e.clone());
        return Err(e);
    }
    let outcome = run_caught(conn, job);
    let outcome =
        outcome.and_then(|()| exec(conn, "RELEASE job").map_err(|e| classify(operation, &e)));
    if let Err(e) = &outcome {
        job.fail(e.clone());
        if !conn.is_autocommit() {
            // Best effort: if even this fails, the transaction is rolled back as a whole below.
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
        }
    }
    outcome
}

/// Runs the job's work; a panic in it is its failure, not the writer's.
fn run_caught(conn: &Connection, job: &mut dyn Job) -> Result<(), StoreError> {
    let operation = job.operation();
    catch_unwind(AssertUnwindSafe(|| job.run(conn))).unwrap_or_else(|_| {
        Err(StoreError::Backend {
            operation,
            detail: "the operation panicked".into(),
        })
    })
}

/// Fails every job from `from` on with the error that stopped the batch.
fn fail_from(jobs: &mut [Box<dyn Job>], from: usize, e: &rusqlite::Error) {
    for job in &mut jobs[from..] {
        let err = classify(job.operation(), e);
        log_failure(job.operation(), &err);
        job.fail(err);
    }
}

fn log_failure(operation: &'static str, e: &StoreError) {
    match e {
        // Expected answers to a caller's request, not faults of the store.
        StoreError::MessageNotFound(_)
        | StoreError::DeliveryNotFound(_)
        | StoreError::AlreadyProcessed { .. }
        | StoreError::WrongDeliveryState { .. } => {
            tracing::debug!(operation, error = %e, "store write refused");
        }
        _ => tracing::warn!(operation, error = %e, "store write failed"),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::sqlite::convert::OpError;

    fn writer(dir: &std::path::Path) -> (Writer, Arc<Counters>) {
        let conn = Connection::open(dir.join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT NOT NULL);")
            .unwrap();
        let counters = Arc::new(Counters::default());
        (
            Writer::start(conn, 64, Arc::clone(&counters)).unwrap(),
            counters,
        )
    }

    fn insert(v: &'static str) -> impl FnMut(&Connection) -> OpResult<()> + Send {
        move |c| {
            c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
            Ok(())
        }
    }

    /// `err` is a failure of the job named `operation` itself (not of its batch or the store).
    fn assert_backend(err: &StoreError, operation: &str) {
        assert!(
            matches!(err, StoreError::Backend { operation: op, .. } if *op == operation),
            "{err:?}"
        );
    }

    fn rows(dir: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(dir.join("w.db")).unwrap();
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Runs `jobs` as one batch: a gate job occupies the writer until all of them are queued
    /// behind it, so the writer drains them together.
    async fn one_batch<T: Send + 'static>(
        w: &Arc<Writer>,
        jobs: impl std::future::Future<Output = T>,
    ) -> T {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let gate = tokio::spawn({
            let w = Arc::clone(w);
            async move {
                w.submit("gate", move |_: &Connection| -> OpResult<()> {
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Ok(())
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        // `join!` polls in order: every job is queued before the gate opens.
        let (out, ()) = tokio::join!(jobs, async { go_tx.send(()).unwrap() });
        gate.await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn a_failing_job_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (w, counters) = writer(dir.path());
        let w = Arc::new(w);
        let (a, bad, b) = one_batch(&w, async {
            tokio::join!(
                w.submit("a", insert("a")),
                w.submit("bad", |c: &Connection| -> OpResult<()> {
                    c.execute("INSERT INTO t (v) VALUES ('bad')", [])?;
                    c.execute("INSERT INTO t (v) VALUES (NULL)", [])?; // NOT NULL: fails
                    Ok(())
                }),
                w.submit("b", insert("b")),
            )
        })
        .await;
        a.unwrap();
        let err = bad.unwrap_err();
        assert_backend(&err, "bad");
        b.unwrap();
        assert_eq!(
            rows(dir.path()),
            ["a", "b"],
            "the bad job's first insert is undone"
        );
        assert_eq!(
            counters.commits.load(Ordering::Relaxed),
            2,
            "gate, then one batch"
        );
    }

    /// A batch whose jobs all succeed runs each of them once; one with a failing job runs
    /// again from the start after a rollback, and what the others wrote is committed once.
    #[tokio::test]
    async fn a_batch_runs_again_only_when_a_job_fails() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let (w, counters) = writer(dir.path());
        let w = Arc::new(w);
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = |v: &'static str| {
            let runs = Arc::clone(&runs);
            move |c: &Connection| -> OpResult<()> {
                runs.fetch_add(1, Ordering::SeqCst);
                c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                Ok(())
            }
        };
        let (a, b) = one_batch(&w, async {
            tokio::join!(w.submit("a", counted("a")), w.submit("b", counted("b")))
        })
        .await;
        a.unwrap();
        b.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "each job once");
        assert_eq!(counters.reruns.load(Ordering::Relaxed), 0);

        let (c, bad, d) = one_batch(&w, async {
            tokio::join!(
                w.submit("c", counted("c")),
                w.submit("bad", |c: &Connection| -> OpResult<()> {
                    c.execute("INSERT INTO t (v) VALUES (NULL)", [])?;
                    Ok(())
                }),
                w.submit("d", counted("d")),
            )
        })
        .await;
        c.unwrap();
        bad.unwrap_err();
        d.unwrap();
        // c ran before the failure and again in the second run; d only in the second.
        assert_eq!(runs.load(Ordering::SeqCst), 2 + 3);
        assert_eq!(counters.reruns.load(Ordering::Relaxed), 1);
        assert_eq!(rows(dir.path()), ["a", "b", "c", "d"]);
    }

    /// A job alone in its batch that fails is rolled back and answered; it does not run again.
    #[tokio::test]
    async fn a_failing_job_alone_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let (w, counters) = writer(dir.path());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let err = w
            .submit("bad", move |c: &Connection| -> OpResult<()> {
                counted.fetch_add(1, Ordering::SeqCst);
                c.execute("INSERT INTO t (v) VALUES ('x')", [])?;
                c.execute("INSERT INTO t (v) VALUES (NULL)", [])?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_backend(&err, "bad");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(counters.reruns.load(Ordering::Relaxed), 0);
        w.submit("a", insert("a")).await.unwrap();
        assert_eq!(
            rows(dir.path()),
            ["a"],
            "the failed job's first insert is undone"
        );
    }

    /// When SQLite rolls back the whole transaction (as it may on a full disk or an I/O
    /// error), the jobs already run in it must not be reported done; the rest still run.
    #[tokio::test]
    async fn a_transaction_lost_mid_batch_fails_the_jobs_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = writer(dir.path());
        let w = Arc::new(w);
        let (a, lost, b) = one_batch(&w, async {
            tokio::join!(
                w.submit("a", insert("a")),
                w.submit("lost", |c: &Connection| -> OpResult<()> {
                    // What SQLite does by itself after some SQLITE_FULL / SQLITE_IOERR failures.
                    c.execute_batch("ROLLBACK")?;
                    Err(OpError::Store(StoreError::Unavailable {
                        operation: "lost",
                        cause: crate::error::UnavailableCause::Full,
                        detail: "database or disk is full".into(),
                    }))
                }),
                w.submit("b", insert("b")),
            )
        })
        .await;
        let err = a.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable { operation: "a", .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("its batch was rolled back"),
            "{err}"
        );
        assert!(lost.unwrap_err().is_unavailable());
        b.unwrap();
        assert_eq!(rows(dir.path()), ["b"]);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = writer(dir.path());
        let err = w
            .submit("boom", |_: &Connection| -> OpResult<()> { panic!("bug") })
            .await
            .unwrap_err();
        assert_backend(&err, "boom");
        w.submit("a", insert("a")).await.unwrap();
        assert_eq!(rows(dir.path()), ["a"]);
    }
}
