//! Numbers a node keeps about itself: latency histograms and availability
//! accounting. Rendering them for a metrics system is the service layer's
//! (`ha-server`).
//!
//! Owns: [`Histogram`] (fixed buckets, lock-free) and [`Availability`], the
//! accounting of the time the cluster, as this node saw it, could not
//! commit writes, after the seed's model:
//! - a *failover* is the node seeing the cluster lose its leader and get a
//!   new one;
//! - its *recovery time* runs from the last message this node had from the
//!   lost leader (or, on a leader handing over, from when it began to
//!   refuse writes) to the moment the cluster can commit writes again as
//!   this node sees it: it knows the next leader, and an entry of that
//!   leader's term is committed (the new leader's first entry; a follower
//!   learns it with the next append);
//! - a period is *planned* when a hand-off announced it: a leadership
//!   transfer (its `TimeoutNow`, or its target's election, which carries
//!   the transfer flag), this node's own transfer (a graceful shutdown's
//!   too), or a membership change in progress or taking the leader out;
//!   otherwise *unplanned* (a lost leader). A transfer that fails is
//!   planned downtime without a failover;
//! - MTTR is the mean recovery time; MTBF the mean time between losses
//!   (uptime divided by the number of losses);
//!   Availability = MTBF / (MTBF + MTTR), 1.0 before the first loss;
//!   Maintainability = downtime / uptime.
//!
//! A node's first leader of a run is no recovery: the time before it is
//! neither uptime nor downtime only in that it counts as uptime (the
//! cluster may well have had a leader). The service layer carries the
//! totals over restarts ([`DowntimeHistory`]), so a rolling restart's
//! hand-offs stay counted.
//!
//! Invariants: all times come from the node's monotonic clock; nothing here
//! feeds back into the protocol; at most one period is open, and the
//! timeline holds at most [`TIMELINE_EVENTS`] of each kind of event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::types::NodeId;

/// Upper bounds of the histogram buckets, in microseconds.
pub const BUCKETS_MICROS: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// A latency histogram with fixed buckets (see [`BUCKETS_MICROS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 15],
    sum_micros: AtomicU64,
}

/// A copy of a histogram's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket; the last is above every bound.
    pub counts: Vec<u64>,
    /// Sum of all observations in microseconds.
    pub sum_micros: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let k = BUCKETS_MICROS
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_MICROS.len());
        self.counts[k].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// Leader changes and periods without a writable leader kept for the
/// timeline ([`Availability::timeline`]): at most this many of each (older
/// ones are dropped first, and counted).
pub const TIMELINE_EVENTS: usize = 1024;

/// How long a sign of a planned hand-off (a transfer's election, this
/// node's own transfer, a membership change) stays good for the next leader
/// change: past it, a loss of the leader counts as unplanned.
pub const HANDOFF_MEMORY: Duration = Duration::from_secs(10);

/// How late a hand-off's sign may come and still make the period that
/// just began a planned one (its vote request overtaken by the new
/// leader's append).
pub const LATE_SIGN: Duration = Duration::from_secs(1);

/// Totals of a node's earlier runs, carried over a restart by the service
/// layer (saved beside its data): downtime seen, and the time it ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DowntimeHistory {
    /// Time the node ran.
    pub observed_ms: u64,
    /// Downtime from planned hand-offs.
    pub planned_ms: u64,
    /// Downtime from lost leaders.
    pub unplanned_ms: u64,
    /// Leader losses followed by a new leader (planned or not).
    pub failovers: u64,
    /// Planned periods (hand-offs, including ones that failed).
    pub handoffs: u64,
    /// Planned downtime of this node's own hand-overs, as the leader that
    /// handed over (see [`AvailabilityReport::handover_ms`]).
    #[serde(default)]
    pub handover_ms: u64,
}

/// A period in which the cluster, as this node saw it, could not commit
/// writes ([`Timeline`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DownPeriod {
    /// Its start, in ms before the report.
    pub start_ago_ms: u64,
    /// Its end, in ms before the report; `None` while it lasts.
    pub end_ago_ms: Option<u64>,
    /// A hand-off (leadership transfer, graceful shutdown, membership
    /// change) rather than a lost leader.
    pub planned: bool,
}

/// A change of the leader this node knows ([`Timeline`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LeaderChange {
    /// When, in ms before the report.
    pub ago_ms: u64,
    /// The leader from then on (`None`: no known leader).
    pub leader: Option<u64>,
}

/// This run's recent history for an operator's picture: leader changes and
/// down periods, oldest first (at most [`TIMELINE_EVENTS`] of each).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timeline {
    /// Periods without a writable leader.
    pub down: Vec<DownPeriod>,
    /// Changes of the known leader.
    pub leaders: Vec<LeaderChange>,
    /// Events dropped for the cap.
    pub dropped: u64,
}

/// Availability and maintainability accounting (see the module docs).
#[derive(Debug)]
pub struct Availability {
    started: Instant,
    base: DowntimeHistory,
    leader: Option<NodeId>,
    last_heard: Instant,
    /// Set while the leader is lost: when the loss began, and whether it
    /// is planned.
    lost_since: Option<(Instant, bool)>,
    /// When a planned hand-off was last announced.
    handoff_seen: Option<Instant>,
    /// On a leader handing over: since when it refuses writes.
    handing_over: Option<Instant>,
    /// The start of this node's own hand-over period while it is open.
    own: Option<Instant>,
    /// Its start was moved to when its earlier writes were committed.
    drained: bool,
    handed_over: Duration,
    failovers: u64,
    handoffs: u64,
    planned: Duration,
    unplanned: Duration,
    down: std::collections::VecDeque<(Instant, Option<Instant>, bool)>,
    leaders: std::collections::VecDeque<(Instant, Option<NodeId>)>,
    dropped: u64,
}

/// What [`Availability`] reports: in the node's metrics, in the status a
/// client asks for, and on `/metrics` (one type for all three; times in
/// ms). With a [`DowntimeHistory`] carried over, every figure covers the
/// node's earlier runs too.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AvailabilityReport {
    /// Time without a writable leader, planned and unplanned (including a
    /// period not yet over).
    pub leaderless_ms: u64,
    /// Leader losses followed by a new leader.
    pub failovers: u64,
    /// Mean time to recovery.
    pub mttr_ms: u64,
    /// Mean time between failures.
    pub mtbf_ms: u64,
    /// MTBF / (MTBF + MTTR); 1.0 before the first failure.
    pub availability: f64,
    /// Downtime from planned hand-offs: a leadership transfer (from its
    /// start on the leader that hands over, which refuses writes from
    /// then), a graceful shutdown's, a leader leaving the configuration.
    pub planned_ms: u64,
    /// Downtime from lost leaders (crash, partition, stall).
    pub unplanned_ms: u64,
    /// Planned periods (hand-offs, including ones that failed).
    pub handoffs: u64,
    /// Time the node ran with the cluster writable, as it saw it.
    pub uptime_ms: u64,
    /// Downtime / uptime (planned and unplanned; 0 before any uptime).
    pub maintainability: f64,
    /// The time this node's own hand-overs took, as the leader that handed
    /// over: from when it began to refuse writes until it saw the cluster
    /// writable again (an entry of the new leader's term committed), or
    /// led on. Each hand-off is counted so by exactly one node: the sum
    /// over the nodes is the cluster's.
    pub handover_ms: u64,
}

/// Milliseconds of `d`, saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Availability {
    /// Accounting that starts now.
    pub fn new(now: Instant) -> Availability {
        Availability {
            started: now,
            base: DowntimeHistory::default(),
            leader: None,
            last_heard: now,
            lost_since: None,
            handoff_seen: None,
            handing_over: None,
            own: None,
            drained: false,
            handed_over: Duration::ZERO,
            failovers: 0,
            handoffs: 0,
            planned: Duration::ZERO,
            unplanned: Duration::ZERO,
            down: Default::default(),
            leaders: Default::default(),
            dropped: 0,
        }
    }

    /// Adds the totals of the node's earlier runs (once, at start).
    pub fn carry_over(&mut self, h: DowntimeHistory) {
        self.base = h;
    }

    /// The totals to carry over to the next run, as of `now` (a period
    /// still open counts up to `now`, with the kind it has so far).
    pub fn history(&self, now: Instant) -> DowntimeHistory {
        let (planned, unplanned) = self.open(now);
        let b = &self.base;
        DowntimeHistory {
            observed_ms: b
                .observed_ms
                .saturating_add(ms(now.saturating_duration_since(self.started))),
            planned_ms: b.planned_ms.saturating_add(ms(self.planned + planned)),
            unplanned_ms: b
                .unplanned_ms
                .saturating_add(ms(self.unplanned + unplanned)),
            // A period still open when the node stops ends with it.
            failovers: b
                .failovers
                .saturating_add(self.failovers)
                .saturating_add(u64::from(self.lost_since.is_some())),
            handoffs: b
                .handoffs
                .saturating_add(self.handoffs)
                .saturating_add(u64::from(!planned.is_zero())),
            handover_ms: b.handover_ms.saturating_add(ms(self.handed_over
                + self
                    .own
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)))),
        }
    }

    /// The open period's time so far, as (planned, unplanned).
    fn open(&self, now: Instant) -> (Duration, Duration) {
        let since = |t: Instant| now.saturating_duration_since(t);
        match (self.lost_since, self.handing_over) {
            (Some((t, true)), _) | (None, Some(t)) => (since(t), Duration::ZERO),
            (Some((t, false)), _) => (Duration::ZERO, since(t)),
            (None, None) => (Duration::ZERO, Duration::ZERO),
        }
    }

    /// The node heard from (or is) the leader at `now`.
    pub fn heard_from_leader(&mut self, now: Instant) {
        if self.leader.is_some() {
            self.last_heard = now;
        }
    }

    /// A planned hand-off is under way (a transfer's election or
    /// `TimeoutNow` arrived, or the leader is leaving the configuration):
    /// the next loss of the leader, if it comes within [`HANDOFF_MEMORY`],
    /// is planned.
    pub fn handoff_expected(&mut self, now: Instant) {
        self.handoff_seen = Some(now);
        // Its sign may arrive just after the leader change it explains
        // (the new leader's append overtook the vote request it sent this
        // node): a period that began moments ago is that hand-off's.
        if let Some((start, p)) = &mut self.lost_since
            && now.saturating_duration_since(*start) <= LATE_SIGN
        {
            *p = true;
        }
    }

    /// This node, as leader, refuses writes to hand leadership over (from
    /// `now`, unless it already does).
    pub fn handing_over(&mut self, now: Instant) {
        if self.handing_over.is_some() || self.own.is_some() || self.leader.is_none() {
            return;
        }
        self.own = Some(now);
        if self.lost_since.is_some() {
            // A period is open already (this leader's first entry is not
            // committed yet): it goes on, of the kind it has, and this
            // hand-over's time is counted in it; no second one opens.
            return;
        }
        self.handoff_seen = Some(now);
        self.handing_over = Some(now);
        self.drained = false;
        push_capped(&mut self.down, (now, None, true), &mut self.dropped);
    }

    /// This node, handing over, has committed every write it took before
    /// it began to refuse them (at `now`): the cluster stops committing
    /// writes only from here, so the hand-over's period starts here.
    pub fn handover_drained(&mut self, now: Instant) {
        let Some(t) = self.handing_over else {
            return;
        };
        if self.drained || self.lost_since.is_some() || now <= t {
            return;
        }
        self.drained = true;
        self.handing_over = Some(now);
        if self.own == Some(t) {
            self.own = Some(now);
        }
        if let Some(open) = self.open_entry(t) {
            open.0 = now;
        }
    }

    /// This node's hand-over ended with it still leading (the transfer
    /// failed or was abandoned): the writes it refused meanwhile were
    /// planned downtime.
    pub fn handover_failed(&mut self, now: Instant) {
        if let Some(t) = self.handing_over.take() {
            self.handoff_seen = None;
            self.end_own(now);
            self.close(t, now, true);
        } else if self.own.is_some() {
            // A hand-over begun inside an open period: its own time ends
            // here; the period goes on until the cluster is writable.
            self.end_own(now);
            self.handoff_seen = None;
        }
    }

    /// The timeline's open entry that started at `start`.
    fn open_entry(&mut self, start: Instant) -> Option<&mut (Instant, Option<Instant>, bool)> {
        self.down
            .iter_mut()
            .rev()
            .find(|p| p.0 == start && p.1.is_none())
    }

    /// Records a finished period.
    fn close(&mut self, start: Instant, end: Instant, planned: bool) {
        let d = end.saturating_duration_since(start);
        if planned {
            self.handoffs += 1;
            self.planned += d;
        } else {
            self.unplanned += d;
        }
        if let Some(open) = self.open_entry(start) {
            open.1 = Some(end);
            open.2 = planned;
        } else {
            push_capped(
                &mut self.down,
                (start, Some(end), planned),
                &mut self.dropped,
            );
        }
    }

    /// The leader this node knows changed to `leader` at `now`. Losing or
    /// replacing a known leader opens a period (from its last message, or
    /// from when this node began to hand over); it stays open until the
    /// cluster is [`writable`](Availability::writable) again.
    pub fn leader_changed(&mut self, leader: Option<NodeId>, now: Instant) {
        if leader == self.leader {
            return;
        }
        push_capped(&mut self.leaders, (now, leader), &mut self.dropped);
        let planned = self
            .handoff_seen
            .is_some_and(|t| now.saturating_duration_since(t) <= HANDOFF_MEMORY);
        if self.leader.is_some() && self.lost_since.is_none() {
            match self.handing_over.take() {
                // Its period is open already.
                Some(start) => self.lost_since = Some((start, true)),
                None => {
                    let start = self.last_heard;
                    self.lost_since = Some((start, planned));
                    push_capped(&mut self.down, (start, None, planned), &mut self.dropped);
                }
            }
        } else if let Some((start, p)) = &mut self.lost_since
            && planned
            && self
                .handoff_seen
                .is_some_and(|t| t.saturating_duration_since(*start) <= LATE_SIGN)
        {
            // A hand-off announced as the period began (its sign overtaken)
            // makes it one; a later hand-off does not change what began it.
            *p = true;
        }
        if leader.is_some() {
            self.last_heard = now;
        }
        self.leader = leader;
    }

    /// This node's own hand-over ends: the cluster is writable again as it
    /// sees it, or it leads on.
    fn end_own(&mut self, now: Instant) {
        if let Some(t) = self.own.take() {
            self.handed_over += now.saturating_duration_since(t);
        }
    }

    /// Whether the cluster is writable as this node sees it: it knows a
    /// leader, and no period is open.
    pub fn is_writable(&self) -> bool {
        self.leader.is_some() && self.lost_since.is_none() && self.handing_over.is_none()
    }

    /// The cluster can commit writes again, as this node sees it at `now`:
    /// it knows a leader, and an entry of that leader's term is committed.
    /// Closes the open period, if any: a failover (planned or not).
    pub fn writable(&mut self, now: Instant) {
        if self.leader.is_none() {
            return;
        }
        if let Some((since, planned)) = self.lost_since.take() {
            self.end_own(now);
            self.handing_over = None;
            self.failovers += 1;
            self.close(since, now, planned);
            self.handoff_seen = None;
        }
    }

    /// The figures as of `now`.
    pub fn report(&self, now: Instant) -> AvailabilityReport {
        let mut h = self.history(now);
        // The history counts a period still open as ended (for a node that
        // stops in it); while the node runs it is neither a failover nor a
        // hand-off yet.
        h.failovers = h
            .failovers
            .saturating_sub(u64::from(self.lost_since.is_some()));
        let (open_planned, _) = self.open(now);
        h.handoffs = h
            .handoffs
            .saturating_sub(u64::from(!open_planned.is_zero()));
        let down_ms = h.planned_ms.saturating_add(h.unplanned_ms);
        let up_ms = h.observed_ms.saturating_sub(down_ms);
        // MTTR counts whole recoveries only: an open period is downtime,
        // not yet a recovery.
        let (open_p, open_u) = self.open(now);
        let recovered_ms = down_ms.saturating_sub(ms(open_p + open_u));
        let (mttr, mtbf, availability) = match (
            recovered_ms.checked_div(h.failovers),
            up_ms.checked_div(h.failovers),
        ) {
            (Some(mttr), Some(mtbf)) => {
                let a = if mtbf.saturating_add(mttr) == 0 {
                    1.0
                } else {
                    mtbf as f64 / (mtbf as f64 + mttr as f64)
                };
                (mttr, mtbf, a)
            }
            _ => (0, up_ms, 1.0),
        };
        AvailabilityReport {
            leaderless_ms: down_ms,
            failovers: h.failovers,
            mttr_ms: mttr,
            mtbf_ms: mtbf,
            availability,
            planned_ms: h.planned_ms,
            unplanned_ms: h.unplanned_ms,
            handoffs: h.handoffs,
            uptime_ms: up_ms,
            handover_ms: h.handover_ms,
            maintainability: if up_ms == 0 {
                0.0
            } else {
                down_ms as f64 / up_ms as f64
            },
        }
    }

    /// This run's leader changes and down periods within `window` before
    /// `now`, oldest first.
    pub fn timeline(&self, now: Instant, window: Duration) -> Timeline {
        let ago = |t: Instant| ms(now.saturating_duration_since(t));
        let recent = |t: Instant| now.saturating_duration_since(t) <= window;
        Timeline {
            down: self
                .down
                .iter()
                .filter(|(s, e, _)| recent(e.unwrap_or(now)) || recent(*s))
                .map(|&(s, e, planned)| DownPeriod {
                    start_ago_ms: ago(s),
                    end_ago_ms: e.map(ago),
                    planned,
                })
                .collect(),
            leaders: self
                .leaders
                .iter()
                .filter(|(t, _)| recent(*t))
                .map(|&(t, l)| LeaderChange {
                    ago_ms: ago(t),
                    leader: l.map(|l| l.0),
                })
                .collect(),
            dropped: self.dropped,
        }
    }
}

/// Appends `v`, dropping (and counting) the oldest past [`TIMELINE_EVENTS`].
fn push_capped<T>(q: &mut std::collections::VecDeque<T>, v: T, dropped: &mut u64) {
    if q.len() >= TIMELINE_EVENTS {
        q.pop_front();
        *dropped += 1;
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_counts_from_the_last_message_of_the_lost_leader() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Availability::new(t0);
        a.leader_changed(Some(NodeId(1)), ms(100)); // the first election is no failover
        assert_eq!(a.report(ms(100)).failovers, 0);
        a.heard_from_leader(ms(1_000));
        a.leader_changed(None, ms(1_400));
        a.leader_changed(Some(NodeId(2)), ms(1_300 + 200)); // 500 ms after the last message
        a.writable(ms(1_500));
        let r = a.report(ms(2_000));
        assert_eq!(r.failovers, 1);
        assert_eq!(r.mttr_ms, 500);
        assert_eq!(r.leaderless_ms, 500);
        assert_eq!(r.mtbf_ms, 1_500);
        assert!((r.availability - 0.75).abs() < 1e-9);
        // A direct switch of leader is a failover too.
        a.heard_from_leader(ms(3_000));
        a.leader_changed(Some(NodeId(3)), ms(3_100));
        assert_eq!(a.report(ms(3_100)).failovers, 1, "not writable yet");
        assert_eq!(a.history(ms(3_100)).failovers, 2, "ended if the node stops");
        a.writable(ms(3_100));
        assert_eq!(a.report(ms(3_100)).failovers, 2);
    }

    #[test]
    fn hand_offs_are_planned_and_lost_leaders_are_not() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // A follower: a transfer's election, then the new leader.
        let mut f = Availability::new(t0);
        f.leader_changed(Some(NodeId(1)), ms(10));
        f.heard_from_leader(ms(1_000));
        f.handoff_expected(ms(1_001));
        f.leader_changed(None, ms(1_002));
        f.leader_changed(Some(NodeId(2)), ms(1_015));
        f.writable(ms(1_020)); // its first entry committed
        assert_eq!(f.report(ms(1_020)).handover_ms, 0, "not its own");
        // Then a crash: silence and an election, no sign of a hand-off.
        f.heard_from_leader(ms(2_000));
        f.leader_changed(None, ms(2_300));
        let open = f.report(ms(2_400));
        assert_eq!(
            (open.planned_ms, open.unplanned_ms),
            (20, 400),
            "open period counts"
        );
        f.leader_changed(Some(NodeId(3)), ms(2_500));
        f.writable(ms(2_500));
        let r = f.report(ms(3_000));
        assert_eq!((r.planned_ms, r.unplanned_ms), (20, 500));
        assert_eq!((r.failovers, r.handoffs), (2, 1));
        assert_eq!(r.leaderless_ms, 520);
        assert_eq!(r.uptime_ms, 2_480);
        assert!((r.maintainability - 520.0 / 2_480.0).abs() < 1e-9);
        let t = f.timeline(ms(3_000), Duration::from_secs(3600));
        let kinds: Vec<_> = t
            .down
            .iter()
            .map(|p| (p.start_ago_ms, p.end_ago_ms, p.planned))
            .collect();
        assert_eq!(
            kinds,
            [(2_000, Some(1_980), true), (1_000, Some(500), false)]
        );
        assert_eq!(t.leaders.len(), 5);
        assert_eq!(t.leaders.last().unwrap().leader, Some(3));
        // A sign that arrives after the change it explains still does.
        let mut late = Availability::new(t0);
        late.leader_changed(Some(NodeId(1)), ms(10));
        late.heard_from_leader(ms(100));
        late.leader_changed(Some(NodeId(2)), ms(110));
        late.handoff_expected(ms(111));
        late.writable(ms(115));
        assert_eq!(late.report(ms(200)).planned_ms, 15);
        // A sign too old to belong to this loss does not make it planned.
        f.handoff_expected(ms(3_000));
        f.heard_from_leader(ms(3_000) + HANDOFF_MEMORY);
        f.leader_changed(None, ms(3_001) + HANDOFF_MEMORY);
        f.leader_changed(Some(NodeId(1)), ms(3_100) + HANDOFF_MEMORY);
        f.writable(ms(3_100) + HANDOFF_MEMORY);
        assert_eq!(f.report(ms(4_000) + HANDOFF_MEMORY).unplanned_ms, 600);
    }

    #[test]
    fn a_leader_handing_over_counts_from_when_it_refused_writes() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = Availability::new(t0);
        l.leader_changed(Some(NodeId(1)), ms(10));
        l.heard_from_leader(ms(500));
        l.handing_over(ms(1_000));
        l.heard_from_leader(ms(1_005)); // still leads, refusing writes
        l.leader_changed(None, ms(1_010));
        l.leader_changed(Some(NodeId(2)), ms(1_030));
        l.writable(ms(1_030));
        let r = l.report(ms(2_000));
        assert_eq!(
            (r.planned_ms, r.unplanned_ms, r.handoffs, r.failovers),
            (30, 0, 1, 1)
        );
        assert_eq!(r.handover_ms, 30, "its own hand-over");
        // Writes taken before the hand-over began commit first: the period
        // starts when they have.
        let mut d = Availability::new(t0);
        d.leader_changed(Some(NodeId(1)), ms(10));
        d.handing_over(ms(1_000));
        d.handover_drained(ms(1_004));
        d.handover_drained(ms(1_010)); // once only
        d.leader_changed(Some(NodeId(2)), ms(1_020));
        d.writable(ms(1_030));
        let r = d.report(ms(2_000));
        assert_eq!((r.planned_ms, r.handover_ms), (26, 26));
        assert_eq!(
            d.timeline(ms(2_000), Duration::from_secs(5)).down[0].start_ago_ms,
            996
        );
        // A transfer that fails: planned downtime, no failover.
        let mut l = Availability::new(t0);
        l.leader_changed(Some(NodeId(1)), ms(10));
        l.handing_over(ms(1_000));
        assert_eq!(l.report(ms(1_100)).planned_ms, 100);
        l.handover_failed(ms(1_600));
        let r = l.report(ms(2_000));
        assert_eq!((r.planned_ms, r.handoffs, r.failovers), (600, 1, 0));
        assert_eq!(l.timeline(ms(2_000), Duration::from_secs(1)).down.len(), 1);
        assert!(
            l.timeline(ms(3_000), Duration::from_millis(500))
                .down
                .is_empty()
        );
    }

    #[test]
    fn a_hand_over_begun_while_a_period_is_open_takes_it_over() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Availability::new(t0);
        a.leader_changed(Some(NodeId(1)), ms(10));
        a.heard_from_leader(ms(100));
        a.leader_changed(Some(NodeId(2)), ms(150)); // elected; not writable yet
        a.handing_over(ms(160));
        a.writable(ms(200));
        assert!(a.is_writable(), "nothing left open");
        let r = a.report(ms(1_000));
        // The lost leader's period keeps its kind; the hand-over is in it.
        assert_eq!((r.planned_ms, r.unplanned_ms, r.handoffs), (0, 100, 0));
        assert_eq!(r.handover_ms, 40);
        // The same, but the hand-over succeeds before the cluster was
        // writable: the crash's time stays unplanned.
        let mut b = Availability::new(t0);
        b.leader_changed(Some(NodeId(1)), ms(10));
        b.heard_from_leader(ms(100));
        b.leader_changed(Some(NodeId(2)), ms(150));
        b.handing_over(ms(160));
        b.leader_changed(None, ms(170));
        b.leader_changed(Some(NodeId(3)), ms(180));
        b.writable(ms(200));
        let r = b.report(ms(1_000));
        assert_eq!((r.planned_ms, r.unplanned_ms), (0, 100));
        assert_eq!(r.handover_ms, 40);
        // And it fails: its own time ends when it leads on.
        let mut c = Availability::new(t0);
        c.leader_changed(Some(NodeId(1)), ms(10));
        c.heard_from_leader(ms(100));
        c.leader_changed(Some(NodeId(2)), ms(150));
        c.handing_over(ms(160));
        c.handover_failed(ms(170));
        assert!(!c.is_writable(), "the period is still open");
        c.writable(ms(300));
        assert_eq!(c.report(ms(1_000)).handover_ms, 10);
        let t = a.timeline(ms(1_000), Duration::from_secs(5));
        assert_eq!(t.down.len(), 1);
        assert_eq!(t.down[0].end_ago_ms, Some(800));
    }

    #[test]
    fn history_carries_every_total_over_a_restart() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = Availability::new(t0);
        a.leader_changed(Some(NodeId(1)), ms(10));
        a.handing_over(ms(100));
        a.leader_changed(Some(NodeId(2)), ms(150));
        a.writable(ms(150));
        let h = a.history(ms(1_000));
        assert_eq!(
            h,
            DowntimeHistory {
                observed_ms: 1_000,
                planned_ms: 50,
                unplanned_ms: 0,
                failovers: 1,
                handoffs: 1,
                handover_ms: 50,
            }
        );
        let mut b = Availability::new(t0);
        b.carry_over(h);
        let r = b.report(ms(1_000));
        assert_eq!((r.planned_ms, r.handoffs, r.failovers), (50, 1, 1));
        assert_eq!(r.uptime_ms, 1_950);
        assert_eq!(b.history(ms(1_000)).observed_ms, 2_000);
    }

    #[test]
    fn the_timeline_is_capped() {
        let t0 = Instant::now();
        let mut a = Availability::new(t0);
        for i in 0..(TIMELINE_EVENTS as u64 + 10) {
            a.leader_changed(Some(NodeId(i % 3 + 1)), t0 + Duration::from_millis(i));
            a.writable(t0 + Duration::from_millis(i));
        }
        let t = a.timeline(t0 + Duration::from_secs(2), Duration::from_secs(3600));
        assert_eq!(t.leaders.len(), TIMELINE_EVENTS);
        assert_eq!(t.down.len(), TIMELINE_EVENTS);
        assert!(t.dropped >= 10);
    }

    #[test]
    fn histogram_buckets_count_each_observation_once() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.counts.len(), BUCKETS_MICROS.len() + 1);
        assert_eq!(s.counts[0], 2, "a bound is inclusive");
        assert_eq!(s.counts[6], 1, "3 ms is at most 5 ms");
        assert_eq!(*s.counts.last().unwrap(), 1, "above every bound");
        assert_eq!(s.counts.iter().sum::<u64>(), 4);
        assert_eq!(s.sum_micros, 5_003_090);
    }
}
