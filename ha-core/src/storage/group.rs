//! Group commit, one storage thread and many writes per fsync:
//! [`GroupCommit`], whose docs give its invariants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::LogStore;
use super::vfs::Vfs;
use super::wal::{Wal, WalError};
use crate::types::{Entry, HardState, LogIndex, Term};

/// The outcome a writer is told.
pub type WriteResult = Result<(), Arc<WalError>>;

/// Called once with the outcome of a request.
pub type Completion = Box<dyn FnOnce(WriteResult) + Send>;

/// One unit of work for the storage thread.
pub struct WriteRequest {
    /// Entries to append (the first may replace a stored suffix).
    pub entries: Vec<Entry>,
    /// A new hard state to record, if any.
    pub hard_state: Option<HardState>,
    /// A snapshot now covers the log up to `(index, term)`.
    pub compact: Option<(LogIndex, Term)>,
    /// A snapshot from the leader was installed at `(index, term)`; the
    /// flag says whether stored entries after it stay.
    pub install: Option<(LogIndex, Term, bool)>,
    /// The log is whole again: drop its repairing mark
    /// ([`Wal::finish_repair`]) once this request's batch is durable.
    pub finish_repair: bool,
    /// Told the outcome after the covering fsync (or the failure).
    pub done: Completion,
}

impl WriteRequest {
    fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::size_bytes).sum::<usize>() + 32
    }
}

/// Settings of the storage thread.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// Requests waiting before `submit` blocks.
    pub queue_depth: usize,
    /// Bytes of entries written per fsync at most (one request is never split).
    pub max_batch_bytes: usize,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            queue_depth: 4096,
            max_batch_bytes: 4 << 20,
        }
    }
}

/// Counters of the storage thread.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Batches synced (fsyncs).
    pub batches: AtomicU64,
    /// Requests completed successfully.
    pub requests: AtomicU64,
    /// Entries made durable.
    pub entries: AtomicU64,
    /// Total time spent in write + fsync, in microseconds.
    pub sync_micros: AtomicU64,
}

/// Group commit: one storage thread, many writes per fsync.
///
/// Owns: the thread that owns the [`Wal`] and the bounded queue in front of
/// it. Writers submit [`WriteRequest`]s; the thread takes the first waiting
/// request, then every other request already queued (up to
/// `max_batch_bytes`), appends them all in order, syncs once, and then
/// tells every writer the outcome. Requests that arrive during an fsync wait
/// for the next one, so under load each fsync carries many writes.
///
/// Invariants:
/// 1. A writer is told `Ok` only after the fsync that covers its write
///    returned successfully; on any error it is told `Err` (its write may or
///    may not be on disk: the outcome is unknown, never "durable").
/// 2. Requests are applied in submission order.
/// 3. After a write or sync error every later request fails at once: the
///    log must be reopened (see [`Wal`] invariant 3).
/// 4. The queue holds at most `queue_depth` requests; `submit` blocks
///    beyond that (backpressure), it never grows memory without bound.
pub struct GroupCommit<V: Vfs> {
    tx: Option<SyncSender<WriteRequest>>,
    thread: Option<JoinHandle<Wal<V>>>,
    stats: Arc<GroupStats>,
    failure: Arc<Mutex<Option<String>>>,
}

/// The storage thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the storage thread has stopped")]
pub struct Stopped;

impl<V: Vfs> GroupCommit<V> {
    /// Starts the storage thread, which takes ownership of `wal`.
    pub fn start(wal: Wal<V>, opts: GroupOptions) -> GroupCommit<V> {
        let (tx, rx) = std::sync::mpsc::sync_channel(opts.queue_depth.max(1));
        let stats = Arc::new(GroupStats::default());
        let failure = Arc::new(Mutex::new(wal.failure().map(str::to_string)));
        let (s, f) = (stats.clone(), failure.clone());
        let thread = std::thread::Builder::new()
            .name("ha-wal".into())
            .spawn(move || run(wal, rx, opts, s, f))
            .expect("spawn the storage thread");
        GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            failure,
        }
    }

    /// Queues a request; blocks while the queue is full.
    pub fn submit(&self, req: WriteRequest) -> Result<(), Stopped> {
        let tx = self.tx.as_ref().ok_or(Stopped)?;
        match tx.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(req)) => tx.send(req).map_err(|_| Stopped),
            Err(TrySendError::Disconnected(_)) => Err(Stopped),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Why the log stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Finishes queued requests, stops the thread and returns the log.
    pub fn stop(mut self) -> Wal<V> {
        self.tx.take();
        self.thread
            .take()
            .expect("joined once")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl<V: Vfs> Drop for GroupCommit<V> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<V: Vfs>(
    mut wal: Wal<V>,
    rx: Receiver<WriteRequest>,
    opts: GroupOptions,
    stats: Arc<GroupStats>,
    failure: Arc<Mutex<Option<String>>>,
) -> Wal<V> {
    while let Ok(first) = rx.recv() {
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while bytes < opts.max_batch_bytes {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.bytes();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // Each request's own error (a refused append), if any.
        let mut own: Vec<Option<Arc<WalError>>> = Vec::with_capacity(batch.len());
        let mut entries = 0u64;
        for r in &batch {
            let res = (|| {
                if let Some((i, t, keep)) = r.install {
                    wal.install_snapshot(i, t, keep)?;
                }
                wal.append(&r.entries)?;
                if let Some(hs) = r.hard_state {
                    wal.save_hard_state(hs)?;
                }
                if let Some((i, t)) = r.compact {
                    wal.compact(i, t)?;
                }
                Ok::<(), WalError>(())
            })();
            entries += r.entries.len() as u64;
            own.push(res.err().map(Arc::new));
        }
        let mut synced = wal.sync().map_err(Arc::new);
        if synced.is_ok() && batch.iter().any(|r| r.finish_repair) {
            // Only once everything before it is durable.
            synced = wal.finish_repair().map_err(Arc::new);
        }
        stats
            .sync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if synced.is_ok() {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.entries.fetch_add(entries, Ordering::Relaxed);
        }
        if let Some(f) = wal.failure() {
            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.to_string());
        }
        for (r, own) in batch.into_iter().zip(own) {
            let outcome = match (own, &synced) {
                (Some(e), _) => Err(e),
                (None, Err(e)) => Err(e.clone()),
                (None, Ok(())) => {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            };
            (r.done)(outcome);
        }
    }
    wal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::SimFs;
    use crate::storage::wal::WalOptions;
    use crate::types::EntryPayload;
    use std::path::Path;

    fn entry(i: u64) -> Entry {
        Entry {
            index: LogIndex(i),
            term: Term(1),
            payload: EntryPayload::Command(bytes::Bytes::from(vec![i as u8; 16])),
        }
    }

    fn request(i: u64, tx: std::sync::mpsc::Sender<(u64, WriteResult)>) -> WriteRequest {
        WriteRequest {
            finish_repair: false,
            entries: vec![entry(i)],
            hard_state: None,
            compact: None,
            install: None,
            done: Box::new(move |r| {
                let _ = tx.send((i, r));
            }),
        }
    }

    #[test]
    fn queued_writes_share_one_fsync_and_all_are_told() {
        let fs = SimFs::new();
        let (wal, _) = Wal::open(fs.clone(), Path::new("/w"), WalOptions::default()).unwrap();
        let syncs_before = fs.syncs();
        let g = GroupCommit::start(wal, GroupOptions::default());
        let (tx, rx) = std::sync::mpsc::channel();
        // The first writer's completion holds the storage thread until the
        // other 199 requests are queued behind it.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first_tx = tx.clone();
        g.submit(WriteRequest {
            finish_repair: false,
            entries: vec![entry(1)],
            hard_state: None,
            compact: None,
            install: None,
            done: Box::new(move |r| {
                release_rx.recv().unwrap();
                first_tx.send((1, r)).unwrap();
            }),
        })
        .unwrap();
        for i in 2..=200 {
            g.submit(request(i, tx.clone())).unwrap();
        }
        release_tx.send(()).unwrap();
        let mut got: Vec<u64> = (0..200)
            .map(|_| rx.recv().unwrap())
            .map(|(i, r)| {
                r.unwrap();
                i
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, (1..=200).collect::<Vec<_>>());
        // The first request's batch, then everything queued behind it.
        let batches = g.stats().batches.load(Ordering::Relaxed);
        assert!(batches <= 2, "{batches} fsyncs for 200 writes");
        let wal = g.stop();
        assert_eq!(wal.last_index(), LogIndex(200));
        assert_eq!(fs.syncs() - syncs_before, batches);
    }

    #[test]
    fn after_a_failed_fsync_nobody_is_told_ok() {
        let fs = SimFs::new();
        let (wal, _) = Wal::open(fs.clone(), Path::new("/w"), WalOptions::default()).unwrap();
        let g = GroupCommit::start(wal, GroupOptions::default());
        let (tx, rx) = std::sync::mpsc::channel();
        g.submit(request(1, tx.clone())).unwrap();
        assert!(rx.recv().unwrap().1.is_ok());
        fs.set_fail_sync(true);
        g.submit(request(2, tx.clone())).unwrap();
        assert!(rx.recv().unwrap().1.is_err());
        fs.set_fail_sync(false);
        g.submit(request(3, tx.clone())).unwrap();
        let (_, r) = rx.recv().unwrap();
        assert!(
            matches!(r.as_ref().map_err(|e| &**e), Err(WalError::Failed(_))),
            "{r:?}"
        );
        assert!(g.failure().unwrap().contains("fsync failed"));
    }

    #[test]
    fn a_refused_append_fails_only_its_own_request() {
        let fs = SimFs::new();
        let (wal, _) = Wal::open(fs, Path::new("/w"), WalOptions::default()).unwrap();
        let g = GroupCommit::start(wal, GroupOptions::default());
        let (tx, rx) = std::sync::mpsc::channel();
        g.submit(request(1, tx.clone())).unwrap();
        g.submit(request(5, tx.clone())).unwrap(); // a gap
        g.submit(request(2, tx.clone())).unwrap();
        let mut results: Vec<(u64, bool)> = (0..3)
            .map(|_| rx.recv().unwrap())
            .map(|(i, r)| (i, r.is_ok()))
            .collect();
        results.sort_unstable();
        assert_eq!(results, vec![(1, true), (2, true), (5, false)]);
        assert_eq!(g.stop().last_index(), LogIndex(2));
    }
}
