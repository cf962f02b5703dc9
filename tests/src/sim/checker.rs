//! The safety properties of Raft (dissertation Figure 3.2), checked as the
//! simulation runs.
//!
//! Owns: a global record of what any node ever led, persisted, committed and
//! applied. Every observation is checked against it at once, so a violation
//! is reported at the event that caused it.
//!
//! Properties:
//! 1. Election Safety: at most one leader per term.
//! 2. Log Matching: two entries with the same index and term carry the same
//!    payload and follow entries of the same term (which, by induction, makes
//!    the logs identical up to them).
//! 3. Leader Completeness: a leader's log holds every entry committed before
//!    it, and every entry committed later in an earlier term.
//! 4. State Machine Safety: no two nodes apply different entries at one index.

use std::collections::{BTreeMap, HashMap};

use ha_core::raft::Raft;
use ha_core::types::{Entry, EntryPayload, LogIndex, NodeId, Term};

/// A digest of an entry's payload: equal payloads give equal digests.
pub fn payload_digest(payload: &EntryPayload) -> u64 {
    match payload {
        EntryPayload::Blank => 0,
        EntryPayload::Command(b) => {
            // FNV-1a over the bytes; commands in the simulator are unique ids.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for x in b.iter() {
                h ^= u64::from(*x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h | 1
        }
        EntryPayload::Membership(_) => 2,
    }
}

/// The global record (see the module docs).
#[derive(Default)]
pub struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) -> (payload digest, term of the previous entry).
    entries: HashMap<(LogIndex, Term), (u64, Term)>,
    /// index -> term of the entry committed there.
    committed: Vec<Term>,
    /// index -> the current term of the node first seen committing it: the
    /// term it was committed in or later (the leader that commits an index
    /// is the first to hold it committed).
    committed_in: Vec<Term>,
    /// index -> (term, digest) of the entry applied there.
    applied: Vec<(Term, u64)>,
    /// index -> the command id (first 8 bytes of a command, 0 otherwise)
    /// applied there: what a simulated snapshot records.
    applied_cmds: Vec<u64>,
    /// The session table over the committed log, for exactly-once.
    reference: Option<super::sessions::Reference>,
}

impl Checker {
    /// Session operations run and commands refused as expired, so far.
    pub fn session_counts(&self) -> (u64, u64) {
        self.reference.as_ref().map_or((0, 0), |r| r.counts())
    }

    /// Checks session traffic for exactly-once with `r`.
    pub fn set_reference(&mut self, r: super::sessions::Reference) {
        self.reference = Some(r);
    }

    /// A node became leader of `raft.term()`.
    pub fn on_leader(&mut self, raft: &Raft) -> Result<(), String> {
        let (term, id) = (raft.term(), raft.id());
        if let Some(other) = self.leaders.insert(term, id)
            && other != id
        {
            return Err(format!(
                "Election Safety: nodes {other} and {id} are both leader of term {term}"
            ));
        }
        // Everything committed in an earlier term must be in the new
        // leader's log (or in its snapshot, which was checked when it was
        // taken or received). Not what a later term committed: a candidate
        // that won its votes may learn so late (its process stalled), after
        // the next term's leader committed more.
        let (offset, _) = raft.snapshot_last();
        for (k, t) in self.committed.iter().enumerate() {
            let index = LogIndex(k as u64 + 1);
            if index < offset || self.committed_in[k] >= term {
                continue;
            }
            if raft.term_at(index) != Some(*t) {
                return Err(format!(
                    "Leader Completeness: new leader {id} of term {term} lacks committed \
                     entry {index}@{t} (it has {:?})",
                    raft.term_at(index)
                ));
            }
        }
        Ok(())
    }

    /// A node persisted `entries`; `prev_term` of the first is given.
    pub fn on_persist(
        &mut self,
        node: NodeId,
        first_prev_term: Term,
        entries: &[Entry],
    ) -> Result<(), String> {
        for (k, e) in entries.iter().enumerate() {
            // The term before each entry, as the node's log had it when the
            // entries were handed out for persisting.
            let prev_term = if k == 0 {
                first_prev_term
            } else {
                entries[k - 1].term
            };
            let digest = payload_digest(&e.payload);
            match self.entries.get(&(e.index, e.term)) {
                None => {
                    self.entries.insert((e.index, e.term), (digest, prev_term));
                }
                Some(&(d, p)) if d == digest && p == prev_term => {}
                Some(&(d, p)) => {
                    return Err(format!(
                        "Log Matching: node {node} has entry {}@{} with payload {digest:x} after \
                         term {prev_term}, but another node has payload {d:x} after term {p}",
                        e.index, e.term
                    ));
                }
            }
        }
        Ok(())
    }

    /// A node's commit index moved from `old` to `raft.commit_index()`.
    pub fn on_commit(
        &mut self,
        raft: &Raft,
        old: LogIndex,
        leaders: &[&Raft],
    ) -> Result<(), String> {
        let node = raft.id();
        let new = raft.commit_index();
        let (offset, _) = raft.snapshot_last();
        // Check from where this node's last check ended, but never leave a
        // gap in the committed prefix: a node can restart with a commit
        // index nobody checked (a write whose fsync failed may still have
        // reached the disk).
        let mut i = old.next().min(LogIndex(self.committed.len() as u64 + 1));
        while i <= new {
            if i < offset {
                // Covered by an installed snapshot, checked on receipt.
                if (i.0 as usize) > self.committed.len() {
                    return Err(format!(
                        "node {node} holds a snapshot covering uncommitted {i}"
                    ));
                }
                i = i.next();
                continue;
            }
            let Some(t) = raft.term_at(i) else {
                return Err(format!(
                    "node {node} committed index {i} that it does not hold"
                ));
            };
            let k = (i.0 - 1) as usize;
            if k < self.committed.len() {
                if self.committed[k] != t {
                    return Err(format!(
                        "State Machine Safety: node {node} committed {i}@{t} but {i}@{} was \
                         committed before",
                        self.committed[k]
                    ));
                }
            } else {
                // `committed` stays a dense prefix: indexes commit in order on
                // every node, and this node holds every index up to `new`.
                if k != self.committed.len() {
                    return Err(format!(
                        "checker: node {node} committed {i} past the checked prefix {}",
                        self.committed.len()
                    ));
                }
                self.committed.push(t);
                self.committed_in.push(raft.term());
                for l in leaders {
                    // (An index a leader's snapshot covers is checked on
                    // the snapshot.)
                    // Leader Completeness is about terms: the entry was
                    // committed in a term no later than the committing
                    // node's current term, so every leader of a later term
                    // holds it. (A leader of an earlier term, still unaware
                    // of its successor, need not.)
                    if l.term() > raft.term() && i > l.snapshot_last().0 && l.term_at(i) != Some(t)
                    {
                        return Err(format!(
                            "Leader Completeness: leader {} of term {} lacks {i}@{t}, committed \
                             by node {node}",
                            l.id(),
                            l.term()
                        ));
                    }
                }
            }
            i = i.next();
        }
        Ok(())
    }

    /// A snapshot (index -> command digest source) reached `node`: every
    /// index in it must match what was applied there everywhere.
    pub fn check_snapshot(
        &self,
        node: NodeId,
        state: &std::collections::BTreeMap<LogIndex, u64>,
    ) -> Result<(), String> {
        for (index, cmd) in state {
            let k = (index.0 - 1) as usize;
            let Some(applied) = self.applied_cmds.get(k) else {
                return Err(format!(
                    "State Machine Safety: a snapshot for node {node} holds {index}, never applied anywhere"
                ));
            };
            if applied != cmd {
                return Err(format!(
                    "State Machine Safety: a snapshot for node {node} holds another entry at {index}"
                ));
            }
        }
        Ok(())
    }

    /// A snapshot said to cover everything up to `index` holds an entry at
    /// every index `1..=index` and none after it, each the committed one.
    pub fn check_snapshot_complete(
        &self,
        node: NodeId,
        index: LogIndex,
        state: &std::collections::BTreeMap<LogIndex, u64>,
    ) -> Result<(), String> {
        let holds_all = state.len() as u64 == index.0
            && state.keys().next_back().is_none_or(|last| *last == index);
        if !holds_all {
            return Err(format!(
                "State Machine Safety: node {node} has a snapshot at {index} holding {} entries \
                 (last {:?}): the state it captured is not the state up to its index",
                state.len(),
                state.keys().next_back()
            ));
        }
        self.check_snapshot(node, state)
    }

    /// A node applied `e`.
    pub fn on_apply(&mut self, node: NodeId, e: &Entry) -> Result<(), String> {
        let digest = payload_digest(&e.payload);
        let k = (e.index.0 - 1) as usize;
        if k < self.applied.len() {
            let (t, d) = self.applied[k];
            if (t, d) != (e.term, digest) {
                return Err(format!(
                    "State Machine Safety: node {node} applied {}@{} ({digest:x}) but another \
                     node applied {}@{t} ({d:x})",
                    e.index, e.term, e.index
                ));
            }
        } else if k == self.applied.len() {
            self.applied.push((e.term, digest));
            self.applied_cmds.push(match &e.payload {
                EntryPayload::Command(b) if b.len() >= 8 => {
                    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
                }
                _ => 0,
            });
            if let (Some(r), EntryPayload::Command(b)) = (self.reference.as_mut(), &e.payload) {
                r.apply(e.index, e.term, b)?;
            }
        } else {
            return Err(format!(
                "node {node} applied index {} before index {}",
                e.index,
                self.applied.len() + 1
            ));
        }
        Ok(())
    }
}
