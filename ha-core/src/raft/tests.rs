//! Unit tests of the core that look at its private state.
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
        while r.prepare_ready() {
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
    while r.prepare_ready() {
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

/// A blank entry at `i` of term `t`.
fn entry(i: u64, t: u64) -> Entry {
    Entry {
        index: LogIndex(i),
        term: Term(t),
        payload: EntryPayload::Blank,
    }
}

/// A heartbeat of the leader `from` in `term`, at commit 4.
fn heartbeat_from(from: u64, term: u64) -> Message {
    msg(
        from,
        term,
        Body::Heartbeat {
            commit: LogIndex(4),
            seq: 2,
        },
    )
}

/// A voter's answer to the term query `nonce`, knowing its leader's last
/// index `last`.
fn term_reply(from: u64, term: u64, nonce: u64, last: Option<u64>) -> Message {
    msg(
        from,
        term,
        Body::TermReply {
            nonce,
            leader_last: last.map(LogIndex),
            repairing: false,
        },
    )
}

/// Node 1 of three, in term 3, whose storage lost part of its log: two
/// entries of term 1, commit 1. Without CheckQuorum's lease, so vote
/// requests are answered while a leader is heard.
fn repairing_node() -> Raft {
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
    let mut config = Config::new(NodeId(1));
    config.check_quorum = false;
    let r = Raft::new(config, init).unwrap();
    assert!(r.is_repairing());
    r
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
    let mut r = repairing_node();
    refuses_votes_and_never_campaigns(&mut r);
    takes_its_leaders_log_as_repairing(&mut r);
    let nonce = asks_every_voter_its_term(&mut r);
    catches_up_in_the_current_term(&mut r, nonce);
    votes_again_after_a_round(&mut r);
}

/// Phase 1: no vote, even for a candidate with a longer log, and no
/// campaign however long it waits.
fn refuses_votes_and_never_campaigns(r: &mut Raft) {
    // No vote, even for a candidate with a longer log.
    let vote = |t: u64| {
        msg(
            2,
            t,
            Body::Vote {
                last_index: LogIndex(50),
                last_term: Term(t),
                transfer: false,
            },
        )
    };
    r.step(vote(4)).unwrap();
    assert_eq!(vote_granted(&drain(r)), Some(false));
    // No campaign, however long it waits.
    for _ in 0..200 {
        r.tick();
        let out = drain(r);
        assert!(
            !out.iter()
                .any(|m| matches!(m.body, Body::PreVote { .. } | Body::Vote { .. })),
            "a repairing node campaigned"
        );
    }
}

/// Phase 2: a leader of term 5's heartbeat commit is not taken, and its
/// appends are acknowledged only as a repairing node's.
fn takes_its_leaders_log_as_repairing(r: &mut Raft) {
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
    let out = drain(r);
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
    let out = drain(r);
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
}

/// Phase 3: caught up with term 5's leader, it asks every other voter
/// its term until each answered, answering no heartbeat meanwhile.
/// Returns the query's nonce.
fn asks_every_voter_its_term(r: &mut Raft) -> u64 {
    // Caught up with the leader of term 5, but a higher term may have
    // been forgotten: it asks every other voter, and goes on asking,
    // until each answered; meanwhile heartbeats get notices, never a
    // heartbeat answer (which would confirm a leadership).
    let round = Config::new(NodeId(1)).election_timeout_max_ticks;
    let mut asked = BTreeSet::new();
    let mut nonce = None;
    for _ in 0..3 * round {
        r.tick();
        r.step(heartbeat_from(3, 5)).unwrap();
        for m in drain(r) {
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
    nonce.expect("queried")
}

/// Phase 4: stale answers count for nothing; a higher term restarts the
/// wait; it must hold the current leader's last index.
fn catches_up_in_the_current_term(r: &mut Raft, nonce: u64) {
    let round = Config::new(NodeId(1)).election_timeout_max_ticks;
    // Answers to another query (an earlier repair's, delayed) count for
    // nothing, though this log holds the leader's last index 4; nor does
    // the answer of a node that is repairing too.
    r.step(term_reply(3, 5, nonce ^ 1, Some(4))).unwrap();
    r.step(term_reply(2, 5, nonce ^ 1, None)).unwrap();
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
        drain(r);
    }
    assert!(r.is_repairing(), "a stale answer counted");
    // Node 3, the leader of term 5, answers with its last index; node 2
    // is in term 6, which this node takes on: term 5 no longer counts.
    r.step(term_reply(3, 5, nonce, Some(4))).unwrap();
    r.step(term_reply(2, 6, nonce, None)).unwrap();
    drain(r);
    assert_eq!(r.term(), Term(6));
    for _ in 0..3 * round {
        r.tick();
        drain(r);
    }
    assert!(r.is_repairing(), "caught up only in an older term");
    // Node 2 leads term 6: it is asked, and answers with its last index.
    let mut asked_leader = false;
    for _ in 0..2 {
        r.step(heartbeat_from(2, 6)).unwrap();
        r.tick();
        asked_leader |= drain(r)
            .iter()
            .any(|m| m.to == NodeId(2) && matches!(m.body, Body::TermQuery { .. }));
    }
    assert!(asked_leader, "the leader of the current term was not asked");
    r.step(term_reply(2, 6, nonce, Some(5))).unwrap();
    for _ in 0..3 * round {
        r.tick();
        drain(r);
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
    drain(r);
    assert_eq!(r.commit_index(), LogIndex(5));
}

/// Phase 5: one more election round without votes, a durable self-vote,
/// then votes only in terms above every term it saw.
fn votes_again_after_a_round(r: &mut Raft) {
    let round = Config::new(NodeId(1)).election_timeout_max_ticks;
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
                transfer: false,
            },
        ))
        .unwrap();
        assert_eq!(vote_granted(&drain(r)), Some(false));
        r.tick();
        ticks += 1;
        r.step(heartbeat_from(2, 6)).unwrap();
        drain(r);
    }
    assert!(ticks >= round, "a whole election round passed: {ticks}");
    // It recorded a vote for itself in the term it ended in, durably,
    // so a restart without the repairing mark cannot give it away.
    assert_eq!(r.hard_state().vote, Some(NodeId(1)));
    // Still repairing (no vote, no counting) until the storage dropped
    // its mark.
    assert!(r.is_repairing());
    r.step(heartbeat_from(2, 6)).unwrap();
    assert!(
        !drain(r)
            .iter()
            .any(|m| matches!(m.body, Body::HeartbeatResponse { .. }))
    );
    r.end_repair();
    assert!(!r.is_repairing());
    // Now it answers heartbeats again.
    r.step(heartbeat_from(2, 6)).unwrap();
    assert!(
        drain(r)
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
                transfer: false,
            },
        )
    };
    r.step(up_to_date(6)).unwrap();
    assert_eq!(vote_granted(&drain(r)), Some(false));
    // Then votes only in terms above every term it saw.
    r.step(up_to_date(7)).unwrap();
    assert_eq!(vote_granted(&drain(r)), Some(true));
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

/// Node 1 (`r`) campaigns when its timer fires and wins with node 2's
/// pre-vote and vote.
pub(super) fn elected(mut r: Raft) -> Raft {
    let mut ticks = 0;
    while r.role() == RoleKind::Follower {
        r.tick();
        ticks += 1;
        assert!(ticks < 1000, "never campaigned");
    }
    drain(&mut r);
    while r.role() != RoleKind::Leader {
        let (term, body) = if r.role() == RoleKind::PreCandidate {
            (r.term().next(), Body::PreVoteResponse { granted: true })
        } else {
            (r.term(), Body::VoteResponse { granted: true })
        };
        r.step(msg(2, term.0, body)).unwrap();
        drain(&mut r);
    }
    r
}

/// A leader counts no commit and no read confirmation from a repairing
/// follower, and counts it again once it answers as a whole one.
#[test]
fn a_leader_counts_no_majority_with_a_repairing_follower() {
    let mut r = elected(node());
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
        while r.prepare_ready() {
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

/// `TimeoutNow` makes a follower campaign at once, without PreVote and
/// with the transfer flag, only when it comes from the leader it follows
/// in its own term and names the entry this log ends at; otherwise it
/// changes nothing.
#[test]
fn timeout_now_is_obeyed_only_from_the_leader_followed() {
    let mut r = node();
    r.step(heartbeat(3)).unwrap();
    drain(&mut r);
    assert_eq!((r.term(), r.leader()), (Term(3), Some(NodeId(2))));
    let now = |from: u64, term: u64, last: u64| {
        msg(
            from,
            term,
            Body::TimeoutNow {
                last_index: LogIndex(last),
                last_term: Term(0),
            },
        )
    };
    // Not the leader followed, an older term, or a log that no longer
    // ends where the leader's did (a late copy): nothing happens.
    for stranger in [now(3, 3, 0), now(2, 2, 0), now(2, 3, 5)] {
        r.step(stranger).unwrap();
        assert!(drain(&mut r).is_empty());
        assert_eq!((r.role(), r.term()), (RoleKind::Follower, Term(3)));
    }
    r.step(now(2, 3, 0)).unwrap();
    // PreVote is on: a pre-vote round first, its term not moved yet.
    assert_eq!((r.role(), r.term()), (RoleKind::PreCandidate, Term(3)));
    let asks: Vec<Message> = drain(&mut r);
    assert_eq!(asks.len(), 2, "{asks:?}");
    assert!(
        asks.iter()
            .all(|m| m.term == Term(4) && matches!(m.body, Body::PreVote { transfer: true, .. })),
        "{asks:?}"
    );
    // The asking leader's heartbeat is answered but does not end the
    // round (appends and heartbeats keep flowing during a transfer).
    r.step(heartbeat(3)).unwrap();
    assert_eq!(r.role(), RoleKind::PreCandidate);
    assert!(
        drain(&mut r)
            .iter()
            .any(|m| matches!(m.body, Body::HeartbeatResponse { .. }))
    );
    // Granted: the election itself, its votes marked too.
    let granted = |from| msg(from, 4, Body::PreVoteResponse { granted: true });
    r.step(granted(2)).unwrap();
    assert_eq!((r.role(), r.term()), (RoleKind::Candidate, Term(4)));
    let votes: Vec<Message> = drain(&mut r);
    assert!(
        votes.len() == 2
            && votes
                .iter()
                .all(|m| m.term == Term(4) && matches!(m.body, Body::Vote { transfer: true, .. })),
        "{votes:?}"
    );
}

/// A voter that heard its leader within the lease ignores an ordinary
/// candidate of a higher term, and a transfer's target whose log is
/// behind its own (a late `TimeoutNow`'s), but answers a transfer's
/// target that could win.
#[test]
fn the_leader_lease_yields_only_to_a_transfer_that_could_win() {
    let vote = |transfer, last: u64| {
        msg(
            3,
            4,
            Body::Vote {
                last_index: LogIndex(last),
                last_term: Term(last.min(1)),
                transfer,
            },
        )
    };
    let mut r = node();
    r.step(heartbeat(3)).unwrap();
    r.step(msg(
        2,
        3,
        Body::Append {
            prev_index: LogIndex(0),
            prev_term: Term(0),
            entries: vec![entry(1, 1)],
            commit: LogIndex(0),
        },
    ))
    .unwrap();
    drain(&mut r);
    for ignored in [vote(false, 1), vote(true, 0)] {
        r.step(ignored).unwrap();
        assert!(drain(&mut r).is_empty(), "ignored within the lease");
        assert_eq!(r.term(), Term(3));
    }
    r.step(vote(true, 1)).unwrap();
    assert_eq!(vote_granted(&drain(&mut r)), Some(true));
    assert_eq!(r.term(), Term(4));
}

/// A change that would make a configuration no follower takes on (here:
/// more than MAX_MEMBERS ids) is refused and appends nothing: followers
/// would refuse every append carrying it.
#[test]
fn a_change_past_the_member_limit_is_refused_and_appends_nothing() {
    let mut membership = Membership::new_voters([NodeId(1)]);
    membership.learners = (2..=MAX_MEMBERS as u64).map(NodeId).collect();
    let init = InitialState {
        membership,
        ..InitialState::default()
    };
    let mut r = Raft::new(Config::new(NodeId(1)), init).unwrap();
    r.campaign_now();
    drain(&mut r);
    assert!(r.is_leader());
    let last = r.last_index();
    let refused = r.change_membership(ConfChange::AddLearner(NodeId(5000), None));
    assert!(
        matches!(refused, Err(ConfChangeError::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(r.last_index(), last);
    // Within the limit the same leader changes the configuration.
    assert!(r.change_membership(ConfChange::Remove(NodeId(2))).is_ok());
    assert_eq!(r.last_index(), last.next());
}

/// A vote request from node 3 in `term` with a long log, marked as a
/// transfer's (the leader lease would hold off others).
fn transfer_vote(term: u64) -> Message {
    msg(
        3,
        term,
        Body::Vote {
            last_index: LogIndex(9),
            last_term: Term(term),
            transfer: true,
        },
    )
}

/// A node started in no configuration (it waits to be added; its storage
/// may be a wiped voter's under the same id) grants no vote until it has a
/// configuration, and then only in terms above the one it took it on in.
#[test]
fn a_newcomer_votes_only_in_terms_after_it_learned_a_configuration() {
    let mut r = Raft::new(Config::new(NodeId(1)), InitialState::default()).unwrap();
    let vote = transfer_vote;
    r.step(vote(2)).unwrap();
    assert_eq!(
        vote_granted(&drain(&mut r)),
        Some(false),
        "no configuration yet"
    );
    // The leader of term 3 brings the configuration that names it.
    let mut m = Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]);
    m.addrs.insert(NodeId(2), "10.0.0.2:7000".into());
    r.step(msg(
        2,
        3,
        Body::Append {
            prev_index: LogIndex(0),
            prev_term: Term(0),
            entries: vec![Entry {
                index: LogIndex(1),
                term: Term(3),
                payload: EntryPayload::Membership(m),
            }],
            commit: LogIndex(1),
        },
    ))
    .unwrap();
    drain(&mut r);
    assert!(!r.membership().is_empty());
    // Its old self may have voted in term 3: no vote there (it also
    // follows term 3's leader by now); in term 4 it votes.
    let mut late = vote(3);
    late.from = NodeId(3);
    r.step(late).unwrap();
    assert_eq!(vote_granted(&drain(&mut r)), Some(false), "term 3");
    r.step(vote(4)).unwrap();
    assert_eq!(vote_granted(&drain(&mut r)), Some(true), "term 4");
}

/// The newcomer rule survives a restart: a joined node restarted with a
/// configuration votes only in terms above its stored term (its wiped
/// old self may have voted in the term it took its configuration on);
/// a node that did not join votes in its stored term as usual.
#[test]
fn a_joined_node_restarted_votes_only_above_its_stored_term() {
    let vote = transfer_vote;
    let init = |joined| InitialState {
        hard_state: HardState {
            term: Term(3),
            vote: None,
            commit: LogIndex(0),
        },
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        joined,
        ..InitialState::default()
    };
    let mut r = Raft::new(Config::new(NodeId(1)), init(true)).unwrap();
    r.step(vote(3)).unwrap();
    assert_eq!(vote_granted(&drain(&mut r)), Some(false), "term 3");
    r.step(vote(4)).unwrap();
    assert_eq!(vote_granted(&drain(&mut r)), Some(true), "term 4");
    let mut r = Raft::new(Config::new(NodeId(1)), init(false)).unwrap();
    r.step(vote(3)).unwrap();
    assert_eq!(vote_granted(&drain(&mut r)), Some(true), "not joined");
}

/// While apply is held, Readies go on (entries persisted, commits made)
/// but carry no committed entry; let go, the next Ready carries them all,
/// in order, and the applied index follows.
#[test]
fn a_held_apply_holds_committed_entries_back_and_nothing_else() {
    let init = InitialState {
        membership: Membership::new_voters([NodeId(1)]),
        ..InitialState::default()
    };
    let mut r = Raft::new(Config::new(NodeId(1)), init).unwrap();
    r.campaign_now();
    drain(&mut r);
    assert!(r.is_leader());
    let applied = r.applied_index();
    r.hold_apply(true);
    for i in 0..3u8 {
        r.propose(Bytes::from(vec![i])).unwrap();
        while r.prepare_ready() {
            let rd = r.ready();
            assert!(
                rd.committed_entries.is_empty(),
                "an entry handed for apply while held"
            );
            let t = rd.token();
            r.advance(t);
        }
    }
    assert_eq!(r.applied_index(), applied, "applied moved while held");
    assert_eq!(
        r.commit_index(),
        LogIndex(applied.0 + 3),
        "commits stopped while held"
    );
    r.hold_apply(false);
    assert!(r.prepare_ready(), "the held entries make a Ready");
    let rd = r.ready();
    let got: Vec<LogIndex> = rd.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(
        got,
        (1..=3).map(|i| LogIndex(applied.0 + i)).collect::<Vec<_>>()
    );
    let t = rd.token();
    r.advance(t);
    assert_eq!(r.applied_index(), LogIndex(applied.0 + 3));
}

/// A snapshot installed while apply is held waits whole: no Ready (whose
/// entries would come after an install not yet restored) until let go.
#[test]
fn a_snapshot_install_waits_for_a_held_apply() {
    let mut r = node();
    r.hold_apply(true);
    r.step(msg(
        2,
        1,
        Body::InstallSnapshot {
            index: LogIndex(10),
            term: Term(1),
            membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        },
    ))
    .unwrap();
    assert!(
        !r.prepare_ready(),
        "a Ready while an install waits for the state machine"
    );
    r.hold_apply(false);
    assert!(r.prepare_ready());
    let rd = r.ready();
    assert_eq!(rd.snapshot.map(|s| s.index), Some(LogIndex(10)));
}
