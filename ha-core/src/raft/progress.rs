//! What a leader knows about one follower's log, and how fast it may send.
//!
//! A follower is in one of two states (after etcd's flow control):
//! - `Probe`: the leader does not know where the follower's log diverges. It
//!   sends one append at a time and waits for an answer (or the next
//!   heartbeat response) before sending another.
//! - `Replicate`: the follower accepted the last append; the leader streams
//!   appends optimistically (pipelining), at most `max_inflight` at once.
//!
//! Invariants:
//! 1. `match_index < next_index`.
//! 2. In `Replicate`, the in-flight queue holds strictly increasing last
//!    indexes, each `< next_index`, and never more than `max_inflight` of them.
//! 3. `match_index` never decreases while this node stays leader.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// The replication state of one follower (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Searching for the point where the logs agree.
    Probe {
        /// An append is out and unanswered; send nothing more until it is
        /// answered or a heartbeat response arrives.
        paused: bool,
    },
    /// Streaming appends, bounded by the in-flight window.
    Replicate {
        /// Last index of each unacknowledged append, oldest first, with the
        /// leader's heartbeat sequence number when it was sent.
        inflight: VecDeque<(LogIndex, u64)>,
    },
    /// The follower needs entries the leader has compacted away: a snapshot
    /// is being sent; no appends until the driver reports the outcome.
    Snapshot {
        /// The snapshot index requested.
        index: LogIndex,
    },
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Flow-control state.
    pub state: ProgressState,
    /// Whether the follower has been heard from since the last CheckQuorum
    /// round (dissertation §6.2).
    pub recent_active: bool,
    /// The highest commit index this follower has been told, so the leader
    /// can tell it about a newer one without waiting for a heartbeat.
    pub commit_sent: LogIndex,
    /// Send an empty append at `next_index - 1` outside the window: an
    /// append that a later heartbeat overtook was probably lost, and this
    /// makes the follower answer with a rejection that restarts probing
    /// instead of leaving the window stuck.
    pub liveness_probe: bool,
    /// The follower said it is repairing damaged storage: its
    /// acknowledgements count for no commit until it answers as a
    /// follower that is not.
    pub repairing: bool,
    /// The leader's tick count when the follower last said it was
    /// repairing.
    pub repair_seen_at: u64,
    /// The leader's tick count when the follower last answered (`None`:
    /// never, in this leader's term).
    pub heard_at: Option<u64>,
}

impl Progress {
    /// A fresh progress for a new leader: probe from just after the leader's log.
    pub fn new(leader_last: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index: leader_last.next(),
            state: ProgressState::Probe { paused: false },
            recent_active: false,
            commit_sent: LogIndex(0),
            liveness_probe: false,
            repairing: false,
            repair_seen_at: 0,
            heard_at: None,
        }
    }

    /// Whether the leader may send another append now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match &self.state {
            ProgressState::Probe { paused } => !paused,
            ProgressState::Replicate { inflight } => inflight.len() < max_inflight,
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Records that an append ending at `last` was sent while the leader's
    /// heartbeat sequence number was `heartbeat_seq`.
    pub fn on_sent(&mut self, last: LogIndex, heartbeat_seq: u64) {
        match &mut self.state {
            ProgressState::Probe { paused } => {
                *paused = true;
            }
            ProgressState::Replicate { inflight } => {
                if last >= self.next_index {
                    self.next_index = last.next();
                }
                inflight.push_back((last, heartbeat_seq));
            }
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The follower acknowledged everything up to `index`. Returns whether
    /// `match_index` moved.
    pub fn on_ack(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        match &mut self.state {
            ProgressState::Snapshot { index: pending } if self.match_index < *pending => {
                // An answer to an append sent before the snapshot was asked
                // for: the follower still needs the snapshot, whose transfer
                // is under way. Leaving this state now would start a second,
                // concurrent transfer once the next append finds its entries
                // compacted away.
                if self.next_index <= *pending {
                    self.next_index = pending.next();
                }
            }
            ProgressState::Probe { .. } | ProgressState::Snapshot { .. } => {
                // The logs agree up to `index`: start streaming.
                self.state = ProgressState::Replicate {
                    inflight: VecDeque::new(),
                };
                self.next_index = self.match_index.next();
            }
            ProgressState::Replicate { inflight } => {
                while inflight.front().is_some_and(|(l, _)| *l <= index) {
                    inflight.pop_front();
                }
            }
        }
        updated
    }

    /// The follower rejected an append whose previous entry was `rejected`;
    /// `probe_from` is the leader's best guess (from the follower's hint) of
    /// the last index where the logs may agree. Returns false when the
    /// rejection is stale and was ignored.
    pub fn on_reject(&mut self, rejected: LogIndex, probe_from: LogIndex) -> bool {
        match &self.state {
            ProgressState::Replicate { .. } => {
                if rejected <= self.match_index {
                    return false;
                }
                // Drop the window and search again from what is known to match.
                self.state = ProgressState::Probe { paused: false };
                self.next_index = self.match_index.next().max(probe_from.next().min(rejected));
                true
            }
            ProgressState::Snapshot { .. } => false,
            ProgressState::Probe { .. } => {
                if self.next_index.prev() != rejected {
                    return false;
                }
                self.next_index = probe_from.next().min(rejected).max(self.match_index.next());
                self.state = ProgressState::Probe { paused: false };
                true
            }
        }
    }

    /// The follower answered heartbeat `seq`: a paused probe may try again,
    /// and if that heartbeat was sent after the oldest unacknowledged append,
    /// the append may have been lost: send a liveness probe.
    ///
    /// The window slot is *not* freed: heartbeats travel on their own
    /// connection and routinely overtake appends that are merely slow, so
    /// freeing slots here would let the window grow without bound. The
    /// probe (an empty append behind the in-flight ones, on the same
    /// ordered path) settles it: its acceptance acknowledges every append
    /// before it, and its rejection restarts probing.
    pub fn on_heartbeat_response(&mut self, seq: u64) {
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = false,
            ProgressState::Replicate { inflight } => {
                if inflight.front().is_some_and(|(_, sent_at)| *sent_at < seq) {
                    self.liveness_probe = true;
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// A snapshot is needed: stop appends until its outcome is known.
    pub fn start_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot { index };
    }

    /// The driver finished sending the snapshot (or failed to): probe from
    /// after it (or wait for a heartbeat answer and try again).
    pub fn snapshot_done(&mut self, sent: Option<LogIndex>) {
        if let ProgressState::Snapshot { index } = self.state {
            match sent {
                Some(i) => {
                    self.next_index = i.max(index).next().max(self.match_index.next());
                    self.state = ProgressState::Probe { paused: true };
                }
                None => {
                    self.next_index = self.match_index.next();
                    self.state = ProgressState::Probe { paused: true };
                }
            }
        }
    }

    /// The follower lost part of its log (it is repairing damaged
    /// storage): nothing is known to match any more; probe from just after
    /// `probe_from`, where its log ends as far as the leader can tell.
    pub fn reset_for_repair(&mut self, probe_from: LogIndex) {
        self.match_index = LogIndex(0);
        self.next_index = probe_from.next();
        self.state = ProgressState::Probe { paused: false };
    }

    /// A repairing follower answered a heartbeat with where its log ends,
    /// and this view of it is not too long: as a heartbeat answer, a paused
    /// probe may try again and an in-flight window gets a liveness probe;
    /// and the commit index is sent again in an append (the follower needs
    /// its whole value, which heartbeats do not carry).
    pub fn on_repair_notice(&mut self) {
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = false,
            ProgressState::Replicate { inflight } => {
                if !inflight.is_empty() {
                    self.liveness_probe = true;
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
        self.commit_sent = LogIndex(0);
    }

    /// The follower cannot be reached: fall back to probing.
    pub fn on_unreachable(&mut self) {
        if let ProgressState::Replicate { .. } = self.state {
            self.state = ProgressState::Probe { paused: false };
            self.next_index = self.match_index.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_then_waits() {
        let mut p = Progress::new(LogIndex(10));
        assert!(p.can_send(4));
        p.on_sent(LogIndex(10), 0);
        assert!(!p.can_send(4));
        p.on_heartbeat_response(1);
        assert!(p.can_send(4));
    }

    #[test]
    fn ack_moves_probe_to_replicate_and_window_bounds_sends() {
        let mut p = Progress::new(LogIndex(10));
        p.on_sent(LogIndex(10), 0);
        assert!(p.on_ack(LogIndex(10)));
        assert!(matches!(p.state, ProgressState::Replicate { .. }));
        assert_eq!(p.next_index, LogIndex(11));
        p.on_sent(LogIndex(12), 0);
        p.on_sent(LogIndex(14), 0);
        assert!(!p.can_send(2));
        assert_eq!(p.next_index, LogIndex(15));
        p.on_ack(LogIndex(12));
        assert!(p.can_send(2));
        assert_eq!(p.match_index, LogIndex(12));
        // A stale, older ack moves nothing.
        assert!(!p.on_ack(LogIndex(11)));
        assert_eq!(p.match_index, LogIndex(12));
    }

    #[test]
    fn an_append_overtaken_by_a_heartbeat_probes_but_keeps_its_slot() {
        let mut p = Progress::new(LogIndex(1));
        p.on_sent(LogIndex(1), 0);
        p.on_ack(LogIndex(1));
        p.on_sent(LogIndex(5), 3);
        // The answer to heartbeat 3 (sent before the append) says nothing.
        p.on_heartbeat_response(3);
        assert!(!p.liveness_probe);
        assert!(!p.can_send(1));
        // Heartbeats 4..14 were sent after the append and came back first
        // (they travel on another connection): the append may be slow, not
        // lost, so the window stays full; a probe is asked for.
        for seq in 4..14 {
            p.on_heartbeat_response(seq);
            assert!(!p.can_send(1), "heartbeat {seq} freed a window slot");
        }
        assert!(p.liveness_probe);
        // The probe's acceptance (it travelled behind the append) frees it.
        p.on_ack(LogIndex(5));
        assert!(p.can_send(1));
    }

    #[test]
    fn a_stale_ack_does_not_end_a_snapshot_transfer() {
        let mut p = Progress::new(LogIndex(10));
        p.on_sent(LogIndex(10), 0);
        p.on_ack(LogIndex(10));
        p.start_snapshot(LogIndex(50));
        // An answer to an append sent before the snapshot was asked for.
        p.on_ack(LogIndex(10));
        assert_eq!(
            p.state,
            ProgressState::Snapshot {
                index: LogIndex(50)
            }
        );
        assert!(!p.can_send(4), "no appends while the transfer runs");
        // The follower reports it holds the snapshot: streaming resumes.
        p.on_ack(LogIndex(50));
        assert!(matches!(p.state, ProgressState::Replicate { .. }));
        assert_eq!(p.next_index, LogIndex(51));
    }

    #[test]
    fn reject_in_probe_jumps_to_hint_but_not_below_match() {
        let mut p = Progress::new(LogIndex(100));
        p.on_sent(LogIndex(100), 0);
        // Rejected at prev=100, follower hints its log may agree up to 40.
        assert!(p.on_reject(LogIndex(100), LogIndex(40)));
        assert_eq!(p.next_index, LogIndex(41));
        // A duplicate of the same rejection is stale now.
        assert!(!p.on_reject(LogIndex(100), LogIndex(40)));
    }

    #[test]
    fn reject_in_replicate_falls_back_to_probe() {
        let mut p = Progress::new(LogIndex(5));
        p.on_sent(LogIndex(5), 0);
        p.on_ack(LogIndex(5));
        p.on_sent(LogIndex(9), 0);
        assert!(!p.on_reject(LogIndex(4), LogIndex(3)), "stale: below match");
        assert!(p.on_reject(LogIndex(9), LogIndex(7)));
        assert!(matches!(p.state, ProgressState::Probe { paused: false }));
        assert_eq!(p.next_index, LogIndex(8));
    }
}
