//! Seeded fuzzing of the Raft core under the simulator's faults.
//!
//! `HA_SIM_SEEDS=n` runs seeds `0..n`; `HA_SIM_SEED=s` replays seed `s`.

use ha_tests::sim::{Bug, run_seeds, seeds_from_env};

/// Ticks per seed: each tick delivers due messages, ticks every node and may
/// inject faults and client load.
const TICKS_PER_SEED: u64 = 3_000;

/// Seeds CI runs by default, alternating 3- and 5-node clusters.
const DEFAULT_SEEDS: u64 = 2_000;

#[test]
fn random_runs_keep_every_safety_property() {
    let seeds = seeds_from_env(DEFAULT_SEEDS);
    let started = std::time::Instant::now();
    let (failure, stats, ran) = run_seeds(&seeds, TICKS_PER_SEED, None, false);
    if let Some(f) = failure {
        panic!("{f}");
    }
    eprintln!(
        "{ran} seeds passed in {:.1}s: {} ticks, {} messages delivered, {} commands \
         acknowledged, {} reads served, {} leaders elected, {} crashes, {} disk errors, \
         {} torn log tails repaired, {} disks damaged, {} repairs from peers, {} snapshots \
         taken, {} installed, {} session operations, {} commands of expired sessions refused, \
         {} commands with a forged batch start, {} power losses while compacting, \
         {} leadership transfers started, {} membership changes started, \
         {} reads served by lease",
        started.elapsed().as_secs_f64(),
        stats.ticks,
        stats.delivered,
        stats.acknowledged,
        stats.reads,
        stats.elections,
        stats.crashes,
        stats.disk_errors,
        stats.torn_tails_repaired,
        stats.media_damage,
        stats.repairs,
        stats.snapshots_taken,
        stats.snapshots_installed,
        stats.session_ops,
        stats.session_expired,
        stats.forged_commands,
        stats.compaction_power_losses,
        stats.transfers,
        stats.conf_changes,
        stats.lease_reads
    );
    assert_eq!(ran, seeds.len());
    assert!(
        stats.acknowledged > 0,
        "the runs must make progress to mean anything"
    );
    if seeds.len() >= 100 {
        assert!(
            stats.lease_reads > 0,
            "no read was served by lease: the lease runs test nothing"
        );
    }
}

fn hunt(bug: Bug) {
    hunt_for(bug, "");
}

/// Like [`hunt`], and the violation found must name `expect`: the bug is
/// caught for the reason it plants, not by chance elsewhere.
fn hunt_for(bug: Bug, expect: &str) {
    // The default seed set, unless one seed is named for a replay.
    let seeds = if std::env::var("HA_SIM_SEED").is_ok() {
        seeds_from_env(DEFAULT_SEEDS)
    } else {
        (0..DEFAULT_SEEDS).collect()
    };
    let (failure, _, ran) = run_seeds(&seeds, TICKS_PER_SEED, Some(bug), true);
    match failure {
        Some(f) => {
            eprintln!("planted bug {bug:?} caught after {ran} seeds:\n{f}");
            assert!(
                f.violation.contains(expect),
                "planted bug {bug:?} was caught, but not for the reason it plants \
                 (expected {expect:?}):\n{f}"
            );
        }
        None => panic!("planted bug {bug:?} survived {ran} seeds: the simulator is too weak"),
    }
}

#[test]
fn catches_planted_bug_vote_without_log_check() {
    hunt(Bug::VoteWithoutLogCheck);
}

#[test]
fn catches_planted_bug_commit_previous_term_by_count() {
    hunt(Bug::CommitPreviousTermByCount);
}

#[test]
fn catches_planted_bug_vote_before_persist() {
    hunt(Bug::VoteBeforePersist);
}

/// The snapshot-install race: the core counted a stepped snapshot as
/// applied before the driver restored it, so a snapshot taken by a Ready
/// that completed in between saved the old state under the new index.
#[test]
fn catches_planted_bug_applied_before_restore() {
    hunt(Bug::AppliedBeforeRestore);
}

/// A snapshot installed without discarding the conflicting log suffix (the
/// kept suffix answered as matching): a deposed leader's own entries after
/// the snapshot are counted as the leader's, and committed.
#[test]
fn catches_planted_bug_snapshot_keeps_conflicting_suffix() {
    hunt_for(Bug::SnapshotKeepsConflictingSuffix, "State Machine Safety");
}

/// Sessions re-created by a command that could be their first: a retry
/// stamped after a fast-clocked leader expired the session runs again.
#[test]
fn catches_planted_bug_session_recreate() {
    hunt(Bug::SessionRecreate);
}

/// Storage item 1 reverted: damage to the last synced batch of the newest
/// segment is cut off as a torn tail. A node forgets a batch it synced.
#[test]
fn catches_planted_bug_wal_torn_any_bad_tail() {
    hunt_for(Bug::WalTornAnyBadTail, "Durability: node");
}

/// Storage item 2 reverted: open trusts a last batch whose fsync failed
/// (its pages read back from the cache); a later power loss takes it.
#[test]
fn catches_planted_bug_wal_no_rewrite_at_open() {
    hunt_for(Bug::WalNoRewriteAtOpen, "Durability: node");
}

/// Storage item 3 reverted: a client's value holding a valid batch start
/// makes a torn write read as damage, and the node repairs for nothing.
#[test]
fn catches_planted_bug_wal_unbound_batch_start() {
    hunt_for(Bug::WalUnboundBatchStart, "disk was never damaged");
}

/// Storage item 4 reverted: a segment whose base a full disk took keeps
/// taking batches; once a compaction's deletions make it the first, the
/// log cannot be read.
#[test]
fn catches_planted_bug_wal_append_without_base() {
    hunt_for(Bug::WalAppendWithoutBase, "disk was never damaged");
}

/// Storage item 5 reverted: the log directory is not synced in its
/// parent, and a power loss takes the whole log.
#[test]
fn catches_planted_bug_wal_no_dir_sync() {
    hunt_for(Bug::WalNoDirSync, "Durability: node");
}

/// A leader that counts learners toward its commit quorum commits what no
/// majority of voters holds; an election among the voters then loses it.
#[test]
fn catches_planted_bug_learner_acks_count() {
    hunt_for(Bug::LearnerAcksCount, "Leader Completeness");
}

/// A leader's lease measured in its own ticks, which a stalled process
/// does not count: back from a stall longer than an election, it serves a
/// read from before the next leader's writes.
#[test]
fn catches_planted_bug_lease_by_ticks() {
    hunt_for(Bug::LeaseByTicks, "Linearizability");
}

// The lease's other planted bugs need a moment the random runs rarely
// reach; `tests/lease.rs` builds it.
