//! ReadIndex rounds (dissertation §6.4), batched.
//!
//! A linearizable read needs the leader to prove it was still leader *after*
//! the read arrived. Requests that arrive while a round is in flight wait for
//! the next round, so one heartbeat round confirms a whole batch.
//!
//! Invariants:
//! 1. A round's `index` is the leader's commit index when the round started,
//!    and every request in the round arrived before it started.
//! 2. At most one round is in flight. It is confirmed by answers to
//!    heartbeats with a sequence number at or above the heartbeat broadcast
//!    when it started (those heartbeats left after the requests arrived).

use std::collections::BTreeSet;

use crate::types::{LogIndex, NodeId};

/// A read the driver may serve once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context from [`Raft::read_index`](super::Raft::read_index).
    pub ctx: u64,
    /// Serve the read after applying at least this index.
    pub index: LogIndex,
}

#[derive(Debug)]
pub(crate) struct ReadRound {
    /// The heartbeat broadcast that started the round.
    pub heartbeat_seq: u64,
    pub index: LogIndex,
    pub ctxs: Vec<u64>,
    pub acks: BTreeSet<NodeId>,
}

/// Pending reads of one leader term.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// Arrived, waiting for the next round.
    pub waiting: Vec<u64>,
    /// The round in flight.
    pub round: Option<ReadRound>,
}

impl ReadQueue {
    pub fn len(&self) -> usize {
        self.waiting.len() + self.round.as_ref().map_or(0, |r| r.ctxs.len())
    }

    /// Whether a new round should start now.
    pub fn can_start_round(&self) -> bool {
        self.round.is_none() && !self.waiting.is_empty()
    }

    /// Starts a round for everything waiting, confirmed by heartbeat
    /// `heartbeat_seq` or later.
    pub fn start_round(&mut self, index: LogIndex, me: NodeId, heartbeat_seq: u64) {
        let mut acks = BTreeSet::new();
        acks.insert(me);
        self.round = Some(ReadRound {
            heartbeat_seq,
            index,
            ctxs: std::mem::take(&mut self.waiting),
            acks,
        });
    }

    /// Every request, waiting or in a round, for the driver to fail.
    pub fn drain_all(&mut self) -> Vec<u64> {
        let mut all = std::mem::take(&mut self.waiting);
        if let Some(r) = self.round.take() {
            all.extend(r.ctxs);
        }
        all
    }
}
