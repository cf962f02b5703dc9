//! Unit tests of lease reads (see `lease`).
use super::*;

const TICK: u64 = 10_000_000;
const MS: u64 = 1_000_000;

fn lease_config(id: u64) -> Config {
    let mut c = Config::new(NodeId(id));
    c.lease = Some(LeaseConfig {
        tick_nanos: TICK,
        max_clock_drift_ppm: 10_000,
    });
    c
}

fn msg(from: u64, term: Term, body: Body) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(1),
        term,
        body,
    }
}

/// Drains every Ready (as if persisted at once); returns what was sent and
/// the reads confirmed.
fn drain(r: &mut Raft) -> (Vec<Message>, Vec<ReadState>) {
    let (mut out, mut reads) = (Vec::new(), Vec::new());
    while r.prepare_ready() {
        let rd = r.ready();
        out.extend(rd.messages.iter().cloned());
        out.extend(rd.persisted_messages.iter().cloned());
        reads.extend(rd.read_states.iter().copied());
        let t = rd.token();
        r.advance(t);
    }
    (out, reads)
}

/// Node 1 of three, elected with node 2's votes, its blank entry not yet
/// committed.
fn leader(config: Config) -> Raft {
    let init = InitialState {
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        ..InitialState::default()
    };
    super::tests::elected(Raft::new(config, init).unwrap())
}

/// Node 2 acknowledges everything: the blank entry commits.
fn commit_blank(r: &mut Raft) {
    let last = r.last_index();
    r.step(msg(
        2,
        r.term(),
        Body::AppendResponse(AppendOutcome::Accepted { match_index: last }),
    ))
    .unwrap();
    drain(r);
    assert_eq!(r.commit_index(), last);
}

/// Makes a heartbeat at `clock` (a tick) and returns its sequence number.
fn heartbeat_at(r: &mut Raft, clock: u64) -> u64 {
    r.set_clock(clock);
    r.tick();
    drain(r)
        .0
        .iter()
        .find_map(|m| match m.body {
            Body::Heartbeat { seq, .. } if m.to == NodeId(2) => Some(seq),
            _ => None,
        })
        .expect("a heartbeat every tick")
}

/// A leader with leases, its term's entry committed, and node 2's answer
/// to a heartbeat made at `t0`.
fn leased_leader(t0: u64) -> Raft {
    let mut r = leader(lease_config(1));
    commit_blank(&mut r);
    let seq = heartbeat_at(&mut r, t0);
    r.step(msg(2, r.term(), Body::HeartbeatResponse { seq }))
        .unwrap();
    drain(&mut r);
    r
}

#[test]
fn a_lease_read_is_served_at_once_only_while_a_quorums_answer_is_recent() {
    let lease = lease_config(1).lease.unwrap().lease_nanos(6);
    assert_eq!(lease, 49_500_000, "5 ticks less 1%");
    let mut r = leader(lease_config(1));
    // Before the term's first entry commits, the commit index may be
    // behind: a round (which waits for the commit) it is.
    assert_eq!(r.read_lease(1), Ok(ReadPath::Round));
    commit_blank(&mut r);
    // No heartbeat answered yet: a round.
    assert_eq!(r.read_lease(2), Ok(ReadPath::Round));
    let t0 = 1_000 * MS;
    let seq = heartbeat_at(&mut r, t0);
    r.step(msg(2, r.term(), Body::HeartbeatResponse { seq }))
        .unwrap();
    let (_, reads) = drain(&mut r);
    assert_eq!(
        reads.iter().map(|s| s.ctx).collect::<Vec<_>>(),
        vec![1],
        "the answer also confirms the round in flight (read 2 waits for the next)"
    );
    r.set_clock(t0 + lease - 1);
    let index = r.commit_index();
    assert_eq!(r.read_lease(3), Ok(ReadPath::Lease { index }));
    let (_, reads) = drain(&mut r);
    assert!(
        reads.iter().all(|s| s.ctx != 3),
        "a lease read comes back as a ReadState too"
    );
    // The lease counts from when the heartbeat was made, not answered.
    r.set_clock(t0 + lease);
    assert_eq!(r.read_lease(4), Ok(ReadPath::Round));
    assert!(!r.lease_holds());
    // A clock going back is ignored.
    r.set_clock(t0);
    assert!(!r.lease_holds());
    // A newer heartbeat answered renews it; an older answer arriving late
    // does not take it back.
    let seq2 = heartbeat_at(&mut r, t0 + 60 * MS);
    r.step(msg(2, r.term(), Body::HeartbeatResponse { seq: seq2 }))
        .unwrap();
    r.step(msg(2, r.term(), Body::HeartbeatResponse { seq }))
        .unwrap();
    drain(&mut r);
    r.set_clock(t0 + 60 * MS + lease - 1);
    assert!(r.lease_holds());
    // And it ends by the clock again.
    r.set_clock(t0 + 60 * MS + lease);
    assert!(!r.lease_holds());
}

#[test]
fn no_lease_without_the_config_or_after_timeout_now() {
    let mut r = leader(Config::new(NodeId(1)));
    commit_blank(&mut r);
    let seq = heartbeat_at(&mut r, 0);
    r.step(msg(2, r.term(), Body::HeartbeatResponse { seq }))
        .unwrap();
    assert!(!r.lease_holds(), "leases are opt-in");

    let t0 = 1_000 * MS;
    let mut r = leased_leader(t0);
    assert!(r.lease_holds());
    // Node 2 holds the whole log: TimeoutNow goes out at once.
    r.transfer_leadership(Some(NodeId(2))).unwrap();
    let (out, _) = drain(&mut r);
    assert!(
        out.iter()
            .any(|m| matches!(m.body, Body::TimeoutNow { .. }) && m.to == NodeId(2)),
        "{out:?}"
    );
    assert!(!r.lease_holds(), "a lease held through TimeoutNow");
    // Even after the transfer times out and a fresh answer comes in.
    for t in 0..r.config().election_timeout_max_ticks * 2 {
        let seq = heartbeat_at(&mut r, t0 + t * TICK);
        r.step(msg(2, r.term(), Body::HeartbeatResponse { seq }))
            .unwrap();
        drain(&mut r);
    }
    assert!(r.is_leader());
    assert_eq!(r.transferring_to(), None);
    assert!(!r.lease_holds(), "the lease came back in the same term");
}

/// Node 3's vote request to node `to` in `term`, with an empty log.
fn vote_from_3(to: u64, term: u64) -> Message {
    Message {
        from: NodeId(3),
        to: NodeId(to),
        term: Term(term),
        body: Body::Vote {
            last_index: LogIndex(0),
            last_term: Term(0),
            transfer: false,
        },
    }
}

/// Drains `r`; whether it granted a vote (`None`: it answered none).
fn granted(r: &mut Raft) -> Option<bool> {
    drain(r).0.iter().find_map(|m| match m.body {
        Body::VoteResponse { granted } => Some(granted),
        _ => None,
    })
}

#[test]
fn with_leases_a_started_node_refuses_votes_for_a_minimum_election_timeout() {
    let vote = |term| vote_from_3(2, term);
    let init = || InitialState {
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        ..InitialState::default()
    };
    let mut plain = Raft::new(Config::new(NodeId(2)), init()).unwrap();
    plain.step(vote(1)).unwrap();
    assert_eq!(granted(&mut plain), Some(true), "no leases: votes at once");

    let mut config = lease_config(2);
    config.rng_seed = 7;
    let min = config.election_timeout_min_ticks;
    let mut r = Raft::new(config, init()).unwrap();
    for t in 0..min {
        r.step(vote(1)).unwrap();
        assert_eq!(granted(&mut r), None, "voted {t} ticks after starting");
        assert_eq!(r.term(), Term(0));
        r.tick();
    }
    r.step(vote(1)).unwrap();
    assert_eq!(granted(&mut r), Some(true));
}

#[test]
fn lease_settings_are_checked() {
    let mut c = lease_config(1);
    assert!(c.validate().is_ok());
    c.check_quorum = false;
    assert!(c.validate().is_err(), "without check_quorum");
    for ppm in [
        0,
        MIN_CLOCK_DRIFT_PPM - 1,
        MAX_CLOCK_DRIFT_PPM + 1,
        u32::MAX,
    ] {
        let mut c = lease_config(1);
        c.lease.as_mut().unwrap().max_clock_drift_ppm = ppm;
        assert!(c.validate().is_err(), "drift {ppm}");
    }
    let mut c = lease_config(1);
    c.lease.as_mut().unwrap().tick_nanos = 0;
    assert!(c.validate().is_err(), "a zero tick");
    let mut c = lease_config(1);
    (c.heartbeat_interval_ticks, c.election_timeout_min_ticks) = (1, 2);
    assert!(c.validate().is_err(), "a 2-tick election timeout");
    // Spans beyond 64-bit nanoseconds are refused, not wrapped or capped
    // into an endless lease.
    let mut c = lease_config(1);
    c.lease.as_mut().unwrap().tick_nanos = u64::MAX;
    assert_eq!(c.lease.unwrap().lease_nanos(u64::MAX), 0);
    assert!(c.validate().is_err(), "an overflowing lease");
}

/// A follower's refusal runs on its clock from the last message of its
/// leader: a higher term learned from another message (which forgets the
/// leader) does not end it, and neither do ticks; only the clock does.
#[test]
fn a_followers_refusal_ends_only_by_its_clock() {
    let init = InitialState {
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        ..InitialState::default()
    };
    let mut r = Raft::new(lease_config(1), init).unwrap();
    let min = r.config().election_timeout_min_ticks;
    for _ in 0..min {
        r.tick(); // Past the start-up refusal.
    }
    let t0 = 5_000 * MS;
    r.set_clock(t0);
    r.step(msg(
        2,
        Term(1),
        Body::Heartbeat {
            commit: LogIndex(0),
            seq: 1,
        },
    ))
    .unwrap();
    assert_eq!(r.leader(), Some(NodeId(2)));
    // A pre-vote refusal from node 3 in term 2 moves this node to term 2
    // and forgets the leader.
    r.step(msg(3, Term(2), Body::PreVoteResponse { granted: false }))
        .unwrap();
    assert_eq!((r.term(), r.leader()), (Term(2), None));
    drain(&mut r);
    let vote = |term| vote_from_3(1, term);
    // Ticks (bunched by a runtime) do not end it (nor start this node's
    // own campaign, which would vote for itself).
    for _ in 0..min * 3 {
        r.tick();
    }
    assert_eq!(
        r.role(),
        RoleKind::Follower,
        "campaigned within the refusal"
    );
    r.set_clock(t0 + min * TICK - 1);
    // A request at the term it is in now (no term to raise) is refused too.
    r.step(vote(2)).unwrap();
    assert_eq!(
        granted(&mut r),
        Some(false),
        "voted at its term within the refusal"
    );
    r.step(vote(3)).unwrap();
    assert_eq!(granted(&mut r), None, "voted within the refusal");
    assert_eq!(r.term(), Term(2));
    r.set_clock(t0 + min * TICK);
    r.step(vote(3)).unwrap();
    assert_eq!(granted(&mut r), Some(true));
}

/// A driver that stops telling the clock gets no endless lease: it ends
/// after `min - 1` of the leader's ticks too.
#[test]
fn a_lease_ends_after_its_ticks_even_on_a_stopped_clock() {
    let mut r = leased_leader(1_000 * MS);
    assert!(r.lease_holds());
    let min = r.config().election_timeout_min_ticks;
    for _ in 0..min - 2 {
        r.tick();
        drain(&mut r);
    }
    assert!(r.lease_holds(), "{} ticks", min - 2);
    r.tick();
    assert!(!r.lease_holds(), "a lease on a clock that stopped");
}

/// The quorum a lease stands on is counted again once the configuration
/// changes: answers that made a quorum of the old one need not make one
/// of the joint configuration.
#[test]
fn a_configuration_change_counts_the_lease_again() {
    let mut r = leased_leader(1_000 * MS);
    r.set_clock(1_000 * MS + 1);
    assert!(r.lease_holds(), "nodes 1 and 2 are a quorum of 1, 2, 3");
    // Joint (1, 2, 3) and (1, 3): node 3 never answered.
    r.change_membership(ConfChange::Remove(NodeId(2))).unwrap();
    assert!(
        !r.lease_holds(),
        "a lease counted under the old configuration"
    );
}
