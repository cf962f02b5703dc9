//! The peers an endpoint knows, which change while it runs (membership
//! changes): each one's address and its own limits, a share of
//! `max_connections_per_peer` connection slots, a `peer_budget_bytes`
//! frame budget and one snapshot receive slot, and, on the sending side,
//! its two send queues (see `outbound`).
//!
//! Invariants:
//! 1. A peer's limits are created once, when it is added, and are dropped
//!    with it: what its connections hold (permits, bytes) is released as
//!    they end, whatever the table holds by then.
//! 2. Removing a peer (or moving it to another address) drops its send
//!    queues, so its sender tasks end; its new connections, streams and
//!    snapshots are refused; and the connections it has open are closed
//!    (each watches its peer entry's `gone` signal), so nothing it sends
//!    is delivered after its removal, and nothing it holds outlives it.
//! 3. The table's locks are held only to read or change the map, never
//!    across an await.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use ha_core::types::NodeId;
use tokio::sync::Semaphore;

use super::QuicLimits;

/// One peer: where it listens, and its own limits.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    /// `max_connections_per_peer`.
    pub(super) connections: Arc<Semaphore>,
    /// `peer_budget_bytes`.
    pub(super) budget: Arc<Semaphore>,
    /// One snapshot transfer at a time from this peer, so one peer cannot
    /// hold every receive slot.
    pub(super) snapshot_slot: Arc<Semaphore>,
    /// Set once this entry is removed or replaced (invariant 2).
    pub(super) gone: Arc<tokio::sync::watch::Sender<bool>>,
    /// Learned from its connection, not named by a configuration.
    pub(super) learned: bool,
}

impl Peer {
    fn new(addr: SocketAddr, limits: &QuicLimits) -> Peer {
        Peer {
            addr,
            connections: Arc::new(Semaphore::new(limits.max_connections_per_peer)),
            budget: Arc::new(Semaphore::new(limits.peer_budget_bytes)),
            snapshot_slot: Arc::new(Semaphore::new(1)),
            gone: Arc::new(tokio::sync::watch::Sender::new(false)),
            learned: false,
        }
    }
}

/// The peers (see the module docs).
pub(super) struct PeerTable {
    map: RwLock<BTreeMap<NodeId, Peer>>,
}

impl PeerTable {
    /// The peers of `addrs`, but `me`.
    pub(super) fn new(
        me: NodeId,
        addrs: &BTreeMap<NodeId, SocketAddr>,
        limits: &QuicLimits,
    ) -> PeerTable {
        PeerTable {
            map: RwLock::new(
                addrs
                    .iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(id, addr)| (*id, Peer::new(*addr, limits)))
                    .collect(),
            ),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, Peer>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Peer `id`, if known.
    pub(super) fn get(&self, id: NodeId) -> Option<Peer> {
        self.read().get(&id).cloned()
    }

    /// Where peer `id` listens, if known.
    pub(super) fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.read().get(&id).map(|p| p.addr)
    }

    /// The known peers' ids.
    pub(super) fn ids(&self) -> Vec<NodeId> {
        self.read().keys().copied().collect()
    }

    /// Whether some peer listens on `ip` (a peer dials from the address
    /// it listens on).
    pub(super) fn has_ip(&self, ip: IpAddr) -> bool {
        self.read()
            .values()
            .any(|p| p.addr.ip().to_canonical() == ip)
    }

    /// Bytes held in unfinished frames, over all peers.
    pub(super) fn bytes_held(&self, budget: usize) -> usize {
        self.read()
            .values()
            .map(|p| budget - p.budget.available_permits())
            .sum()
    }

    /// Adds peer `id` at `addr`; true if it is new or its address changed
    /// (its limits start afresh then).
    pub(super) fn insert(&self, id: NodeId, addr: SocketAddr, limits: &QuicLimits) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get_mut(&id)
            && p.addr == addr
        {
            // Named by a configuration (or by hand) now: not a learned one.
            p.learned = false;
            return false;
        }
        if let Some(old) = map.insert(id, Peer::new(addr, limits)) {
            old.gone.send_replace(true);
        }
        true
    }

    /// Adds peer `id` at `addr`, marked as learned, only if it is unknown
    /// and fewer than `cap` learned peers are known (one check and insert
    /// under the lock); true if added.
    pub(super) fn insert_new(
        &self,
        id: NodeId,
        addr: SocketAddr,
        limits: &QuicLimits,
        cap: usize,
    ) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&id) || map.values().filter(|p| p.learned).count() >= cap {
            return false;
        }
        map.insert(
            id,
            Peer {
                learned: true,
                ..Peer::new(addr, limits)
            },
        );
        true
    }

    /// Forgets peer `id`, closing its connections; true if it was known.
    pub(super) fn remove(&self, id: NodeId) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.remove(&id) {
            Some(old) => {
                old.gone.send_replace(true);
                true
            }
            None => false,
        }
    }
}
