//! The core's output: building a [`Ready`] and taking it back
//! ([`Raft::advance`]).

use super::*;

impl Raft {
    /// Builds what the leader has pending (appends to its followers,
    /// batched over every proposal since the last Ready) and says whether a
    /// [`Ready`] now has work in it. It changes the core (the pending
    /// output becomes messages), so it takes `&mut self`; call it, then
    /// [`Raft::ready`] when it says yes.
    pub fn prepare_ready(&mut self) -> bool {
        self.flush_leader_output();
        if self.apply_held && self.installed_snapshot.is_some() {
            // The install must be restored before anything after it is
            // written: nothing goes until the state machine is back.
            return false;
        }
        !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.hard_state() != self.last_hard_state
            || self.log.handed_persist < self.log.last_index()
            || (!self.apply_held
                && self.log.handed_apply < self.log.committed.min(self.log.last_index()))
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || self.soft_state() != self.last_soft_state
            || self.installed_snapshot.is_some()
            || !self.snapshots_to_send.is_empty()
    }

    /// Takes the messages that rest on nothing durable (appends and
    /// heartbeats, answers to heartbeats, a repairing node's term queries)
    /// now, without a [`Ready`], after building what the leader has
    /// pending (as [`Raft::prepare_ready`] does). For a driver whose Ready
    /// write is slow (a disk busy with something else): its heartbeats and
    /// appends need not wait for the write, which they do not rest on
    /// (dissertation §10.2.1). Allowed with a Ready outstanding; what it
    /// takes is not in the next Ready. Takes nothing while this node's
    /// term is not yet durable (a single voter elects itself in one step,
    /// and entries of a term it could forget in a crash, then reuse, must
    /// not leave).
    pub fn take_messages(&mut self) -> Vec<Message> {
        if self.term != self.durable_term {
            return Vec::new();
        }
        self.flush_leader_output();
        std::mem::take(&mut self.msgs)
    }

    /// Holds the state machine's side of Readies back (`true`) or lets it
    /// go (`false`). While held, a Ready carries no committed entries and
    /// no snapshot install, and none is prepared while an install waits;
    /// everything else (appends, heartbeats, votes, acknowledgements,
    /// commits, read confirmations) goes on. For a driver whose state
    /// machine is busy elsewhere, such as encoding a snapshot on another
    /// thread: consensus does not pause for it (entries committed
    /// meanwhile are applied once it is back), except on a follower that
    /// takes a snapshot install meanwhile, which then writes nothing and
    /// sends nothing but what [`Raft::take_messages`] takes until let go.
    /// Hold only with no Ready outstanding (a Ready handed out before may
    /// carry entries to apply); let go at any time.
    pub fn hold_apply(&mut self, held: bool) {
        assert!(
            !held || !self.ready_outstanding,
            "Ready protocol: hold_apply(true) with a Ready outstanding"
        );
        self.apply_held = held;
    }

    /// Whether apply is held (see [`Raft::hold_apply`]): a driver's state
    /// machine is away.
    pub fn apply_held(&self) -> bool {
        self.apply_held
    }

    /// Takes the work accumulated so far (see [`Ready`]).
    ///
    /// # Panics
    /// If the previous Ready has not been confirmed with [`Raft::advance`].
    pub fn ready(&mut self) -> Ready {
        assert!(
            !self.ready_outstanding,
            "Ready protocol: advance() must follow ready()"
        );
        self.flush_leader_output();
        let entries = self.log.take_unpersisted();
        let hs = self.hard_state();
        let hard_state = (hs != self.last_hard_state).then_some(hs);
        self.last_hard_state = hs;
        let committed_entries = if self.apply_held {
            Vec::new()
        } else {
            self.log.take_committed(self.config.max_apply_entries)
        };
        let ss = self.soft_state();
        let soft_state = (ss != self.last_soft_state).then_some(ss);
        self.last_soft_state = ss;
        self.ready_outstanding = true;
        assert!(
            !(self.apply_held && self.installed_snapshot.is_some()),
            "Ready protocol: ready() with an install waiting for a held apply (prepare_ready said no)"
        );
        let snapshot = if self.apply_held {
            None
        } else {
            self.installed_snapshot.take()
        };
        let token = ReadyToken {
            persisted: entries.last().map(|e| (e.index, e.term)),
            applied: committed_entries.last().map(|e| e.index),
            restored: snapshot.map(|s| s.index),
        };
        // In a term not yet durable (a single voter elects itself in one
        // step) even appends wait for the write: entries of a term this
        // node could forget in a crash, and reuse, must not leave before.
        let (messages, mut persisted_messages) = (
            std::mem::take(&mut self.msgs),
            std::mem::take(&mut self.msgs_after_persist),
        );
        let messages = if self.term == self.durable_term {
            messages
        } else {
            persisted_messages.splice(0..0, messages);
            Vec::new()
        };
        Ready {
            messages,
            hard_state,
            entries,
            persisted_messages,
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            dropped_reads: std::mem::take(&mut self.dropped_reads),
            soft_state,
            snapshot,
            send_snapshots: std::mem::take(&mut self.snapshots_to_send),
            token,
        }
    }

    /// Confirms that a Ready was handled: its entries are durable, its
    /// snapshot (if any) restored into the state machine, and its committed
    /// entries applied. This is the only way the applied index moves.
    pub fn advance(&mut self, token: ReadyToken) {
        self.ready_outstanding = false;
        // The hard state handed out last was in this Ready: durable now.
        self.durable_term = self.last_hard_state.term;
        if let Some(restored) = token.restored
            && restored > self.log.applied
        {
            self.log.applied = restored;
        }
        if let Some((index, term)) = token.persisted {
            self.log.persisted_to(index, term);
            if self.is_leader() {
                self.maybe_commit();
            }
        }
        if let Some(applied) = token.applied
            && applied > self.log.applied
        {
            self.log.applied = applied;
        }
    }

    pub(super) fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role(),
            leader: self.leader,
            term: self.term,
        }
    }

    /// Queues a message that rests on nothing durable.
    pub(super) fn send_now(&mut self, to: NodeId, body: Body) {
        self.msgs.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        });
    }

    pub(super) fn send_after_persist(&mut self, to: NodeId, body: Body) {
        self.msgs_after_persist.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        });
    }
}
