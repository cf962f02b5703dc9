//! The leader's side of replication: heartbeats, append responses, the
//! commit rule (only entries of its own term are counted, §3.6.2), and the
//! appends and snapshots it sends.

use super::*;

impl Raft {
    pub(super) fn tick_leader(&mut self) {
        self.tick_transfer();
        self.advance_membership();
        if !self.is_leader() {
            return;
        }
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_min_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let me = self.config.id;
                let Role::Leader(l) = &mut self.role else {
                    unreachable!()
                };
                let active =
                    self.log.conf().1.has_quorum(|n| {
                        n == me || l.progress.get(&n).is_some_and(|p| p.recent_active)
                    });
                // A dropped node that did not answer for a whole round is
                // let go (see `reconfig`, invariant 4).
                let targets = self.log.conf().1.replication_targets();
                l.progress
                    .retain(|n, p| p.recent_active || targets.contains(n));
                for p in l.progress.values_mut() {
                    p.recent_active = false;
                }
                if !active {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Sends a heartbeat to every follower; returns its sequence number.
    pub(super) fn broadcast_heartbeat(&mut self) -> u64 {
        let me = self.config.id;
        let (term, committed) = (self.term, self.log.committed);
        let Role::Leader(l) = &mut self.role else {
            return 0;
        };
        l.heartbeat_seq += 1;
        let seq = l.heartbeat_seq;
        for (peer, p) in &l.progress {
            self.msgs.push(Message {
                from: me,
                to: *peer,
                term,
                body: Body::Heartbeat {
                    commit: p.match_index.min(committed),
                    seq,
                },
            });
        }
        self.lease_sent(seq);
        seq
    }

    pub(super) fn handle_append_response(&mut self, from: NodeId, outcome: AppendOutcome) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        // A repairing follower counts for nothing (see `Repair`), not even
        // to keep this leader in office.
        p.recent_active |= !matches!(
            outcome,
            AppendOutcome::RepairAccepted { .. } | AppendOutcome::Repairing { .. }
        );
        p.heard_at = Some(self.ticks);
        let (now, window) = (self.ticks, self.config.election_timeout_max_ticks);
        match outcome {
            AppendOutcome::Accepted { match_index } => {
                // From a follower seen repairing: it counts again only once
                // an election round passed since it last said so (its
                // repair ends with such a wait), so an answer it sent before
                // its crash and the network delayed does not count.
                let repaired = p.repairing && now.saturating_sub(p.repair_seen_at) >= window;
                if repaired {
                    p.repairing = false;
                }
                if p.on_ack(match_index) || repaired {
                    self.maybe_commit();
                }
                self.maybe_send_timeout_now();
            }
            AppendOutcome::RepairAccepted { match_index } => {
                p.repairing = true;
                p.repair_seen_at = now;
                p.on_ack(match_index);
            }
            AppendOutcome::Rejected {
                rejected,
                hint_index,
                hint_term,
            } => {
                let probe_from = if hint_term > Term(0) {
                    self.log.find_conflict_by_term(hint_index, hint_term).0
                } else {
                    hint_index
                };
                p.on_reject(rejected, probe_from);
            }
            AppendOutcome::Repairing {
                last_index,
                last_term,
            } => {
                // The follower lost part of its log: if what it was known to
                // hold may be wrong, forget that and probe from where its log
                // really ends. (A repeated notice, once the view is right,
                // does not disturb the search.)
                p.repairing = true;
                p.repair_seen_at = now;
                // What it was known to hold is still right only if its log
                // ends at or after that and its last entry is in this log
                // (then, by Log Matching, the logs agree up to there). Its
                // intact prefix may be an older version of an index it
                // acknowledged after a truncation.
                let agrees = last_index <= self.log.last_index()
                    && self.log.term(last_index) == Some(last_term);
                if p.match_index > last_index || (!agrees && p.match_index > LogIndex(0)) {
                    let probe_from = self
                        .log
                        .find_conflict_by_term(last_index.min(self.log.last_index()), last_term)
                        .0;
                    p.reset_for_repair(probe_from);
                } else {
                    // The notice answers a heartbeat: as a heartbeat answer,
                    // it lets a paused probe try again and settles a window
                    // a lost append left stuck. And the follower may not
                    // have seen the whole commit index in an append
                    // (heartbeats carry a clamped one, and a commit-only
                    // append may have overtaken its entries): send it again.
                    p.on_repair_notice();
                }
            }
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, seq: u64) {
        let me = self.config.id;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        // Only a node that is not repairing answers heartbeats, but this
        // answer may have been sent before its crash: a follower seen
        // repairing counts again only once an election round passed since.
        // (It still shows the follower is there, for CheckQuorum.)
        p.recent_active = true;
        p.heard_at = Some(self.ticks);
        if p.repairing
            && self.ticks.saturating_sub(p.repair_seen_at) < self.config.election_timeout_max_ticks
        {
            return;
        }
        let repaired = std::mem::take(&mut p.repairing);
        p.on_heartbeat_response(seq);
        let (conf_at, conf) = self.log.conf();
        if conf.is_voter(from) {
            l.lease.acked(from, seq, me, (conf_at, conf));
        }
        if let Some(round) = &mut l.reads.round
            && round.heartbeat_seq <= seq
        {
            if self.log.conf().1.is_voter(from) {
                round.acks.insert(from);
            }
            if self
                .log
                .conf()
                .1
                .has_quorum(|n| n == me || round.acks.contains(&n))
            {
                let round = l.reads.round.take().expect("round checked above");
                self.read_states
                    .extend(round.ctxs.into_iter().map(|ctx| ReadState {
                        ctx,
                        index: round.index,
                    }));
            }
        }
        if repaired {
            self.maybe_commit();
        }
    }

    pub(super) fn maybe_commit(&mut self) {
        let me = self.config.id;
        let persisted = self.log.persisted;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let match_of = |n: NodeId| {
            if n == me {
                persisted
            } else {
                // A repairing follower counts for no commit (see `Repair`).
                l.progress
                    .get(&n)
                    .filter(|p| !p.repairing)
                    .map_or(LogIndex(0), |p| p.match_index)
            }
        };
        let index = self.log.conf().1.committed_index(match_of);
        #[cfg(feature = "planted-bugs")]
        let index = if self.config.has_bug(PlantedBug::LearnerAcksCount) {
            let conf = &self.log.conf().1;
            let mut all: Vec<LogIndex> = conf
                .voters
                .union(&conf.learners)
                .map(|n| match_of(*n))
                .collect();
            all.sort_unstable_by(|a, b| b.cmp(a));
            index.max(all.get(conf.voters.len() / 2).copied().unwrap_or(index))
        } else {
            index
        };
        #[cfg(feature = "planted-bugs")]
        let index = if self.config.has_bug(PlantedBug::CommitOnLeaderAlone) {
            index.max(persisted)
        } else {
            index
        };
        if index <= self.log.committed {
            return;
        }
        let own_term = self.log.term(index) == Some(self.term);
        #[cfg(feature = "planted-bugs")]
        let own_term = own_term || self.config.has_bug(PlantedBug::CommitPreviousTermByCount);
        // Only entries of the current term commit by counting (§3.6.2).
        if own_term {
            self.log.commit_to(index);
            if self.log.term(index) == Some(self.term) {
                l.committed_in_term = true;
            }
            self.advance_membership();
        }
    }

    /// Sends what the leader owes its followers: appends within each
    /// follower's window, commit updates, and ReadIndex rounds.
    pub(super) fn flush_leader_output(&mut self) {
        let me = self.config.id;
        let term = self.term;
        let committed = self.log.committed;
        let max_inflight = self.config.max_inflight_appends;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let last = self.log.last_index();
        let heartbeat_seq = l.heartbeat_seq;
        for (peer, p) in l.progress.iter_mut() {
            let append = |prev_index, prev_term, entries| Message {
                from: me,
                to: *peer,
                term,
                body: Body::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit: committed,
                },
            };
            if std::mem::take(&mut p.liveness_probe) {
                let prev = p.next_index.prev();
                if let Some(prev_term) = self.log.term(prev) {
                    self.msgs.push(append(prev, prev_term, Vec::new()));
                    p.commit_sent = committed;
                } else {
                    // The probe's entry was compacted away: the window
                    // cannot be settled by a probe. Search again from what
                    // is known to match (which leads to a snapshot if that
                    // is compacted too).
                    p.on_unreachable();
                }
            }
            while p.can_send(max_inflight) {
                let probing = matches!(p.state, progress::ProgressState::Probe { .. });
                let prev = p.next_index.prev();
                let Some(prev_term) = self.log.term(prev) else {
                    // The follower needs entries a snapshot replaced: send
                    // the snapshot, out of band (dissertation §5.3).
                    let (offset, _) = self.log.offset();
                    p.start_snapshot(offset);
                    self.snapshots_to_send.push(*peer);
                    break;
                };
                let entries = if p.next_index <= last {
                    self.log.slice(
                        p.next_index,
                        last,
                        self.config.max_append_entries,
                        self.config.max_append_bytes,
                    )
                } else if probing || committed > p.commit_sent {
                    Vec::new()
                } else {
                    break;
                };
                let sent_last = entries.last().map_or(prev, |e| e.index);
                let empty = entries.is_empty();
                self.msgs.push(append(prev, prev_term, entries));
                p.commit_sent = committed;
                if empty && !probing {
                    break; // A commit-only update takes no window slot.
                }
                p.on_sent(sent_last, heartbeat_seq);
                if probing {
                    break;
                }
            }
        }
        if !(l.committed_in_term && l.reads.can_start_round()) {
            return;
        }
        // A ReadIndex round: a fresh heartbeat proves leadership after every
        // waiting request arrived (dissertation §6.4 step 2).
        let alone = self.log.conf().1.has_quorum(|n| n == me);
        #[cfg(feature = "planted-bugs")]
        let alone = alone || self.config.has_bug(PlantedBug::ReadWithoutQuorum);
        if alone {
            let ctxs = std::mem::take(&mut l.reads.waiting);
            self.read_states
                .extend(ctxs.into_iter().map(|ctx| ReadState {
                    ctx,
                    index: committed,
                }));
            return;
        }
        let seq = self.broadcast_heartbeat();
        if let Role::Leader(l) = &mut self.role {
            l.reads.start_round(committed, me, seq);
        }
    }
}
