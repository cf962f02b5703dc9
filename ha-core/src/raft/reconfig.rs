//! Membership changes (dissertation §4.3, joint consensus): learners that
//! receive the log without voting, promotion to voter and removal through
//! a joint configuration, one change at a time.
//!
//! The configuration in force on a node is the latest one in its log,
//! committed or not (`RaftLog::conf`, reverted when the log is truncated,
//! carried by snapshots). A change of voters goes through `C_old,new`:
//! while it is the latest configuration, elections and commits need a
//! majority of both halves; once it commits, the leader appends `C_new`.
//! Adding or removing a learner changes no quorum and is one entry.
//!
//! Invariants:
//! 1. At most one change is in flight: the leader appends a configuration
//!    entry only when the latest one is committed and not joint (except the
//!    `C_new` that ends a joint one), and only after an entry of its own
//!    term committed (so the latest configuration it holds is the latest
//!    any leader of an earlier term could have committed).
//! 2. A promoted learner was caught up: its acknowledged log is within
//!    [`CATCH_UP_ENTRIES`] of the leader's and holds the configuration in
//!    force (which names it), it answered within the last election
//!    timeout (the longest), and it is not waiting for a snapshot. (A
//!    learner that joined holds no configuration until it has that entry,
//!    and grants no vote without one: promoted before, it could be a voter
//!    whose vote a quorum needs and that refuses every candidate.)
//! 3. A leader that is not a voter of its latest configuration takes no
//!    proposals (so its successor can catch up with a log that no longer
//!    grows); once that configuration commits it hands leadership to the
//!    most up-to-date voter, or steps down, and never campaigns again
//!    (only voters campaign, and a node whose latest configuration drops
//!    it only while that change is not known committed and the
//!    configuration at its commit index names it; see `can_campaign`).
//! 4. A node dropped from the configuration keeps receiving the leader's
//!    appends and heartbeats until it has acknowledged the entry that
//!    dropped it and was sent a commit index past it, or has not answered
//!    for an election timeout: best effort, so it can learn it was removed
//!    (and go idle; see [`Raft::is_removed`]).

use super::*;

/// How close to the leader's last index a learner's acknowledged log must
/// be before it may be promoted (invariant 2).
pub const CATCH_UP_ENTRIES: u64 = 1024;

/// A change of configuration asked of the leader.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfChange {
    /// Adds a node as a learner: it receives the log and snapshots, never
    /// votes or counts. The address (`HOST:PORT`, see
    /// [`check_addr`](super::check_addr)) is where it listens, recorded in
    /// the configuration so every node can reach it; adding a learner
    /// again with another address moves it there.
    AddLearner(NodeId, Option<String>),
    /// Makes a caught-up learner a voter (through a joint configuration).
    Promote(NodeId),
    /// Removes a voter (through a joint configuration) or a learner.
    Remove(NodeId),
}

impl ConfChange {
    /// The node the change is about.
    pub fn node(&self) -> NodeId {
        match *self {
            ConfChange::AddLearner(n, _) | ConfChange::Promote(n) | ConfChange::Remove(n) => n,
        }
    }

    /// Whether `m` already is what this change asks for.
    pub fn holds_in(&self, m: &Membership) -> bool {
        match *self {
            ConfChange::AddLearner(n, ref addr) => {
                m.learners.contains(&n) && addr.as_ref().is_none_or(|a| m.addrs.get(&n) == Some(a))
            }
            ConfChange::Promote(n) => m.voters.contains(&n) && !m.voters_outgoing.contains(&n),
            ConfChange::Remove(n) => !m.is_member(n),
        }
    }
}

/// Why a membership change could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ConfChangeError {
    /// Only the leader changes the configuration.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Another change is in flight (its entry is not committed yet, or the
    /// cluster is between a joint configuration and its end), or this
    /// leader has not yet committed an entry of its term: retry shortly.
    #[error("another membership change is in progress; retry when it is done")]
    InProgress,
    /// A leadership transfer is running: retry after it.
    #[error("a leadership transfer to {to} is in progress")]
    Transferring {
        /// The transfer's target.
        to: NodeId,
    },
    /// The node is a voter: a voter cannot be added as a learner.
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    /// Only a learner can be promoted.
    #[error("node {0} is not a learner (add it as a learner first)")]
    NotALearner(NodeId),
    /// The learner is not caught up yet (invariant 2): retry later.
    #[error("learner {id} is not caught up yet ({})", lag_text(*lag))]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// Entries it is behind the leader's log (`None`: it has not
        /// answered lately, or it waits for a snapshot).
        lag: Option<u64>,
    },
    /// Removing the node would leave no voter.
    #[error("node {0} is the last voter: a cluster needs one")]
    LastVoter(NodeId),
    /// Node id 0 is not an id.
    #[error("node id 0 is not a node id")]
    BadId,
    /// The configuration the change would make is not one a node takes on
    /// (more than [`MAX_MEMBERS`](super::MAX_MEMBERS) ids): appending it
    /// would make every follower refuse the leader's appends.
    #[error("the change would make an invalid configuration: {0}")]
    Invalid(String),
}

fn lag_text(lag: Option<u64>) -> String {
    match lag {
        Some(n) => format!("{n} entries behind"),
        None => "it has not answered lately, or it waits for a snapshot".into(),
    }
}

impl Raft {
    /// Starts the change `change` on the leader: appends the configuration
    /// entry that makes it (a joint one when the voters change) and returns
    /// its index. The change is done once the configuration committed at
    /// the commit index is not joint and [`ConfChange::holds_in`] it; a
    /// change that holds already returns the index of the configuration in
    /// force, appending nothing (so a retry is harmless).
    pub fn change_membership(&mut self, change: ConfChange) -> Result<LogIndex, ConfChangeError> {
        let Role::Leader(l) = &self.role else {
            return Err(ConfChangeError::NotLeader {
                leader: self.leader_hint(),
            });
        };
        let id = change.node();
        if id == NodeId(0) {
            return Err(ConfChangeError::BadId);
        }
        let (conf_index, conf) = self.log.conf();
        if conf.is_joint() || conf_index > self.log.committed || !l.committed_in_term {
            // (A change that holds already in a configuration still in
            // flight is not done: it may yet be truncated.)
            return Err(ConfChangeError::InProgress);
        }
        if change.holds_in(conf) {
            return Ok(conf_index);
        }
        if let Some(t) = &l.transfer {
            return Err(ConfChangeError::Transferring { to: t.to });
        }
        let mut next = conf.clone();
        match change {
            ConfChange::AddLearner(n, addr) => {
                if conf.is_voter(n) {
                    return Err(ConfChangeError::AlreadyVoter(n));
                }
                next.learners.insert(n);
                if let Some(a) = addr {
                    next.addrs.insert(n, a);
                }
            }
            ConfChange::Promote(n) => {
                if !conf.learners.contains(&n) {
                    return Err(ConfChangeError::NotALearner(n));
                }
                let lag = self.lag_of(n);
                let holds_conf = l
                    .progress
                    .get(&n)
                    .is_some_and(|p| p.match_index >= conf_index);
                if lag.is_none_or(|lag| lag > CATCH_UP_ENTRIES) || !holds_conf {
                    return Err(ConfChangeError::NotCaughtUp { id: n, lag });
                }
                next.learners.remove(&n);
                next.voters.insert(n);
                next.voters_outgoing = conf.voters.clone();
            }
            ConfChange::Remove(n) => {
                // A learner goes in one entry (no quorum changes); a voter
                // through a joint configuration.
                if !next.learners.remove(&n) {
                    next.voters.remove(&n);
                    if next.voters.is_empty() {
                        return Err(ConfChangeError::LastVoter(n));
                    }
                    next.voters_outgoing = conf.voters.clone();
                }
                // A departing voter keeps its address while it is in the
                // outgoing half (it still votes there).
                if !next.is_member(n) {
                    next.addrs.remove(&n);
                }
            }
        }
        if let Err(e) = next.validate() {
            return Err(ConfChangeError::Invalid(e.to_string()));
        }
        Ok(self.append_conf(next))
    }

    /// Entries learner `n` is behind this leader's log; `None` if it has
    /// not answered within an election timeout or waits for a snapshot.
    fn lag_of(&self, n: NodeId) -> Option<u64> {
        let Role::Leader(l) = &self.role else {
            return None;
        };
        let window = self.config.election_timeout_max_ticks;
        match l.progress.get(&n) {
            Some(p)
                if p.heard_at
                    .is_some_and(|t| self.ticks.saturating_sub(t) < window)
                    && !p.repairing
                    && !matches!(p.state, progress::ProgressState::Snapshot { .. }) =>
            {
                Some(self.log.last_index().0.saturating_sub(p.match_index.0))
            }
            _ => None,
        }
    }

    /// Appends configuration `next` as this leader and starts replicating
    /// to any node it adds.
    fn append_conf(&mut self, next: Membership) -> LogIndex {
        let index = self.log.last_index().next();
        self.log.append_own(Entry {
            index,
            term: self.term,
            payload: EntryPayload::Membership(next),
        });
        let last = self.log.last_index();
        if let Role::Leader(l) = &mut self.role {
            let me = self.config.id;
            for n in self.log.conf().1.replication_targets() {
                if n != me {
                    l.progress.entry(n).or_insert_with(|| Progress::new(last));
                }
            }
        }
        index
    }

    /// The leader's duties once the commit index moved or a tick passed:
    /// lets go of dropped nodes (invariant 4), ends a committed joint
    /// configuration (appends `C_new`), and hands over or steps down when
    /// it is no longer a voter (invariant 3).
    pub(super) fn advance_membership(&mut self) {
        let me = self.config.id;
        let committed = self.log.committed;
        let (now, window) = (self.ticks, self.config.election_timeout_max_ticks);
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let (conf_index, conf) = self.log.conf();
        // A dropped node is kept while it may not know yet, and has been
        // heard from within an election timeout: it learns best effort (a
        // node that does not is no voter in its latest configuration, or
        // its log is behind every voter's that has it). (Runs on every
        // commit: nothing is allocated unless some node was dropped.)
        if !l.progress.keys().all(|n| conf.is_member(*n)) {
            l.progress.retain(|n, p| {
                conf.is_member(*n)
                    || (p.heard_at.is_some_and(|t| now.saturating_sub(t) < window)
                        && (conf_index > committed
                            || p.match_index < conf_index
                            || p.commit_sent < conf_index))
            });
        }
        if conf_index > committed {
            return;
        }
        if conf.is_joint() {
            if l.transfer.is_none() {
                let mut next = Membership {
                    voters_outgoing: BTreeSet::new(),
                    ..conf.clone()
                };
                // The departed voters' addresses go with them.
                let members = next.replication_targets();
                next.addrs.retain(|n, _| members.contains(n));
                self.append_conf(next);
            }
            return;
        }
        if conf.is_voter(me) || l.transfer.is_some() {
            return;
        }
        // Not a voter any more: hand over to the most up-to-date voter (the
        // transfer waits for it to catch up; this leader takes no proposals
        // meanwhile), or step down if there is none to hand to. A transfer
        // that fails steps this leader down too (see `tick_transfer`).
        if self.transfer_leadership(None).is_err() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Whether this node, as far as it can tell, was removed: the
    /// configuration committed here does not name it, and an earlier one
    /// in its log did. A hint for operators, not a verdict: a node catching
    /// up on an old log may pass through its own removal before the entry
    /// that added it again, so nothing stops on it. A node that never saw
    /// itself named (waiting to be added, or started from a snapshot taken
    /// after its removal) is not "removed": it waits. Either way it never
    /// campaigns (only voters do, and a node dropped by a change not known
    /// committed: see `can_campaign`). Never true of a leader (it steps
    /// down first).
    pub fn is_removed(&self) -> bool {
        let me = self.config.id;
        if matches!(self.role, Role::Leader(_)) {
            return false;
        }
        let (at, conf) = self.log.conf_at(self.log.committed);
        !conf.is_member(me) && self.log.was_member_before(me, at)
    }
}
