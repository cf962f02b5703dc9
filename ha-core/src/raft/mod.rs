//! The deterministic Raft core.
//!
//! Owns: the protocol state of one node (term, vote, role, log cursors,
//! per-follower progress) and every protocol decision. It performs no IO,
//! reads no clock, spawns nothing and draws randomness only from a seeded
//! generator: a run is a pure function of its inputs, which is what lets the
//! simulator replay any failure from a seed.
//!
//! Inputs: [`Raft::step`] (a message), [`Raft::tick`] (logical time),
//! [`Raft::propose`] / [`Raft::propose_batch`] and [`Raft::read_index`].
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

pub mod config;
pub mod log;
pub mod membership;
pub mod message;
pub mod progress;
pub mod read;
pub mod rng;

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

pub use config::Config;
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use membership::{Membership, VoteResult};
pub use message::{AppendOutcome, Body, Message, MessageError};
pub use read::ReadState;

use self::log::RaftLog;
use self::progress::Progress;
use self::read::ReadQueue;
use self::rng::SplitMix64;
use crate::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

/// How far above its own term a node accepts a message's term. Terms grow by
/// one per election, so a larger jump is a peer burning the term space.
pub const MAX_TERM_JUMP: u64 = 1 << 32;

/// The role a node plays, as reported to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    Follower,
    PreCandidate { votes: BTreeMap<NodeId, bool> },
    Candidate { votes: BTreeMap<NodeId, bool> },
    Leader(Box<LeaderState>),
}

#[derive(Debug)]
struct LeaderState {
    /// Progress of every other member.
    progress: BTreeMap<NodeId, Progress>,
    /// Whether an entry of this leader's term has committed; ReadIndex waits
    /// for it (dissertation §6.4 step 1).
    committed_in_term: bool,
    reads: ReadQueue,
    /// Sequence number of the last heartbeat broadcast in this term.
    heartbeat_seq: u64,
}

/// What the state the core was restarted from holds.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The durable hard state.
    pub hard_state: HardState,
    /// The configuration in force.
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
    /// The operation is not supported yet.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
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
    /// The sender is not a member of this node's configuration.
    #[error("message from unknown node {0}")]
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
///    suffix of the stored log: truncate from its index).
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

/// One Raft node's protocol state machine (see the module docs).
#[derive(Debug)]
pub struct Raft {
    config: Config,
    rng: SplitMix64,
    term: Term,
    vote: Option<NodeId>,
    leader: Option<NodeId>,
    role: Role,
    log: RaftLog,
    membership: Membership,
    election_elapsed: u64,
    /// Invariant: in `election_timeout_min_ticks..election_timeout_max_ticks`.
    randomized_timeout: u64,
    heartbeat_elapsed: u64,
    msgs: Vec<Message>,
    msgs_after_persist: Vec<Message>,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    last_hard_state: HardState,
    last_soft_state: SoftState,
    ready_outstanding: bool,
    /// A snapshot installed since the last Ready, for the driver to restore.
    installed_snapshot: Option<SnapshotInstall>,
    /// Followers that need a snapshot sent.
    snapshots_to_send: Vec<NodeId>,
    /// Set while repairing damaged storage.
    repair: Option<Repair>,
    /// After a repair: votes only in terms above this.
    vote_floor: Term,
    /// Ticks since this core started (a clock for the leader's view of
    /// repairing followers).
    ticks: u64,
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
    /// A node started (or restarted) from durable state.
    pub fn new(config: Config, init: InitialState) -> Result<Raft, String> {
        config.validate()?;
        init.membership.validate()?;
        let (snap_index, snap_term) = init.snapshot_last;
        let hs = init.hard_state;
        if !hs.term.is_sane()
            || !hs.commit.is_sane()
            || !snap_term.is_sane()
            || !snap_index.is_sane()
            // The term a start may raise itself to (below).
            || init.entries.last().is_some_and(|e| !e.term.is_sane())
        {
            return Err(format!(
                "stored state is out of range (term {}, commit {}, snapshot {}@{}, last entry \
                 {:?})",
                hs.term,
                hs.commit,
                snap_index,
                snap_term,
                init.entries.last().map(|e| (e.index, e.term))
            ));
        }
        if let Some(first) = init.entries.first()
            && first.index != snap_index.next()
        {
            return Err(format!(
                "stored log starts at index {} but the snapshot ends at {}",
                first.index, snap_index
            ));
        }
        for w in init.entries.windows(2) {
            if w[1].index != w[0].index.next() || w[1].term < w[0].term {
                return Err(format!(
                    "stored log is not contiguous at index {}",
                    w[1].index
                ));
            }
        }
        let log = RaftLog::restore(snap_index, snap_term, init.entries, init.hard_state.commit);
        let mut rng = SplitMix64::new(config.rng_seed);
        let randomized_timeout = rng.range(
            config.election_timeout_min_ticks,
            config.election_timeout_max_ticks,
        );
        let mut hs = init.hard_state;
        // A node's term is never below the term of its last entry (or of
        // the snapshot its log starts from). A repairing node's storage may
        // have lost the hard state that said so (its log set aside, its
        // snapshot intact): it starts from that term, or it would take a
        // leader of an older term for current. With no vote: a vote is
        // durable before it is sent, so none was sent in a term the stored
        // hard state does not name (a repairing node votes in no term it
        // saw anyway).
        let last_term = log.last_term();
        if hs.term < last_term {
            hs.term = last_term;
            hs.vote = None;
        }
        let drawn = rng.next_u64();
        let repair_nonce = match init.repair_nonce {
            0 => drawn,
            n => n,
        };
        Ok(Raft {
            rng,
            term: hs.term,
            vote: hs.vote,
            leader: None,
            role: Role::Follower,
            // As stored: a term raised above (repairing) is written with
            // the first Ready.
            last_hard_state: HardState {
                commit: log.committed,
                ..init.hard_state
            },
            log,
            membership: init.membership,
            election_elapsed: 0,
            randomized_timeout,
            heartbeat_elapsed: 0,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            last_soft_state: SoftState {
                role: RoleKind::Follower,
                leader: None,
                term: hs.term,
            },
            ready_outstanding: false,
            installed_snapshot: None,
            snapshots_to_send: Vec::new(),
            repair: init.repairing.then_some(Repair {
                nonce: repair_nonce,
                leader_last: None,
                heard: BTreeSet::new(),
                // Query at the first tick.
                query_elapsed: u64::MAX,
                wait_ticks: None,
                done: false,
                floor: hs.term,
            }),
            vote_floor: Term(0),
            ticks: 0,
            config,
        })
    }

    // ----- observation -------------------------------------------------------

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
            self.vote_floor = r.floor.max(self.term);
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
        &self.membership
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
    /// A leader's view of a follower's match index (None on non-leaders).
    pub fn match_index_of(&self, peer: NodeId) -> Option<LogIndex> {
        match &self.role {
            Role::Leader(_) if peer == self.config.id => Some(self.log.persisted),
            Role::Leader(l) => l.progress.get(&peer).map(|p| p.match_index),
            _ => None,
        }
    }

    // ----- inputs ------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.tick_repair();
        if self.is_leader() {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.election_elapsed >= self.randomized_timeout && self.can_campaign() {
                self.campaign();
            }
        }
    }

    /// Proposes one command. Returns the index and term the entry got: the
    /// command took effect if and only if that exact `(index, term)` commits.
    pub fn propose(&mut self, data: Bytes) -> Result<(LogIndex, Term), ProposeError> {
        self.propose_batch(std::iter::once(data))
            .map(|(first, _, term)| (first, term))
    }

    /// Proposes several commands at once; they get consecutive indexes.
    /// Returns `(first index, last index, term)`.
    pub fn propose_batch(
        &mut self,
        data: impl IntoIterator<Item = Bytes>,
    ) -> Result<(LogIndex, LogIndex, Term), ProposeError> {
        let Role::Leader(_) = &self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        let uncommitted = (self.log.last_index().0 - self.log.committed.0) as usize;
        if uncommitted >= self.config.max_uncommitted_entries {
            return Err(ProposeError::Busy);
        }
        let first = self.log.last_index().next();
        for d in data {
            let index = self.log.last_index().next();
            self.log.append_own(Entry {
                index,
                term: self.term,
                payload: EntryPayload::Command(d),
            });
        }
        Ok((first, self.log.last_index(), self.term))
    }

    /// Asks for a linearizable read (dissertation §6.4). When confirmed, a
    /// [`ReadState`] with this `ctx` appears in a later [`Ready`]; serve the
    /// read once the state machine has applied its index.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadIndexError> {
        let max = self.config.max_pending_reads;
        let Role::Leader(l) = &mut self.role else {
            return Err(ReadIndexError::NotLeader {
                leader: self.leader,
            });
        };
        if l.reads.len() >= max {
            return Err(ReadIndexError::Busy);
        }
        l.reads.waiting.push(ctx);
        Ok(())
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.config.id {
            return Err(StepError::WrongRecipient(m.to));
        }
        if !self.membership.is_member(m.from) || m.from == self.config.id {
            return Err(StepError::UnknownPeer(m.from));
        }
        m.validate()?;
        if m.term.0 > self.term.0.saturating_add(MAX_TERM_JUMP) {
            // No cluster runs billions of elections while a node is away:
            // a peer trying to burn the term space.
            return Err(StepError::Protocol(format!(
                "term jumps from {} to {}",
                self.term, m.term
            )));
        }
        match m.body {
            Body::TermQuery { nonce } => {
                // Answered with this node's durable term, whatever the
                // asker's: a repairing node moves no one's term or leader.
                let leader_last = self.is_leader().then(|| self.log.last_index());
                let repairing = self.repair.is_some();
                self.send_after_persist(
                    m.from,
                    Body::TermReply {
                        nonce,
                        leader_last,
                        repairing,
                    },
                );
                return Ok(());
            }
            Body::TermReply {
                nonce,
                leader_last,
                repairing,
            } => {
                // A repairing node may have forgotten its term too: its
                // answer does not count (its term is still taken on).
                if let Some(r) = &mut self.repair
                    && nonce == r.nonce
                    && !repairing
                {
                    r.heard.insert(m.from);
                    if let Some(last) = leader_last
                        && r.leader_last.is_none_or(|(t, _)| t <= m.term)
                    {
                        r.leader_last = Some((m.term, last));
                    }
                }
                // Then as any message: a higher term is taken on.
            }
            _ => {}
        }
        if let Body::AppendResponse(
            AppendOutcome::Accepted { match_index } | AppendOutcome::RepairAccepted { match_index },
        ) = m.body
            && m.term == self.term
            && self.is_leader()
            && match_index > self.log.last_index()
        {
            return Err(StepError::Protocol(format!(
                "follower {} acknowledged index {} beyond the leader's last {}",
                m.from,
                match_index,
                self.log.last_index()
            )));
        }
        if let Body::Append {
            prev_index,
            prev_term,
            entries,
            ..
        } = &m.body
            && m.term >= self.term
        {
            if m.term == self.term && self.is_leader() {
                return Err(StepError::Protocol(format!(
                    "append from {} in this leader's own term {}",
                    m.from, self.term
                )));
            }
            if *prev_index >= self.log.committed && self.log.matches(*prev_index, *prev_term) {
                self.log
                    .check_append(entries)
                    .map_err(StepError::Protocol)?;
            }
        }

        if m.term > self.term {
            let is_vote_request = matches!(m.body, Body::PreVote { .. } | Body::Vote { .. });
            if is_vote_request && self.in_leader_lease() {
                // We heard from a leader within the minimum election timeout:
                // this candidate is probably disruptive (dissertation §4.2.3).
                return Ok(());
            }
            match m.body {
                Body::PreVote { .. } => {}
                Body::PreVoteResponse { granted: true } => {}
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from))
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                Body::Append { .. } | Body::Heartbeat { .. } | Body::InstallSnapshot { .. }
                    if self.config.check_quorum
                        || self.config.pre_vote
                        || self.repair.is_some() =>
                {
                    // A stale leader: tell it our term so it steps down. With
                    // CheckQuorum a vote request may not raise terms, so this
                    // is how a node partitioned at a higher term rejoins. A
                    // repairing node, which never campaigns, needs it too:
                    // else a leader below its term never learns of it.
                    self.send_after_persist(
                        m.from,
                        Body::AppendResponse(AppendOutcome::Rejected {
                            rejected: LogIndex(0),
                            hint_index: LogIndex(0),
                            hint_term: Term(0),
                        }),
                    );
                }
                Body::PreVote { .. } => {
                    self.send_after_persist(m.from, Body::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return Ok(());
        }

        match m.body {
            Body::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(m.from, m.term, last_index, last_term, true),
            Body::Vote {
                last_index,
                last_term,
            } => self.handle_vote_request(m.from, m.term, last_index, last_term, false),
            Body::PreVoteResponse { granted } => {
                // Count only answers about the term we are asking for now.
                if !granted || m.term == self.term.next() {
                    self.handle_vote_response(m.from, granted, true);
                }
            }
            Body::VoteResponse { granted } => self.handle_vote_response(m.from, granted, false),
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                if !matches!(self.role, Role::Follower) {
                    self.become_follower(m.term, Some(m.from));
                }
                self.leader = Some(m.from);
                self.election_elapsed = 0;
                self.handle_append(m.from, prev_index, prev_term, &entries, commit)?;
            }
            Body::Heartbeat { commit, seq } => {
                if !matches!(self.role, Role::Follower) {
                    self.become_follower(m.term, Some(m.from));
                }
                self.leader = Some(m.from);
                self.election_elapsed = 0;
                if self.repair.is_some() {
                    self.announce_repair(m.from);
                } else {
                    self.log.commit_to(commit);
                    self.send_after_persist(m.from, Body::HeartbeatResponse { seq });
                }
            }
            Body::InstallSnapshot { index, term } => {
                if !matches!(self.role, Role::Follower) {
                    self.become_follower(m.term, Some(m.from));
                }
                self.leader = Some(m.from);
                self.election_elapsed = 0;
                self.handle_install_snapshot(m.from, index, term);
            }
            Body::AppendResponse(outcome) => self.handle_append_response(m.from, outcome),
            Body::HeartbeatResponse { seq } => self.handle_heartbeat_response(m.from, seq),
            // Handled above.
            Body::TermQuery { .. } | Body::TermReply { .. } => {}
        }
        Ok(())
    }

    /// A snapshot of the applied state up to `index` is durable: drop the
    /// log entries it covers. Returns whether anything was dropped (nothing
    /// is if `index` is not above the current snapshot, or not applied yet).
    pub fn compact(&mut self, index: LogIndex) -> bool {
        self.log.compact_to(index)
    }

    /// The driver finished sending a snapshot to `peer`: `Some(index)` if
    /// it was delivered (ending at `index`), `None` if the transfer failed.
    pub fn report_snapshot(&mut self, peer: NodeId, sent: Option<LogIndex>) {
        if let Role::Leader(l) = &mut self.role
            && let Some(p) = l.progress.get_mut(&peer)
        {
            p.snapshot_done(sent);
        }
    }

    /// Reports that `peer` could not be reached, so replication to it falls
    /// back to probing.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if let Role::Leader(l) = &mut self.role
            && let Some(p) = l.progress.get_mut(&peer)
        {
            p.on_unreachable();
        }
    }

    // ----- output ------------------------------------------------------------

    /// Whether a [`Ready`] has work in it.
    pub fn has_ready(&mut self) -> bool {
        self.flush_leader_output();
        !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.hard_state() != self.last_hard_state
            || self.log.handed_persist < self.log.last_index()
            || self.log.handed_apply < self.log.committed.min(self.log.last_index())
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || self.soft_state() != self.last_soft_state
            || self.installed_snapshot.is_some()
            || !self.snapshots_to_send.is_empty()
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
        let committed_entries = self.log.take_committed(self.config.max_apply_entries);
        let ss = self.soft_state();
        let soft_state = (ss != self.last_soft_state).then_some(ss);
        self.last_soft_state = ss;
        self.ready_outstanding = true;
        let snapshot = self.installed_snapshot.take();
        let token = ReadyToken {
            persisted: entries.last().map(|e| (e.index, e.term)),
            applied: committed_entries.last().map(|e| e.index),
            restored: snapshot.map(|s| s.index),
        };
        Ready {
            messages: std::mem::take(&mut self.msgs),
            hard_state,
            entries,
            persisted_messages: std::mem::take(&mut self.msgs_after_persist),
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

    // ----- elections ---------------------------------------------------------

    fn can_campaign(&self) -> bool {
        // At the last term a node accepts, campaigning would create a term
        // every peer refuses (and this node could not restart from).
        self.membership.is_voter(self.config.id)
            && self.term.0 < crate::types::MAX_TERM
            && self.repair.is_none()
    }

    /// While repairing, tells `leader` where this log really ends, so it
    /// probes from there if it knew of more (see `Repair`). Sent in answer
    /// to every heartbeat, so a lost notice is repeated.
    fn announce_repair(&mut self, leader: NodeId) {
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        self.send_after_persist(
            leader,
            Body::AppendResponse(AppendOutcome::Repairing {
                last_index,
                last_term,
            }),
        );
    }

    /// The answer to an append or snapshot that left this log matching the
    /// leader's up to `match_index`.
    fn accepted(&self, match_index: LogIndex) -> Body {
        Body::AppendResponse(if self.repair.is_some() {
            AppendOutcome::RepairAccepted { match_index }
        } else {
            AppendOutcome::Accepted { match_index }
        })
    }

    /// Moves a repair on: term queries until every other voter and the
    /// leader of the current term answered, caught up to that leader's last
    /// index, then one election round of waiting, then done (see `Repair`).
    fn tick_repair(&mut self) {
        let me = self.config.id;
        let (term, leader) = (self.term, self.leader);
        let Some(r) = &mut self.repair else {
            return;
        };
        r.floor = r.floor.max(term);
        if r.done {
            return;
        }
        let mut ask: BTreeSet<NodeId> = self
            .membership
            .voters
            .union(&self.membership.voters_outgoing)
            .copied()
            .filter(|&v| v != me && !r.heard.contains(&v))
            .collect();
        let all_heard = ask.is_empty();
        let leader_last = r.leader_last.filter(|(t, _)| *t == term).map(|(_, l)| l);
        if leader_last.is_none()
            && let Some(l) = leader
        {
            ask.insert(l);
        }
        r.query_elapsed = r.query_elapsed.saturating_add(1);
        if r.wait_ticks.is_none()
            && !ask.is_empty()
            && r.query_elapsed >= self.config.heartbeat_interval_ticks
        {
            r.query_elapsed = 0;
            let nonce = r.nonce;
            for v in ask {
                self.msgs.push(Message {
                    from: me,
                    to: v,
                    term,
                    body: Body::TermQuery { nonce },
                });
            }
        }
        let Some(r) = &mut self.repair else {
            return;
        };
        match r.wait_ticks {
            None => {
                // Durable, not only received: the mark on disk goes once
                // the repair ends.
                let caught_up = all_heard
                    && leader_last.is_some_and(|last| {
                        self.log.committed >= last && self.log.persisted >= last
                    });
                if caught_up {
                    r.wait_ticks = Some(self.config.election_timeout_max_ticks);
                }
            }
            Some(0) => {
                r.done = true;
                // The floor is this term (terms only rise): a vote for
                // itself in it, stored with the hard state before the
                // storage drops its mark, keeps a forgotten vote from being
                // given again after a restart too.
                if self.vote.is_none() {
                    self.vote = Some(me);
                }
            }
            Some(n) => r.wait_ticks = Some(n - 1),
        }
    }

    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_timeout_min_ticks
    }

    fn campaign(&mut self) {
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
    }

    fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_timeout = self.rng.range(
            self.config.election_timeout_min_ticks,
            self.config.election_timeout_max_ticks,
        );
    }

    fn abandon_leadership(&mut self) {
        if let Role::Leader(l) = &mut self.role {
            let dropped = l.reads.drain_all();
            self.dropped_reads.extend(dropped);
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.abandon_leadership();
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_timers();
    }

    fn become_pre_candidate(&mut self) {
        self.abandon_leadership();
        self.role = Role::PreCandidate {
            votes: BTreeMap::new(),
        };
        self.leader = None;
        self.reset_timers();
        self.request_votes(true);
    }

    fn become_candidate(&mut self) {
        self.abandon_leadership();
        self.term = self.term.next();
        self.vote = Some(self.config.id);
        self.leader = None;
        self.role = Role::Candidate {
            votes: BTreeMap::new(),
        };
        self.reset_timers();
        self.request_votes(false);
    }

    fn request_votes(&mut self, pre: bool) {
        let me = self.config.id;
        // Our own vote counts first; a single-voter cluster wins at once.
        self.record_vote(me, true, pre);
        if !matches!(
            self.role,
            Role::PreCandidate { .. } | Role::Candidate { .. }
        ) {
            return;
        }
        let term = if pre { self.term.next() } else { self.term };
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .union(&self.membership.voters_outgoing)
            .copied()
            .filter(|n| *n != me)
            .collect();
        for to in voters {
            let body = if pre {
                Body::PreVote {
                    last_index,
                    last_term,
                }
            } else {
                Body::Vote {
                    last_index,
                    last_term,
                }
            };
            // Vote requests promise our own vote and term: after persist.
            self.msgs_after_persist.push(Message {
                from: me,
                to,
                term,
                body,
            });
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        last_index: LogIndex,
        last_term: Term,
        pre: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && msg_term > self.term);
        #[cfg(feature = "planted-bugs")]
        let up_to_date = self.config.has_bug(PlantedBug::VoteWithoutLogCheck)
            || self.log.is_up_to_date(last_index, last_term);
        #[cfg(not(feature = "planted-bugs"))]
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        // A repairing node may lack entries it acknowledged, and may have
        // forgotten a vote: it grants nothing (see `Repair`).
        let repaired = self.repair.is_none() && msg_term > self.vote_floor;
        let granted = can_vote && up_to_date && repaired;
        if pre {
            // A granted pre-vote answers in the term asked about, so the
            // pre-candidate counts it; a refusal carries our own term.
            let term = if granted { msg_term } else { self.term };
            self.msgs_after_persist.push(Message {
                from: self.config.id,
                to: from,
                term,
                body: Body::PreVoteResponse { granted },
            });
            return;
        }
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        let msg = Message {
            from: self.config.id,
            to: from,
            term: self.term,
            body: Body::VoteResponse { granted },
        };
        #[cfg(feature = "planted-bugs")]
        if self.config.has_bug(PlantedBug::VoteBeforePersist) {
            self.msgs.push(msg);
            return;
        }
        // The vote must be durable before it leaves the node (invariant 1).
        self.msgs_after_persist.push(msg);
    }

    fn handle_vote_response(&mut self, from: NodeId, granted: bool, pre: bool) {
        match (&self.role, pre) {
            (Role::PreCandidate { .. }, true) | (Role::Candidate { .. }, false) => {
                self.record_vote(from, granted, pre)
            }
            _ => {}
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool, pre: bool) {
        let result = match &mut self.role {
            Role::PreCandidate { votes } | Role::Candidate { votes } => {
                votes.entry(from).or_insert(granted);
                self.membership.vote_result(votes)
            }
            _ => return,
        };
        match result {
            VoteResult::Won if pre => self.become_candidate(),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    fn become_leader(&mut self) {
        let last = self.log.last_index();
        let me = self.config.id;
        let progress = self
            .membership
            .replication_targets()
            .into_iter()
            .filter(|n| *n != me)
            .map(|n| (n, Progress::new(last)))
            .collect();
        self.role = Role::Leader(Box::new(LeaderState {
            progress,
            committed_in_term: false,
            reads: ReadQueue::default(),
            heartbeat_seq: 0,
        }));
        self.leader = Some(me);
        self.reset_timers();
        // A no-op in the new term commits everything before it (§3.6.2) and
        // lets ReadIndex start (§6.4).
        self.log.append_own(Entry {
            index: last.next(),
            term: self.term,
            payload: EntryPayload::Blank,
        });
    }

    // ----- leader ------------------------------------------------------------

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_min_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let me = self.config.id;
                let Role::Leader(l) = &mut self.role else {
                    unreachable!()
                };
                let active = self
                    .membership
                    .has_quorum(|n| n == me || l.progress.get(&n).is_some_and(|p| p.recent_active));
                for p in l.progress.values_mut() {
                    p.recent_active = false;
                }
                if !active {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Sends a heartbeat to every follower; returns its sequence number.
    fn broadcast_heartbeat(&mut self) -> u64 {
        let me = self.config.id;
        let (term, committed) = (self.term, self.log.committed);
        let Role::Leader(l) = &mut self.role else {
            return 0;
        };
        l.heartbeat_seq += 1;
        let seq = l.heartbeat_seq;
        for (peer, p) in &l.progress {
            self.msgs.push(Message {
                from: me,
                to: *peer,
                term,
                body: Body::Heartbeat {
                    commit: p.match_index.min(committed),
                    seq,
                },
            });
        }
        seq
    }

    fn handle_append_response(&mut self, from: NodeId, outcome: AppendOutcome) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        // A repairing follower counts for nothing (see `Repair`), not even
        // to keep this leader in office.
        p.recent_active |= !matches!(
            outcome,
            AppendOutcome::RepairAccepted { .. } | AppendOutcome::Repairing { .. }
        );
        let (now, window) = (self.ticks, self.config.election_timeout_max_ticks);
        match outcome {
            AppendOutcome::Accepted { match_index } => {
                // From a follower seen repairing: it counts again only once
                // an election round passed since it last said so (its
                // repair ends with such a wait), so an answer it sent before
                // its crash and the network delayed does not count.
                let repaired = p.repairing && now.saturating_sub(p.repair_seen_at) >= window;
                if repaired {
                    p.repairing = false;
                }
                if p.on_ack(match_index) || repaired {
                    self.maybe_commit();
                }
            }
            AppendOutcome::RepairAccepted { match_index } => {
                p.repairing = true;
                p.repair_seen_at = now;
                p.on_ack(match_index);
            }
            AppendOutcome::Rejected {
                rejected,
                hint_index,
                hint_term,
            } => {
                let probe_from = if hint_term > Term(0) {
                    self.log.find_conflict_by_term(hint_index, hint_term).0
                } else {
                    hint_index
                };
                p.on_reject(rejected, probe_from);
            }
            AppendOutcome::Repairing {
                last_index,
                last_term,
            } => {
                // The follower lost part of its log: if what it was known to
                // hold may be wrong, forget that and probe from where its log
                // really ends. (A repeated notice, once the view is right,
                // does not disturb the search.)
                p.repairing = true;
                p.repair_seen_at = now;
                // What it was known to hold is still right only if its log
                // ends at or after that and its last entry is in this log
                // (then, by Log Matching, the logs agree up to there). Its
                // intact prefix may be an older version of an index it
                // acknowledged after a truncation.
                let agrees = last_index <= self.log.last_index()
                    && self.log.term(last_index) == Some(last_term);
                if p.match_index > last_index || (!agrees && p.match_index > LogIndex(0)) {
                    let probe_from = self
                        .log
                        .find_conflict_by_term(last_index.min(self.log.last_index()), last_term)
                        .0;
                    p.reset_for_repair(probe_from);
                } else {
                    // The notice answers a heartbeat: as a heartbeat answer,
                    // it lets a paused probe try again and settles a window
                    // a lost append left stuck. And the follower may not
                    // have seen the whole commit index in an append
                    // (heartbeats carry a clamped one, and a commit-only
                    // append may have overtaken its entries): send it again.
                    p.on_repair_notice();
                }
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, seq: u64) {
        let me = self.config.id;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let Some(p) = l.progress.get_mut(&from) else {
            return;
        };
        // Only a node that is not repairing answers heartbeats, but this
        // answer may have been sent before its crash: a follower seen
        // repairing counts again only once an election round passed since.
        // (It still shows the follower is there, for CheckQuorum.)
        p.recent_active = true;
        if p.repairing
            && self.ticks.saturating_sub(p.repair_seen_at) < self.config.election_timeout_max_ticks
        {
            return;
        }
        let repaired = std::mem::take(&mut p.repairing);
        p.on_heartbeat_response(seq);
        if let Some(round) = &mut l.reads.round
            && round.heartbeat_seq <= seq
        {
            if self.membership.is_voter(from) {
                round.acks.insert(from);
            }
            if self
                .membership
                .has_quorum(|n| n == me || round.acks.contains(&n))
            {
                let round = l.reads.round.take().expect("round checked above");
                self.read_states
                    .extend(round.ctxs.into_iter().map(|ctx| ReadState {
                        ctx,
                        index: round.index,
                    }));
            }
        }
        if repaired {
            self.maybe_commit();
        }
    }

    fn maybe_commit(&mut self) {
        let me = self.config.id;
        let persisted = self.log.persisted;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let index = self.membership.committed_index(|n| {
            if n == me {
                persisted
            } else {
                // A repairing follower counts for no commit (see `Repair`).
                l.progress
                    .get(&n)
                    .filter(|p| !p.repairing)
                    .map_or(LogIndex(0), |p| p.match_index)
            }
        });
        if index <= self.log.committed {
            return;
        }
        let own_term = self.log.term(index) == Some(self.term);
        #[cfg(feature = "planted-bugs")]
        let own_term = own_term || self.config.has_bug(PlantedBug::CommitPreviousTermByCount);
        // Only entries of the current term commit by counting (§3.6.2).
        if own_term {
            self.log.commit_to(index);
            if self.log.term(index) == Some(self.term) {
                l.committed_in_term = true;
            }
        }
    }

    /// Sends what the leader owes its followers: appends within each
    /// follower's window, commit updates, and ReadIndex rounds.
    fn flush_leader_output(&mut self) {
        let me = self.config.id;
        let term = self.term;
        let committed = self.log.committed;
        let max_inflight = self.config.max_inflight_appends;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let last = self.log.last_index();
        let heartbeat_seq = l.heartbeat_seq;
        for (peer, p) in l.progress.iter_mut() {
            let append = |prev_index, prev_term, entries| Message {
                from: me,
                to: *peer,
                term,
                body: Body::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit: committed,
                },
            };
            if std::mem::take(&mut p.liveness_probe) {
                let prev = p.next_index.prev();
                if let Some(prev_term) = self.log.term(prev) {
                    self.msgs.push(append(prev, prev_term, Vec::new()));
                    p.commit_sent = committed;
                } else {
                    // The probe's entry was compacted away: the window
                    // cannot be settled by a probe. Search again from what
                    // is known to match (which leads to a snapshot if that
                    // is compacted too).
                    p.on_unreachable();
                }
            }
            while p.can_send(max_inflight) {
                let probing = matches!(p.state, progress::ProgressState::Probe { .. });
                let prev = p.next_index.prev();
                let Some(prev_term) = self.log.term(prev) else {
                    // The follower needs entries a snapshot replaced: send
                    // the snapshot, out of band (dissertation §5.3).
                    let (offset, _) = self.log.offset();
                    p.start_snapshot(offset);
                    self.snapshots_to_send.push(*peer);
                    break;
                };
                let entries = if p.next_index <= last {
                    self.log.slice(
                        p.next_index,
                        last,
                        self.config.max_append_entries,
                        self.config.max_append_bytes,
                    )
                } else if probing || committed > p.commit_sent {
                    Vec::new()
                } else {
                    break;
                };
                let sent_last = entries.last().map_or(prev, |e| e.index);
                let empty = entries.is_empty();
                self.msgs.push(append(prev, prev_term, entries));
                p.commit_sent = committed;
                if empty && !probing {
                    break; // A commit-only update takes no window slot.
                }
                p.on_sent(sent_last, heartbeat_seq);
                if probing {
                    break;
                }
            }
        }
        if !(l.committed_in_term && l.reads.can_start_round()) {
            return;
        }
        // A ReadIndex round: a fresh heartbeat proves leadership after every
        // waiting request arrived (dissertation §6.4 step 2).
        if self.membership.has_quorum(|n| n == me) {
            let ctxs = std::mem::take(&mut l.reads.waiting);
            self.read_states
                .extend(ctxs.into_iter().map(|ctx| ReadState {
                    ctx,
                    index: committed,
                }));
            return;
        }
        let seq = self.broadcast_heartbeat();
        if let Role::Leader(l) = &mut self.role {
            l.reads.start_round(committed, me, seq);
        }
    }

    // ----- follower ----------------------------------------------------------

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: &[Entry],
        commit: LogIndex,
    ) -> Result<(), StepError> {
        if prev_index < self.log.committed {
            // Everything up to our commit index matches the leader's log.
            let match_index = self.log.committed;
            self.send_after_persist(from, self.accepted(match_index));
            return Ok(());
        }
        if self.log.matches(prev_index, prev_term) {
            let last_new = self
                .log
                .append_from_leader(prev_index, entries)
                .map_err(StepError::Protocol)?;
            self.log.commit_to(commit.min(last_new));
            self.send_after_persist(from, self.accepted(last_new));
        } else {
            let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
            self.send_after_persist(
                from,
                Body::AppendResponse(AppendOutcome::Rejected {
                    rejected: prev_index,
                    hint_index,
                    hint_term,
                }),
            );
        }
        Ok(())
    }

    fn handle_install_snapshot(&mut self, from: NodeId, index: LogIndex, term: Term) {
        if index <= self.log.committed {
            // Nothing new: we have all of it committed already.
            let match_index = self.log.committed;
            self.send_after_persist(from, self.accepted(match_index));
            return;
        }
        let keep_suffix = self.log.install_snapshot(index, term);
        #[cfg(feature = "planted-bugs")]
        if self.config.has_bug(PlantedBug::AppliedBeforeRestore) {
            self.log.applied = self.log.applied.max(index);
        }
        self.installed_snapshot = Some(SnapshotInstall {
            index,
            term,
            keep_suffix,
        });
        self.send_after_persist(from, self.accepted(index));
    }

    fn send_after_persist(&mut self, to: NodeId, body: Body) {
        self.msgs_after_persist.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        });
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role(),
            leader: self.leader,
            term: self.term,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MAX_TERM;

    fn node() -> Raft {
        let init = InitialState {
            membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
            ..InitialState::default()
        };
        Raft::new(Config::new(NodeId(1)), init).unwrap()
    }

    fn heartbeat(term: u64) -> Message {
        Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(term),
            body: Body::Heartbeat {
                commit: LogIndex(0),
                seq: 1,
            },
        }
    }

    /// A repairing node whose storage lost its hard state but kept a
    /// snapshot of term 7 starts in term 7, so a stale leader of term 5 is
    /// told so instead of being followed (and acknowledged beyond its log).
    /// So does any node whose stored term is below its log's.
    #[test]
    fn a_node_starts_no_lower_than_its_logs_last_term() {
        let init = |repairing| InitialState {
            membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
            snapshot_last: (LogIndex(97), Term(7)),
            repairing,
            ..InitialState::default()
        };
        let mut r = Raft::new(Config::new(NodeId(1)), init(true)).unwrap();
        assert_eq!(r.term(), Term(7));
        let ready = r.ready();
        assert_eq!(
            ready.hard_state.map(|h| h.term),
            Some(Term(7)),
            "the raised term is written"
        );
        r.advance(ready.token);
        r.step(heartbeat(5)).unwrap();
        assert_eq!(r.term(), Term(7));
        assert_eq!(r.leader(), None, "a leader of term 5 is not followed");
        let r = Raft::new(Config::new(NodeId(1)), init(false)).unwrap();
        assert_eq!(r.term(), Term(7));
    }

    #[test]
    fn a_term_jump_beyond_any_real_cluster_is_refused_unchanged() {
        let mut r = node();
        assert!(matches!(
            r.step(heartbeat(MAX_TERM_JUMP + 1)),
            Err(StepError::Protocol(_))
        ));
        assert_eq!(r.term(), Term(0));
        assert!(matches!(
            r.step(heartbeat(u64::MAX)),
            Err(StepError::Malformed(_))
        ));
        assert_eq!(r.term(), Term(0));
    }

    #[test]
    fn at_the_last_term_a_node_neither_campaigns_nor_overflows() {
        let init = InitialState {
            hard_state: HardState {
                term: Term(MAX_TERM - 3),
                ..HardState::default()
            },
            membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
            ..InitialState::default()
        };
        let mut r = Raft::new(Config::new(NodeId(1)), init).unwrap();
        r.step(heartbeat(MAX_TERM)).unwrap();
        assert_eq!(r.term(), Term(MAX_TERM));
        for _ in 0..100 {
            r.tick();
            while r.has_ready() {
                let rd = r.ready();
                let t = rd.token();
                r.advance(t);
            }
        }
        assert_eq!(r.term(), Term(MAX_TERM), "no term above the last");
        // And the node restarts from that state.
        let init = InitialState {
            hard_state: r.hard_state(),
            membership: r.membership().clone(),
            ..InitialState::default()
        };
        Raft::new(Config::new(NodeId(1)), init).unwrap();
    }

    /// Drains every Ready (as if persisted at once); returns what was sent.
    fn drain(r: &mut Raft) -> Vec<Message> {
        let mut out = Vec::new();
        while r.has_ready() {
            let rd = r.ready();
            out.extend(rd.messages.iter().cloned());
            out.extend(rd.persisted_messages.iter().cloned());
            let t = rd.token();
            r.advance(t);
        }
        out
    }

    fn msg(from: u64, term: u64, body: Body) -> Message {
        Message {
            from: NodeId(from),
            to: NodeId(1),
            term: Term(term),
            body,
        }
    }

    fn vote_granted(out: &[Message]) -> Option<bool> {
        out.iter().find_map(|m| match m.body {
            Body::VoteResponse { granted } => Some(granted),
            _ => None,
        })
    }

    /// A node whose storage lost part of its log (and maybe a vote) grants
    /// no vote and never campaigns; it tells the leader where its log ends,
    /// takes no commit index from heartbeats, answers no heartbeat, and
    /// acknowledges appends only as repairing. It votes again only once
    /// every other voter told it its term, it holds the own-term commit of
    /// its leader in its current term and an election round has passed, and
    /// then only in terms above any it saw.
    #[test]
    fn a_repairing_node_votes_only_once_it_holds_its_leaders_log() {
        let entry = |i: u64, t: u64| Entry {
            index: LogIndex(i),
            term: Term(t),
            payload: EntryPayload::Blank,
        };
        let init = InitialState {
            hard_state: HardState {
                term: Term(3),
                vote: None,
                commit: LogIndex(1),
            },
            membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
            entries: vec![entry(1, 1), entry(2, 1)],
            repairing: true,
            ..InitialState::default()
        };
        // Without CheckQuorum's lease, so vote requests are answered while
        // a leader is heard.
        let mut config = Config::new(NodeId(1));
        config.check_quorum = false;
        let mut r = Raft::new(config, init).unwrap();
        assert!(r.is_repairing());
        // No vote, even for a candidate with a longer log.
        let vote = |t: u64| {
            msg(
                2,
                t,
                Body::Vote {
                    last_index: LogIndex(50),
                    last_term: Term(t),
                },
            )
        };
        r.step(vote(4)).unwrap();
        assert_eq!(vote_granted(&drain(&mut r)), Some(false));
        // No campaign, however long it waits.
        for _ in 0..200 {
            r.tick();
            let out = drain(&mut r);
            assert!(
                !out.iter()
                    .any(|m| matches!(m.body, Body::PreVote { .. } | Body::Vote { .. })),
                "a repairing node campaigned"
            );
        }
        // A leader of term 5: a heartbeat's commit (from a stale view of
        // this log) is not taken; the leader is told where the log ends.
        r.step(msg(
            3,
            5,
            Body::Heartbeat {
                commit: LogIndex(9),
                seq: 1,
            },
        ))
        .unwrap();
        let out = drain(&mut r);
        assert!(out.iter().any(|m| m.to == NodeId(3)
            && matches!(
                m.body,
                Body::AppendResponse(AppendOutcome::Repairing {
                    last_index: LogIndex(2),
                    last_term: Term(1),
                })
            )));
        assert_eq!(r.commit_index(), LogIndex(1));
        // The leader's log, up to its own-term commit: accepted, but as a
        // repairing node (no commit counts it).
        r.step(msg(
            3,
            5,
            Body::Append {
                prev_index: LogIndex(2),
                prev_term: Term(1),
                entries: vec![entry(3, 2), entry(4, 5)],
                commit: LogIndex(4),
            },
        ))
        .unwrap();
        let out = drain(&mut r);
        assert!(out.iter().any(|m| matches!(
            m.body,
            Body::AppendResponse(AppendOutcome::RepairAccepted {
                match_index: LogIndex(4)
            })
        )));
        assert!(
            !out.iter()
                .any(|m| matches!(m.body, Body::AppendResponse(AppendOutcome::Accepted { .. }))),
            "a repairing node's acknowledgement must not count"
        );
        assert_eq!(r.commit_index(), LogIndex(4));
        // Caught up with the leader of term 5, but a higher term may have
        // been forgotten: it asks every other voter, and goes on asking,
        // until each answered; meanwhile heartbeats get notices, never a
        // heartbeat answer (which would confirm a leadership).
        let round = Config::new(NodeId(1)).election_timeout_max_ticks;
        let heartbeat = |from: u64, term: u64| {
            msg(
                from,
                term,
                Body::Heartbeat {
                    commit: LogIndex(4),
                    seq: 2,
                },
            )
        };
        let mut asked = BTreeSet::new();
        let mut nonce = None;
        for _ in 0..3 * round {
            r.tick();
            r.step(heartbeat(3, 5)).unwrap();
            for m in drain(&mut r) {
                assert!(
                    !matches!(m.body, Body::HeartbeatResponse { .. }),
                    "a repairing node answered a heartbeat"
                );
                if let Body::TermQuery { nonce: n } = m.body {
                    asked.insert(m.to);
                    nonce = Some(n);
                }
            }
        }
        assert!(r.is_repairing(), "no voter answered: still repairing");
        assert_eq!(asked, BTreeSet::from([NodeId(2), NodeId(3)]));
        let nonce = nonce.expect("queried");
        let reply = |from: u64, term: u64, nonce: u64, last: Option<u64>| {
            msg(
                from,
                term,
                Body::TermReply {
                    nonce,
                    leader_last: last.map(LogIndex),
                    repairing: false,
                },
            )
        };
        // Answers to another query (an earlier repair's, delayed) count for
        // nothing, though this log holds the leader's last index 4; nor does
        // the answer of a node that is repairing too.
        r.step(reply(3, 5, nonce ^ 1, Some(4))).unwrap();
        r.step(reply(2, 5, nonce ^ 1, None)).unwrap();
        r.step(msg(
            2,
            5,
            Body::TermReply {
                nonce,
                leader_last: None,
                repairing: true,
            },
        ))
        .unwrap();
        for _ in 0..3 * round {
            r.tick();
            drain(&mut r);
        }
        assert!(r.is_repairing(), "a stale answer counted");
        // Node 3, the leader of term 5, answers with its last index; node 2
        // is in term 6, which this node takes on: term 5 no longer counts.
        r.step(reply(3, 5, nonce, Some(4))).unwrap();
        r.step(reply(2, 6, nonce, None)).unwrap();
        drain(&mut r);
        assert_eq!(r.term(), Term(6));
        for _ in 0..3 * round {
            r.tick();
            drain(&mut r);
        }
        assert!(r.is_repairing(), "caught up only in an older term");
        // Node 2 leads term 6: it is asked, and answers with its last index.
        let mut asked_leader = false;
        for _ in 0..2 {
            r.step(heartbeat(2, 6)).unwrap();
            r.tick();
            asked_leader |= drain(&mut r)
                .iter()
                .any(|m| m.to == NodeId(2) && matches!(m.body, Body::TermQuery { .. }));
        }
        assert!(asked_leader, "the leader of the current term was not asked");
        r.step(reply(2, 6, nonce, Some(5))).unwrap();
        for _ in 0..3 * round {
            r.tick();
            drain(&mut r);
        }
        assert!(r.is_repairing(), "not yet holding the leader's last index");
        r.step(msg(
            2,
            6,
            Body::Append {
                prev_index: LogIndex(4),
                prev_term: Term(5),
                entries: vec![entry(5, 6)],
                commit: LogIndex(5),
            },
        ))
        .unwrap();
        drain(&mut r);
        assert_eq!(r.commit_index(), LogIndex(5));
        // One more election round, still without votes.
        let mut ticks = 0;
        while !r.repair_complete() {
            assert!(ticks <= round + 2, "repair ends after the waiting round");
            r.step(msg(
                3,
                6,
                Body::Vote {
                    last_index: LogIndex(5),
                    last_term: Term(6),
                },
            ))
            .unwrap();
            assert_eq!(vote_granted(&drain(&mut r)), Some(false));
            r.tick();
            ticks += 1;
            r.step(heartbeat(2, 6)).unwrap();
            drain(&mut r);
        }
        assert!(ticks >= round, "a whole election round passed: {ticks}");
        // It recorded a vote for itself in the term it ended in, durably,
        // so a restart without the repairing mark cannot give it away.
        assert_eq!(r.hard_state().vote, Some(NodeId(1)));
        // Still repairing (no vote, no counting) until the storage dropped
        // its mark.
        assert!(r.is_repairing());
        r.step(heartbeat(2, 6)).unwrap();
        assert!(
            !drain(&mut r)
                .iter()
                .any(|m| matches!(m.body, Body::HeartbeatResponse { .. }))
        );
        r.end_repair();
        assert!(!r.is_repairing());
        // Now it answers heartbeats again.
        r.step(heartbeat(2, 6)).unwrap();
        assert!(
            drain(&mut r)
                .iter()
                .any(|m| matches!(m.body, Body::HeartbeatResponse { .. }))
        );
        // Not in a term it saw (6), even for an up-to-date candidate.
        let up_to_date = |t: u64| {
            msg(
                3,
                t,
                Body::Vote {
                    last_index: LogIndex(5),
                    last_term: Term(6),
                },
            )
        };
        r.step(up_to_date(6)).unwrap();
        assert_eq!(vote_granted(&drain(&mut r)), Some(false));
        // Then votes only in terms above every term it saw.
        r.step(up_to_date(7)).unwrap();
        assert_eq!(vote_granted(&drain(&mut r)), Some(true));
    }

    /// A term query changes nothing at the receiver, whatever its term,
    /// and is answered with the receiver's term.
    #[test]
    fn a_term_query_is_answered_and_moves_no_term() {
        let mut r = node();
        r.step(heartbeat(4)).unwrap();
        drain(&mut r);
        r.step(msg(3, 9, Body::TermQuery { nonce: 42 })).unwrap();
        let out = drain(&mut r);
        assert_eq!(r.term(), Term(4));
        assert_eq!(r.leader(), Some(NodeId(2)));
        assert!(out.iter().any(|m| m.to == NodeId(3)
            && m.term == Term(4)
            && matches!(
                m.body,
                Body::TermReply {
                    nonce: 42,
                    leader_last: None,
                    repairing: false
                }
            )));
    }

    /// A leader counts no commit and no read confirmation from a repairing
    /// follower, and counts it again once it answers as a whole one.
    #[test]
    fn a_leader_counts_no_majority_with_a_repairing_follower() {
        let mut r = node();
        let mut ticks = 0;
        while r.role() == RoleKind::Follower {
            r.tick();
            ticks += 1;
            assert!(ticks < 1000, "never campaigned");
        }
        drain(&mut r);
        // Pre-vote, then vote, from node 2.
        while r.role() != RoleKind::Leader {
            let (term, body) = if r.role() == RoleKind::PreCandidate {
                (r.term().next(), Body::PreVoteResponse { granted: true })
            } else {
                (r.term(), Body::VoteResponse { granted: true })
            };
            r.step(msg(2, term.0, body)).unwrap();
            drain(&mut r);
        }
        let term = r.term();
        let last = r.last_index();
        assert!(last > LogIndex(0));
        // Node 3 is repairing: its acknowledgement moves nothing.
        let from3 = |o: AppendOutcome| msg(3, term.0, Body::AppendResponse(o));
        r.step(from3(AppendOutcome::RepairAccepted { match_index: last }))
            .unwrap();
        drain(&mut r);
        assert!(r.commit_index() < last, "committed with a repairing node");
        // A plain acknowledgement right after may have been sent before its
        // crash and delayed: it does not count yet.
        r.step(from3(AppendOutcome::Accepted { match_index: last }))
            .unwrap();
        drain(&mut r);
        assert!(r.commit_index() < last, "a possibly stale answer counted");
        // An election round later (its repair ends with one), it counts.
        for _ in 0..r.config().election_timeout_max_ticks {
            r.tick();
            for m in drain(&mut r) {
                if let Body::Heartbeat { seq, .. } = m.body
                    && m.to == NodeId(2)
                {
                    r.step(msg(2, term.0, Body::HeartbeatResponse { seq }))
                        .unwrap();
                }
            }
        }
        assert_eq!(r.role(), RoleKind::Leader);
        r.step(from3(AppendOutcome::Accepted { match_index: last }))
            .unwrap();
        drain(&mut r);
        assert_eq!(r.commit_index(), last);
        // A read round: a repairing node answers its heartbeat with a
        // notice, which confirms no leadership.
        r.read_index(7).unwrap();
        let seq = drain(&mut r)
            .iter()
            .find_map(|m| match m.body {
                Body::Heartbeat { seq, .. } if m.to == NodeId(2) => Some(seq),
                _ => None,
            })
            .expect("a read round sends heartbeats");
        r.step(from3(AppendOutcome::Repairing {
            last_index: last,
            last_term: term,
        }))
        .unwrap();
        let reads = |r: &mut Raft| {
            let mut n = 0;
            while r.has_ready() {
                let rd = r.ready();
                n += rd.read_states.len();
                let t = rd.token();
                r.advance(t);
            }
            n
        };
        assert_eq!(reads(&mut r), 0, "a read confirmed by a repairing node");
        // And what it held before counts for nothing again.
        r.propose(Bytes::from_static(b"x")).unwrap();
        drain(&mut r);
        r.step(from3(AppendOutcome::RepairAccepted {
            match_index: r.last_index(),
        }))
        .unwrap();
        drain(&mut r);
        assert!(
            r.commit_index() < r.last_index(),
            "a repairing match counted"
        );
        // A whole follower confirms the read.
        r.step(msg(2, term.0, Body::HeartbeatResponse { seq }))
            .unwrap();
        assert_eq!(reads(&mut r), 1);
    }

    /// The leader, told a follower is repairing, forgets what it knew it
    /// held and probes it from where its log ends.
    #[test]
    fn a_leader_probes_a_repairing_follower_from_where_its_log_ends() {
        let mut p = progress::Progress::new(LogIndex(10));
        p.on_ack(LogIndex(10));
        assert_eq!(p.match_index, LogIndex(10));
        p.reset_for_repair(LogIndex(4));
        assert_eq!(p.match_index, LogIndex(0));
        assert_eq!(p.next_index, LogIndex(5));
    }
}
