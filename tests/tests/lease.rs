//! Lease reads in the simulator, in the two moments a lease is most easily
//! wrong: a follower that answered the lease holder restarts and could vote
//! at once, and a leader's transfer target campaigns through the
//! followers' refusal. In both, the old leader is cut off from the news
//! and clients keep reading from it; a read it serves must still see every
//! write acknowledged before the read began (the simulator's checker
//! fails the run otherwise). Each runs against its planted bug too, which
//! the same steps must catch.

use ha_core::raft::LeaseConfig;
use ha_core::types::NodeId;
use ha_tests::sim::{Bug, Failure, Sim, SimConfig, TICK_MS};

fn config(bug: Option<Bug>) -> SimConfig {
    let mut c = SimConfig::quiet(3);
    // A lease of 19 ticks, against message delays of one tick: the steps
    // below fit in it several times over, so a planted bug shows at once.
    c.raft.heartbeat_interval_ticks = 1;
    c.raft.election_timeout_min_ticks = 20;
    c.raft.election_timeout_max_ticks = 40;
    c.raft.lease = Some(LeaseConfig {
        tick_nanos: TICK_MS * 1_000_000,
        max_clock_drift_ppm: 10_000,
    });
    c.bug = bug;
    c
}

/// A leader with a command committed and every follower answering; returns
/// `(leader, the two others)`.
fn settled(sim: &mut Sim) -> Result<(NodeId, NodeId, NodeId), Failure> {
    assert!(sim.run_until(500, |s| s.leader().is_some())?, "no leader");
    let leader = sim.leader().expect("checked");
    let cmd = sim.fresh_cmd();
    sim.propose_on(leader, cmd).expect("the leader takes it");
    assert!(
        sim.run_until(100, |s| s.acknowledged().contains_key(&cmd))?,
        "not acknowledged"
    );
    sim.run_ticks(4)?;
    // The leader serves reads on its lease here.
    let before = sim.stats().lease_reads;
    assert!(sim.try_read_on(leader));
    assert_eq!(sim.stats().lease_reads, before + 1, "no lease read");
    let others: Vec<NodeId> = sim.ids().into_iter().filter(|n| *n != leader).collect();
    Ok((leader, others[0], others[1]))
}

/// After the cut-off: writes go to whichever node leads now, and the old
/// leader is asked for a read every tick, for three election timeouts.
fn read_the_old_leader(sim: &mut Sim, old: NodeId) -> Result<u64, Failure> {
    let mut writes = 0;
    for _ in 0..120 {
        if let Some(l) = sim.leader().filter(|l| *l != old) {
            let cmd = sim.fresh_cmd();
            if sim.propose_on(l, cmd).is_some() {
                writes += 1;
            }
        }
        sim.run_ticks(1)?;
        sim.try_read_on(old);
    }
    sim.run_ticks(40)?;
    Ok(writes)
}

fn restart_then_campaign(sim: &mut Sim) -> Result<u64, Failure> {
    let (leader, restarted, candidate) = settled(sim)?;
    sim.crash(restarted);
    sim.restart(restarted);
    sim.disconnect(leader);
    sim.campaign_on(candidate);
    read_the_old_leader(sim, leader)
}

fn transfer_then_deafen(sim: &mut Sim) -> Result<u64, Failure> {
    let (leader, target, _) = settled(sim)?;
    // The target holds the whole log: TimeoutNow leaves at once.
    assert!(sim.transfer_on(leader, target));
    sim.deafen(leader);
    read_the_old_leader(sim, leader)
}

fn seeds() -> std::ops::Range<u64> {
    0..50
}

/// Every seed passes the scenario, and in each a new leader took writes.
fn holds(scenario: fn(&mut Sim) -> Result<u64, Failure>) {
    for seed in seeds() {
        let mut sim = Sim::new(seed, config(None));
        let writes = scenario(&mut sim).unwrap_or_else(|f| panic!("{f}"));
        assert!(writes > 0, "seed {seed}: the new leader took no write");
    }
}

#[test]
fn a_restarted_follower_does_not_elect_under_a_running_lease() {
    holds(restart_then_campaign);
}

#[test]
fn a_transfer_ends_the_old_leaders_lease() {
    holds(transfer_then_deafen);
}

/// The planted bug is caught in the first seeds, as a stale read.
fn caught(bug: Bug, scenario: fn(&mut Sim) -> Result<u64, Failure>) {
    for seed in seeds() {
        let mut sim = Sim::new(seed, config(Some(bug)));
        if let Err(f) = scenario(&mut sim) {
            assert!(
                f.violation.contains("Linearizability"),
                "{bug:?} caught for another reason:\n{f}"
            );
            return;
        }
    }
    panic!("planted bug {bug:?} survived {} seeds", seeds().end);
}

#[test]
fn catches_planted_bug_lease_no_quiet_start() {
    caught(Bug::LeaseNoQuietStart, restart_then_campaign);
}

#[test]
fn catches_planted_bug_lease_kept_on_transfer() {
    caught(Bug::LeaseKeptOnTransfer, transfer_then_deafen);
}
