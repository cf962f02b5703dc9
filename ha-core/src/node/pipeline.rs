//! The driver's duties for each `Ready`, without IO: [`Pipeline`], whose
//! docs give the order and its invariants.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::handle::NodeError;
use crate::raft::{Message, Raft, ReadState, ReadyToken, SnapshotInstall, SoftState};
use crate::types::{Entry, HardState, LogIndex, NodeId, Term};

/// Why the state machine could not take a snapshot's state: whatever its
/// restore said, kept as the error's source.
pub type RestoreError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why [`Pipeline::finish`] stopped before the Ready was applied; the
/// node must stop, and nothing after the failure was applied.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A snapshot install reached `finish` without the state it installs
    /// (the driver broke the pipeline's order).
    #[error("a snapshot install finished without its state")]
    MissingInstallState,
    /// The state machine refused the installed snapshot's state: its own
    /// error is the source (with its causes), not repeated in this message.
    #[error("cannot restore the installed snapshot")]
    Restore(#[source] RestoreError),
}

/// `error` and every cause under it, joined by `: ` (for a log line or a
/// stop reason, where only text travels).
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What the pipeline asks of its driver.
pub trait PipelineIo {
    /// A proposal's reply handle.
    type Reply;
    /// A read's reply handle.
    type Read;
    /// Sends one message (best effort).
    fn send(&mut self, msg: Message);
    /// Starts sending the newest snapshot to `peer`.
    fn send_snapshot(&mut self, peer: NodeId);
    /// Replaces the state machine with the snapshot's state.
    fn restore(&mut self, state: &[u8]) -> Result<(), RestoreError>;
    /// Applies one committed entry; returns the answer of a command.
    fn apply(&mut self, entry: &Entry) -> Option<Bytes>;
    /// Answers a proposal.
    fn answer(&mut self, reply: Self::Reply, result: Result<(LogIndex, Bytes), NodeError>);
    /// A read is confirmed at `index`, which the state machine now covers:
    /// serve it.
    fn serve_read(&mut self, read: Self::Read, index: LogIndex);
    /// A read failed.
    fn fail_read(&mut self, read: Self::Read, error: NodeError);
    /// A read state for a context nobody registered (drivers that track
    /// reads themselves see them here).
    fn unregistered_read(&mut self, _read: ReadState) {}
    /// A dropped read nobody registered.
    fn unregistered_drop(&mut self, _ctx: u64) {}
    /// The role or leader changed (the `Ready`'s soft state).
    fn soft_state(&mut self, _state: SoftState) {}
}

/// What a driver must make durable for the `Ready` in flight, in this
/// order: the snapshot install (after publishing its file), the entries
/// (the first may replace a suffix of the stored log), the hard state.
#[derive(Debug, Default)]
pub struct Write {
    /// A received snapshot Raft accepted.
    pub install: Option<SnapshotInstall>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// Hard state to record.
    pub hard_state: Option<HardState>,
}

impl Write {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.install.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }

    /// Whether this write may wait for the next one, given `stored`, the
    /// hard state last handed to storage: it moves only the commit index
    /// (no entries, no snapshot, the same term and vote), and the commit
    /// passes no configuration entry above the stored commit.
    ///
    /// The commit index is volatile in Raft (dissertation Figure 3.1): a
    /// node restarted with an older one learns it again from the leader,
    /// and a snapshot raises it at recovery; the next write carries the
    /// waiting hard state, so entries appended after a commit are never
    /// durable without it. A committed configuration is the exception: a
    /// node removed by it, restarted with a commit below it, would take
    /// the change for uncommitted and campaign again with no leader left
    /// to tell it otherwise. A term or a vote is always written.
    pub fn hard_state_may_wait(&self, raft: &Raft, stored: HardState) -> bool {
        self.entries.is_empty()
            && self.install.is_none()
            && self.hard_state.is_some_and(|hs| {
                (hs.term, hs.vote) == (stored.term, stored.vote)
                    && raft.membership_index_at(hs.commit) <= stored.commit
            })
    }
}

/// The part of a `Ready` that waits for its write.
struct Stage {
    install: Option<SnapshotInstall>,
    persisted_messages: Vec<Message>,
    committed_entries: Vec<Entry>,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    token: ReadyToken,
}

/// The driver's duties for each `Ready`, in the one safe order, without IO:
/// the pipeline the node task runs and the simulator drives.
///
/// Owns: the `Ready` in flight, the clients waiting on it (proposals by
/// index, reads by context), and the applier's index. It decides nothing
/// about consensus and performs no IO: a driver hands it a [`PipelineIo`]
/// and persists what [`Pipeline::start`] returns, however it likes (at
/// once, on a storage thread, or, in the simulator, ticks later).
///
/// The order, one `Ready` at a time:
/// 1. [`Pipeline::start`]: take the `Ready`, send its `messages` (they
///    promise nothing about this node's disk), ask for snapshot transfers;
///    return the [`Write`] to make durable.
/// 2. The driver persists the write: for an installed snapshot, first
///    publishes the received file, then records the install in the log,
///    then the entries and hard state, then syncs.
/// 3. [`Pipeline::persisted`]: send `persisted_messages` (votes and
///    acknowledgements that promise durable state).
/// 4. [`Pipeline::finish`]: restore the state machine from the installed
///    snapshot, apply the committed entries in order and answer their
///    proposals, confirm and fail reads, `advance`, then serve the reads
///    the applied state now covers (unless reads are held).
///
/// Invariants:
/// 1. At most one `Ready` is in flight: `start` returns nothing while one
///    is.
/// 2. Nothing that promises durability leaves before step 3, and nothing is
///    applied or answered before it.
/// 3. [`Pipeline::applied`] is exactly what the applier holds, and equals
///    the core's applied index after every `finish`.
/// 4. A proposal is answered once: `Ok` only when its exact `(index, term)`
///    was applied; `Overwritten` when another entry was applied there;
///    `Superseded` (outcome unknown) when a snapshot covered its index.
pub struct Pipeline<P, R> {
    stage: Option<Stage>,
    proposals: BTreeMap<LogIndex, (Term, P)>,
    reads: HashMap<u64, R>,
    confirmed: Vec<(LogIndex, R)>,
    applied: LogIndex,
    /// The state machine is away: confirmed reads wait (see
    /// [`Pipeline::hold_reads`]).
    reads_held: bool,
}

impl<P, R> Pipeline<P, R> {
    /// A pipeline for a core whose state machine holds everything up to
    /// `applied` (the snapshot it restarted from).
    pub fn new(applied: LogIndex) -> Pipeline<P, R> {
        Pipeline {
            stage: None,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            confirmed: Vec::new(),
            applied,
            reads_held: false,
        }
    }

    /// While held, confirmed reads are not served, whatever they cover:
    /// the state machine is away (encoding a snapshot on another thread,
    /// with the core's apply held: `Raft::hold_apply`). Let go, then
    /// [`Pipeline::serve_reads`] serves what waited.
    pub fn hold_reads(&mut self, held: bool) {
        self.reads_held = held;
    }

    /// What the state machine holds: every entry up to this index.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Whether a `Ready` is in flight.
    pub fn busy(&self) -> bool {
        self.stage.is_some()
    }

    /// The snapshot the `Ready` in flight installs, if any.
    pub fn installing(&self) -> Option<SnapshotInstall> {
        self.stage.as_ref().and_then(|s| s.install)
    }

    /// Committed entries the `Ready` in flight applies.
    pub fn applying(&self) -> usize {
        self.stage.as_ref().map_or(0, |s| s.committed_entries.len())
    }

    /// A proposal took `(index, term)`; `reply` waits for its outcome.
    /// Returns the reply of an earlier proposal at that index, if one still
    /// waited: its entry was replaced (never committed), so it answers
    /// `Overwritten`.
    #[must_use = "a displaced proposal must be answered"]
    pub fn proposed(&mut self, index: LogIndex, term: Term, reply: P) -> Option<P> {
        self.proposals
            .insert(index, (term, reply))
            .map(|(_, displaced)| displaced)
    }

    /// A read was asked of the core under `ctx`.
    pub fn read_started(&mut self, ctx: u64, read: R) {
        self.reads.insert(ctx, read);
    }

    /// A read confirmed outside any Ready (by the leader's lease) at
    /// `index`: served at once if the applied state covers it (and reads
    /// are not held), else once it does.
    pub fn read_confirmed<I>(&mut self, index: LogIndex, read: R, io: &mut I)
    where
        I: PipelineIo<Reply = P, Read = R>,
    {
        if self.reads_held || index > self.applied {
            self.confirmed.push((index, read));
        } else {
            io.serve_read(read, index);
        }
    }

    /// Step 1: takes the next `Ready` unless one is in flight.
    pub fn start<I>(&mut self, raft: &mut Raft, io: &mut I) -> Option<Write>
    where
        I: PipelineIo<Reply = P, Read = R>,
    {
        if self.stage.is_some() || !raft.prepare_ready() {
            return None;
        }
        let rd = raft.ready();
        let token = rd.token();
        if let Some(ss) = rd.soft_state {
            io.soft_state(ss);
        }
        for m in rd.messages {
            io.send(m);
        }
        for peer in rd.send_snapshots {
            io.send_snapshot(peer);
        }
        self.stage = Some(Stage {
            install: rd.snapshot,
            persisted_messages: rd.persisted_messages,
            committed_entries: rd.committed_entries,
            read_states: rd.read_states,
            dropped_reads: rd.dropped_reads,
            token,
        });
        Some(Write {
            install: rd.snapshot,
            entries: rd.entries,
            hard_state: rd.hard_state,
        })
    }

    /// Step 3: the write is durable; send what promised it.
    pub fn persisted<I>(&mut self, io: &mut I)
    where
        I: PipelineIo<Reply = P, Read = R>,
    {
        if let Some(stage) = self.stage.as_mut() {
            for m in std::mem::take(&mut stage.persisted_messages) {
                io.send(m);
            }
        }
    }

    /// Step 4: restore (with the installed snapshot's `state`), apply,
    /// answer, `advance`, serve reads. Sends anything step 3 did not.
    pub fn finish<I>(
        &mut self,
        raft: &mut Raft,
        io: &mut I,
        state: Option<&[u8]>,
    ) -> Result<(), PipelineError>
    where
        I: PipelineIo<Reply = P, Read = R>,
    {
        self.persisted(io);
        let Some(stage) = self.stage.take() else {
            return Ok(());
        };
        if let Some(i) = stage.install {
            // Restore the state machine before anything after the snapshot.
            let state = state.ok_or(PipelineError::MissingInstallState)?;
            io.restore(state).map_err(PipelineError::Restore)?;
            self.applied = i.index;
            // Proposals at indexes the snapshot covers: their entries are
            // gone from this log, so whether they committed cannot be told
            // here (invariant 4).
            let rest = self.proposals.split_off(&i.index.next());
            for (_, (_, reply)) in std::mem::replace(&mut self.proposals, rest) {
                io.answer(reply, Err(NodeError::Superseded));
            }
        }
        for e in &stage.committed_entries {
            let answer = io.apply(e);
            self.applied = e.index;
            if let Some((term, reply)) = self.proposals.remove(&e.index) {
                let res = if term == e.term {
                    Ok((e.index, answer.unwrap_or_default()))
                } else {
                    Err(NodeError::Overwritten)
                };
                io.answer(reply, res);
            }
        }
        for rs in stage.read_states {
            match self.reads.remove(&rs.ctx) {
                Some(read) => self.confirmed.push((rs.index, read)),
                None => io.unregistered_read(rs),
            }
        }
        for ctx in stage.dropped_reads {
            match self.reads.remove(&ctx) {
                Some(read) => io.fail_read(read, NodeError::ReadAborted),
                None => io.unregistered_drop(ctx),
            }
        }
        raft.advance(stage.token);
        debug_assert_eq!(self.applied, raft.applied_index(), "invariant 3");
        self.serve_reads(io);
        Ok(())
    }

    /// Serves the confirmed reads the applied state covers (none while
    /// reads are held).
    pub fn serve_reads<I>(&mut self, io: &mut I)
    where
        I: PipelineIo<Reply = P, Read = R>,
    {
        if self.reads_held {
            return;
        }
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.confirmed = waiting;
        for (index, read) in ready {
            io.serve_read(read, index);
        }
    }

    /// The node stops: everyone waiting learns `error`.
    pub fn stop<I>(&mut self, io: &mut I, error: NodeError)
    where
        I: PipelineIo<Reply = P, Read = R>,
    {
        self.stage = None;
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            io.answer(reply, Err(error.clone()));
        }
        for (_, read) in self.reads.drain() {
            io.fail_read(read, error.clone());
        }
        for (_, read) in self.confirmed.drain(..) {
            io.fail_read(read, error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Config, InitialState, Membership};
    use crate::types::EntryPayload;

    /// A write that moves only the commit index waits, unless the commit
    /// passes a configuration entry above the stored commit (a removed
    /// node restarted below its removal would campaign again), or the term
    /// or vote changed, or it carries anything else.
    #[test]
    fn only_a_commit_that_passes_no_configuration_waits() {
        let voters = Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let entry = |index, payload| Entry {
            index: LogIndex(index),
            term: Term(1),
            payload,
        };
        let init = InitialState {
            membership: voters.clone(),
            entries: vec![
                entry(1, EntryPayload::Blank),
                entry(
                    2,
                    EntryPayload::Membership(Membership::new_voters([NodeId(1), NodeId(2)])),
                ),
                entry(3, EntryPayload::Blank),
            ],
            ..InitialState::default()
        };
        let raft = Raft::new(Config::new(NodeId(3)), init).unwrap();
        let hs = |commit| HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(commit),
        };
        let commit_to = |commit| Write {
            hard_state: Some(hs(commit)),
            ..Write::default()
        };
        // Within the entries before the configuration, or after it: waits.
        assert!(commit_to(1).hard_state_may_wait(&raft, hs(0)));
        assert!(commit_to(3).hard_state_may_wait(&raft, hs(2)));
        // Passing the configuration at 2: written.
        assert!(!commit_to(2).hard_state_may_wait(&raft, hs(1)));
        assert!(!commit_to(3).hard_state_may_wait(&raft, hs(0)));
        // Another term or vote, or anything else in the write: written.
        let mut voted = hs(0);
        voted.vote = Some(NodeId(1));
        assert!(!commit_to(1).hard_state_may_wait(&raft, voted));
        let with_entry = Write {
            entries: vec![entry(4, EntryPayload::Blank)],
            hard_state: Some(hs(1)),
            ..Write::default()
        };
        assert!(!with_entry.hard_state_may_wait(&raft, hs(0)));
        assert!(!Write::default().hard_state_may_wait(&raft, hs(0)));
    }
}
