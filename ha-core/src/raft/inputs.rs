//! The core's inputs: ticks, proposals, read requests, and messages
//! ([`Raft::step`] checks a message whole before anything changes, then
//! settles terms, then hands it to the role's handler).

use super::*;

impl Raft {
    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.tick_repair();
        if self.is_leader() {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            // (With lease reads on, not while its own refusal runs: its
            // vote for itself would count against an answer it gave.)
            if self.election_elapsed >= self.randomized_timeout
                && self.can_campaign()
                && !self.lease_refusal_open()
            {
                self.campaign(None);
            }
        }
    }

    /// Starts an election now, as if the election timer had fired (with
    /// PreVote on: a pre-vote round first). Does nothing on a leader, or on
    /// a node that may not campaign (a learner, a node removed by a
    /// committed change, a repairing node, one at the last term). For drivers that decide when to campaign (a
    /// leadership transfer's target; scenario tests). With lease reads on,
    /// only for a driver that knows the leader is gone: this node may have
    /// answered the leader's heartbeat within its lease, and its own vote
    /// then counts against that answer.
    pub fn campaign_now(&mut self) {
        if !self.is_leader() && self.can_campaign() {
            self.campaign(None);
        }
    }

    /// Proposes one command. Returns the index and term the entry got: the
    /// command took effect if and only if that exact `(index, term)` commits.
    pub fn propose(&mut self, data: Bytes) -> Result<(LogIndex, Term), ProposeError> {
        self.propose_batch(std::iter::once(data))
            .map(|(first, _, term)| (first, term))
    }

    /// Proposes several commands at once; they get consecutive indexes.
    /// Returns `(first index, last index, term)`.
    pub fn propose_batch(
        &mut self,
        data: impl IntoIterator<Item = Bytes>,
    ) -> Result<(LogIndex, LogIndex, Term), ProposeError> {
        let Role::Leader(l) = &self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader_hint(),
            });
        };
        if let Some(t) = &l.transfer {
            return Err(ProposeError::Transferring { to: t.to });
        }
        if !self.log.conf().1.is_voter(self.config.id) {
            return Err(ProposeError::Leaving);
        }
        let uncommitted = (self.log.last_index().0 - self.log.committed.0) as usize;
        if uncommitted >= self.config.max_uncommitted_entries {
            return Err(ProposeError::Busy);
        }
        let first = self.log.last_index().next();
        for d in data {
            let index = self.log.last_index().next();
            self.log.append_own(Entry {
                index,
                term: self.term,
                payload: EntryPayload::Command(d),
            });
        }
        Ok((first, self.log.last_index(), self.term))
    }

    /// Asks for a linearizable read (dissertation §6.4). When confirmed, a
    /// [`ReadState`] with this `ctx` appears in a later [`Ready`]; serve the
    /// read once the state machine has applied its index.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
        let max = self.config.max_pending_reads;
        let Role::Leader(l) = &mut self.role else {
            return Err(ReadIndexError::NotLeader {
                leader: self.leader_hint(),
            });
        };
        if l.reads.len() >= max {
            return Err(ReadIndexError::Busy);
        }
        l.reads.waiting.push(ctx);
        Ok(())
    }

    /// Handles one message from a peer: checked whole first (a refused
    /// message changes nothing), then a term query is answered, then terms
    /// are settled, then the role's handler takes it.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        self.check_message(&m)?;
        if self.step_term_query(&m) {
            return Ok(());
        }
        if !self.settle_term(&m) {
            return Ok(());
        }
        let r = self.dispatch(m);
        self.settle_newcomer();
        r
    }

    /// A node that started in no configuration (waiting to be added)
    /// grants no vote until it has one, and then only in terms above the
    /// one it was in when it took it on: its storage may be a voter's that
    /// was wiped and started again as a newcomer under the same id, which
    /// forgot the votes it gave (the same rule as after a repair).
    fn settle_newcomer(&mut self) {
        if self.newcomer && !self.log.conf().1.is_empty() {
            self.vote_floor = self.vote_floor.max(self.term);
            self.newcomer = false;
        }
    }

    /// Every check a message must pass before it may change anything.
    fn check_message(&self, m: &Message) -> Result<(), StepError> {
        if m.to != self.config.id {
            return Err(StepError::WrongRecipient(m.to));
        }
        // Any other node may speak: a leader or candidate of a newer
        // configuration than this node has seen must be heard (dissertation
        // §4.2.2), and peers are authenticated below the core. A removed
        // node does not disturb with PreVote or CheckQuorum on (the lease
        // holds it off, and a log without the configuration that removed
        // it is behind every voter's that has it); with both off, it may
        // raise terms as any partitioned node would (dissertation §4.2.3).
        if m.from == self.config.id || m.from == NodeId(0) {
            return Err(StepError::UnknownPeer(m.from));
        }
        m.validate()?;
        if m.term.0 > self.term.0.saturating_add(MAX_TERM_JUMP) {
            // No cluster runs billions of elections while a node is away:
            // a peer trying to burn the term space.
            return Err(StepError::Protocol(format!(
                "term jumps from {} to {}",
                self.term, m.term
            )));
        }
        if let Body::AppendResponse(
            AppendOutcome::Accepted { match_index } | AppendOutcome::RepairAccepted { match_index },
        ) = m.body
            && m.term == self.term
            && self.is_leader()
            && match_index > self.log.last_index()
        {
            return Err(StepError::Protocol(format!(
                "follower {} acknowledged index {} beyond the leader's last {}",
                m.from,
                match_index,
                self.log.last_index()
            )));
        }
        if let Body::Append {
            prev_index,
            prev_term,
            entries,
            ..
        } = &m.body
            && m.term >= self.term
        {
            if m.term == self.term && self.is_leader() {
                return Err(StepError::Protocol(format!(
                    "append from {} in this leader's own term {}",
                    m.from, self.term
                )));
            }
            if *prev_index >= self.log.committed && self.log.matches(*prev_index, *prev_term) {
                self.log
                    .check_append(entries)
                    .map_err(StepError::Protocol)?;
            }
        }

        Ok(())
    }

    /// Answers a term query (true: the message is done); records a term
    /// reply for a repair in progress.
    fn step_term_query(&mut self, m: &Message) -> bool {
        match m.body {
            Body::TermQuery { nonce } => {
                // Answered with this node's durable term, whatever the
                // asker's: a repairing node moves no one's term or leader.
                let leader_last = self.is_leader().then(|| self.log.last_index());
                let repairing = self.repair.is_some();
                self.send_after_persist(
                    m.from,
                    Body::TermReply {
                        nonce,
                        leader_last,
                        repairing,
                    },
                );
                return true;
            }
            Body::TermReply {
                nonce,
                leader_last,
                repairing,
            } => {
                // A repairing node may have forgotten its term too: its
                // answer does not count (its term is still taken on).
                if let Some(r) = &mut self.repair
                    && nonce == r.nonce
                    && !repairing
                {
                    r.heard.insert(m.from);
                    if let Some(last) = leader_last
                        && r.leader_last.is_none_or(|(t, _)| t <= m.term)
                    {
                        r.leader_last = Some((m.term, last));
                    }
                }
                // Then as any message: a higher term is taken on.
            }
            _ => {}
        }
        false
    }

    /// Takes on a higher term, or answers a lower one. False: the message
    /// is done (ignored, or answered here).
    fn settle_term(&mut self, m: &Message) -> bool {
        if m.term > self.term {
            let (is_vote_request, passes_lease) = match m.body {
                Body::PreVote {
                    last_index,
                    last_term,
                    transfer,
                }
                | Body::Vote {
                    last_index,
                    last_term,
                    transfer,
                } => (
                    true,
                    transfer && self.log.is_up_to_date(last_index, last_term),
                ),
                _ => (false, false),
            };
            if is_vote_request && !passes_lease && self.in_leader_lease() {
                // We heard from a leader within the minimum election timeout:
                // this candidate is probably disruptive (dissertation §4.2.3).
                // Not so a transfer's target whose log is as up to date as
                // ours: the leader asked for it. (One that is behind, a late
                // `TimeoutNow`'s, could not win: it is ignored here too.)
                return false;
            }
            match m.body {
                Body::PreVote { .. } => {}
                Body::PreVoteResponse { granted: true } => {}
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. }
                    if self.config.check_quorum
                        || self.config.pre_vote
                        || self.repair.is_some() =>
                {
                    // A stale leader: tell it our term so it steps down. With
                    // CheckQuorum a vote request may not raise terms, so this
                    // is how a node partitioned at a higher term rejoins. A
                    // repairing node, which never campaigns, needs it too:
                    // else a leader below its term never learns of it.
                    self.send_after_persist(
                        m.from,
                        Body::AppendResponse(AppendOutcome::Rejected {
                            rejected: LogIndex(0),
                            hint_index: LogIndex(0),
                            hint_term: Term(0),
                        }),
                    );
                }
                Body::PreVote { .. } => {
                    self.send_after_persist(m.from, Body::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return false;
        }
        true
    }

    /// A leader of this term spoke (append, heartbeat, snapshot): follow
    /// it, unless this node runs the transfer pre-vote round that leader
    /// asked for (then the message is taken, but the round goes on, and
    /// its election timer keeps running so a round that never ends falls
    /// back to an ordinary election).
    fn follow(&mut self, leader: NodeId, term: Term) {
        if self.transferring_from(leader) {
            return;
        }
        if !matches!(self.role, Role::Follower) {
            self.become_follower(term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
        self.lease_heard = Some(self.clock);
    }

    /// Hands a message of this node's term to its handler.
    fn dispatch(&mut self, m: Message) -> Result<(), StepError> {
        match m.body {
            Body::PreVote {
                last_index,
                last_term,
                transfer,
            } => self.handle_vote_request(m.from, m.term, (last_index, last_term), true, transfer),
            Body::Vote {
                last_index,
                last_term,
                transfer,
            } => self.handle_vote_request(m.from, m.term, (last_index, last_term), false, transfer),
            Body::TimeoutNow {
                last_index,
                last_term,
            } => self.handle_timeout_now(m.from, last_index, last_term),
            Body::PreVoteResponse { granted } => {
                // Count only answers about the term we are asking for now.
                if !granted || m.term == self.term.next() {
                    self.handle_vote_response(m.from, granted, true);
                }
            }
            Body::VoteResponse { granted } => self.handle_vote_response(m.from, granted, false),
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.follow(m.from, m.term);
                self.handle_append(m.from, prev_index, prev_term, &entries, commit)?;
            }
            Body::Heartbeat { commit, seq } => {
                self.follow(m.from, m.term);
                if self.repair.is_some() {
                    self.announce_repair(m.from);
                } else {
                    self.log.commit_to(commit);
                    // At once, not after this node's write: the answer
                    // promises nothing durable. It says this node followed
                    // the leader in its term when it took the heartbeat,
                    // which is what CheckQuorum, ReadIndex rounds and leases
                    // count; votes are made durable on their own, and the
                    // lease's refusal to vote lives in memory (a restart
                    // refuses anew). A follower whose disk is slow keeps
                    // its leader in office and its reads confirmed. (Not
                    // before its term is durable: while it is not, every
                    // message waits for the write; see `durable_term`.)
                    self.send_now(m.from, Body::HeartbeatResponse { seq });
                }
            }
            Body::InstallSnapshot {
                index,
                term,
                membership,
            } => {
                self.follow(m.from, m.term);
                self.handle_install_snapshot(m.from, index, term, membership);
            }
            Body::AppendResponse(outcome) => self.handle_append_response(m.from, outcome),
            Body::HeartbeatResponse { seq } => self.handle_heartbeat_response(m.from, seq),
            // Handled above.
            Body::TermQuery { .. } | Body::TermReply { .. } => {}
        }
        Ok(())
    }

    /// A snapshot of the applied state up to `index` is durable: drop the
    /// log entries it covers. Returns whether anything was dropped (nothing
    /// is if `index` is not above the current snapshot, or not applied yet).
    pub fn compact(&mut self, index: LogIndex) -> bool {
        self.log.compact_to(index)
    }

    /// The driver finished sending a snapshot to `peer`: `Some(index)` if
    /// it was delivered (ending at `index`), `None` if the transfer failed.
    pub fn report_snapshot(&mut self, peer: NodeId, sent: Option<LogIndex>) {
        if let Role::Leader(l) = &mut self.role
            && let Some(p) = l.progress.get_mut(&peer)
        {
            p.snapshot_done(sent);
        }
    }

    /// Reports that `peer` could not be reached, so replication to it falls
    /// back to probing.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if let Role::Leader(l) = &mut self.role
            && let Some(p) = l.progress.get_mut(&peer)
        {
            p.on_unreachable();
        }
    }
}
