//! Numbers a node keeps about itself: latency histograms and availability
//! accounting. Rendering them for a metrics system is the service layer's
//! (`ha-server`).
//!
//! Owns: [`Histogram`] (fixed buckets, lock-free) and [`Availability`], the
//! accounting of leader losses after the seed's model:
//! - a *failover* is the node seeing the cluster lose its leader and get a
//!   new one;
//! - its *recovery time* runs from the last message this node had from the
//!   lost leader to the moment it knows the next one;
//! - MTTR is the mean recovery time; MTBF the mean time between losses
//!   (time with a leader, divided by the number of losses);
//!   Availability = MTBF / (MTBF + MTTR), 1.0 before the first loss.
//!
//! Invariant: all times come from the node's monotonic clock; nothing here
//! feeds back into the protocol.

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

/// Availability accounting (see the module docs).
#[derive(Debug)]
pub struct Availability {
    started: Instant,
    leader: Option<NodeId>,
    last_heard: Instant,
    /// Set while the leader is lost: when it was last heard from.
    lost_since: Option<Instant>,
    failovers: u64,
    recovery_total: Duration,
}

/// What [`Availability`] reports: in the node's metrics, in the status a
/// client asks for, and on `/metrics` (one type for all three; times in
/// ms).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AvailabilityReport {
    /// Time without a known leader, counted from each lost leader's last
    /// message (including a loss not yet recovered).
    pub leaderless_ms: u64,
    /// Leader losses followed by a new leader.
    pub failovers: u64,
    /// Mean time to recovery.
    pub mttr_ms: u64,
    /// Mean time between failures.
    pub mtbf_ms: u64,
    /// MTBF / (MTBF + MTTR); 1.0 before the first failure.
    pub availability: f64,
}

impl Availability {
    /// Accounting that starts now.
    pub fn new(now: Instant) -> Availability {
        Availability {
            started: now,
            leader: None,
            last_heard: now,
            lost_since: None,
            failovers: 0,
            recovery_total: Duration::ZERO,
        }
    }

    /// The node heard from (or is) the leader `leader` at `now`.
    pub fn heard_from_leader(&mut self, now: Instant) {
        if self.leader.is_some() {
            self.last_heard = now;
        }
    }

    /// The leader this node knows changed to `leader` at `now`.
    pub fn leader_changed(&mut self, leader: Option<NodeId>, now: Instant) {
        if leader == self.leader {
            return;
        }
        let had_one = self.leader.is_some();
        match leader {
            None => {
                if had_one && self.lost_since.is_none() {
                    self.lost_since = Some(self.last_heard);
                }
            }
            Some(_) => {
                let since = self
                    .lost_since
                    .take()
                    .or(had_one.then_some(self.last_heard));
                if let Some(since) = since {
                    self.failovers += 1;
                    self.recovery_total += now.saturating_duration_since(since);
                }
                self.last_heard = now;
            }
        }
        self.leader = leader;
    }

    /// The figures as of `now`.
    pub fn report(&self, now: Instant) -> AvailabilityReport {
        let open = self
            .lost_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let leaderless = self.recovery_total + open;
        let up = now
            .saturating_duration_since(self.started)
            .saturating_sub(leaderless);
        let up_ms = up.as_millis() as u64;
        let (mttr, mtbf, availability) = match (
            (self.recovery_total.as_millis() as u64).checked_div(self.failovers),
            up_ms.checked_div(self.failovers),
        ) {
            (Some(mttr), Some(mtbf)) => {
                let a = if mtbf + mttr == 0 {
                    1.0
                } else {
                    mtbf as f64 / (mtbf + mttr) as f64
                };
                (mttr, mtbf, a)
            }
            _ => (0, up_ms, 1.0),
        };
        AvailabilityReport {
            leaderless_ms: leaderless.as_millis() as u64,
            failovers: self.failovers,
            mttr_ms: mttr,
            mtbf_ms: mtbf,
            availability,
        }
    }
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
        let r = a.report(ms(2_000));
        assert_eq!(r.failovers, 1);
        assert_eq!(r.mttr_ms, 500);
        assert_eq!(r.leaderless_ms, 500);
        assert_eq!(r.mtbf_ms, 1_500);
        assert!((r.availability - 0.75).abs() < 1e-9);
        // A direct switch of leader is a failover too.
        a.heard_from_leader(ms(3_000));
        a.leader_changed(Some(NodeId(3)), ms(3_100));
        assert_eq!(a.report(ms(3_100)).failovers, 2);
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
