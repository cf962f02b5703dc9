//! Elections: timers, PreVote and votes (dissertation §3.4, §9.6), the
//! leader lease that ignores disruptive candidates (§4.2.3), and the role
//! changes.

use super::*;

impl Raft {
    /// A voter of its latest configuration campaigns; so does one whose
    /// latest configuration drops it but is not known committed, while
    /// the configuration at its commit index names it as a voter: the
    /// change may never commit, and its log may be the one a quorum needs
    /// (the only up-to-date log, held by a node that would never stand,
    /// stalls the cluster). Elected, it leads a configuration without
    /// itself: it takes no proposals and hands over once that commits
    /// (dissertation §4.2.2; see `reconfig`).
    pub(super) fn can_campaign(&self) -> bool {
        let me = self.config.id;
        let (at, conf) = self.log.conf();
        let voter = conf.is_voter(me)
            || (at > self.log.committed && self.log.conf_at(self.log.committed).1.is_voter(me));
        // At the last term a node accepts, campaigning would create a term
        // every peer refuses (and this node could not restart from).
        voter && self.term.0 < crate::types::MAX_TERM && self.repair.is_none()
    }

    /// The leader to name in a "not the leader" answer to a proposal, a
    /// read, a membership change or a transfer: the one this node follows,
    /// unless it has heard nothing from it for a minimum election timeout
    /// less one heartbeat interval (at least one interval). A leader that
    /// went quiet may be dead, and a client sent there waits out its
    /// attempt on it; told "unknown" instead, it asks another node and
    /// finds the next leader as soon as one is elected. (Roles and
    /// `status` still report the leader followed.)
    pub fn leader_hint(&self) -> Option<NodeId> {
        let (hb, min) = (
            self.config.heartbeat_interval_ticks,
            self.config.election_timeout_min_ticks,
        );
        let fresh = self.election_elapsed <= min.saturating_sub(hb).max(hb);
        self.leader.filter(|_| fresh)
    }

    /// Whether a vote request that would raise the term is ignored: this
    /// node heard from a leader within a minimum election timeout (by its
    /// ticks; and with lease reads on, by its clock too, whatever happened
    /// since: `lease`, invariant 6), or (with lease reads on) it started
    /// less than one ago and may have answered a leader just before it went
    /// down (invariant 4).
    pub(super) fn in_leader_lease(&self) -> bool {
        let min = self.config.election_timeout_min_ticks;
        let by_ticks = self.leader.is_some() && self.election_elapsed < min;
        self.config.check_quorum && (by_ticks || self.lease_refusal_open())
    }

    /// With lease reads on: this node took a message from a leader less
    /// than a minimum election timeout ago by its clock, or started less
    /// than one ago by its ticks (see `lease`, invariants 4 and 6).
    pub(super) fn lease_refusal_open(&self) -> bool {
        let min = self.config.election_timeout_min_ticks;
        self.config.lease.is_some_and(|l| {
            let window = min.saturating_mul(l.tick_nanos);
            let heard = self
                .lease_heard
                .is_some_and(|h| self.clock < h.saturating_add(window));
            #[cfg(feature = "planted-bugs")]
            let heard = heard && !self.config.has_bug(PlantedBug::LeaseByTicks);
            let quiet_start = self.ticks < min;
            #[cfg(feature = "planted-bugs")]
            let quiet_start = quiet_start && !self.config.has_bug(PlantedBug::LeaseNoQuietStart);
            heard || quiet_start
        })
    }

    /// Starts an election: a pre-vote round first when PreVote is on.
    /// `transfer_from`: the leader whose `TimeoutNow` asked for it, so the
    /// requests pass the voters' lease.
    pub(super) fn campaign(&mut self, transfer_from: Option<NodeId>) {
        if self.config.pre_vote {
            self.become_pre_candidate(transfer_from);
        } else {
            self.become_candidate(transfer_from.is_some());
        }
    }

    pub(super) fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_timeout = self.rng.range(
            self.config.election_timeout_min_ticks,
            self.config.election_timeout_max_ticks,
        );
    }

    pub(super) fn abandon_leadership(&mut self) {
        if let Role::Leader(l) = &mut self.role {
            let dropped = l.reads.drain_all();
            self.dropped_reads.extend(dropped);
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.abandon_leadership();
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_timers();
    }

    pub(super) fn become_pre_candidate(&mut self, transfer_from: Option<NodeId>) {
        self.abandon_leadership();
        self.role = Role::PreCandidate {
            votes: BTreeMap::new(),
            transfer_from,
        };
        self.leader = None;
        self.reset_timers();
        self.request_votes(true, transfer_from.is_some());
    }

    /// Whether this node runs the pre-vote round `from`'s `TimeoutNow`
    /// asked for: `from`'s appends and heartbeats of this term do not end
    /// it (they are taken as a follower takes them).
    pub(super) fn transferring_from(&self, from: NodeId) -> bool {
        matches!(self.role, Role::PreCandidate { transfer_from: Some(l), .. } if l == from)
    }

    /// Starts an election in the next term; `transfer`: at the leader's
    /// request ([`Body::TimeoutNow`]), so voters answer despite the lease.
    pub(super) fn become_candidate(&mut self, transfer: bool) {
        self.abandon_leadership();
        self.term = self.term.next();
        self.vote = Some(self.config.id);
        self.leader = None;
        self.role = Role::Candidate {
            votes: BTreeMap::new(),
        };
        self.reset_timers();
        self.request_votes(false, transfer);
    }

    pub(super) fn request_votes(&mut self, pre: bool, transfer: bool) {
        let me = self.config.id;
        // Our own vote counts first; a single-voter cluster wins at once.
        self.record_vote(me, true, pre);
        if !matches!(
            self.role,
            Role::PreCandidate { .. } | Role::Candidate { .. }
        ) {
            return;
        }
        let term = if pre { self.term.next() } else { self.term };
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self.log.conf().1.other_voters(me).collect();
        for to in voters {
            let body = if pre {
                Body::PreVote {
                    last_index,
                    last_term,
                    transfer,
                }
            } else {
                Body::Vote {
                    last_index,
                    last_term,
                    transfer,
                }
            };
            // Vote requests promise our own vote and term: after persist.
            self.msgs_after_persist.push(Message {
                from: me,
                to,
                term,
                body,
            });
        }
    }

    pub(super) fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        (last_index, last_term): (LogIndex, Term),
        pre: bool,
        transfer: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && msg_term > self.term);
        #[cfg(feature = "planted-bugs")]
        let up_to_date = self.config.has_bug(PlantedBug::VoteWithoutLogCheck)
            || self.log.is_up_to_date(last_index, last_term);
        #[cfg(not(feature = "planted-bugs"))]
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        // A repairing node may lack entries it acknowledged, and may have
        // forgotten a vote: it grants nothing (see `Repair`).
        // So does a newcomer (see `settle_newcomer`).
        let repaired = self.repair.is_none() && !self.newcomer && msg_term > self.vote_floor;
        // Within the clock-measured refusal (lease reads, `lease` invariant
        // 6) nothing is granted, at this term or above: a message of a
        // higher term may have moved this node past the term of the leader
        // it answered (forgetting it) without ending the refusal. A
        // transfer's request passes, as in `settle_term`.
        let refusing =
            self.lease_refusal_open() && self.vote != Some(from) && !(transfer && up_to_date);
        let granted = can_vote && up_to_date && repaired && !refusing;
        if pre {
            // A granted pre-vote answers in the term asked about, so the
            // pre-candidate counts it; a refusal carries our own term.
            let term = if granted { msg_term } else { self.term };
            self.msgs_after_persist.push(Message {
                from: self.config.id,
                to: from,
                term,
                body: Body::PreVoteResponse { granted },
            });
            return;
        }
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        let msg = Message {
            from: self.config.id,
            to: from,
            term: self.term,
            body: Body::VoteResponse { granted },
        };
        #[cfg(feature = "planted-bugs")]
        if self.config.has_bug(PlantedBug::VoteBeforePersist) {
            self.msgs.push(msg);
            return;
        }
        // The vote must be durable before it leaves the node (invariant 1).
        self.msgs_after_persist.push(msg);
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, granted: bool, pre: bool) {
        match (&self.role, pre) {
            (Role::PreCandidate { .. }, true) | (Role::Candidate { .. }, false) => {
                self.record_vote(from, granted, pre)
            }
            _ => {}
        }
    }

    pub(super) fn record_vote(&mut self, from: NodeId, granted: bool, pre: bool) {
        let result = match &mut self.role {
            Role::PreCandidate { votes, .. } | Role::Candidate { votes } => {
                votes.entry(from).or_insert(granted);
                self.log.conf().1.vote_result(votes)
            }
            _ => return,
        };
        let transfer = matches!(
            self.role,
            Role::PreCandidate {
                transfer_from: Some(_),
                ..
            }
        );
        match result {
            VoteResult::Won if pre => self.become_candidate(transfer),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    pub(super) fn become_leader(&mut self) {
        let last = self.log.last_index();
        let me = self.config.id;
        let progress = self
            .log
            .conf()
            .1
            .replication_targets()
            .into_iter()
            .filter(|n| *n != me)
            .map(|n| (n, Progress::new(last)))
            .collect();
        self.role = Role::Leader(Box::new(LeaderState {
            progress,
            committed_in_term: false,
            reads: ReadQueue::default(),
            heartbeat_seq: 0,
            transfer: None,
            lease: Default::default(),
        }));
        self.leader = Some(me);
        self.reset_timers();
        // A no-op in the new term commits everything before it (§3.6.2) and
        // lets ReadIndex start (§6.4).
        self.log.append_own(Entry {
            index: last.next(),
            term: self.term,
            payload: EntryPayload::Blank,
        });
    }
}
