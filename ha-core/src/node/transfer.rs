//! The node task's side of a leadership transfer: starting it in the core
//! and answering the callers waiting for it.
//!
//! Owns: the callers of [`NodeHandle::transfer_leadership`](super::NodeHandle::transfer_leadership)
//! while their transfer runs. The core decides everything; this only
//! watches its role and leader after each step.
//!
//! Invariants: a caller is answered `Ok(leader)` only once this node no
//! longer leads and has heard of another leader (it saw that leader's
//! messages in a higher term), and, if the caller named the target, only
//! if that leader is the target; `TransferFailed` once another node took
//! over, once this node leads without a transfer (the core abandoned it, or
//! this node was elected again), or when no leader was heard of within two
//! election timeouts. Every waiting caller is answered when the node stops.

use super::handle::{NodeError, TransferReply};
use super::task::NodeTask;
use crate::raft::{RoleKind, TransferError};
use crate::storage::vfs::Vfs;
use crate::types::{NodeId, Term};

/// A caller waiting for its transfer to end.
pub(super) struct TransferWait {
    /// The target the core chose.
    to: NodeId,
    /// Whether the caller named it (then only it leading is success).
    named: bool,
    /// The leader's term when the transfer started.
    term: Term,
    /// Ticks since then.
    ticks: u64,
    reply: TransferReply,
}

impl<V: Vfs> NodeTask<V> {
    /// Starts a transfer in the core; the caller waits for its end.
    pub(super) fn start_transfer(&mut self, to: Option<NodeId>, reply: TransferReply) {
        match self.raft.transfer_leadership(to) {
            Ok(target) => {
                tracing::info!(node = %self.raft.id(), %target, "handing leadership over");
                self.transfer_waits.push(TransferWait {
                    to: target,
                    named: to.is_some(),
                    term: self.raft.term(),
                    ticks: 0,
                    reply,
                });
            }
            Err(TransferError::NotLeader { leader }) => {
                let _ = reply.send(Err(NodeError::NotLeader { leader }));
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::TransferRefused(e)));
            }
        }
    }

    /// Counts a tick for every waiting caller.
    pub(super) fn tick_transfers(&mut self) {
        for w in &mut self.transfer_waits {
            w.ticks += 1;
        }
    }

    /// Answers the callers whose transfer ended (see the invariants).
    pub(super) fn settle_transfers(&mut self) {
        if self.transfer_waits.is_empty() {
            return;
        }
        let me = self.raft.id();
        let leading = self.raft.role() == RoleKind::Leader;
        let (term, transferring) = (self.raft.term(), self.raft.transferring_to());
        let other_leader = self.raft.leader().filter(|l| !leading && *l != me);
        // Two election timeouts without a leader heard of: give up.
        let patience = self
            .raft
            .config()
            .election_timeout_max_ticks
            .saturating_mul(2);
        let waits = std::mem::take(&mut self.transfer_waits);
        for w in waits {
            // Leading again without this transfer: the core abandoned it,
            // or this node won a later election.
            let ended = leading && (term != w.term || transferring != Some(w.to));
            let answer = match other_leader {
                Some(l) if l == w.to || !w.named => Some(Ok(l)),
                Some(l) => Some(Err(NodeError::TransferFailed {
                    to: w.to,
                    leader: Some(l),
                })),
                None if ended => Some(Err(NodeError::TransferFailed {
                    to: w.to,
                    leader: Some(me),
                })),
                None if !leading && w.ticks > patience => Some(Err(NodeError::TransferFailed {
                    to: w.to,
                    leader: None,
                })),
                None => None,
            };
            match answer {
                Some(a) => {
                    match &a {
                        Ok(l) => tracing::info!(node = %me, leader = %l, "leadership handed over"),
                        Err(e) => tracing::warn!(node = %me, "{e}"),
                    }
                    let _ = w.reply.send(a);
                }
                None => self.transfer_waits.push(w),
            }
        }
    }

    /// Answers every waiting caller with `error` (the node stops).
    pub(super) fn fail_transfers(&mut self, error: &NodeError) {
        for w in self.transfer_waits.drain(..) {
            let _ = w.reply.send(Err(error.clone()));
        }
    }
}
