//! Making each Ready durable: the storage backends (in memory, or the
//! write-ahead log behind the group-commit thread), the Ready in flight,
//! and the node task's side of the pipeline ([`NodeIo`]).
//!
//! Invariant: at most one Ready is being persisted at a time; its
//! `persisted_messages`, applications and client answers happen only after
//! its entries and hard state are durable (the order of
//! [`super::handle_ready`]).

use super::handle::*;
use super::task::*;

use bytes::Bytes;

use super::pipeline::{PipelineIo, Write};
use crate::raft::Message;
use crate::sm::Applier;
use crate::storage::vfs::Vfs;
use crate::storage::{GroupCommit, WriteRequest};
use crate::storage::{LogStore, MemLogStore};
use crate::transport::Transport;
use crate::types::{Entry, EntryPayload, LogIndex, NodeId};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(super) enum Backend<V: Vfs> {
    Memory(MemLogStore),
    Group(GroupCommit<V>),
    /// After the node stopped: the storage thread is joined.
    Stopped,
}

/// The driver's side of the Ready in flight (the pipeline holds the rest).
pub(super) struct InFlight {
    pub(super) started: Instant,
    /// The installed snapshot's state, read off the node task.
    pub(super) install_state: Option<Vec<u8>>,
    /// What to persist, held while the snapshot is promoted and read.
    pub(super) write: Option<Write>,
    /// Something was written and synced for it (else `fsync_latency`
    /// takes no sample).
    pub(super) synced: bool,
}

/// The node task's side of the pipeline: the transport, the applier, the
/// clients' reply channels.
pub(super) struct NodeIo<'a> {
    pub(super) transport: &'a dyn Transport,
    pub(super) applier: &'a mut dyn Applier,
    pub(super) metrics: &'a SharedMetrics,
    /// Peers the core asked to send a snapshot to.
    pub(super) snapshot_requests: Vec<NodeId>,
}

impl<'a> NodeIo<'a> {
    pub(super) fn new(
        transport: &'a dyn Transport,
        applier: &'a mut dyn Applier,
        metrics: &'a SharedMetrics,
    ) -> NodeIo<'a> {
        NodeIo {
            transport,
            applier,
            metrics,
            snapshot_requests: Vec::new(),
        }
    }
}

impl PipelineIo for NodeIo<'_> {
    type Reply = (ProposeReply, Instant);
    type Read = PendingRead;
    fn send(&mut self, msg: Message) {
        self.transport.send(msg);
    }
    fn send_snapshot(&mut self, peer: NodeId) {
        self.snapshot_requests.push(peer);
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), super::RestoreError> {
        Ok(self.applier.restore(state)?)
    }
    fn apply(&mut self, e: &Entry) -> Option<Bytes> {
        self.metrics.applied_entries.fetch_add(1, Ordering::Relaxed);
        match &e.payload {
            EntryPayload::Command(c) => Some(self.applier.apply(e.index, e.term, c)),
            _ => None,
        }
    }
    fn answer(&mut self, (reply, since): Self::Reply, r: Result<(LogIndex, Bytes), NodeError>) {
        self.metrics.commit_latency.observe(since.elapsed());
        let _ = reply.send(r);
    }
    fn serve_read(&mut self, read: PendingRead, index: LogIndex) {
        match read {
            PendingRead::Barrier(reply) => {
                let _ = reply.send(Ok(index));
            }
            PendingRead::Query(body, reply) => {
                let _ = reply.send(
                    self.applier
                        .query(&body)
                        .map_err(|e| NodeError::Query(e.to_string())),
                );
            }
        }
    }
    fn fail_read(&mut self, read: PendingRead, error: NodeError) {
        read.fail(error);
    }
}

impl<V: Vfs> NodeTask<V> {
    pub(super) fn start_ready(&mut self) -> Result<(), String> {
        let mut io = NodeIo::new(&*self.transport, &mut *self.applier, &self.metrics);
        let Some(write) = self.pipeline.start(&mut self.raft, &mut io) else {
            return Ok(());
        };
        for peer in io.snapshot_requests {
            self.send_snapshot(peer);
        }
        let install = write.install;
        self.in_flight = Some(InFlight {
            started: Instant::now(),
            install_state: None,
            write: Some(write),
            synced: false,
        });
        if let Some(i) = install {
            // Raft accepted the received snapshot: only now does its file
            // leave the staging area (a refused one never becomes "the
            // newest" on restart), before the log records the install.
            // File work (a rename, a directory sync, reading the whole
            // state) happens off the node task; the write follows.
            let (files, tx) = (self.snapshots.clone(), self.event_sender());
            self.spawn_file_work(move || {
                let r = files
                    .promote(i.index, i.term)
                    .and_then(|()| files.load_state(i.index, i.term));
                let _ = tx.send(Event::InstallLoaded(r.map_err(|e| e.to_string())));
            });
            return Ok(());
        }
        self.persist_in_flight()
    }

    /// The received snapshot is promoted and its state read: persist the
    /// Ready that installs it.
    pub(super) fn on_install_loaded(&mut self, r: Result<Vec<u8>, String>) -> Result<(), String> {
        let state = r.map_err(|e| format!("cannot install the received snapshot: {e}"))?;
        if let Some(f) = &mut self.in_flight {
            f.install_state = Some(state);
        }
        self.persist_in_flight()
    }

    /// Persists the in-flight Ready's writes (in memory at once, or through
    /// the group-commit thread, which reports back).
    pub(super) fn persist_in_flight(&mut self) -> Result<(), String> {
        let Some(f) = self.in_flight.as_mut() else {
            return Ok(());
        };
        // Only the commit index moved: not written (nor synced) on its own
        // (see `Write::hard_state_may_wait`; half the fsyncs of a lightly
        // loaded node were these).
        let commit_only = f
            .write
            .as_ref()
            .is_some_and(|w| w.hard_state_may_wait(&self.raft, self.stored_hard_state));
        let Write {
            install,
            entries,
            hard_state,
        } = f.write.take().unwrap_or_default();
        let nothing_to_write = entries.is_empty() && hard_state.is_none() && install.is_none();
        match &mut self.storage {
            Backend::Memory(m) => {
                if let Some(i) = install {
                    m.install_snapshot(i.index, i.term, i.keep_suffix)
                        .map_err(|e| e.to_string())?;
                }
                m.append(&entries).map_err(|e| e.to_string())?;
                if let Some(hs) = hard_state {
                    m.save_hard_state(hs).map_err(|e| e.to_string())?;
                }
                m.sync().map_err(|e| e.to_string())?;
                self.finish_ready()?;
            }
            Backend::Group(_) if nothing_to_write => self.finish_ready()?,
            Backend::Group(g) => {
                let tx = self.events.clone().expect("set when the task starts");
                // The first write after the core's repair is complete carries
                // every hard state it changed: the mark can go with it (the
                // storage drops it after the write's fsync), so a busy node,
                // whose pipeline is never idle at a tick, is not held back.
                let finish_repair =
                    self.repairing && !self.dropping_repair_mark && self.raft.repair_complete();
                if commit_only && !finish_repair {
                    self.unwritten_hard_state = hard_state;
                    return self.finish_ready();
                }
                // A newer hard state supersedes the unwritten one.
                let unwritten = self.unwritten_hard_state.take();
                let hard_state = hard_state.or(unwritten);
                if let Some(hs) = hard_state {
                    self.stored_hard_state = hs;
                }
                if finish_repair {
                    self.dropping_repair_mark = true;
                    self.mark_in_ready = true;
                }
                if let Some(f) = self.in_flight.as_mut() {
                    f.synced = true;
                }
                g.submit(WriteRequest {
                    finish_repair,
                    entries,
                    hard_state,
                    compact: None,
                    install: install.map(|i| (i.index, i.term, i.keep_suffix)),
                    done: Box::new(move |r| {
                        let _ = tx.send(Event::Persisted(r.map_err(|e| e.to_string())));
                    }),
                })
                .map_err(|e| e.to_string())?;
            }
            Backend::Stopped => return Err("the node has stopped".into()),
        }
        Ok(())
    }

    /// The in-flight Ready is durable: do the rest of its duties.
    pub(super) fn finish_ready(&mut self) -> Result<(), String> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let installed = self.pipeline.installing();
        if f.synced || matches!(self.storage, Backend::Memory(_)) {
            self.metrics.fsync_latency.observe(f.started.elapsed());
        }
        let mut io = NodeIo::new(&*self.transport, &mut *self.applier, &self.metrics);
        self.pipeline
            .finish(&mut self.raft, &mut io, f.install_state.as_deref())
            .map_err(|e| super::pipeline::with_causes(&e))?;
        if let Some(i) = installed {
            self.last_snapshot = self.last_snapshot.max(i.index);
            tracing::info!(node = %self.raft.id(), index = %i.index, "installed a snapshot from the leader");
        }
        self.maybe_snapshot();
        Ok(())
    }
}
