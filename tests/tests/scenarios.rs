//! Named scenarios, modelled on the classic Raft lab suite, run in the
//! deterministic simulator. Every property checker stays on throughout, so
//! each scenario also fails on any safety violation along the way.
//!
//! Each scenario runs under a few fixed seeds; `HA_SIM_SEED=s` runs only `s`.

use std::collections::BTreeSet;

use ha_core::types::{LogIndex, NodeId};
use ha_tests::sim::{Failure, Faults, Sim, SimConfig};

/// Seeds each scenario runs under, unless `HA_SIM_SEED` names one.
fn seeds() -> Vec<u64> {
    match std::env::var("HA_SIM_SEED") {
        Ok(s) => vec![s.trim().parse().expect("HA_SIM_SEED must be an integer")],
        Err(_) => (1..=8).collect(),
    }
}

/// Runs `scenario` under every seed; a failure names its seed.
fn for_seeds(nodes: usize, scenario: impl Fn(&mut Sim) -> Result<(), Failure>) {
    for seed in seeds() {
        let mut sim = Sim::new(seed, SimConfig::quiet(nodes));
        if let Err(f) = scenario(&mut sim) {
            panic!("{f}");
        }
    }
}

/// Election timeouts in the quiet configuration are 10..20 ticks.
const ELECTION_TICKS: u64 = 20;

/// The leader of the highest term among `connected` nodes, waiting for one.
fn check_one_leader(sim: &mut Sim, connected: &BTreeSet<NodeId>) -> Result<NodeId, Failure> {
    for _ in 0..20 {
        sim.run_ticks(ELECTION_TICKS / 2)?;
        let leaders: Vec<_> = connected
            .iter()
            .filter_map(|id| sim.raft(*id))
            .filter(|r| r.is_leader())
            .map(|r| (r.term(), r.id()))
            .collect();
        if let Some(&(term, id)) = leaders.iter().max() {
            if leaders.iter().filter(|(t, _)| *t == term).count() > 1 {
                return Err(sim.fail(format!("two leaders in term {term}: {leaders:?}")));
            }
            return Ok(id);
        }
    }
    Err(sim.fail(format!(
        "no leader among {connected:?} after 10 election timeouts"
    )))
}

fn check_no_leader(sim: &mut Sim, connected: &BTreeSet<NodeId>) -> Result<(), Failure> {
    for id in connected {
        if sim.raft(*id).is_some_and(|r| r.is_leader()) {
            return Err(sim.fail(format!("node {id} leads although it has no majority")));
        }
    }
    Ok(())
}

fn all(sim: &Sim) -> BTreeSet<NodeId> {
    sim.ids().into_iter().collect()
}

/// How many nodes applied `index`, and the command there. Disagreement is
/// caught by the simulator's State Machine Safety check.
fn n_committed(sim: &Sim, index: LogIndex) -> (usize, Option<u64>) {
    let mut count = 0;
    let mut cmd = None;
    for id in sim.ids() {
        if let Some(c) = sim.applied_at(id, index) {
            count += 1;
            cmd = Some(c);
        }
    }
    (count, cmd)
}

/// The lab's `one`: proposes `cmd` to a leader among `connected` until it is
/// applied on at least `expected` nodes; returns its index.
fn one(
    sim: &mut Sim,
    cmd: u64,
    expected: usize,
    connected: &BTreeSet<NodeId>,
) -> Result<LogIndex, Failure> {
    for _ in 0..10 {
        let leader = check_one_leader(sim, connected)?;
        let Some(index) = sim.propose_on(leader, cmd) else {
            continue;
        };
        for _ in 0..(4 * ELECTION_TICKS) {
            sim.run_ticks(1)?;
            let (n, got) = n_committed(sim, index);
            if n >= expected && got == Some(cmd) {
                return Ok(index);
            }
        }
    }
    Err(sim.fail(format!(
        "command {cmd} did not reach agreement on {expected} nodes"
    )))
}

fn without(set: &BTreeSet<NodeId>, gone: &[NodeId]) -> BTreeSet<NodeId> {
    set.iter().filter(|n| !gone.contains(n)).copied().collect()
}

#[test]
fn initial_election() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let leader = check_one_leader(sim, &everyone)?;
        let term = sim.raft(leader).map(|r| r.term()).unwrap_or_default();
        // Without failures the term stays put for many election timeouts.
        sim.run_ticks(10 * ELECTION_TICKS)?;
        let term2 = sim.raft(leader).map(|r| r.term()).unwrap_or_default();
        if term2 != term || check_one_leader(sim, &everyone)? != leader {
            return Err(sim.fail(format!(
                "term changed from {term} to {term2} without failures"
            )));
        }
        Ok(())
    });
}

#[test]
fn reelection_after_leader_failure() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let leader1 = check_one_leader(sim, &everyone)?;
        // The leader disconnects: a new one is elected.
        sim.disconnect(leader1);
        let rest = without(&everyone, &[leader1]);
        let leader2 = check_one_leader(sim, &rest)?;
        assert_ne!(leader1, leader2);
        // The old leader rejoins: it must not disturb the new one's term.
        sim.connect(leader1);
        let leader3 = check_one_leader(sim, &everyone)?;
        // Two of three disconnect: no leader can be elected.
        let other = *rest.iter().find(|n| **n != leader3).expect("three nodes");
        sim.disconnect(leader3);
        sim.disconnect(other);
        sim.run_ticks(4 * ELECTION_TICKS)?;
        let lonely = without(&everyone, &[leader3, other]);
        check_no_leader(sim, &lonely)?;
        // A majority again: a leader is elected.
        sim.connect(other);
        let majority = without(&everyone, &[leader3]);
        check_one_leader(sim, &majority)?;
        sim.connect(leader3);
        check_one_leader(sim, &everyone)?;
        Ok(())
    });
}

#[test]
fn many_elections_under_repeated_partitions() {
    for seed in seeds() {
        let mut sim = Sim::new(seed, SimConfig::quiet(7));
        let run = |sim: &mut Sim| -> Result<(), Failure> {
            let everyone = all(sim);
            check_one_leader(sim, &everyone)?;
            let mut rng = ha_core::rng::SplitMix64::new(seed);
            for _ in 0..10 {
                // Disconnect three random nodes: four remain, a majority of seven.
                let mut gone = Vec::new();
                while gone.len() < 3 {
                    let n = NodeId(rng.range(1, 8));
                    if !gone.contains(&n) {
                        gone.push(n);
                    }
                }
                for n in &gone {
                    sim.disconnect(*n);
                }
                check_one_leader(sim, &without(&everyone, &gone))?;
                for n in &gone {
                    sim.connect(*n);
                }
            }
            check_one_leader(sim, &everyone)?;
            Ok(())
        };
        if let Err(f) = run(&mut sim) {
            panic!("{f}");
        }
    }
}

#[test]
fn basic_agreement() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let mut last = None;
        for cmd in [100, 200, 300] {
            let index = one(sim, cmd, 3, &everyone)?;
            if let Some(prev) = last
                && index != LogIndex::next(prev)
            {
                return Err(sim.fail(format!("command {cmd} at {index}, expected after {prev}")));
            }
            last = Some(index);
        }
        Ok(())
    });
}

#[test]
fn agreement_with_a_disconnected_follower() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        one(sim, 101, 3, &everyone)?;
        let leader = check_one_leader(sim, &everyone)?;
        let follower = *everyone
            .iter()
            .find(|n| **n != leader)
            .expect("three nodes");
        sim.disconnect(follower);
        let rest = without(&everyone, &[follower]);
        for cmd in 102..=105 {
            one(sim, cmd, 2, &rest)?;
        }
        // The follower returns and catches up on everything.
        sim.connect(follower);
        let index = one(sim, 106, 3, &everyone)?;
        sim.run_ticks(2 * ELECTION_TICKS)?;
        for i in 1..=index.0 {
            if sim.applied_at(follower, LogIndex(i)).is_none()
                && sim.applied_at(leader, LogIndex(i)).is_some()
            {
                return Err(sim.fail(format!("follower {follower} missed index {i}")));
            }
        }
        Ok(())
    });
}

#[test]
fn no_agreement_without_a_majority() {
    for_seeds(5, |sim| {
        let everyone = all(sim);
        one(sim, 10, 5, &everyone)?;
        let leader = check_one_leader(sim, &everyone)?;
        let followers: Vec<NodeId> = everyone
            .iter()
            .filter(|n| **n != leader)
            .copied()
            .take(3)
            .collect();
        for f in &followers {
            sim.disconnect(*f);
        }
        let Some(index) = sim.propose_on(leader, 20) else {
            return Err(sim.fail("the leader refused a proposal"));
        };
        sim.run_ticks(4 * ELECTION_TICKS)?;
        let (n, _) = n_committed(sim, index);
        if n > 0 {
            return Err(sim.fail(format!(
                "{n} nodes applied index {index} without a majority"
            )));
        }
        for f in &followers {
            sim.connect(*f);
        }
        // The cluster recovers and agrees again.
        one(sim, 30, 5, &everyone)?;
        Ok(())
    });
}

#[test]
fn concurrent_proposals_all_commit() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let leader = check_one_leader(sim, &everyone)?;
        let mut indexes = Vec::new();
        for cmd in 1000..1050 {
            match sim.propose_on(leader, cmd) {
                Some(i) => indexes.push((cmd, i)),
                None => return Err(sim.fail("the leader refused a proposal")),
            }
        }
        sim.run_ticks(2 * ELECTION_TICKS)?;
        for w in indexes.windows(2) {
            if w[1].1 != w[0].1.next() {
                return Err(sim.fail("concurrent proposals did not get consecutive indexes"));
            }
        }
        for (cmd, index) in indexes {
            let (n, got) = n_committed(sim, index);
            if n != 3 || got != Some(cmd) {
                return Err(sim.fail(format!("command {cmd} at {index}: {n} nodes, {got:?}")));
            }
        }
        Ok(())
    });
}

#[test]
fn partitioned_old_leader_rejoins() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        one(sim, 101, 3, &everyone)?;
        let leader1 = check_one_leader(sim, &everyone)?;
        sim.disconnect(leader1);
        // The old leader takes proposals it can never commit.
        for cmd in [102, 103, 104] {
            sim.propose_on(leader1, cmd);
        }
        let rest = without(&everyone, &[leader1]);
        one(sim, 105, 2, &rest)?;
        // New leader partitioned, old leader back.
        let leader2 = check_one_leader(sim, &rest)?;
        sim.disconnect(leader2);
        sim.connect(leader1);
        one(sim, 106, 2, &without(&everyone, &[leader2]))?;
        sim.connect(leader2);
        one(sim, 107, 3, &everyone)?;
        sim.run_ticks(2 * ELECTION_TICKS)?;
        // The old leader's uncommitted commands were discarded everywhere.
        for id in sim.ids() {
            for i in 1..=sim.applied_index(id).0 {
                if let Some(c) = sim.applied_at(id, LogIndex(i))
                    && (102..=104).contains(&c)
                {
                    return Err(sim.fail(format!("node {id} applied stale command {c}")));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fast_backup_over_many_divergent_entries() {
    for_seeds(5, |sim| {
        let everyone = all(sim);
        one(sim, 1, 5, &everyone)?;
        // Leader and one follower are cut off and take 50 doomed commands.
        let leader1 = check_one_leader(sim, &everyone)?;
        let ids: Vec<NodeId> = everyone.iter().copied().collect();
        let pos = ids
            .iter()
            .position(|n| *n == leader1)
            .expect("leader is a node");
        let a = ids[(pos + 1) % 5];
        let (b, c, d) = (ids[(pos + 2) % 5], ids[(pos + 3) % 5], ids[(pos + 4) % 5]);
        sim.partition(&[&[leader1, a], &[b, c, d]]);
        for k in 0..50 {
            sim.propose_on(leader1, 1000 + k);
        }
        sim.run_ticks(ELECTION_TICKS)?;
        // The other three elect a leader and commit 50 commands.
        let three: BTreeSet<_> = [b, c, d].into_iter().collect();
        for k in 0..50 {
            one(sim, 2000 + k, 3, &three)?;
        }
        // One of the three leaves; the remaining two take 50 doomed commands.
        let leader2 = check_one_leader(sim, &three)?;
        let other = *three.iter().find(|n| **n != leader2).expect("three nodes");
        let pair = *three
            .iter()
            .find(|n| **n != leader2 && **n != other)
            .expect("three");
        sim.partition(&[&[leader1, a], &[leader2, pair]]);
        for k in 0..50 {
            sim.propose_on(leader2, 3000 + k);
        }
        sim.run_ticks(ELECTION_TICKS)?;
        // Everyone but the second pair: the first pair and `other` form a
        // majority and must adopt the 50 committed entries, backing over the
        // first pair's 50 divergent ones.
        sim.partition(&[&[leader1, a, other], &[leader2, pair]]);
        let majority: BTreeSet<_> = [leader1, a, other].into_iter().collect();
        for k in 0..50 {
            one(sim, 4000 + k, 3, &majority)?;
        }
        let before = sim.sent.get("append-reject").copied().unwrap_or(0);
        sim.heal();
        one(sim, 5000, 5, &everyone)?;
        let rejects = sim.sent.get("append-reject").copied().unwrap_or(0) - before;
        // Backing up one entry per round trip would take about 50 rejections
        // per lagging node; skipping a term per round trip takes a few.
        if rejects > 20 {
            return Err(sim.fail(format!("{rejects} rejections to back up: too slow")));
        }
        Ok(())
    });
}

#[test]
fn messages_per_agreement_stay_bounded() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let leader = check_one_leader(sim, &everyone)?;
        let elections = sim.stats().elections;
        let sent = |sim: &Sim, kinds: &[&str]| -> u64 {
            kinds
                .iter()
                .map(|k| sim.sent.get(k).copied().unwrap_or(0))
                .sum()
        };
        let votes = sent(sim, &["prevote", "prevote-resp", "vote", "vote-resp"]);
        if votes > 30 {
            return Err(sim.fail(format!("{votes} election messages for the first election")));
        }
        let replication = ["append", "append-ok", "append-reject"];
        let before = sent(sim, &replication);
        let mut cmds = Vec::new();
        for k in 0..10 {
            let Some(i) = sim.propose_on(leader, 700 + k) else {
                return Err(sim.fail("leader refused"));
            };
            cmds.push(i);
            sim.run_ticks(3)?;
        }
        sim.run_ticks(5)?;
        for i in &cmds {
            if n_committed(sim, *i).0 != 3 {
                return Err(sim.fail(format!("index {i} not applied everywhere")));
            }
        }
        let used = sent(sim, &replication) - before;
        // Per agreement and follower: one append carrying the entry, one
        // commit update, and an answer to each: 4 messages x 2 followers.
        if used > 10 * 8 {
            let by_kind: Vec<_> = replication.iter().map(|k| (k, sim.sent.get(k))).collect();
            return Err(sim.fail(format!(
                "{used} replication messages for 10 agreements: {by_kind:?}"
            )));
        }
        if sim.stats().elections != elections {
            return Err(sim.fail("an election happened in a quiet cluster"));
        }
        Ok(())
    });
}

#[test]
fn persistence_across_full_cluster_crashes() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let first = one(sim, 11, 3, &everyone)?;
        for id in sim.ids() {
            sim.crash(id);
        }
        for id in sim.ids() {
            sim.restart(id);
        }
        one(sim, 12, 3, &everyone)?;
        // Crash the leader alone, then everyone again, in a different order.
        let leader = check_one_leader(sim, &everyone)?;
        sim.crash(leader);
        one(sim, 13, 2, &without(&everyone, &[leader]))?;
        sim.restart(leader);
        for id in sim.ids().into_iter().rev() {
            sim.crash(id);
            sim.restart(id);
        }
        one(sim, 14, 3, &everyone)?;
        sim.run_ticks(ELECTION_TICKS)?;
        if n_committed(sim, first) != (3, Some(11)) {
            return Err(sim.fail("the first command did not survive the crashes"));
        }
        sim.heal_and_converge(2_000)
    });
}

#[test]
fn figure_8_leaders_crashing_mid_replication() {
    for_seeds(5, |sim| {
        let everyone = all(sim);
        one(sim, 1, 1, &everyone)?;
        let mut rng = ha_core::rng::SplitMix64::new(sim.seed() ^ 0xF18);
        let mut up = 5;
        let mut cmd = 100;
        for _ in 0..300 {
            if let Some(leader) = sim.leader() {
                cmd += 1;
                sim.propose_on(leader, cmd);
            }
            let wait = if rng.chance(0.1) {
                rng.range(0, ELECTION_TICKS)
            } else {
                rng.range(0, 3)
            };
            sim.run_ticks(wait)?;
            if let Some(leader) = sim.leader()
                && rng.chance(0.5)
            {
                sim.crash(leader);
                up -= 1;
            }
            if up < 3 {
                let down: Vec<NodeId> = sim.ids().into_iter().filter(|n| !sim.is_up(*n)).collect();
                let pick = down[rng.range(0, down.len() as u64) as usize];
                sim.restart(pick);
                up += 1;
            }
        }
        sim.heal_and_converge(2_000)
    });
}

#[test]
fn agreement_over_an_unreliable_network() {
    for_seeds(5, |sim| {
        sim.set_faults(Faults::unreliable());
        let everyone = all(sim);
        for k in 0..50 {
            // Several clients at once, on whoever leads now.
            if let Some(leader) = sim.leader() {
                for j in 0..3 {
                    sim.propose_on(leader, 10_000 + k * 10 + j);
                }
            }
            sim.run_ticks(3)?;
        }
        sim.set_faults(Faults::none());
        one(sim, 99_999, 5, &everyone)?;
        sim.heal_and_converge(2_000)
    });
}

#[test]
fn churn_with_random_crashes_and_restarts() {
    for_seeds(5, |sim| {
        let mut rng = ha_core::rng::SplitMix64::new(sim.seed() ^ 0xC4);
        sim.set_faults(Faults {
            drop: 0.02,
            max_delay_ticks: 2,
            ..Faults::none()
        });
        let mut cmd = 0;
        for _ in 0..200 {
            for _ in 0..rng.range(0, 4) {
                let id = NodeId(rng.range(1, 6));
                cmd += 1;
                sim.propose_on(id, cmd);
            }
            if rng.chance(0.2) {
                sim.crash(NodeId(rng.range(1, 6)));
            }
            if rng.chance(0.3) {
                sim.restart(NodeId(rng.range(1, 6)));
            }
            sim.run_ticks(rng.range(1, ELECTION_TICKS))?;
        }
        if sim.acknowledged().is_empty() {
            return Err(sim.fail("no command was acknowledged under churn"));
        }
        sim.heal_and_converge(3_000)
    });
}

#[test]
fn prevote_keeps_a_rejoining_node_from_disrupting_the_leader() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let leader = check_one_leader(sim, &everyone)?;
        let term = sim.raft(leader).map(|r| r.term()).unwrap_or_default();
        let follower = *everyone
            .iter()
            .find(|n| **n != leader)
            .expect("three nodes");
        sim.disconnect(follower);
        sim.run_ticks(10 * ELECTION_TICKS)?;
        // Pre-vote: the isolated node never won a pre-vote, so its term stayed.
        let isolated_term = sim.raft(follower).map(|r| r.term()).unwrap_or_default();
        if isolated_term != term {
            return Err(sim.fail(format!("isolated node moved to term {isolated_term}")));
        }
        sim.connect(follower);
        sim.run_ticks(4 * ELECTION_TICKS)?;
        if sim.leader() != Some(leader) || sim.raft(leader).map(|r| r.term()) != Some(term) {
            return Err(sim.fail("the rejoining node disrupted the leader"));
        }
        Ok(())
    });
}

#[test]
fn check_quorum_steps_down_an_isolated_leader() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let leader = check_one_leader(sim, &everyone)?;
        sim.disconnect(leader);
        sim.run_ticks(3 * ELECTION_TICKS)?;
        if sim.raft(leader).is_some_and(|r| r.is_leader()) {
            return Err(sim.fail("an isolated leader kept leading past an election timeout"));
        }
        Ok(())
    });
}

#[test]
fn linearizable_reads_see_every_acknowledged_write() {
    for_seeds(3, |sim| {
        let everyone = all(sim);
        let index = one(sim, 42, 3, &everyone)?;
        let leader = check_one_leader(sim, &everyone)?;
        let read = sim.read_on(leader)?;
        if read < index {
            return Err(sim.fail(format!("read at {read} misses the write at {index}")));
        }
        // Followers refuse ReadIndex (clients go to the leader).
        let follower = *everyone
            .iter()
            .find(|n| **n != leader)
            .expect("three nodes");
        if sim.try_read_on(follower) {
            return Err(sim.fail("a follower accepted a ReadIndex request"));
        }
        // An isolated leader cannot confirm a read.
        sim.disconnect(leader);
        if sim.read_on(leader).is_ok() {
            return Err(sim.fail("an isolated leader served a linearizable read"));
        }
        Ok(())
    });
}
