//! The node task's side of a membership change: starting it in the core
//! and answering the caller once it is done.
//!
//! Owns: the callers of [`NodeHandle::change_membership`](super::NodeHandle::change_membership)
//! while their change runs.
//!
//! Invariants: a caller is answered `Ok` only once the configuration
//! committed on this node is not joint and holds the change (committed
//! entries are never lost, so the change is in force for good); `NotLeader`
//! once this node stops leading before that (the change may or may not
//! complete under the next leader; asking it again is harmless, since a
//! change that holds already is answered at once). Every waiting caller is
//! answered when the node stops.

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
        match self.raft.change_membership(change) {
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
                let _ = w.reply.send(Err(NodeError::NotLeader { leader }));
            } else {
                self.conf_waits.push(w);
            }
        }
    }

    /// Answers every waiting caller with `error` (the node stops).
    pub(super) fn fail_conf_changes(&mut self, error: &NodeError) {
        for w in self.conf_waits.drain(..) {
            let _ = w.reply.send(Err(error.clone()));
        }
    }
}
