//! How Raft messages travel between nodes.
//!
//! Owns: the [`Transport`] trait every network implements (ha-quic over QUIC,
//! [`MemNetwork`] in memory), and the in-memory network used by tests and
//! benchmarks.
//!
//! Contract of a transport:
//! 1. `send` never blocks and never fails loudly: Raft tolerates lost
//!    messages, so a full queue or a dead peer drops the message (and the
//!    core resends what matters).
//! 2. A transport delivers a message only to the node named in `to`, and the
//!    receiving side stamps nothing: the core checks `from` itself, and
//!    ha-quic checks it against the sender's certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::raft::Message;
use crate::types::NodeId;

/// Called once with whether the receiver accepted the whole snapshot. A
/// transport must call it exactly once and within bounded time (its own
/// deadlines); the node counts a transfer unreported after
/// `NodeOptions::snapshot_transfer_timeout` as failed regardless.
pub type SnapshotDone = Box<dyn FnOnce(bool) + Send>;

/// Moves messages to other nodes (see the module docs).
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for its recipient; drops it if that is not possible now.
    fn send(&self, msg: Message);

    /// Streams a snapshot file to `to` in bounded pieces; once the receiver
    /// has verified it, the receiver steps `install` (an `InstallSnapshot`
    /// from the sender). Calls `done` with whether the bytes arrived. The
    /// default cannot send snapshots and reports failure at once.
    fn send_snapshot(
        &self,
        to: NodeId,
        snapshot: crate::node::OutgoingSnapshot,
        install: Message,
        done: SnapshotDone,
    ) {
        let _ = (to, snapshot, install);
        done(false);
    }

    /// The configuration the node took on says member `id` listens at
    /// `addr` (`HOST:PORT`, checked by
    /// [`check_addr`](crate::raft::check_addr)): reach it there from now
    /// on. Called when a member is added or its address changes. The
    /// default does nothing (a transport that knows its peers otherwise).
    fn set_peer_addr(&self, id: NodeId, addr: &str) {
        let _ = (id, addr);
    }

    /// Node `id`'s removal from the configuration is committed and nothing
    /// more is sent to it: the transport may forget it. The default does
    /// nothing.
    fn forget_peer(&self, id: NodeId) {
        let _ = id;
    }
}

#[derive(Default)]
struct Hub {
    inboxes: BTreeMap<NodeId, crate::node::Inbox>,
    sinks: BTreeMap<NodeId, Arc<dyn crate::node::SnapshotFiles>>,
    down: BTreeSet<NodeId>,
}

/// An in-memory network: every node's inbox in one table. Clones share it.
#[derive(Clone, Default)]
pub struct MemNetwork {
    hub: Arc<Mutex<Hub>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    /// Registers node `id`'s inbox.
    pub fn register(&self, id: NodeId, inbox: crate::node::Inbox) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// Registers where node `id` keeps snapshots it receives.
    pub fn register_snapshots(&self, id: NodeId, files: Arc<dyn crate::node::SnapshotFiles>) {
        self.lock().sinks.insert(id, files);
    }

    /// The transport node `id` sends through.
    pub fn transport(&self, id: NodeId) -> MemTransport {
        MemTransport {
            net: self.clone(),
            me: id,
        }
    }

    /// Cuts node `id` off (both ways) or reconnects it.
    pub fn set_down(&self, id: NodeId, down: bool) {
        let mut hub = self.lock();
        if down {
            hub.down.insert(id);
        } else {
            hub.down.remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One node's handle on a [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    net: MemNetwork,
    me: NodeId,
}

impl Transport for MemTransport {
    fn send_snapshot(
        &self,
        to: NodeId,
        mut snapshot: crate::node::OutgoingSnapshot,
        install: Message,
        done: SnapshotDone,
    ) {
        let (sink, inbox) = {
            let hub = self.net.lock();
            if hub.down.contains(&self.me) || hub.down.contains(&to) {
                drop(hub);
                return done(false);
            }
            (hub.sinks.get(&to).cloned(), hub.inboxes.get(&to).cloned())
        };
        let (Some(sink), Some(inbox)) = (sink, inbox) else {
            return done(false);
        };
        // Copy in bounded pieces on a thread of its own, like a real stream.
        std::thread::spawn(move || {
            let copied = (|| -> Result<(), String> {
                let mut w = sink
                    .begin(snapshot.index, snapshot.term)
                    .map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = snapshot.data.read(&mut buf).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    w.write(&buf[..n]).map_err(|e| e.to_string())?;
                }
                w.finish().map_err(|e| e.to_string())
            })();
            let ok = copied.is_ok() && inbox.try_deliver(install).is_ok();
            done(ok);
        });
    }

    fn send(&self, msg: Message) {
        let hub = self.net.lock();
        if hub.down.contains(&self.me) || hub.down.contains(&msg.to) {
            return;
        }
        if let Some(inbox) = hub.inboxes.get(&msg.to) {
            let _ = inbox.try_deliver(msg);
        }
    }
}
