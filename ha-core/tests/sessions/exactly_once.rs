//! A session's commands apply exactly once: registration, retries,
//! unregistered and expired sessions, leader time, and snapshots that carry
//! the session table.

use super::*;

#[test]
fn a_registration_opens_a_session_named_by_its_index() {
    let mut s = Sessions::<Counter>::new();
    assert_eq!(open_session(&mut s, 7, 100), 7);
    assert_eq!(open_session(&mut s, 8, 100), 8, "every registration is new");
    assert_eq!(s.session_count(), 2);
}

#[test]
fn a_retried_command_is_applied_once_and_answers_the_same() {
    let mut s = Sessions::<Counter>::new();
    let i = |n| LogIndex(n);
    let c = open_session(&mut s, 1, 100);
    assert_eq!(
        applied(s.apply_log_command(i(2), Term(1), cmd(c, 1, 1, 100, 5))),
        5
    );
    // The same (client, seq) again, e.g. through a new leader: same answer,
    // no second application.
    assert_eq!(
        applied(s.apply_log_command(i(3), Term(2), cmd(c, 1, 1, 200, 5))),
        5
    );
    assert_eq!(s.state().get(), 5);
    // The next command, acknowledging the first.
    assert_eq!(
        applied(s.apply_log_command(i(4), Term(2), cmd(c, 2, 2, 300, 1))),
        6
    );
    // The first one again, now closed: not applied.
    assert_eq!(
        s.apply_log_command(i(5), Term(2), cmd(c, 1, 1, 400, 5)),
        CommandOutcome::Abandoned
    );
    assert_eq!(s.state().get(), 6);
}

#[test]
fn a_command_for_a_session_never_registered_is_never_applied() {
    let mut s = Sessions::<Counter>::new();
    // Even one that looks like a session's very first command.
    for (seq, ack) in [(1, 1), (1, 0), (5, 5)] {
        let out = s.apply_log_command(LogIndex(1), Term(1), cmd(9, seq, ack, 100, 1));
        assert_eq!(out, CommandOutcome::SessionExpired);
    }
    assert_eq!(s.state().get(), 0);
    assert_eq!(s.session_count(), 0);
}

/// The double application a leader with a fast clock caused: seq 1 is
/// applied, its answer is lost, a leader whose clock runs ahead stamps a
/// later entry past the session timeout, and the client's retry of seq 1
/// arrives. The retry must not apply again.
#[test]
fn a_retry_after_an_expiry_caused_by_a_fast_leader_clock_is_not_applied_twice() {
    let mut s = Sessions::<Counter>::new().with_unchecked_settings(10_000, DEFAULT_MAX_SESSIONS);
    let c = open_session(&mut s, 1, 1_000);
    assert_eq!(
        applied(s.apply_log_command(LogIndex(2), Term(1), cmd(c, 1, 1, 1_000, 5))),
        5
    );
    // Another client's command stamped by a leader 1 hour ahead.
    let other = open_session(&mut s, 3, 3_601_000);
    assert_ne!(other, c);
    // The retry of (c, 1): the session is gone; refused, not re-created.
    assert_eq!(
        s.apply_log_command(LogIndex(4), Term(2), cmd(c, 1, 1, 3_601_001, 5)),
        CommandOutcome::SessionExpired
    );
    assert_eq!(s.state().get(), 5, "applied exactly once");
}

#[test]
fn sessions_expire_by_leader_time_identically_on_every_replica() {
    let log: Vec<LogCommand> = vec![
        register(1_000),
        register(2_000),
        cmd(1, 1, 1, 1_000, 1),
        cmd(2, 1, 1, 2_000, 1),
        // Client 1 goes idle; client 2 keeps going past the timeout.
        cmd(2, 2, 2, 9_000, 1),
        cmd(2, 3, 3, 12_500, 1),
        // Client 1 comes back after its session expired: refused, because
        // the replicas can no longer tell what it already applied.
        cmd(1, 2, 2, 13_000, 1),
    ];
    let run = || {
        let mut s =
            Sessions::<Counter>::new().with_unchecked_settings(10_000, DEFAULT_MAX_SESSIONS);
        let outs: Vec<CommandOutcome> = log
            .iter()
            .enumerate()
            .map(|(k, c)| s.apply_log_command(LogIndex(k as u64 + 1), Term(1), c.clone()))
            .collect();
        (outs, s.snapshot().unwrap(), s.session_count())
    };
    let (a, snap_a, n) = run();
    let (b, snap_b, _) = run();
    assert_eq!(a, b);
    assert_eq!(snap_a, snap_b, "replicas hold byte-identical state");
    assert_eq!(a[6], CommandOutcome::SessionExpired);
    // Client 1's session is gone; client 2's lives on.
    assert_eq!(n, 1);
}

#[test]
fn snapshots_carry_sessions_and_refuse_another_schema() {
    let mut s = Sessions::<Counter>::new();
    let c = open_session(&mut s, 1, 100);
    s.apply_log_command(LogIndex(2), Term(1), cmd(c, 1, 1, 100, 4));
    let snap = s.snapshot().unwrap();
    let mut r = Sessions::<Counter>::restore(&snap).unwrap();
    assert_eq!(r.state().get(), 4);
    // The restored table still deduplicates the retry.
    assert_eq!(
        applied(r.apply_log_command(LogIndex(3), Term(2), cmd(c, 1, 1, 200, 4))),
        4
    );
    assert_eq!(r.state().get(), 4);
    let err = Sessions::<Other>::restore(&snap).err().expect("refused");
    assert!(err.to_string().contains("another version"), "{err}");
    assert_ne!(
        Schema::of::<Counter>().unwrap().stored(),
        Schema::of::<Other>().unwrap().stored()
    );
}

#[test]
fn the_apply_context_carries_leader_time() {
    let mut s = Sessions::<Counter>::new();
    let c = open_session(&mut s, 1, 100);
    s.apply_log_command(LogIndex(2), Term(1), cmd(c, 1, 1, 5_000, 1));
    // Leader time never runs backwards in the state machine.
    s.apply_log_command(LogIndex(3), Term(2), cmd(c, 2, 2, 4_000, 1));
    let snap = s.snapshot().unwrap();
    let restored = Sessions::<Counter>::restore(&snap).unwrap();
    assert_eq!(restored.state().stamped, 5_000);
}
