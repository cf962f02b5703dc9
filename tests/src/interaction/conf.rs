//! The scenario commands about configurations: `change-membership ID
//! add-learner=N [host=HOST port=PORT] | promote=N | remove=N` (the leader
//! starts a change) and
//! `membership` (every live node's configuration in force, where it came
//! from, and whether the node knows it was removed).

use super::*;
use ha_core::raft::ConfChange;

impl Env {
    pub(super) fn change_membership(&mut self, tc: &Command, ids: &[u64], out: &mut String) {
        let one = |key: &str| {
            tc.args
                .get(key)
                .and_then(|v| v.first())
                .map(|v| NodeId(v.parse().expect("a node id")))
        };
        let change = if let Some(n) = one("add-learner") {
            let arg = |k: &str| tc.args.get(k).and_then(|v| v.first()).cloned();
            let addr = arg("host").map(|h| format!("{h}:{}", arg("port").expect("port=N")));
            ConfChange::AddLearner(n, addr)
        } else if let Some(n) = one("promote") {
            ConfChange::Promote(n)
        } else if let Some(n) = one("remove") {
            ConfChange::Remove(n)
        } else {
            panic!("change-membership ID add-learner=N | promote=N | remove=N");
        };
        match self.raft(ids[0]).change_membership(change) {
            Ok(i) => {
                let _ = writeln!(out, "configuration at {i}");
            }
            Err(e) => {
                let _ = writeln!(out, "refused: {e}");
            }
        }
    }

    pub(super) fn membership(&self, out: &mut String) {
        for (id, n) in &self.nodes {
            let Some(r) = &n.raft else {
                let _ = writeln!(out, "{id}: down");
                continue;
            };
            let (at, committed) = (r.membership_index(), r.commit_index());
            let state = if at <= committed {
                "committed"
            } else {
                "uncommitted"
            };
            let removed = if r.is_removed() { " removed" } else { "" };
            let _ = writeln!(
                out,
                "{id}: {:?} (at {at}, {state}){removed}",
                r.membership()
            );
        }
    }

    /// At most one configuration change in flight: a leader's log holds at
    /// most one configuration entry past its commit index.
    pub(super) fn check_one_change(&self) {
        for (id, n) in &self.nodes {
            let Some(r) = n.raft.as_ref().filter(|r| r.is_leader()) else {
                continue;
            };
            let pending = crate::uncommitted_confs(r);
            assert!(
                pending <= 1,
                "leader {id} holds {pending} uncommitted configuration entries"
            );
        }
    }
}
