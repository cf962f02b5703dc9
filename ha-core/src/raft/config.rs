//! Settings of the Raft core, all in logical units (ticks, entries, bytes).
//!
//! Invariants (checked by [`Config::validate`]):
//! 1. `heartbeat_interval_ticks < election_timeout_min_ticks
//!    < election_timeout_max_ticks`: a leader sends several heartbeats
//!    before any follower may time out, and timeouts are randomized over a
//!    non-empty range (dissertation §3.4).
//! 2. Every limit (`*_max`) is at least 1.

use crate::types::NodeId;

/// Protocol bugs a simulator can plant, one at a time, to prove it catches
/// them. Test-only: compiled in with the `planted-bugs` feature.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Grant votes without checking that the candidate's log is up to date.
    VoteWithoutLogCheck,
    /// Commit an entry of an earlier term by counting its replicas.
    CommitPreviousTermByCount,
    /// Send the vote before the vote is durable.
    VoteBeforePersist,
    /// Count a snapshot as applied when it is stepped, before the driver
    /// restored the state machine from it.
    AppliedBeforeRestore,
    /// Not a core bug: the session table re-creates an unknown session for a
    /// command that could be its first (the simulator plants it in its
    /// reference state machine; the core ignores it).
    SessionRecreate,
    /// Write-ahead log (set through `WalOptions::planted_bug`): any bad
    /// batch in the newest segment is a torn tail, damage to the last
    /// synced batch included (the etcd rule reverted).
    WalTornAnyBadTail,
    /// Write-ahead log: open trusts the last batch as it reads back,
    /// without writing it again and syncing (after a failed fsync its pages
    /// read back whole from the cache, yet a crash loses them).
    WalNoRewriteAtOpen,
    /// Write-ahead log: any record that parses as a batch start counts as
    /// one when deciding whether a bad batch start was followed by a later
    /// write (batch starts not bound to their segment and offset).
    WalUnboundBatchStart,
    /// Write-ahead log: a newest segment that lacks its base (its first
    /// batch lost, say to a full disk) keeps taking batches.
    WalAppendWithoutBase,
    /// Write-ahead log: a new log directory is not synced in its parent.
    WalNoDirSync,
    /// Membership: a learner's acknowledgement counts toward the commit
    /// quorum (the quorum's size still that of the voters), as if every
    /// node the leader replicates to were a voter.
    LearnerAcksCount,
    /// Lease reads: the lease runs on the leader's ticks, not its clock
    /// (a stalled leader's ticks fall behind real time).
    LeaseByTicks,
    /// Lease reads: a node that just started grants votes at once (it may
    /// have answered the lease holder just before it went down).
    LeaseNoQuietStart,
    /// Lease reads: the lease still holds after the leader sent
    /// `TimeoutNow` to a transfer's target.
    LeaseKeptOnTransfer,
    /// A leader commits (and so acknowledges) an entry of its term as soon
    /// as it is durable on the leader alone, not on a majority.
    CommitOnLeaderAlone,
    /// A leader answers a linearizable read from its own state at once,
    /// without a heartbeat round proving it is still leader (ReadIndex
    /// without its quorum check).
    ReadWithoutQuorum,
    /// Not a core bug: the session table applies a retried command again
    /// instead of answering the result it kept (exactly-once broken for
    /// every retry that reaches the log twice). Read by the state machine
    /// from `HA_PLANTED_BUG` ([`PlantedBug::from_env_once`]).
    RetryAppliedTwice,
    /// A follower installing a snapshot keeps the entries its log holds
    /// after the snapshot's index even when its entry there is not the
    /// snapshot's (the conflicting suffix is not discarded), and answers
    /// that its log matches the leader's up to its last entry, as a core
    /// that keeps a suffix in order not to be sent it again would. (Kept
    /// alone, with the answer naming the snapshot's index, the suffix is
    /// harmless here: the leader's first append past the snapshot conflicts
    /// with it at its first entry and cuts it off, and no commit index
    /// reaches it before.)
    SnapshotKeepsConflictingSuffix,
}

#[cfg(feature = "planted-bugs")]
impl PlantedBug {
    /// The bug named by the `HA_PLANTED_BUG` environment variable (its
    /// variant name), for black-box runs of a binary built with the
    /// feature; `None` if the variable is unset or names no bug.
    pub fn from_env() -> Option<PlantedBug> {
        let name = std::env::var("HA_PLANTED_BUG").ok()?;
        match name.as_str() {
            "CommitOnLeaderAlone" => Some(PlantedBug::CommitOnLeaderAlone),
            "ReadWithoutQuorum" => Some(PlantedBug::ReadWithoutQuorum),
            "RetryAppliedTwice" => Some(PlantedBug::RetryAppliedTwice),
            "VoteWithoutLogCheck" => Some(PlantedBug::VoteWithoutLogCheck),
            "CommitPreviousTermByCount" => Some(PlantedBug::CommitPreviousTermByCount),
            "SnapshotKeepsConflictingSuffix" => Some(PlantedBug::SnapshotKeepsConflictingSuffix),
            _ => None,
        }
    }

    /// [`PlantedBug::from_env`], read once per process (for code that
    /// runs on every command).
    pub fn from_env_once() -> Option<PlantedBug> {
        static BUG: std::sync::OnceLock<Option<PlantedBug>> = std::sync::OnceLock::new();
        *BUG.get_or_init(PlantedBug::from_env)
    }
}

/// Settings of one Raft node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Lower bound (inclusive) of the randomized election timeout.
    pub election_timeout_min_ticks: u64,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max_ticks: u64,
    /// Ticks between leader heartbeats.
    pub heartbeat_interval_ticks: u64,
    /// Run a pre-vote round before campaigning (dissertation §9.6), so a node
    /// that was partitioned away does not disrupt the cluster when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout
    /// steps down (dissertation §6.2), and followers that heard from a leader
    /// within that time ignore vote requests (§4.2.3).
    pub check_quorum: bool,
    /// Appends in flight to one follower in the replicate state.
    pub max_inflight_appends: usize,
    /// Entries in one append message.
    pub max_append_entries: usize,
    /// Payload bytes in one append message (at least one entry is always sent).
    pub max_append_bytes: usize,
    /// Committed entries handed out in one `Ready`.
    pub max_apply_entries: usize,
    /// Entries the leader holds uncommitted before it refuses new proposals
    /// with [`ProposeError::Busy`](crate::raft::ProposeError::Busy).
    pub max_uncommitted_entries: usize,
    /// ReadIndex requests waiting for one confirmation round.
    pub max_pending_reads: usize,
    /// Lease reads (dissertation §6.4.1; see [`Raft::read_lease`](super::Raft::read_lease)):
    /// `None` (the default) serves every linearizable read by a ReadIndex
    /// round. Needs `check_quorum`.
    pub lease: Option<super::LeaseConfig>,
    /// Seed of the core's random number generator (election timeouts).
    /// [`Config::new`] draws it from the operating system's randomness, so
    /// nodes made with their own `Config::new` never share it (nodes of two
    /// clusters with the same id would otherwise time out in lockstep). A
    /// `Config` cloned from a template keeps the template's seed: set it per
    /// node. A test that needs a reproducible run sets it.
    pub rng_seed: u64,
    /// A bug to plant (tests only).
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

/// A seed drawn from the operating system's randomness (through the
/// standard library's per-process hash keys), mixed with `id`.
pub fn fresh_seed(id: NodeId) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(id.0);
    h.finish()
}

impl Config {
    /// Defaults for a LAN cluster driven by a 50 ms tick: heartbeats every
    /// tick, elections after 6 to 12 ticks (300–600 ms).
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_min_ticks: 6,
            election_timeout_max_ticks: 12,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight_appends: 256,
            max_append_entries: 1024,
            max_append_bytes: 1 << 20,
            max_apply_entries: 4096,
            max_uncommitted_entries: 1 << 16,
            max_pending_reads: 1 << 16,
            lease: None,
            rng_seed: fresh_seed(id),
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Checks that `heartbeat_interval_ticks < election_timeout_min_ticks <
    /// election_timeout_max_ticks` (a leader sends several heartbeats per
    /// election timeout) and that every limit is at least 1.
    pub fn validate(&self) -> Result<(), super::InitError> {
        self.check().map_err(super::InitError::Config)
    }

    fn check(&self) -> Result<(), String> {
        if self.heartbeat_interval_ticks == 0 {
            return Err("heartbeat interval must be at least 1 tick".into());
        }
        if self.election_timeout_min_ticks <= self.heartbeat_interval_ticks {
            return Err(format!(
                "election timeout ({} ticks) must be longer than the heartbeat interval ({} ticks)",
                self.election_timeout_min_ticks, self.heartbeat_interval_ticks
            ));
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return Err(format!(
                "election timeout range {}..{} ticks is empty",
                self.election_timeout_min_ticks, self.election_timeout_max_ticks
            ));
        }
        for (name, v) in [
            ("max_inflight_appends", self.max_inflight_appends),
            ("max_append_entries", self.max_append_entries),
            ("max_append_bytes", self.max_append_bytes),
            ("max_apply_entries", self.max_apply_entries),
            ("max_uncommitted_entries", self.max_uncommitted_entries),
            ("max_pending_reads", self.max_pending_reads),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if let Some(lease) = &self.lease {
            lease.check(self.election_timeout_min_ticks, self.check_quorum)?;
        }
        if self.max_append_entries > super::message::MAX_APPEND_ENTRIES {
            return Err(format!(
                "max_append_entries {} is above {}, the most a follower accepts in one append",
                self.max_append_entries,
                super::message::MAX_APPEND_ENTRIES
            ));
        }
        Ok(())
    }

    #[cfg(feature = "planted-bugs")]
    pub(crate) fn has_bug(&self, bug: PlantedBug) -> bool {
        self.planted_bug == Some(bug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes with the same id (of two clusters, or restarted) draw their
    /// election timeouts from different sequences unless a test fixes it.
    #[test]
    fn default_seeds_differ_for_the_same_id() {
        let a = Config::new(NodeId(1));
        let b = Config::new(NodeId(1));
        assert_ne!(a.rng_seed, b.rng_seed);
        assert_ne!(Config::new(NodeId(2)).rng_seed, a.rng_seed);
    }
}
