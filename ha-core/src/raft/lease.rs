//! Lease reads (dissertation §6.4.1): a leader that a quorum answered
//! recently serves a linearizable read at once, without a heartbeat round.
//!
//! The argument. A follower that heard from the leader refuses every vote
//! and pre-vote that would raise its term for a minimum election timeout
//! (§4.2.3, `in_leader_lease`): `min` tick lengths by its own clock after
//! it took the message (invariant 6). A heartbeat answered by a quorum
//! therefore keeps every other candidate from winning until `min` ticks
//! after the answering followers took it, by their clocks, which is after
//! the leader made it. The leader's clock may run slower than a
//! follower's by at most the configured drift, so the lease is
//! `(min - 1)` ticks (a tick of margin) shortened by the drift, counted
//! from when the heartbeat was made: [`LeaseConfig::lease_nanos`].
//!
//! What it assumes: clocks that keep running. A process stalled by the
//! scheduler or a collector is fine (its clock runs on; invariant 1), but
//! a machine suspended or a virtual machine paused or migrated may stop
//! its monotonic clock, and then the lease outlives real time: do not turn
//! lease reads on where that happens.
//!
//! Invariants:
//! 1. Time comes only from [`Raft::set_clock`] (the driver's monotonic
//!    clock), never from ticks: a leader whose process stalled has ticked
//!    less than real time passed, and counting ticks would stretch its
//!    lease over a successor's term.
//! 2. A heartbeat's send time is recorded as the clock when the core made
//!    it, which is no later than when it left.
//! 3. No lease in a term before an entry of the term committed (the commit
//!    index may be behind), nor after this leader sent `TimeoutNow` in it:
//!    the transfer's target campaigns through the followers' refusal.
//! 4. A node that starts refuses votes for a minimum election timeout too
//!    (it may have answered a leader just before it went down, and forgot).
//! 5. Anything doubtful gives no lease; the read then takes a ReadIndex
//!    round, so a lease only ever saves a round, never changes an answer.
//!    (A lease also ends after `min - 1` of the leader's ticks: a driver
//!    that stopped telling the clock gets no endless lease.)
//! 6. A follower's refusal runs on its clock from the last message it took
//!    from a leader, and nothing but time ends it: not a new term learned
//!    from some other message (which forgets the leader), nor ticks that
//!    the runtime bunched together. (The tick-counted refusal of §4.2.3
//!    goes on beside it.)

use std::collections::{BTreeMap, VecDeque};

use super::*;

/// The send times kept at most (older ones are dropped first; a lookup
/// that misses gives no lease).
const MAX_SENT_TIMES: usize = 1024;

/// The smallest clock-drift bound accepted, in parts per million: the bound
/// is between two nodes' clock rates, and NTP slews each clock by up to
/// 500 ppm, one forward and another back.
pub const MIN_CLOCK_DRIFT_PPM: u32 = 1_000;
/// The largest clock-drift bound accepted, in parts per million.
pub const MAX_CLOCK_DRIFT_PPM: u32 = 500_000;

/// Settings of lease reads. Every node of a cluster must run with the same
/// tick length and election timeout; followers refuse votes whether or not
/// they serve lease reads, and a node's start-up refusal (invariant 4) is
/// on only where this is set, so set it on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Length of one tick in the units of [`Raft::set_clock`]
    /// (nanoseconds, for a driver passing a monotonic clock's nanoseconds).
    pub tick_nanos: u64,
    /// The most two nodes' clocks may differ in rate, in parts per million
    /// ([`MIN_CLOCK_DRIFT_PPM`]..=[`MAX_CLOCK_DRIFT_PPM`]).
    pub max_clock_drift_ppm: u32,
}

impl LeaseConfig {
    /// The lease a quorum's answer to a heartbeat grants, counted from when
    /// the heartbeat was made: `(election_min_ticks - 1)` ticks, shortened
    /// by the drift bound (0 where that does not fit in 64 bits, which
    /// [`Config::validate`](super::Config::validate) refuses).
    pub fn lease_nanos(&self, election_min_ticks: u64) -> u64 {
        let span = u128::from(election_min_ticks.saturating_sub(1)) * u128::from(self.tick_nanos);
        let kept = u128::from(1_000_000 - self.max_clock_drift_ppm.min(1_000_000));
        span.checked_mul(kept)
            .and_then(|n| u64::try_from(n / 1_000_000).ok())
            .unwrap_or(0)
    }

    /// Whether a node may run with these settings, its minimum election
    /// timeout and its CheckQuorum setting ([`Config::validate`](super::Config::validate)
    /// asks the same).
    pub fn check(&self, election_min_ticks: u64, check_quorum: bool) -> Result<(), String> {
        if !check_quorum {
            return Err("lease reads need check_quorum (followers that heard from a leader must refuse votes)".into());
        }
        if !(MIN_CLOCK_DRIFT_PPM..=MAX_CLOCK_DRIFT_PPM).contains(&self.max_clock_drift_ppm) {
            return Err(format!(
                "clock drift bound {} ppm is outside {MIN_CLOCK_DRIFT_PPM}..={MAX_CLOCK_DRIFT_PPM}",
                self.max_clock_drift_ppm
            ));
        }
        // The followers' refusal window, in clock units, must fit too.
        let window = u128::from(election_min_ticks) * u128::from(self.tick_nanos);
        if self.tick_nanos == 0
            || election_min_ticks < 3
            || window > u128::from(u64::MAX / 2)
            || self.lease_nanos(election_min_ticks) == 0
        {
            return Err(format!(
                "lease reads need a tick above zero, an election timeout of at least 3 ticks, and both within 64-bit nanoseconds (tick {} ns, {} ticks)",
                self.tick_nanos, election_min_ticks
            ));
        }
        Ok(())
    }
}

/// How a read was taken in (see [`Raft::read_lease`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// The lease held: the read is confirmed already. Serve it once the
    /// state machine has applied `index`; no [`ReadState`] follows.
    Lease {
        /// The commit index when the lease was checked.
        index: LogIndex,
    },
    /// It waits for a ReadIndex round: a [`ReadState`] with its `ctx`
    /// appears in a later [`Ready`].
    Round,
}

/// A leader's record for its lease, for one term.
#[derive(Debug, Default)]
pub(crate) struct LeaseBook {
    /// `(first heartbeat sequence number made at this clock reading,
    /// clock, the leader's ticks then)`, oldest first: a heartbeat's send
    /// time is at or after the clock (and ticks) of the last entry at or
    /// below its sequence number.
    sent: VecDeque<(u64, u64, u64)>,
    /// The highest heartbeat sequence number each follower answered.
    acked: BTreeMap<NodeId, u64>,
    /// What `quorum_sent_at` gave when the last answer came, and the index
    /// of the configuration it counted under: a read checks its lease
    /// without counting again unless the configuration changed since.
    quorum: Option<(LogIndex, (u64, u64))>,
    /// This leader sent `TimeoutNow` in this term (invariant 3).
    pub void: bool,
}

impl LeaseBook {
    /// Heartbeat `seq` is being made at `clock` and `ticks`; entries whose
    /// lease ran out by `clock` are dropped.
    pub fn sent(&mut self, seq: u64, clock: u64, ticks: u64, lease: u64) {
        while self
            .sent
            .front()
            .is_some_and(|(_, c, _)| c.saturating_add(lease) <= clock)
        {
            self.sent.pop_front();
        }
        if self.sent.back().is_none_or(|(_, c, _)| *c < clock) {
            if self.sent.len() == MAX_SENT_TIMES {
                self.sent.pop_front();
            }
            self.sent.push_back((seq, clock, ticks));
        }
    }

    /// `from` answered heartbeat `seq`; `conf` (at index `conf_at`) is
    /// the configuration the quorum is counted in.
    pub fn acked(
        &mut self,
        from: NodeId,
        seq: u64,
        me: NodeId,
        (conf_at, conf): (LogIndex, &Membership),
    ) {
        let a = self.acked.entry(from).or_insert(0);
        *a = (*a).max(seq);
        self.quorum = self.quorum_sent_at(me, conf).map(|q| (conf_at, q));
    }

    /// [`LeaseBook::quorum_sent_at`], counted at the last answer if the
    /// configuration is still the one at `conf_at`.
    fn quorum_point(
        &self,
        me: NodeId,
        (conf_at, conf): (LogIndex, &Membership),
    ) -> Option<(u64, u64)> {
        match self.quorum {
            Some((at, q)) if at == conf_at => Some(q),
            _ => self.quorum_sent_at(me, conf),
        }
    }

    /// When (clock, ticks) the newest heartbeat a quorum (the leader
    /// counted) answered was made, or `None` if none is known.
    fn quorum_sent_at(&self, me: NodeId, conf: &Membership) -> Option<(u64, u64)> {
        let mut seqs: Vec<u64> = self.acked.values().copied().collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs.dedup();
        let seq = seqs.into_iter().find(|&s| {
            conf.has_quorum(|n| n == me || self.acked.get(&n).is_some_and(|&a| a >= s))
        })?;
        self.sent
            .iter()
            .rev()
            .find(|(first, _, _)| *first <= seq)
            .map(|(_, clock, ticks)| (*clock, *ticks))
    }
}

impl Raft {
    /// Tells the core the driver's monotonic clock, in the units of
    /// [`LeaseConfig::tick_nanos`]. Only lease reads use it (the leader's
    /// lease, the followers' refusal to vote); a reading below an earlier
    /// one is ignored. With leases on, call it right before every
    /// [`Raft::tick`], [`Raft::step`], [`Raft::ready`] and
    /// [`Raft::read_lease`], each: a follower's refusal to vote counts from
    /// the reading it had when it took its leader's message, so a reading
    /// from before the message arrived shortens it; and a reading ahead of
    /// real time breaks the lease. (A reading that lags at a read or a
    /// tick only shortens the lease.)
    pub fn set_clock(&mut self, now: u64) {
        self.clock = self.clock.max(now);
    }

    /// The clock the lease runs on (invariant 1).
    pub(super) fn lease_clock(&self) -> u64 {
        #[cfg(feature = "planted-bugs")]
        if self.config.has_bug(PlantedBug::LeaseByTicks) {
            return self
                .ticks
                .saturating_mul(self.config.lease.map_or(0, |l| l.tick_nanos));
        }
        self.clock
    }

    /// Records heartbeat `seq` as made now, if leases are on.
    pub(super) fn lease_sent(&mut self, seq: u64) {
        let Some(lease) = self.config.lease else {
            return;
        };
        let (clock, ticks, nanos) = (
            self.lease_clock(),
            self.ticks,
            lease.lease_nanos(self.config.election_timeout_min_ticks),
        );
        if let Role::Leader(l) = &mut self.role {
            l.lease.sent(seq, clock, ticks, nanos);
        }
    }

    /// Whether this leader's lease holds now (see the module's argument).
    pub fn lease_holds(&self) -> bool {
        let Some(lease) = self.config.lease else {
            return false;
        };
        let Role::Leader(l) = &self.role else {
            return false;
        };
        // (No lease while a transfer runs, even before its TimeoutNow:
        // transfers are short, and it keeps the rule simple.)
        let void = l.lease.void || l.transfer.is_some();
        #[cfg(feature = "planted-bugs")]
        let void = void && !self.config.has_bug(PlantedBug::LeaseKeptOnTransfer);
        if !l.committed_in_term || void {
            return false;
        }
        let me = self.config.id;
        let (conf_at, conf) = self.log.conf();
        if conf.has_quorum(|n| n == me) {
            return true;
        }
        let min = self.config.election_timeout_min_ticks;
        let nanos = lease.lease_nanos(min);
        l.lease
            .quorum_point(me, (conf_at, conf))
            .is_some_and(|(sent, sent_ticks)| {
                self.lease_clock() < sent.saturating_add(nanos)
                    && self.ticks.saturating_sub(sent_ticks) < min - 1
            })
    }

    /// A linearizable read by lease where it holds (confirmed now, at the
    /// current commit index), by a ReadIndex round under `ctx` where not
    /// (and always by a round where leases are off).
    pub fn read_lease(&mut self, ctx: u64) -> Result<ReadPath, ReadIndexError> {
        if self.lease_holds() {
            return Ok(ReadPath::Lease {
                index: self.log.committed,
            });
        }
        self.read_index(ctx).map(|()| ReadPath::Round)
    }
}
