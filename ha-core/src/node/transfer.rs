//! The node task's side of a leadership transfer: starting it in the core
//! and answering the callers waiting for it.
//!
//! Owns: the callers of [`NodeHandle::transfer_leadership`](super::NodeHandle::transfer_leadership)
//! while their transfer runs. The core decides everything; this only
//! watches its role and leader after each step.
//!
//! Also owns the writes that arrive while this node hands leadership over:
//! they are held (at most [`MAX_HELD_WRITES`]; past it, `Busy`) instead of
//! bounced, since the hand-off is over within a few round trips. Each is
//! answered `NotLeader` naming the new leader once this node knows it (the
//! client goes there at once), proposed here if this node leads on (the
//! transfer failed), or, one minimum election timeout (at most 500 ms)
//! after the first was held, well within a client's attempt, answered
//! `Busy` (this node still hands over) or `NotLeader` without a leader. None was appended anywhere, so each of these answers
//! is true: not applied.
//!
//! Invariants: a caller is answered `Ok(leader)` only once this node no
//! longer leads and has heard of another leader (it saw that leader's
//! messages in a higher term), and, if the caller named the target, only
//! if that leader is the target; `TransferFailed` once another node took
//! over, once this node leads without a transfer (the core abandoned it, or
//! this node was elected again), or when no leader was heard of within two
//! election timeouts. Every waiting caller is answered when the node stops.

use super::handle::{Command, NodeError, ProposeReply, TransferReply};
use super::task::NodeTask;
use crate::raft::{RoleKind, TransferError};
use crate::storage::vfs::Vfs;
use crate::types::{NodeId, Term};

/// Writes held at most while this node hands leadership over.
pub(super) const MAX_HELD_WRITES: usize = 4096;

/// The longest a write is held, in ms (less if the minimum election
/// timeout is shorter): well under a client's attempt timeout.
pub(super) const HELD_WRITES_PATIENCE_MS: u64 = 500;

/// Writes that arrived during a hand-over, and when the first did.
#[derive(Default)]
pub(super) struct HeldWrites {
    writes: Vec<(bytes::Bytes, ProposeReply)>,
    since: Option<std::time::Instant>,
}

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

    /// Holds a write refused because this node hands leadership over;
    /// `Busy` past [`MAX_HELD_WRITES`].
    pub(super) fn hold_write(&mut self, data: bytes::Bytes, reply: ProposeReply) {
        if self.held_writes.writes.len() >= MAX_HELD_WRITES {
            let _ = reply.send(Err(NodeError::Busy));
            return;
        }
        self.held_writes
            .since
            .get_or_insert_with(std::time::Instant::now);
        self.held_writes.writes.push((data, reply));
    }

    /// Answers (or proposes) the held writes once the hand-over ended (see
    /// the module docs).
    pub(super) fn settle_held_writes(&mut self) {
        if self.held_writes.writes.is_empty() {
            return;
        }
        let leading = self.raft.role() == RoleKind::Leader;
        // One minimum election timeout from the first held write, and at
        // most HELD_WRITES_PATIENCE: a transfer's target campaigns at once,
        // so a hand-off is over well within it, and the client's attempt
        // (1.5 s by default) is still waiting for the answer.
        let election = self.tick.saturating_mul(
            u32::try_from(self.raft.config().election_timeout_min_ticks).unwrap_or(u32::MAX),
        );
        let patience = election.min(std::time::Duration::from_millis(HELD_WRITES_PATIENCE_MS));
        let expired = self
            .held_writes
            .since
            .is_some_and(|t| t.elapsed() >= patience);
        if leading && self.raft.transferring_to().is_some() && !expired {
            return; // still handing over
        }
        let leader = self.raft.leader().filter(|l| *l != self.raft.id());
        if !leading && leader.is_none() && !expired {
            return; // the new leader is not known yet
        }
        let still_handing_over = leading && self.raft.transferring_to().is_some();
        let held = std::mem::take(&mut self.held_writes);
        for (data, reply) in held.writes {
            if still_handing_over {
                // Held too long: not appended, the client retries.
                let _ = reply.send(Err(NodeError::Busy));
            } else if leading {
                // The transfer failed: this node leads on and takes them.
                self.command(Command::Propose { data, reply });
            } else {
                let _ = reply.send(Err(NodeError::NotLeader { leader }));
            }
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

    /// Answers every waiting caller with `error` (the node stops), and
    /// every held write `NotLeader` (none was appended: the client may
    /// take it elsewhere).
    pub(super) fn fail_transfers(&mut self, error: &NodeError) {
        for w in self.transfer_waits.drain(..) {
            let _ = w.reply.send(Err(error.clone()));
        }
        let leader = self.raft.leader().filter(|l| *l != self.raft.id());
        for (_, reply) in std::mem::take(&mut self.held_writes).writes {
            let _ = reply.send(Err(NodeError::NotLeader { leader }));
        }
    }
}
