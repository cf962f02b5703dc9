//! Leadership transfer (dissertation §3.10): the leader stops taking
//! proposals, brings the target's log up to its own, then tells it to
//! campaign at once ([`Body::TimeoutNow`]); the target's pre-votes and
//! votes carry a flag that lets voters whose logs are not ahead of it
//! answer despite the leader lease. With PreVote on, the target moves its
//! term only once a majority would vote for it, so a stale `TimeoutNow`
//! disturbs nobody.
//!
//! Invariants:
//! 1. While a transfer runs, the leader appends nothing new
//!    ([`ProposeError::Transferring`]), so the target's log can catch up
//!    with a log that no longer grows; nothing already appended is lost.
//! 2. `TimeoutNow` goes only to a voter whose acknowledged log ends at the
//!    leader's last index, so the target wins against any voter the leader
//!    could win against (its log is at least as up to date).
//! 3. A transfer that has not ended within an election timeout of its
//!    start (the target is down, or lost the election) is abandoned, and
//!    the leader takes proposals again; asking again for the same target
//!    resends `TimeoutNow` but does not extend it. A transfer never
//!    outlives this leader's term: the leader state that holds it goes
//!    when the leader steps down.
//! 5. The leader keeps replicating to the target and heartbeating it while
//!    it campaigns (CheckQuorum and ReadIndex count it as usual); the
//!    target's pre-vote round is not ended by the same-term appends and
//!    heartbeats of the leader that asked for it.
//! 4. The target obeys `TimeoutNow` only from the leader it follows, in
//!    that leader's term, and only while its log ends at the leader's last
//!    entry named in it: a copy delayed past the transfer's end, when the
//!    leader has appended more, starts no election.

use super::*;

/// A transfer in progress on a leader.
#[derive(Debug)]
pub(super) struct Transfer {
    /// The voter leadership goes to.
    pub(super) to: NodeId,
    /// Ticks since the transfer started (invariant 3).
    pub(super) elapsed: u64,
    /// Whether `TimeoutNow` was sent (once per request: asking again for
    /// the same target sends it again, in case it was lost).
    pub(super) sent: bool,
}

/// Why a leadership transfer could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader hands leadership over.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The named node is not a voter of the configuration (of its incoming
    /// half, while joint), or is this leader itself.
    #[error("node {0} is not another voter of this cluster")]
    NotAVoter(NodeId),
    /// No other voter exists to take over (a one-voter cluster).
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    /// A transfer to another node is in progress.
    #[error("a leadership transfer to {to} is in progress")]
    InProgress {
        /// That transfer's target.
        to: NodeId,
    },
}

impl Raft {
    /// Starts handing leadership to `to`, or, with `None`, to the voter
    /// whose acknowledged log is longest among those heard from lately and
    /// not repairing their storage (the lowest id among equals).
    /// Returns the target. Until the transfer ends, proposals are refused
    /// with [`ProposeError::Transferring`] (reads go on); it ends when
    /// another leader is heard, or is abandoned after an election timeout.
    /// Asking again for the same target is not an error.
    pub fn transfer_leadership(&mut self, to: Option<NodeId>) -> Result<NodeId, TransferError> {
        let me = self.config.id;
        let Role::Leader(l) = &mut self.role else {
            return Err(TransferError::NotLeader {
                leader: self.leader_hint(),
            });
        };
        // Voters of the incoming configuration only: one of a joint
        // configuration's outgoing half is on its way out.
        let voters: Vec<NodeId> = self
            .log
            .conf()
            .1
            .voters
            .iter()
            .copied()
            .filter(|v| *v != me)
            .collect();
        let target = match to {
            Some(t) if voters.contains(&t) => t,
            Some(t) => return Err(TransferError::NotAVoter(t)),
            None => {
                // A voter heard from lately and not repairing its storage
                // first (right after an election every match index is 0:
                // a voter that is down must not win on its id), then the
                // longest acknowledged log, then the lowest id.
                let best = voters.iter().copied().max_by_key(|v| {
                    let p = l.progress.get(v);
                    let live = p.is_some_and(|p| p.recent_active && !p.repairing);
                    let matched = p.map_or(LogIndex(0), |p| p.match_index);
                    (live, matched, std::cmp::Reverse(*v))
                });
                best.ok_or(TransferError::NoOtherVoter)?
            }
        };
        match &mut l.transfer {
            // Asked again: maybe the `TimeoutNow` was lost; send it again.
            Some(t) if t.to == target => t.sent = false,
            Some(t) => return Err(TransferError::InProgress { to: t.to }),
            None => {
                l.transfer = Some(Transfer {
                    to: target,
                    elapsed: 0,
                    sent: false,
                })
            }
        }
        self.maybe_send_timeout_now();
        Ok(target)
    }

    /// The target of the leadership transfer in progress, if any.
    pub fn transferring_to(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(l) => l.transfer.as_ref().map(|t| t.to),
            _ => None,
        }
    }

    /// Sends `TimeoutNow` to the transfer's target once its acknowledged
    /// log ends at this leader's last index (invariant 2).
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let (me, term, last) = (self.config.id, self.term, self.log.last_index());
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(t) = &mut l.transfer else {
            return;
        };
        let caught_up = l.progress.get(&t.to).is_some_and(|p| p.match_index == last);
        if t.sent || !caught_up {
            return;
        }
        t.sent = true;
        // The target campaigns through the followers' refusal: no lease
        // for the rest of this term (see `lease`, invariant 3).
        l.lease.void = true;
        self.msgs.push(Message {
            from: me,
            to: t.to,
            term,
            body: Body::TimeoutNow {
                last_index: last,
                last_term: self.log.last_term(),
            },
        });
        // A leader that is no longer a voter of a committed configuration
        // has nothing more to lead for (see `reconfig`, invariant 3): it
        // steps down as soon as its successor was told to campaign.
        let (at, conf) = self.log.conf();
        if !conf.is_voter(me) && at <= self.log.committed {
            self.become_follower(term, None);
        }
    }

    /// One leader tick of the transfer: abandoned after an election
    /// timeout (invariant 3).
    pub(super) fn tick_transfer(&mut self) {
        let timeout = self.config.election_timeout_max_ticks;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if let Some(t) = &mut l.transfer {
            t.elapsed += 1;
            if t.elapsed >= timeout {
                l.transfer = None;
                // A leader handing over because it is no longer a voter
                // steps down rather than try again (see `reconfig`).
                if !self.log.conf().1.is_voter(self.config.id) {
                    let term = self.term;
                    self.become_follower(term, None);
                }
            }
        }
    }

    /// `TimeoutNow` from the leader of this term: campaign at once (a
    /// pre-vote round first when PreVote is on), as the transfer's target. Ignored from anyone but
    /// the leader this node follows, when this log no longer ends at the
    /// leader's last entry it names (invariant 4), and by a node that may
    /// not campaign (a learner, a repairing node).
    pub(super) fn handle_timeout_now(
        &mut self,
        from: NodeId,
        last_index: LogIndex,
        last_term: Term,
    ) {
        let matches_leader =
            self.log.last_index() == last_index && self.log.last_term() == last_term;
        // From the leader followed, or from the one whose earlier
        // `TimeoutNow` this node's pre-vote round answers (a newer one
        // starts the round again, naming the newer last entry).
        let asked_by_leader = matches!(self.role, Role::Follower) && self.leader == Some(from);
        if (asked_by_leader || self.transferring_from(from))
            && matches_leader
            && self.can_campaign()
        {
            self.campaign(Some(from));
        }
    }
}
