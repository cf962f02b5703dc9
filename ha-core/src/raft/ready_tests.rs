//! Unit tests of the core's output outside a Ready ([`Raft::take_messages`]).
use super::*;

/// A single voter elects itself in one step, its new term not yet
/// durable: nothing of that term leaves before its write, in a Ready or
/// outside one (a crash would let it reuse the term for other entries).
/// Once it is, appends made while a later write is in flight may leave at
/// once.
#[test]
fn nothing_leaves_outside_a_ready_in_a_term_not_yet_durable() {
    let mut membership = Membership::new_voters([NodeId(1)]);
    membership.learners.insert(NodeId(2));
    let init = InitialState {
        membership,
        ..InitialState::default()
    };
    let mut r = Raft::new(Config::new(NodeId(1)), init).unwrap();
    r.campaign_now();
    assert!(r.is_leader());
    assert!(r.prepare_ready());
    let rd = r.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(r.term()));
    // The Ready that writes the new term sends its appends only after.
    assert!(
        !rd.messages.iter().any(|m| m.to == NodeId(2)),
        "an append left before its term was durable: {:?}",
        rd.messages
    );
    assert!(rd.persisted_messages.iter().any(|m| m.to == NodeId(2)));
    // The write of the new term is in flight: neither a heartbeat nor a
    // proposal's append leaves.
    r.propose(Bytes::from_static(b"x")).unwrap();
    r.tick();
    assert!(
        r.take_messages().is_empty(),
        "sent before the term was durable"
    );
    r.advance(rd.token());
    // The learner answers: it takes appends without waiting for probes.
    r.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term: r.term(),
        body: Body::AppendResponse(AppendOutcome::Accepted {
            match_index: LogIndex(1),
        }),
    })
    .unwrap();
    assert!(r.prepare_ready());
    let rd = r.ready();
    assert!(
        rd.messages.iter().any(|m| m.to == NodeId(2)),
        "{:?}",
        rd.messages
    );
    // With that write in flight, the next proposal's append leaves at once.
    r.propose(Bytes::from_static(b"y")).unwrap();
    let early = r.take_messages();
    assert!(
        early.iter().any(|m| m.to == NodeId(2)
            && matches!(&m.body, Body::Append { entries, .. } if !entries.is_empty())),
        "{early:?}"
    );
    r.advance(rd.token());
    // Taken is taken: the next Ready does not send it again.
    if r.prepare_ready() {
        let rd = r.ready();
        assert!(
            !rd.messages
                .iter()
                .any(|m| matches!(&m.body, Body::Append { entries, .. } if !entries.is_empty())),
            "sent twice"
        );
    }
}

/// A follower answers a heartbeat at once, but not in a term this very
/// heartbeat raised and no write has made durable: that answer waits for
/// the write, in a Ready and outside one.
#[test]
fn a_heartbeat_is_answered_at_once_only_in_a_durable_term() {
    let init = InitialState {
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        ..InitialState::default()
    };
    let mut r = Raft::new(Config::new(NodeId(1)), init).unwrap();
    let heartbeat = |term, seq| Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(term),
        body: Body::Heartbeat {
            commit: LogIndex(0),
            seq,
        },
    };
    let answers = |msgs: &[Message]| {
        msgs.iter()
            .filter(|m| matches!(m.body, Body::HeartbeatResponse { .. }))
            .count()
    };
    // Term 0 -> 3, not yet written.
    r.step(heartbeat(3, 1)).unwrap();
    assert_eq!(
        answers(&r.take_messages()),
        0,
        "answered in a term not durable"
    );
    assert!(r.prepare_ready());
    let rd = r.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(Term(3)));
    assert_eq!(answers(&rd.messages), 0, "answered before the term's write");
    assert_eq!(answers(&rd.persisted_messages), 1);
    // Another heartbeat while that write is in flight: still waits.
    r.step(heartbeat(3, 2)).unwrap();
    assert_eq!(answers(&r.take_messages()), 0);
    r.advance(rd.token());
    // Durable now: answered at once, outside a Ready or in one.
    r.step(heartbeat(3, 3)).unwrap();
    assert_eq!(answers(&r.take_messages()), 2, "seq 2 and 3");
    r.step(heartbeat(3, 4)).unwrap();
    assert!(r.prepare_ready());
    let rd = r.ready();
    assert_eq!(answers(&rd.messages), 1);
    assert_eq!(answers(&rd.persisted_messages), 0);
}
