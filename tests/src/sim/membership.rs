//! Membership changes in the simulator: the leader of the highest term
//! starts random changes (a learner added, promoted or removed; a voter
//! removed while more than three remain), and after every tick no leader
//! holds more than one uncommitted configuration entry.

use super::*;
use ha_core::raft::ConfChange;

impl Sim {
    /// Maybe starts one random membership change on the leader.
    pub(super) fn random_membership_change(&mut self) {
        let f = self.cfg.faults.membership;
        if f <= 0.0 || !self.rng.chance(f) {
            return;
        }
        let Some(leader) = self.leader() else {
            return;
        };
        if self.is_paused((leader.0 - 1) as usize) {
            return; // A stalled process takes no request.
        }
        // Any node, or a stranger no node was ever started for.
        let id = NodeId(self.rng.range(1, self.nodes.len() as u64 + 2));
        let change = match self.rng.range(0, 3) {
            0 => ConfChange::AddLearner(id, Some(format!("sim-{id}:7000"))),
            1 => ConfChange::Promote(id),
            _ => ConfChange::Remove(id),
        };
        let raft = self.nodes[(leader.0 - 1) as usize]
            .raft
            .as_mut()
            .expect("the leader runs");
        let conf = raft.membership();
        if matches!(change, ConfChange::Remove(n) if conf.voters.contains(&n))
            && conf.voters.len() <= 3
        {
            return;
        }
        let before = raft.last_index();
        if let Ok(index) = raft.change_membership(change.clone())
            && index > before
        {
            self.stats.conf_changes += 1;
            self.trace.push(
                self.now,
                TraceEvent::Membership(leader, format!("{change:?}"), index),
            );
        }
    }

    /// At most one configuration change in flight: no leader's log holds
    /// more than one configuration entry past its commit index.
    pub(super) fn check_one_change(&self) -> Result<(), String> {
        for r in self.nodes.iter().filter_map(|n| n.raft.as_ref()) {
            if !r.is_leader() {
                continue;
            }
            let pending = crate::uncommitted_confs(r);
            if pending > 1 {
                return Err(format!(
                    "One change at a time: leader {} of term {} holds {pending} uncommitted \
                     configuration entries",
                    r.id(),
                    r.term()
                ));
            }
        }
        Ok(())
    }

    /// The nodes that must hold every acknowledged command at the end: the
    /// members of the leader's configuration that exist (a removed node, a
    /// spare never added, or a stranger's id added with no machine behind
    /// it need not).
    pub(super) fn members(&self) -> Vec<NodeId> {
        let ids = self.ids();
        match self.leader().and_then(|l| self.raft(l)) {
            Some(r) => r
                .membership()
                .replication_targets()
                .into_iter()
                .filter(|n| ids.contains(n))
                .collect(),
            None => ids,
        }
    }
}
