//! The Figure 8 scenario of the Raft paper (dissertation Figure 3.7), scripted
//! message by message against five cores.
//!
//! A leader of term 4 (S1) replicates an entry of term 2 to a majority. If it
//! counted those replicas to commit the entry, S5 could still be elected in
//! term 5 and overwrite it: a committed entry lost. Raft's rule is that only
//! entries of the leader's own term commit by counting replicas (§3.6.2).
//! The script runs once with the correct core, and once with that rule
//! removed to show the scenario catches the bug.

use std::collections::BTreeMap;

use ha_core::node::{ReadyIo, handle_ready};
use ha_core::raft::{Config, InitialState, Membership, Message, PlantedBug, Raft};
use ha_core::storage::{LogStore, MemLogStore};
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

struct Net {
    nodes: BTreeMap<u64, Option<Raft>>,
    stores: BTreeMap<u64, MemLogStore>,
    queue: Vec<Message>,
    bug: Option<PlantedBug>,
    /// index -> term of every entry any node ever reported committed.
    committed: BTreeMap<LogIndex, Term>,
}

impl Net {
    fn new(bug: Option<PlantedBug>) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            queue: Vec::new(),
            bug,
            committed: BTreeMap::new(),
        };
        for id in 1..=5 {
            // Every node starts with entry 1 of term 1, committed.
            let mut store = MemLogStore::new();
            store
                .append(&[Entry {
                    index: LogIndex(1),
                    term: Term(1),
                    payload: EntryPayload::Blank,
                }])
                .expect("append");
            store
                .save_hard_state(HardState {
                    term: Term(1),
                    vote: None,
                    commit: LogIndex(1),
                })
                .expect("hard state");
            store.sync().expect("sync");
            net.stores.insert(id, store);
            net.restart(id);
        }
        net
    }

    fn restart(&mut self, id: u64) {
        let stored = self.stores[&id].load().expect("load");
        let mut config = Config::new(NodeId(id));
        // Reproducible runs.
        config.rng_seed = id;
        config.pre_vote = false;
        config.check_quorum = false;
        // One entry per append, so a follower can hold index 2 without 3.
        config.max_append_entries = 1;
        config.planted_bug = self.bug;
        let init = InitialState {
            hard_state: stored.hard_state,
            membership: Membership::new_voters((1..=5).map(NodeId)),
            snapshot_last: stored.snapshot_last,
            entries: stored.entries,
            repairing: false,
            repair_nonce: 0,
            joined: false,
        };
        self.nodes
            .insert(id, Some(Raft::new(config, init).expect("valid state")));
    }

    fn crash(&mut self, id: u64) {
        self.nodes.insert(id, None);
        self.stores.get_mut(&id).expect("store").crash();
        self.queue.retain(|m| m.from.0 != id && m.to.0 != id);
    }

    fn raft(&self, id: u64) -> &Raft {
        self.nodes[&id].as_ref().expect("node is up")
    }

    /// Handles node `id`'s Readies (through `handle_ready`, the node task's
    /// pipeline): persist, queue every message.
    fn drive(&mut self, id: u64) -> Result<(), String> {
        let Some(Some(raft)) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        // The node task's pipeline, synchronously: persist, then queue.
        let store = self.stores.get_mut(&id).expect("store");
        handle_ready(raft, store, &mut Queue(&mut self.queue)).expect("in-memory storage");
        let raft = self.nodes[&id].as_ref().expect("node is up");
        for i in 1..=raft.commit_index().0 {
            let t = raft
                .term_at(LogIndex(i))
                .expect("committed entries are held");
            if let Some(prev) = self.committed.insert(LogIndex(i), t)
                && prev != t
            {
                return Err(format!(
                    "committed entry {i}@{prev} was overwritten by {i}@{t} on node {id}"
                ));
            }
        }
        Ok(())
    }

    /// Delivers queued messages whose (from, to) is allowed, until none is
    /// left; every other message is lost.
    fn deliver_only(&mut self, allowed: &[(u64, u64)]) -> Result<(), String> {
        self.deliver_until(allowed, |_| false)
    }

    /// Like `deliver_only`, but stops (dropping the rest) as soon as `done`
    /// holds.
    fn deliver_until(
        &mut self,
        allowed: &[(u64, u64)],
        done: impl Fn(&Net) -> bool,
    ) -> Result<(), String> {
        self.deliver_while(|m| allowed.contains(&(m.from.0, m.to.0)), done)?;
        self.queue.clear();
        Ok(())
    }

    /// Delivers queued messages `pick` chooses, in order, until none is left
    /// or `done` holds; the others stay queued.
    fn deliver_while(
        &mut self,
        pick: impl Fn(&Message) -> bool,
        done: impl Fn(&Net) -> bool,
    ) -> Result<(), String> {
        while !done(self) {
            let Some(pos) = self.queue.iter().position(&pick) else {
                break;
            };
            let m = self.queue.remove(pos);
            let to = m.to.0;
            if let Some(Some(raft)) = self.nodes.get_mut(&to) {
                raft.step(m)
                    .map_err(|e| format!("node {to} refused a message: {e}"))?;
                self.drive(to)?;
            }
        }
        Ok(())
    }

    /// Ticks node `id` until it starts an election.
    fn time_out(&mut self, id: u64) -> Result<(), String> {
        let term = self.raft(id).term();
        while self.raft(id).term() == term {
            self.nodes
                .get_mut(&id)
                .and_then(|n| n.as_mut())
                .expect("up")
                .tick();
        }
        self.drive(id)
    }

    /// Makes `id` leader with votes from `voters` (retrying terms as needed).
    fn elect(&mut self, id: u64, voters: &[u64]) -> Result<(), String> {
        let mut links: Vec<(u64, u64)> = Vec::new();
        for v in voters {
            links.push((id, *v));
            links.push((*v, id));
        }
        for _ in 0..5 {
            self.time_out(id)?;
            // Deliver only the votes: appends of a new leader wait.
            let votes: Vec<Message> = self.queue.drain(..).collect();
            for m in votes {
                if links.contains(&(m.from.0, m.to.0)) {
                    self.queue.push(m);
                }
            }
            self.deliver_votes()?;
            if self.raft(id).is_leader() {
                return Ok(());
            }
        }
        Err(format!("node {id} could not be elected by {voters:?}"))
    }

    fn deliver_votes(&mut self) -> Result<(), String> {
        use ha_core::raft::Body;
        self.deliver_while(
            |m| matches!(m.body, Body::Vote { .. } | Body::VoteResponse { .. }),
            |_| false,
        )?;
        // Keep only what the new leader sends; drop the rest.
        self.queue.retain(|m| matches!(m.body, Body::Append { .. }));
        Ok(())
    }
}

/// Runs the scenario; returns an error when a committed entry is lost.
fn figure_8(bug: Option<PlantedBug>) -> Result<Net, String> {
    let mut net = Net::new(bug);
    // (a) S1 leads term 2 and replicates its entry 2@2 to S2 only.
    net.elect(1, &[2, 3])?;
    assert_eq!(net.raft(1).term(), Term(2));
    net.deliver_only(&[(1, 2), (2, 1)])?;
    assert_eq!(net.raft(2).term_at(LogIndex(2)), Some(Term(2)));
    // (b) S1 crashes; S5 leads term 3 with S3 and S4, appends 2@3 alone.
    net.crash(1);
    net.elect(5, &[3, 4])?;
    assert_eq!(net.raft(5).term(), Term(3));
    assert_eq!(net.raft(5).term_at(LogIndex(2)), Some(Term(3)));
    net.queue.clear();
    // (c) S5 crashes; S1 restarts and leads term 4 with S2 and S3. It
    // brings S3 up to index 2 (the old entry 2@2), but not its own 3@4: a
    // majority (S1, S2, S3) now holds 2@2.
    net.crash(5);
    net.restart(1);
    net.elect(1, &[2, 3, 4])?;
    assert_eq!(net.raft(1).term(), Term(4));
    // S3 is probed back to index 2 and takes 2@2, but not 3@4.
    net.deliver_until(&[(1, 3), (3, 1)], |n| {
        n.raft(1).match_index_of(NodeId(3)) == Some(LogIndex(2))
    })?;
    assert_eq!(net.raft(3).term_at(LogIndex(2)), Some(Term(2)));
    assert_eq!(
        net.raft(3).last_index(),
        LogIndex(2),
        "S3 must not have 3@4 yet"
    );
    // S2 (already holding 2@2) answers a heartbeat and a probe and takes 3@4.
    net.nodes
        .get_mut(&1)
        .and_then(|n| n.as_mut())
        .expect("up")
        .tick();
    net.drive(1)?;
    net.deliver_only(&[(1, 2), (2, 1)])?;
    assert_eq!(net.raft(1).match_index_of(NodeId(2)), Some(LogIndex(3)));
    // A majority (S1, S2, S3) holds 2@2, but 2@2 is of an earlier term: it
    // must not commit by counting. Only the buggy core commits it here.
    if bug.is_none() {
        assert_eq!(
            net.raft(1).commit_index(),
            LogIndex(1),
            "2@2 committed by counting"
        );
    }
    // (d) S1 crashes; S5 restarts and is elected in term 5 by S3 and S4
    // (its last entry 2@3 is newer than theirs), and overwrites index 2.
    net.crash(1);
    net.restart(5);
    net.elect(5, &[3, 4])?;
    for _ in 0..3 {
        let leader = net.nodes.get_mut(&5).and_then(|n| n.as_mut()).expect("up");
        leader.tick();
        net.drive(5)?;
        net.deliver_only(&[(5, 2), (2, 5), (5, 3), (3, 5), (5, 4), (4, 5)])?;
    }
    Ok(net)
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let net = figure_8(None).unwrap_or_else(|e| panic!("the correct core lost data: {e}"));
    // S5 leads term 5 and index 2 holds its 2@3 everywhere it replicated,
    // and nobody ever reported 2@2 committed.
    assert_eq!(net.raft(5).term(), Term(5));
    assert_eq!(net.raft(3).term_at(LogIndex(2)), Some(Term(3)));
    assert_ne!(net.committed.get(&LogIndex(2)), Some(&Term(2)));
    assert!(
        net.raft(5).commit_index() >= LogIndex(2),
        "S5 commits its own term"
    );
}

#[test]
fn figure_8_catches_commit_of_an_old_term_entry_by_counting() {
    match figure_8(Some(PlantedBug::CommitPreviousTermByCount)) {
        Err(e) => assert!(
            e.contains("overwritten") || e.contains("overwrite"),
            "unexpected failure: {e}"
        ),
        Ok(_) => panic!("the planted bug went unnoticed in the Figure 8 scenario"),
    }
}

/// A [`ReadyIo`] that queues every message for the script to deliver.
struct Queue<'a>(&'a mut Vec<Message>);

impl ReadyIo for Queue<'_> {
    fn send(&mut self, msg: Message) {
        self.0.push(msg);
    }
    fn apply(&mut self, _entry: &Entry) {}
    fn read_ready(&mut self, _read: ha_core::raft::ReadState) {}
    fn read_dropped(&mut self, _ctx: u64) {}
    fn restore_snapshot(
        &mut self,
        index: LogIndex,
        _term: Term,
    ) -> Result<(), ha_core::node::RestoreError> {
        Err(format!("the Figure 8 script sends no snapshots (one at {index})").into())
    }
}
