//! Scenario tests of the core written as text (`tests/testdata/*.txt`, run
//! by `tests/interactions.rs`), in the style of etcd raft's interaction
//! tests: each file is a script of commands over a few in-memory nodes, the
//! exact Readies and messages they produce written below each command, and
//! prose between. `REWRITE=1` rewrites the expected output after a change
//! that is meant to change it (then read the diff).
//!
//! Commands (ids are bare numbers; other arguments are `key=value`):
//! - `add-nodes count=N [pre-vote=B] [check-quorum=B] [max-append=K]
//!   [log=K]`: N voters, each starting with K entries of term 1, all
//!   committed (default: an empty log).
//! - `campaign ID`: the node starts an election now.
//! - `tick ID... [n=K]`: K ticks (default 1) on each node.
//! - `propose ID DATA`: the node proposes the command DATA.
//! - `read-index ID ctx=C`: the node asks for a read index.
//! - `transfer-leader ID [to=ID]`: the leader hands leadership to the
//!   named voter, or to the most up-to-date one.
//! - `process-ready ID...`: each node handles its Ready once, if it has
//!   one.
//! - `deliver-msgs`: every queued message is delivered once (or lost, if
//!   its path is cut); their answers stay queued. `drop-msgs`: every
//!   queued message is lost.
//! - `stabilize [ID...]`: Readies and deliveries until nothing moves.
//! - `partition` with groups in the input (`1 | 2 3`): messages between
//!   groups are lost; `heal`: nothing is lost any more.
//! - `crash ID`: the node stops, loses what it had not synced, and its
//!   queued messages are lost; `restart ID`: it starts from its storage.
//! - `compact ID index=I`: the node's log is compacted up to I (as if a
//!   snapshot of it were taken), if the node has applied I.
//! - `status`: term, role, leader, commit, applied and last index of every
//!   live node; `log ID`: the node's stored entries.
//! - `change-membership ID add-learner=N | promote=N | remove=N`: the
//!   leader starts a configuration change; `membership`: every live
//!   node's configuration in force, where it is in the log, and whether
//!   the node knows it was removed. `add-nodes ... join=true` adds nodes
//!   that are in no configuration yet (they wait to be added).
//!
//! A Ready's output lists, in order: a snapshot install, the entries and
//! hard state it makes durable, the entries it applies and the reads it
//! releases, then `Send:` for messages the driver may send before its
//! writes are synced (a leader's appends and heartbeats) and `Send after
//! sync:` for those that rest on durable state (pre-vote and vote
//! requests, votes, acknowledgements).
//!
//! Invariants checked after every step (a violation fails the test, never
//! just prints): no committed entry is ever replaced (State Machine
//! Safety), at most one leader per term (Election Safety), and no leader
//! holds more than one uncommitted configuration entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use bytes::Bytes;
use datadriven::TestCase;
use ha_core::node::{NodeError, Pipeline, PipelineIo};
use ha_core::raft::{AppendOutcome, Body, Config, InitialState, Membership, Message, Raft};
use ha_core::raft::{ReadState, RoleKind};
use ha_core::storage::{LogStore, MemLogStore};
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

mod conf;
mod text;

pub use text::{Command, entry_text, message_text};
use text::{arg, ids, role_text, word};

/// One node: its core (absent while crashed), its storage, its pipeline.
struct Node {
    raft: Option<Raft>,
    store: MemLogStore,
    pipeline: Pipeline<(), ()>,
    config: Config,
    /// The configuration it was started with: the first voters, or none
    /// for a node added later (`join=true`).
    bootstrap: Membership,
    /// The configuration at its store's snapshot (as a snapshot file's
    /// header holds it); empty: none taken or installed.
    base: Membership,
}

/// The nodes, the messages in flight and the network's cuts.
#[derive(Default)]
pub struct Env {
    /// A bug planted in every node's core (to show a script catches it).
    bug: Option<ha_core::raft::PlantedBug>,
    nodes: BTreeMap<u64, Node>,
    voters: Vec<u64>,
    queue: Vec<Message>,
    /// Groups of a partition: messages between groups are lost.
    groups: Vec<BTreeSet<u64>>,
    /// Every committed entry any node reported: index -> term.
    committed: BTreeMap<LogIndex, Term>,
    /// Every leader seen: term -> node.
    leaders: BTreeMap<Term, u64>,
}

/// What one node's Ready did, for the output.
struct Seen<'a> {
    out: &'a mut String,
    sent: Vec<Message>,
    snapshots: Vec<NodeId>,
}

impl PipelineIo for Seen<'_> {
    type Reply = ();
    type Read = ();
    fn send(&mut self, msg: Message) {
        self.sent.push(msg);
    }
    fn send_snapshot(&mut self, peer: NodeId) {
        self.snapshots.push(peer);
    }
    fn restore(&mut self, _state: &[u8]) -> Result<(), ha_core::node::RestoreError> {
        Ok(())
    }
    fn apply(&mut self, entry: &Entry) -> Option<Bytes> {
        let _ = writeln!(self.out, "  Applied: {}", entry_text(entry));
        None
    }
    fn answer(&mut self, _: (), _: Result<(LogIndex, Bytes), NodeError>) {}
    fn serve_read(&mut self, _: (), _: LogIndex) {}
    fn fail_read(&mut self, _: (), _: NodeError) {}
    fn unregistered_read(&mut self, read: ReadState) {
        let _ = writeln!(
            self.out,
            "  ReadState: ctx={} index={}",
            read.ctx, read.index
        );
    }
    fn unregistered_drop(&mut self, ctx: u64) {
        let _ = writeln!(self.out, "  ReadDropped: ctx={ctx}");
    }
}

impl Env {
    /// An environment whose nodes run with `bug` planted in their cores.
    pub fn with_bug(bug: ha_core::raft::PlantedBug) -> Env {
        Env {
            bug: Some(bug),
            ..Env::default()
        }
    }

    /// Runs one command of a test file; returns what it printed.
    pub fn run(&mut self, tc: &TestCase) -> String {
        self.command(&Command {
            directive: tc.directive.clone(),
            args: tc.args.clone(),
            input: tc.input.clone(),
        })
    }

    /// Runs one command; returns what it printed.
    pub fn command(&mut self, tc: &Command) -> String {
        let mut out = String::new();
        let ids = ids(tc);
        match tc.directive.as_str() {
            "add-nodes" => self.add_nodes(tc, &mut out),
            "campaign" => {
                for id in &ids {
                    self.raft(*id).campaign_now();
                }
            }
            "tick" => {
                for id in &ids {
                    for _ in 0..arg(tc, "n", 1u64) {
                        self.raft(*id).tick();
                    }
                }
            }
            "propose" => {
                let data = word(tc).expect("propose ID DATA");
                match self.raft(ids[0]).propose(Bytes::from(data)) {
                    Ok((i, t)) => {
                        let _ = writeln!(out, "proposed at {i}@{t}");
                    }
                    Err(e) => {
                        let _ = writeln!(out, "refused: {e}");
                    }
                }
            }
            "transfer-leader" => {
                let to = tc
                    .args
                    .get("to")
                    .and_then(|v| v.first())
                    .map(|v| NodeId(v.parse().expect("transfer-leader ID [to=ID]")));
                match self.raft(ids[0]).transfer_leadership(to) {
                    Ok(t) => {
                        let _ = writeln!(out, "transferring to {}", t.0);
                    }
                    Err(e) => {
                        let _ = writeln!(out, "refused: {e}");
                    }
                }
            }
            "read-index" => {
                if let Err(e) = self.raft(ids[0]).read_index(arg(tc, "ctx", 0u64)) {
                    let _ = writeln!(out, "refused: {e}");
                }
            }
            "process-ready" => {
                for id in &ids {
                    self.process_ready(*id, &mut out);
                }
            }
            "deliver-msgs" => self.deliver(&mut out),
            "drop-msgs" => {
                let _ = writeln!(out, "dropped {}", self.queue.len());
                for m in std::mem::take(&mut self.queue) {
                    self.lost(&m);
                }
            }
            "stabilize" => self.stabilize(&ids, &mut out),
            "partition" => {
                self.groups = tc
                    .input
                    .split('|')
                    .map(|g| {
                        g.split_whitespace()
                            .map(|n| n.parse().expect("a node id"))
                            .collect()
                    })
                    .collect();
            }
            "heal" => self.groups.clear(),
            "crash" => {
                for id in &ids {
                    self.crash(*id);
                }
            }
            "restart" => {
                for id in &ids {
                    self.restart(*id);
                }
            }
            "compact" => {
                let (id, index) = (ids[0], LogIndex(arg(tc, "index", 0u64)));
                let raft = self.raft(id);
                let term = raft.term_at(index).expect("a held entry");
                // The store follows only a compaction the core took (of
                // applied entries).
                let base = raft.membership_at(index).clone();
                if raft.compact(index) {
                    let node = self.nodes.get_mut(&id).expect("a node");
                    node.base = base;
                    node.store.compact(index, term).expect("compaction");
                    node.store.sync().expect("sync");
                    let _ = writeln!(out, "compacted to {index}@{term}");
                } else {
                    let _ = writeln!(
                        out,
                        "not compacted: {index} is not applied past the snapshot"
                    );
                }
            }
            "status" => self.status(&mut out),
            "change-membership" => self.change_membership(tc, &ids, &mut out),
            "membership" => self.membership(&mut out),
            "log" => {
                for e in self.nodes[&ids[0]].store.durable_entries() {
                    let _ = writeln!(out, "{}", entry_text(e));
                }
            }
            other => panic!("unknown command {other}"),
        }
        self.check();
        if out.is_empty() {
            out.push_str("ok\n");
        }
        out
    }

    fn add_nodes(&mut self, tc: &Command, out: &mut String) {
        let count: u64 = arg(tc, "count", 3);
        let log: u64 = arg(tc, "log", 0);
        let join: bool = arg(tc, "join", false);
        let first = self.nodes.len() as u64 + 1;
        if !join {
            self.voters.extend(first..first + count);
        }
        for id in first..first + count {
            let mut config = Config::new(NodeId(id));
            config.rng_seed = id;
            config.pre_vote = arg(tc, "pre-vote", true);
            config.check_quorum = arg(tc, "check-quorum", true);
            config.max_append_entries = arg(tc, "max-append", config.max_append_entries);
            config.planted_bug = self.bug;
            let mut store = MemLogStore::new();
            if log > 0 {
                let entries: Vec<Entry> = (1..=log)
                    .map(|i| Entry {
                        index: LogIndex(i),
                        term: Term(1),
                        payload: EntryPayload::Blank,
                    })
                    .collect();
                store.append(&entries).expect("append");
                let hs = HardState {
                    term: Term(1),
                    vote: None,
                    commit: LogIndex(log),
                };
                store.save_hard_state(hs).expect("hard state");
                store.sync().expect("sync");
            }
            self.nodes.insert(
                id,
                Node {
                    raft: None,
                    store,
                    pipeline: Pipeline::new(LogIndex(0)),
                    config,
                    bootstrap: Membership::default(),
                    base: Membership::default(),
                },
            );
        }
        let bootstrap = Membership::new_voters(self.voters.iter().map(|v| NodeId(*v)));
        for id in first..first + count {
            if !join {
                self.nodes.get_mut(&id).expect("added").bootstrap = bootstrap.clone();
            }
            self.restart(id);
        }
        let _ = writeln!(
            out,
            "nodes {first}..={} voters {:?}",
            first + count - 1,
            self.voters
        );
    }

    fn raft(&mut self, id: u64) -> &mut Raft {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.raft.as_mut())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    fn crash(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a node");
        node.raft = None;
        node.store.crash();
        let (gone, kept) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|m: &Message| m.from.0 == id || m.to.0 == id);
        self.queue = kept;
        for m in gone {
            self.lost(&m);
        }
    }

    /// A message that will never arrive: a snapshot's sender learns its
    /// transfer failed (the node task's transfer timeout does the same).
    fn lost(&mut self, m: &Message) {
        if let Body::InstallSnapshot { .. } = m.body
            && let Some(Some(r)) = self.nodes.get_mut(&m.from.0).map(|n| n.raft.as_mut())
        {
            r.report_snapshot(m.to, None);
        }
    }

    fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a node");
        let membership = if node.base.is_empty() {
            node.bootstrap.clone()
        } else {
            node.base.clone()
        };
        let stored = node.store.load().expect("load");
        let init = InitialState {
            hard_state: stored.hard_state,
            membership,
            snapshot_last: stored.snapshot_last,
            entries: stored.entries,
            repairing: false,
            repair_nonce: 1,
            // Started in no configuration: it joined.
            joined: node.bootstrap.is_empty(),
        };
        let raft = Raft::new(node.config.clone(), init).expect("a valid state");
        node.pipeline = Pipeline::new(raft.applied_index());
        node.raft = Some(raft);
    }

    /// Handles node `id`'s Ready once, printing what it did; true if it had
    /// one.
    fn process_ready(&mut self, id: u64, out: &mut String) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let Some(raft) = node.raft.as_mut() else {
            return false;
        };
        let mut text = String::new();
        let mut io = Seen {
            out: &mut text,
            sent: Vec::new(),
            snapshots: Vec::new(),
        };
        let Some(write) = node.pipeline.start(raft, &mut io) else {
            return false;
        };
        let _ = writeln!(out, "> {id} handling Ready");
        if let Some(i) = write.install {
            let _ = writeln!(out, "  Install: snapshot {}@{}", i.index, i.term);
            node.base = raft.membership_at(i.index).clone();
            node.store
                .install_snapshot(i.index, i.term, i.keep_suffix)
                .expect("install");
        }
        if !write.entries.is_empty() {
            let es: Vec<String> = write.entries.iter().map(entry_text).collect();
            let _ = writeln!(out, "  Entries: {}", es.join(", "));
            node.store.append(&write.entries).expect("append");
        }
        if let Some(hs) = write.hard_state {
            let vote = hs.vote.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                out,
                "  HardState: term={} vote={vote} commit={}",
                hs.term, hs.commit
            );
            node.store.save_hard_state(hs).expect("hard state");
        }
        node.store.sync().expect("sync");
        // Messages handed out before the sync promise nothing about this
        // node's disk; those after it (votes, acknowledgements) do.
        let early = std::mem::take(&mut io.sent);
        node.pipeline.persisted(&mut io);
        node.pipeline
            .finish(raft, &mut io, Some(&[]))
            .expect("no restore can fail here");
        let (late, snapshots) = (
            std::mem::take(&mut io.sent),
            std::mem::take(&mut io.snapshots),
        );
        out.push_str(&text);
        for m in &early {
            let _ = writeln!(out, "  Send: {}", message_text(m));
        }
        for m in &late {
            let _ = writeln!(out, "  Send after sync: {}", message_text(m));
        }
        let (term, leader_id) = (raft.term(), raft.id());
        let snap = raft.snapshot_last();
        for peer in snapshots {
            let m = Message {
                from: leader_id,
                to: peer,
                term,
                body: Body::InstallSnapshot {
                    index: snap.0,
                    term: snap.1,
                    membership: raft.membership_at(snap.0).clone(),
                },
            };
            let _ = writeln!(out, "  Send: {}", message_text(&m));
            self.queue.push(m);
        }
        self.queue.extend(early);
        self.queue.extend(late);
        self.check();
        true
    }

    fn cut(&self, from: u64, to: u64) -> bool {
        !self.groups.is_empty()
            && !self
                .groups
                .iter()
                .any(|g| g.contains(&from) && g.contains(&to))
    }

    /// Delivers every queued message once; answers stay queued.
    fn deliver(&mut self, out: &mut String) {
        let batch = std::mem::take(&mut self.queue);
        let mut by_node: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for m in batch {
            by_node.entry(m.to.0).or_default().push(m);
        }
        for (to, msgs) in by_node {
            let _ = writeln!(out, "> {to} receiving messages");
            for m in msgs {
                let from = m.from.0;
                let snapshot = match m.body {
                    Body::InstallSnapshot { index, .. } => Some(index),
                    _ => None,
                };
                let up = self.nodes.get(&to).is_some_and(|n| n.raft.is_some());
                let lost = self.cut(from, to) || !up;
                let _ = writeln!(
                    out,
                    "  {}{}",
                    message_text(&m),
                    if lost { " (lost)" } else { "" }
                );
                if !lost && let Err(e) = self.raft(to).step(m) {
                    let _ = writeln!(out, "  refused: {e}");
                }
                // After every step: a leadership won and lost within one
                // batch is still seen.
                self.check();
                // The sender learns how its snapshot transfer ended.
                if let Some(index) = snapshot
                    && let Some(Some(r)) = self.nodes.get_mut(&from).map(|n| n.raft.as_mut())
                {
                    r.report_snapshot(NodeId(to), (!lost).then_some(index));
                }
            }
        }
    }

    fn stabilize(&mut self, only: &[u64], out: &mut String) {
        let ids: Vec<u64> = if only.is_empty() {
            self.nodes.keys().copied().collect()
        } else {
            only.to_vec()
        };
        for _ in 0..1000 {
            let mut moved = false;
            for id in &ids {
                moved |= self.process_ready(*id, out);
            }
            self.check();
            if self.queue.iter().any(|m| ids.contains(&m.to.0)) {
                let (mine, others): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.queue)
                    .into_iter()
                    .partition(|m| ids.contains(&m.to.0));
                self.queue = mine;
                self.deliver(out);
                self.queue.extend(others);
                moved = true;
            }
            self.check();
            if !moved {
                return;
            }
        }
        panic!("stabilize: still moving after 1000 rounds\n{out}");
    }

    fn status(&self, out: &mut String) {
        for (id, n) in &self.nodes {
            match &n.raft {
                None => {
                    let _ = writeln!(out, "{id}: down");
                }
                Some(r) => {
                    let leader = r.leader().map_or("-".to_string(), |l| l.to_string());
                    let _ = writeln!(
                        out,
                        "{id}: {} term={} leader={leader} commit={} applied={} last={}",
                        role_text(r.role()),
                        r.term(),
                        r.commit_index(),
                        r.applied_index(),
                        r.last_index()
                    );
                }
            }
        }
    }

    /// State Machine Safety and Election Safety, over everything seen.
    fn check(&mut self) {
        self.check_one_change();
        for (id, n) in &self.nodes {
            let Some(r) = &n.raft else { continue };
            if r.is_leader()
                && let Some(prev) = self.leaders.insert(r.term(), *id)
            {
                assert_eq!(prev, *id, "two leaders in term {}", r.term());
            }
            // A snapshot covers committed entries only: its last one must
            // be the committed entry at its index.
            let (si, st) = r.snapshot_last();
            if si.0 > 0
                && let Some(prev) = self.committed.insert(si, st)
            {
                assert_eq!(
                    prev, st,
                    "snapshot at {si} of term {st} replaced committed {si}@{prev} on node {id}"
                );
            }
            let first = si.0 + 1;
            for i in first..=r.commit_index().0 {
                let Some(t) = r.term_at(LogIndex(i)) else {
                    continue;
                };
                if let Some(prev) = self.committed.insert(LogIndex(i), t) {
                    assert_eq!(
                        prev, t,
                        "committed entry {i}@{prev} replaced by {i}@{t} on node {id}"
                    );
                }
            }
        }
    }
}
