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
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::raft::Message;
use crate::types::NodeId;

/// Moves messages to other nodes (see the module docs).
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for its recipient; drops it if that is not possible now.
    fn send(&self, msg: Message);
}

#[derive(Default)]
struct Hub {
    inboxes: BTreeMap<NodeId, mpsc::Sender<Message>>,
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
    pub fn register(&self, id: NodeId, inbox: mpsc::Sender<Message>) {
        self.lock().inboxes.insert(id, inbox);
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
    fn send(&self, msg: Message) {
        let hub = self.net.lock();
        if hub.down.contains(&self.me) || hub.down.contains(&msg.to) {
            return;
        }
        if let Some(inbox) = hub.inboxes.get(&msg.to) {
            let _ = inbox.try_send(msg);
        }
    }
}
