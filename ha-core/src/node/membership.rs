//! The node task's side of a membership change: starting it in the core
//! and answering the caller once it is done.
//!
//! Owns: the callers of [`NodeHandle::change_membership`](super::NodeHandle::change_membership)
//! while their change runs, and what the transport is told of the
//! members' addresses.
//!
//! Invariants: a caller is answered `Ok` only once the configuration
//! committed on this node is not joint and holds the change (committed
//! entries are never lost, so the change is in force for good);
//! `ChangeInDoubt` once this node stops leading before that (its entry may
//! or may not complete under the next leader: never "not applied"; asking
//! again is harmless, since a change that holds already is answered at
//! once). Every waiting caller is
//! answered when the node stops.
//!
//! The transport follows the configuration (`sync_peers`): a member's
//! address recorded in the configuration in force (committed or not) is
//! handed to it as soon as that configuration is taken on, so a node can
//! reach a member the moment it is added. A node is forgotten only once
//! its removal is committed (a committed configuration is never undone,
//! and an uncommitted one may be: forgetting early could leave a member
//! with no address) and, on a leader, once the core no longer sends to it
//! (a dropped node hears of its removal first, best effort).

use super::handle::{ConfReply, NodeError};
use super::task::NodeTask;
use crate::raft::{ConfChange, ConfChangeError};
use crate::storage::vfs::Vfs;

/// A caller waiting for its change.
pub(super) struct ConfWait {
    change: ConfChange,
    reply: ConfReply,
}

impl<V: Vfs> NodeTask<V> {
    /// Starts a change in the core; the caller waits for it to be done.
    pub(super) fn start_conf_change(&mut self, change: ConfChange, reply: ConfReply) {
        match self.raft.change_membership(change.clone()) {
            Ok(index) => {
                tracing::info!(node = %self.raft.id(), ?change, %index, "membership change started");
                self.conf_waits.push(ConfWait { change, reply });
            }
            Err(ConfChangeError::NotLeader { leader }) => {
                let _ = reply.send(Err(NodeError::NotLeader { leader }));
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::Membership(e)));
            }
        }
        self.settle_conf_changes();
    }

    /// Answers the callers whose change is done, or whose leader is gone.
    pub(super) fn settle_conf_changes(&mut self) {
        if self.conf_waits.is_empty() {
            return;
        }
        let committed = self.raft.membership_at(self.raft.commit_index()).clone();
        let leading = self.raft.is_leader();
        let leader = self.raft.leader();
        for w in std::mem::take(&mut self.conf_waits) {
            if !committed.is_joint() && w.change.holds_in(&committed) {
                tracing::info!(node = %self.raft.id(), change = ?w.change, "membership change done: {committed:?}");
                let _ = w.reply.send(Ok(committed.clone()));
            } else if !leading {
                let _ = w.reply.send(Err(NodeError::ChangeInDoubt { leader }));
            } else {
                self.conf_waits.push(w);
            }
        }
    }

    /// The committed configuration, if this node leads and has committed
    /// an entry of its term (a fresh leader's commit index may be behind
    /// its predecessor's, and with it the configuration it would report:
    /// `Busy` until then, which clients retry).
    pub(super) fn members(&self) -> Result<crate::raft::Membership, NodeError> {
        if !self.raft.is_leader() {
            return Err(NodeError::NotLeader {
                leader: self.raft.leader_hint(),
            });
        }
        if !self.raft.leads_with_current_commit() {
            return Err(NodeError::Busy);
        }
        Ok(self.raft.membership_at(self.raft.commit_index()).clone())
    }

    /// Tells the transport of members' new or moved addresses, and lets
    /// go of departed nodes (see the module docs). Costs one comparison of
    /// configurations per loop step when nothing changed.
    pub(super) fn sync_peers(&mut self) {
        let me = self.raft.id();
        let conf = self.raft.membership();
        if *conf != self.peers_conf {
            for (id, addr) in &conf.addrs {
                if *id != me && self.peers_conf.addrs.get(id) != Some(addr) {
                    tracing::info!(node = %me, peer = %id, %addr, "the configuration names a member's address");
                    self.transport.set_peer_addr(*id, addr);
                }
            }
            for gone in self.peers_conf.replication_targets() {
                if gone != me && !conf.is_member(gone) {
                    self.departing.insert(gone);
                }
            }
            self.peers_conf = conf.clone();
        }
        if self.departing.is_empty() {
            return;
        }
        let committed = self.raft.membership_at(self.raft.commit_index());
        let (raft, transport) = (&self.raft, &self.transport);
        self.departing.retain(|id| {
            if conf.is_member(*id) {
                return false; // In again (an uncommitted removal undone).
            }
            // Kept while its removal may be undone, while the leader
            // still tells it, and while it leads (a leader that removed
            // itself leads on until it has handed over).
            if committed.is_member(*id) || raft.tracks(*id) || raft.leader() == Some(*id) {
                return true;
            }
            tracing::info!(node = %me, peer = %id, "a removed node is forgotten");
            transport.forget_peer(*id);
            false
        });
    }

    /// Answers every waiting caller with `error` (the node stops).
    pub(super) fn fail_conf_changes(&mut self, error: &NodeError) {
        for w in self.conf_waits.drain(..) {
            let _ = w.reply.send(Err(error.clone()));
        }
    }
}
