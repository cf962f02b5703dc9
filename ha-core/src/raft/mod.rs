//! The deterministic Raft core.
//!
//! Owns: the protocol state of one node (term, vote, role, log cursors,
//! per-follower progress) and every protocol decision. It performs no IO,
//! reads no clock, spawns nothing and draws randomness only from a seeded
//! generator: a run is a pure function of its inputs, which is what lets the
//! simulator replay any failure from a seed.
//!
//! Inputs: [`Raft::step`] (a message), [`Raft::tick`] (logical time),
//! [`Raft::propose`] / [`Raft::propose_batch`], [`Raft::read_index`] and
//! [`Raft::read_lease`] (with [`Raft::set_clock`], the only input that is
//! not logical: lease reads alone read it).
//! Output: a [`Ready`], which the driver handles in the order its docs give
//! and then confirms with [`Raft::advance`].
//!
//! Invariants:
//! 1. At most one leader per term (Election Safety): a node votes at most once
//!    per term, and its vote is durable before the vote leaves the node.
//! 2. A leader only appends to its log; a follower truncates only entries
//!    above its commit index.
//! 3. A leader commits only entries of its own term by counting replicas
//!    (dissertation §3.6.2); earlier entries commit with them.
//! 4. A node counts itself towards a quorum only for entries it has
//!    persisted, so the leader may send appends while its own write is in
//!    flight (dissertation §10.2.1).
//! 5. A failed `step` leaves the node unchanged: messages are validated
//!    before anything is mutated.

mod election;
mod following;
mod init;
mod inputs;
mod lease;
#[cfg(test)]
mod lease_tests;
mod ready;
#[cfg(test)]
mod ready_tests;
mod repair;
mod replication;
#[cfg(test)]
mod tests;
mod transfer;

pub(crate) mod config;
mod log;
mod membership;
mod message;
mod progress;
mod read;
mod reconfig;

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

pub use config::Config;
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use lease::{LeaseConfig, MAX_CLOCK_DRIFT_PPM, MIN_CLOCK_DRIFT_PPM, ReadPath};
pub use membership::{MAX_ADDR_BYTES, MAX_MEMBERS, Membership, VoteResult, check_addr};
pub use message::{AppendOutcome, Body, MAX_APPEND_ENTRIES, Message, MessageError};
pub use read::ReadState;
pub use reconfig::{CATCH_UP_ENTRIES, ConfChange, ConfChangeError};
use transfer::Transfer;
pub use transfer::TransferError;

use self::log::RaftLog;
use self::progress::Progress;
use self::read::ReadQueue;
use crate::rng::SplitMix64;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

/// How far above its own term a node accepts a message's term. Terms grow by
/// one per election, so a larger jump is a peer burning the term space.
pub const MAX_TERM_JUMP: u64 = 1 << 32;

/// The role a node plays, as reported to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RoleKind {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes before campaigning.
    PreCandidate,
    /// Campaigning for votes.
    Candidate,
    /// The leader of its term.
    Leader,
}

/// Role-specific state: each variant carries only its own data.
#[derive(Debug)]
enum Role {
    /// Follows `Raft::leader` (or waits for one).
    Follower,
    /// Asking for pre-votes; `votes` holds the answers so far (no term
    /// moved yet); `transfer_from`: the leader whose `TimeoutNow` asked for
    /// this round, if one did.
    PreCandidate {
        votes: BTreeMap<NodeId, bool>,
        transfer_from: Option<NodeId>,
    },
    /// Campaigning in `Raft::term`; `votes` holds the answers so far.
    Candidate { votes: BTreeMap<NodeId, bool> },
    /// Leading `Raft::term` (boxed: the largest variant by far).
    Leader(Box<LeaderState>),
}

#[derive(Debug)]
struct LeaderState {
    /// Progress of every other member.
    progress: BTreeMap<NodeId, Progress>,
    /// Whether an entry of this leader's term has committed; ReadIndex waits
    /// for it (dissertation §6.4 step 1).
    committed_in_term: bool,
    /// ReadIndex requests waiting for a quorum's heartbeat answers.
    reads: ReadQueue,
    /// Sequence number of the last heartbeat broadcast in this term.
    heartbeat_seq: u64,
    /// The leadership transfer in progress, if any (see `transfer`).
    transfer: Option<Transfer>,
    /// When heartbeats left and who answered them, for lease reads.
    lease: lease::LeaseBook,
}

/// What the state the core was restarted from holds.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The durable hard state.
    pub hard_state: HardState,
    /// The configuration in force at the snapshot (or the bootstrap one
    /// without a snapshot); configuration entries in `entries` come after
    /// it. Empty: a node waiting to be added.
    pub membership: Membership,
    /// Index and term of the last entry covered by a snapshot (0, 0 if none).
    pub snapshot_last: (LogIndex, Term),
    /// The durable entries after the snapshot, in order.
    pub entries: Vec<Entry>,
    /// The storage found damage and kept only an intact prefix: the log may
    /// lack entries this node acknowledged, and the hard state may be older
    /// than the one it last wrote (a vote may be forgotten). The node starts
    /// repairing (see [`Raft::is_repairing`]).
    pub repairing: bool,
    /// The nonce of that repair's term queries: must differ from any
    /// earlier repair of this node, so the node task draws it from the
    /// operating system's randomness. 0: drawn from the core's seeded
    /// generator (reproducible runs; fresh only if the seed is).
    pub repair_nonce: u64,
    /// This node joined a running cluster (its data directory says it
    /// started in no configuration). Its storage may be a wiped voter's
    /// started again under the same id, which forgot the votes it gave
    /// before: restarted with a configuration, it votes only in terms
    /// above its stored term, as it did before the restart (see
    /// `settle_newcomer`). So the newcomer rule survives restarts. The
    /// stored term is at least the term it took its first configuration
    /// on: a leader's first message to a newcomer is a probe, refused only
    /// once the new term is durable, and the entries come in a later
    /// write. (Within one write the entries are stored before the hard
    /// state; a write that a crash cut between the two would keep the
    /// entry without the term, so this relies on that probe.)
    pub joined: bool,
}

/// A node repairing damaged storage (protocol-aware recovery).
///
/// The node may lack entries it acknowledged, and may have forgotten the
/// highest term it took part in (and its vote there). Until the repair ends
/// it neither votes nor campaigns, takes no commit index from heartbeats
/// (its leader's view of its log may be stale), and counts for nothing: it
/// answers appends with [`AppendOutcome::RepairAccepted`] and heartbeats
/// with [`AppendOutcome::Repairing`] (where its log really ends), so no
/// leader commits or confirms a read with its help. Otherwise a stale leader
/// of a term below the forgotten one could reach a majority with it.
///
/// The repair ends when both hold:
/// - every other voter answered a [`Body::TermQuery`] of this repair (its
///   random nonce echoed, so no answer from before counts), and this node
///   took on any higher term it heard: a term the node forgot is known,
///   durably, to the other voter it took part in that term with;
/// - the leader of its current term answered such a query with its last
///   index `L`, and this node's commit index (moved only by that leader's
///   appends while repairing) reached `L`, durably. Every entry this node
///   acknowledged in that term was at or below `L` (a leader's log only
///   grows in its term), and every entry committed in an earlier term is in
///   that leader's log at or below `L` (Leader Completeness); with the first
///   condition no term in which it acknowledged entries is above its
///   current one. So the node holds every committed entry again, including
///   any it acknowledged and lost.
///
/// One more election round passes, then it votes again, but only in terms
/// above every term it saw meanwhile; and if it has no vote in its current
/// term it records one for itself (durably, before the storage drops its
/// repairing mark), so a forgotten vote is never given a second time in the
/// same term, across restarts too.
#[derive(Clone, Debug)]
struct Repair {
    /// This repair's query nonce.
    nonce: u64,
    /// `(term, last)`: the leader of `term` answered a query of this repair
    /// with its last index `last`.
    leader_last: Option<(Term, LogIndex)>,
    /// Voters that answered a term query of this repair.
    heard: BTreeSet<NodeId>,
    /// Ticks since term queries were last sent.
    query_elapsed: u64,
    /// Ticks of the waiting round left, once caught up.
    wait_ticks: Option<u64>,
    /// The waiting round is over: the repair ends once the storage has
    /// dropped its mark ([`Raft::end_repair`]); until then the node still
    /// counts as repairing.
    done: bool,
    /// The highest term seen since the start of the repair.
    floor: Term,
}

/// Why a proposal was refused. A refused proposal was certainly not appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Too many entries are uncommitted; retry later.
    #[error("too many uncommitted entries; retry later")]
    Busy,
    /// Leadership is being handed to `to`: retry later (at the new leader,
    /// or here if the transfer fails). Nothing was appended.
    #[error("leadership is being transferred to {to:?}; retry later")]
    Transferring {
        /// The transfer's target.
        to: NodeId,
    },
    /// The operation is not supported yet.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    /// This leader is not a voter of the configuration it appended last:
    /// it hands leadership over once that configuration commits. Retry at
    /// the next leader. Nothing was appended.
    #[error("this leader is leaving the configuration; retry at the next leader")]
    Leaving,
}

/// Why a ReadIndex request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    /// Only the leader serves ReadIndex.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Too many reads are waiting; retry later.
    #[error("too many pending reads; retry later")]
    Busy,
}

/// Why a message was refused. The node is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The message is addressed to another node.
    #[error("message for node {0} delivered to this node")]
    WrongRecipient(NodeId),
    /// The message claims to come from this node itself, or from id 0.
    #[error("message from impossible sender {0}")]
    UnknownPeer(NodeId),
    /// The message breaks a protocol rule.
    #[error("malformed message: {0}")]
    Malformed(#[from] MessageError),
    /// The message contradicts this node's state in a way no correct peer
    /// can cause (for example a second leader in this node's term).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Role and leader, reported when either changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The node's role.
    pub role: RoleKind,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The term of that knowledge.
    pub term: Term,
}

/// Work for the driver. Handle it in this order:
///
/// 1. Send [`messages`](Ready::messages) (they do not depend on this Ready's
///    persistence; a leader's appends go out while its own write is in flight).
/// 2. Persist [`hard_state`](Ready::hard_state) and
///    [`entries`](Ready::entries) durably (the first entry may replace a
///    suffix of the stored log: truncate from its index). A hard state
///    that moves only the commit index may wait for the next write (see
///    `node::Write::hard_state_may_wait`).
/// 3. Only then send [`persisted_messages`](Ready::persisted_messages) (votes
///    and acknowledgements that promise durable state).
/// 4. Apply [`committed_entries`](Ready::committed_entries) in order; serve
///    [`read_states`](Ready::read_states) once applied up to their index; fail
///    [`dropped_reads`](Ready::dropped_reads).
/// 5. Call [`Raft::advance`] with [`Ready::token`].
///
/// Steps, ticks and proposals may be fed between `ready` and `advance`, but
/// no second `ready` may be taken before `advance`.
#[derive(Debug, Default)]
#[must_use = "a Ready carries work the driver must do, then confirm with advance()"]
pub struct Ready {
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Entries to persist.
    pub entries: Vec<Entry>,
    /// Messages to send after the persistence above is durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// Reads that can no longer be confirmed (leadership lost); the client
    /// may retry elsewhere.
    pub dropped_reads: Vec<u64>,
    /// Role or leader changes, if any.
    pub soft_state: Option<SoftState>,
    /// A snapshot to restore before applying `committed_entries` (step 2:
    /// record it in the log store with the entries).
    pub snapshot: Option<SnapshotInstall>,
    /// Followers to send the newest snapshot to; report each outcome with
    /// [`Raft::report_snapshot`].
    pub send_snapshots: Vec<NodeId>,
    token: ReadyToken,
}

/// What a [`Ready`] handed out, to confirm with [`Raft::advance`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadyToken {
    persisted: Option<(LogIndex, Term)>,
    applied: Option<LogIndex>,
    /// The snapshot this Ready asked the driver to restore: once advanced,
    /// the state machine holds it.
    restored: Option<LogIndex>,
}

impl Ready {
    /// The token to pass to [`Raft::advance`] once this Ready is handled.
    pub fn token(&self) -> ReadyToken {
        self.token
    }
}

/// Why a core could not be built from its settings and stored state.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// A setting cannot work ([`Config::validate`]).
    #[error("{0}")]
    Config(String),
    /// The configuration of voters and learners is not valid.
    #[error("{0}")]
    Membership(String),
    /// The stored state is out of range or not contiguous: storage that
    /// passed its own checks but cannot be a Raft log.
    #[error("{0}")]
    StoredState(String),
}

crate::debug_as_display!(InitError);

/// One Raft node's protocol state machine (see the module docs).
///
/// Its methods are spread over the module by duty: `inputs` (tick, propose,
/// read_index, step), `election`, `replication` (the leader's side),
/// `following`, `repair` and `ready` (the output).
#[derive(Debug)]
pub struct Raft {
    /// Settings, fixed for the node's life (validated in [`Raft::new`]).
    config: Config,
    /// The only source of randomness (election timeouts), seeded from
    /// `config`: a run is a function of its inputs.
    rng: SplitMix64,
    /// Current term. Durable: part of the hard state handed out in a
    /// Ready, persisted before any message that depends on it is sent.
    term: Term,
    /// Whom this node voted for in `term`. Durable, like `term`: a vote
    /// leaves the node only in `msgs_after_persist`.
    vote: Option<NodeId>,
    /// The leader of `term` as far as this node knows (itself when
    /// leading); `None` while it knows none.
    leader: Option<NodeId>,
    /// The role and the state only that role has (the leader's progress of
    /// every follower, a candidate's votes).
    role: Role,
    /// The log and its cursors (persisted, committed, handed to persist and
    /// to apply); [`RaftLog`] keeps their order.
    log: RaftLog,
    /// Ticks since this node last heard from a leader (as follower) or
    /// started its campaign (as candidate); compared with
    /// `randomized_timeout`. As leader: ticks since the last quorum check.
    election_elapsed: u64,
    /// The election timeout drawn for this term.
    /// Invariant: in `election_timeout_min_ticks..election_timeout_max_ticks`.
    randomized_timeout: u64,
    /// Ticks since the leader last sent heartbeats.
    heartbeat_elapsed: u64,
    /// Messages that promise nothing about this node's disk (a leader's
    /// appends and heartbeats, a follower's answers to heartbeats, a
    /// repairing node's term queries): the driver may send them before
    /// the Ready's writes are durable.
    msgs: Vec<Message>,
    /// Messages that rest on durable state (pre-vote and vote requests,
    /// sent with the candidate's own state synced; votes; acknowledgements
    /// of appends; term answers): the driver sends them only after the
    /// Ready that carries them is synced. Kept apart so that no driver can send
    /// one early by mistake.
    msgs_after_persist: Vec<Message>,
    /// Reads confirmed by a quorum (ReadIndex), waiting for the driver.
    read_states: Vec<ReadState>,
    /// Reads that cannot be confirmed (leadership lost), for the driver
    /// to fail.
    dropped_reads: Vec<u64>,
    /// The hard state handed out last: a Ready carries one only when it
    /// changed.
    last_hard_state: HardState,
    /// The soft state (leader, role) handed out last.
    last_soft_state: SoftState,
    /// A Ready was handed out and not yet confirmed by `advance`.
    ready_outstanding: bool,
    /// The state machine is away (see [`Raft::hold_apply`]): Readies carry
    /// no committed entries and no snapshot install.
    apply_held: bool,
    /// A snapshot installed since the last Ready, for the driver to restore.
    installed_snapshot: Option<SnapshotInstall>,
    /// Followers that need a snapshot sent.
    snapshots_to_send: Vec<NodeId>,
    /// Set while repairing damaged storage.
    repair: Option<Repair>,
    /// After a repair, or once a newcomer has a configuration: votes only
    /// in terms above this.
    vote_floor: Term,
    /// Started in no configuration, and has not taken one on yet: grants
    /// no vote (see `settle_newcomer`).
    newcomer: bool,
    /// Ticks since this core started (a clock for the leader's view of
    /// repairing followers).
    ticks: u64,
    /// The driver's monotonic clock, as last told (see [`Raft::set_clock`]).
    clock: u64,
    /// The term of the newest hard state known durable (confirmed by
    /// `advance`, or stored): messages leave outside a Ready only in it.
    durable_term: Term,
    /// With lease reads: the clock when this node last took a message
    /// from a leader it follows (see `lease`, invariant 6).
    lease_heard: Option<u64>,
}

/// A snapshot the core installed: the driver restores the state machine
/// from it (it is already durable on this node) and records it in the log
/// store before applying anything after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    /// Last index the snapshot covers.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// Whether the stored entries after `index` stay (they match the
    /// leader's); if false the store must drop them.
    pub keep_suffix: bool,
}

impl Raft {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Whether the node is repairing damaged storage (see
    /// [`InitialState::repairing`]): it neither votes nor campaigns.
    pub fn is_repairing(&self) -> bool {
        self.repair.is_some()
    }

    /// The repair is complete but for the storage: once everything this
    /// core wrote is durable, drop the storage's repairing mark (durably),
    /// then call [`Raft::end_repair`]. A crash before that repairs again,
    /// which is safe: the node has not voted or counted meanwhile.
    pub fn repair_complete(&self) -> bool {
        self.repair.as_ref().is_some_and(|r| r.done)
    }

    /// The storage dropped its repairing mark after
    /// [`Raft::repair_complete`]: the node votes and counts again (it votes
    /// only in terms above every term it saw while repairing).
    pub fn end_repair(&mut self) {
        if let Some(r) = &self.repair
            && r.done
        {
            self.vote_floor = self.vote_floor.max(r.floor).max(self.term);
            self.repair = None;
        }
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The vote cast in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The node's role.
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower => RoleKind::Follower,
            Role::PreCandidate { .. } => RoleKind::PreCandidate,
            Role::Candidate { .. } => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// Whether this node is the leader of its term.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    /// The highest index the driver reported applied (through
    /// [`Raft::advance`]): the state machine holds exactly the entries up to
    /// it. A snapshot stepped but not yet restored does not count.
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied
    }

    /// Bytes of the log entries held since the last snapshot: what the log
    /// store holds beyond its snapshot, and what this core holds in memory.
    pub fn log_bytes(&self) -> u64 {
        self.log.held_bytes()
    }

    /// Bytes a snapshot at the applied index would let the log drop.
    pub fn compactable_bytes(&self) -> u64 {
        self.log.held_bytes_through(self.log.applied)
    }

    /// Index of the last log entry.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// Term of the entry at `index`, if held.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// Index and term of the last entry a snapshot covers.
    pub fn snapshot_last(&self) -> (LogIndex, Term) {
        self.log.offset()
    }

    /// The configuration in force.
    pub fn membership(&self) -> &Membership {
        self.log.conf().1
    }

    /// Index of the entry holding the configuration in force (the last
    /// snapshot's index when no entry after it holds one).
    pub fn membership_index(&self) -> LogIndex {
        self.log.conf().0
    }

    /// Index of the entry holding the configuration in force at `index`
    /// (the last snapshot's index when no entry up to `index` holds one).
    pub fn membership_index_at(&self, index: LogIndex) -> LogIndex {
        self.log.conf_at(index).0
    }

    /// The configuration in force at `index` (at or after the last
    /// snapshot): what a snapshot of the state up to `index` records.
    pub fn membership_at(&self, index: LogIndex) -> &Membership {
        self.log.conf_at(index).1
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current hard state.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// Whether this node leads and has committed an entry of its own term
    /// (so its commit index is at least any earlier leader's).
    pub fn leads_with_current_commit(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if l.committed_in_term)
    }

    /// Whether this node leads and still sends to `peer` (a member, or a
    /// node dropped from the configuration that may not know yet).
    pub fn tracks(&self, peer: NodeId) -> bool {
        matches!(&self.role, Role::Leader(l) if l.progress.contains_key(&peer))
    }

    /// A leader's view of a follower's match index (None on non-leaders).
    pub fn match_index_of(&self, peer: NodeId) -> Option<LogIndex> {
        match &self.role {
            Role::Leader(_) if peer == self.config.id => Some(self.log.persisted),
            Role::Leader(l) => l.progress.get(&peer).map(|p| p.match_index),
            _ => None,
        }
    }
}
