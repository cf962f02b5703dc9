//! Nothing leaves a node before the state it depends on is on disk: no vote,
//! no append acknowledgement, no client answer. A 3-node cluster is driven
//! through `ha_core::node::handle_ready` over stores that record what is
//! durable, and every outgoing message and every applied entry is checked
//! against that at the moment it happens. With the vote-before-persist bug
//! planted, the same check must fire.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use ha_core::node::{ReadyIo, handle_ready};
use ha_core::raft::{
    AppendOutcome, Body, Config, InitialState, Membership, Message, PlantedBug, Raft, ReadState,
};
use ha_core::rng::SplitMix64;
use ha_core::storage::{LogStore, MemLogStore, StoredState};
use ha_core::types::{Entry, HardState, LogIndex, NodeId, Term};

/// What one node's disk holds for sure.
#[derive(Default)]
struct Durable {
    hard_state: HardState,
    last_index: LogIndex,
}

/// A store that publishes what each sync made durable.
struct RecordingStore {
    inner: MemLogStore,
    durable: Rc<RefCell<Durable>>,
}

impl LogStore for RecordingStore {
    type Error = <MemLogStore as LogStore>::Error;
    fn load(&self) -> Result<StoredState, Self::Error> {
        self.inner.load()
    }
    fn append(&mut self, entries: &[Entry]) -> Result<(), Self::Error> {
        self.inner.append(entries)
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), Self::Error> {
        self.inner.save_hard_state(hs)
    }
    fn sync(&mut self) -> Result<(), Self::Error> {
        self.inner.sync()?;
        let mut d = self.durable.borrow_mut();
        d.hard_state = self.inner.durable_hard_state();
        d.last_index = self
            .inner
            .durable_entries()
            .last()
            .map_or(LogIndex(0), |e| e.index);
        Ok(())
    }
    fn last_index(&self) -> LogIndex {
        self.inner.last_index()
    }
    fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), Self::Error> {
        self.inner.compact(index, term)
    }
    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        keep: bool,
    ) -> Result<(), Self::Error> {
        self.inner.install_snapshot(index, term, keep)
    }
}

#[derive(Default)]
struct Checks {
    violations: Vec<String>,
    votes: u64,
    acks: u64,
    answers: u64,
}

/// Checks every output against the node's durable state as it happens.
struct CheckingIo {
    id: NodeId,
    durable: Rc<RefCell<Durable>>,
    checks: Rc<RefCell<Checks>>,
    outbox: Rc<RefCell<Vec<Message>>>,
}

impl ReadyIo for CheckingIo {
    fn send(&mut self, m: Message) {
        let d = self.durable.borrow();
        let mut c = self.checks.borrow_mut();
        match &m.body {
            Body::VoteResponse { granted: true } => {
                c.votes += 1;
                // Durable: this vote, or a later term (which rules out voting
                // again in this one after a crash).
                let hs = d.hard_state;
                if hs.term < m.term || (hs.term == m.term && hs.vote != Some(m.to)) {
                    c.violations.push(format!(
                        "node {} granted its vote to {} in term {} before persisting it \
                         (durable: {:?})",
                        self.id, m.to, m.term, hs
                    ));
                }
            }
            Body::Vote { .. } => {
                let hs = d.hard_state;
                if hs.term < m.term || (hs.term == m.term && hs.vote != Some(self.id)) {
                    c.violations.push(format!(
                        "node {} asked for votes in term {} before persisting its own (durable: \
                         {:?})",
                        self.id, m.term, hs
                    ));
                }
            }
            Body::AppendResponse(AppendOutcome::Accepted { match_index }) => {
                c.acks += 1;
                if d.last_index < *match_index {
                    c.violations.push(format!(
                        "node {} acknowledged index {match_index} with only {} durable",
                        self.id, d.last_index
                    ));
                }
            }
            _ => {}
        }
        self.outbox.borrow_mut().push(m);
    }
    fn apply(&mut self, e: &Entry) {
        let d = self.durable.borrow();
        let mut c = self.checks.borrow_mut();
        c.answers += 1;
        if d.last_index < e.index {
            c.violations.push(format!(
                "node {} applied (and answered) {} before it was durable here",
                self.id, e.index
            ));
        }
    }
    fn read_ready(&mut self, _: ReadState) {}
    fn read_dropped(&mut self, _: u64) {}
    fn restore_snapshot(
        &mut self,
        index: LogIndex,
        _: Term,
    ) -> Result<(), ha_core::node::RestoreError> {
        Err(format!("this cluster sends no snapshots (one at {index})").into())
    }
}

fn run_cluster(seed: u64, bug: Option<PlantedBug>) -> Checks {
    let checks = Rc::new(RefCell::new(Checks::default()));
    let outbox = Rc::new(RefCell::new(Vec::new()));
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = Config::new(NodeId(id));
        config.rng_seed = seed * 10 + id;
        config.pre_vote = false;
        config.planted_bug = bug;
        let init = InitialState {
            membership: Membership::new_voters((1..=3).map(NodeId)),
            ..InitialState::default()
        };
        let durable = Rc::new(RefCell::new(Durable::default()));
        let raft = Raft::new(config, init).expect("valid config");
        let store = RecordingStore {
            inner: MemLogStore::new(),
            durable: durable.clone(),
        };
        let io = CheckingIo {
            id: NodeId(id),
            durable,
            checks: checks.clone(),
            outbox: outbox.clone(),
        };
        nodes.push((raft, store, io));
    }
    let mut rng = SplitMix64::new(seed);
    for step in 0..3_000u64 {
        // Deliver a random subset of messages in random order, drop some.
        let mut batch: Vec<Message> = outbox.borrow_mut().drain(..).collect();
        for i in 0..batch.len() {
            let j = i + rng.range(0, (batch.len() - i) as u64) as usize;
            batch.swap(i, j);
        }
        for m in batch {
            if rng.chance(0.1) {
                continue;
            }
            let (raft, store, io) = &mut nodes[(m.to.0 - 1) as usize];
            raft.step(m).expect("valid message");
            handle_ready(raft, store, io).expect("in-memory storage");
        }
        for (raft, store, io) in nodes.iter_mut() {
            if rng.chance(0.5) {
                raft.tick();
            }
            if raft.is_leader() && step % 7 == 0 {
                let _ = raft.propose(Bytes::from(step.to_le_bytes().to_vec()));
            }
            // Now and then a leader steps aside, forcing fresh elections.
            if raft.is_leader() && rng.chance(0.01) {
                for _ in 0..20 {
                    raft.tick();
                }
            }
            handle_ready(raft, store, io).expect("in-memory storage");
        }
    }
    drop(nodes);
    Rc::try_unwrap(checks)
        .ok()
        .expect("the nodes are gone")
        .into_inner()
}

#[test]
fn votes_acknowledgements_and_answers_wait_for_the_disk() {
    for seed in 1..=5 {
        let c = run_cluster(seed, None);
        assert!(
            c.violations.is_empty(),
            "seed {seed}: {:?}",
            &c.violations[..c.violations.len().min(5)]
        );
        assert!(
            c.votes > 0 && c.acks > 100 && c.answers > 100,
            "seed {seed}: too little happened"
        );
    }
}

#[test]
fn a_vote_sent_before_it_is_durable_is_caught() {
    let caught = (1..=5).any(|seed| {
        let c = run_cluster(seed, Some(PlantedBug::VoteBeforePersist));
        c.violations
            .iter()
            .any(|v| v.contains("before persisting it"))
    });
    assert!(
        caught,
        "the ordering check missed a vote sent before it was durable"
    );
}
