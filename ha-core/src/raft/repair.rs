//! Repair of a node whose storage was damaged: it asks its peers for their
//! terms and votes again only once it holds its leader's log.

use super::*;

impl Raft {
    /// While repairing, tells `leader` where this log really ends, so it
    /// probes from there if it knew of more (see `Repair`). Sent in answer
    /// to every heartbeat, so a lost notice is repeated.
    pub(super) fn announce_repair(&mut self, leader: NodeId) {
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        self.send_after_persist(
            leader,
            Body::AppendResponse(AppendOutcome::Repairing {
                last_index,
                last_term,
            }),
        );
    }

    /// Moves a repair on: term queries until every other voter and the
    /// leader of the current term answered, caught up to that leader's last
    /// index, then one election round of waiting, then done (see `Repair`).
    pub(super) fn tick_repair(&mut self) {
        let me = self.config.id;
        let (term, leader) = (self.term, self.leader);
        let Some(r) = &mut self.repair else {
            return;
        };
        r.floor = r.floor.max(term);
        if r.done {
            return;
        }
        let mut ask: BTreeSet<NodeId> = self
            .log
            .conf()
            .1
            .other_voters(me)
            .filter(|v| !r.heard.contains(v))
            .collect();
        let all_heard = ask.is_empty();
        let leader_last = r.leader_last.filter(|(t, _)| *t == term).map(|(_, l)| l);
        if leader_last.is_none()
            && let Some(l) = leader
        {
            ask.insert(l);
        }
        r.query_elapsed = r.query_elapsed.saturating_add(1);
        if r.wait_ticks.is_none()
            && !ask.is_empty()
            && r.query_elapsed >= self.config.heartbeat_interval_ticks
        {
            r.query_elapsed = 0;
            let nonce = r.nonce;
            for v in ask {
                self.msgs.push(Message {
                    from: me,
                    to: v,
                    term,
                    body: Body::TermQuery { nonce },
                });
            }
        }
        let Some(r) = &mut self.repair else {
            return;
        };
        match r.wait_ticks {
            None => {
                // Durable, not only received: the mark on disk goes once
                // the repair ends.
                let caught_up = all_heard
                    && leader_last.is_some_and(|last| {
                        self.log.committed >= last && self.log.persisted >= last
                    });
                if caught_up {
                    r.wait_ticks = Some(self.config.election_timeout_max_ticks);
                }
            }
            Some(0) => {
                r.done = true;
                // The floor is this term (terms only rise): a vote for
                // itself in it, stored with the hard state before the
                // storage drops its mark, keeps a forgotten vote from being
                // given again after a restart too.
                if self.vote.is_none() {
                    self.vote = Some(me);
                }
            }
            Some(n) => r.wait_ticks = Some(n - 1),
        }
    }
}
