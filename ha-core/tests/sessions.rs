//! Exactly-once commands through the replicated session table, and the
//! determinism of everything in it.

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, SessionCommand};
use ha_core::sm::{ApplyContext, Sessions, StateMachine};
use ha_core::types::{LogIndex, Term};
use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// A counter that also remembers when it last changed.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Counter {
    value: i64,
    stamped: u64,
}

#[replicated]
impl Counter {
    /// Adds and returns the new value.
    pub fn add(&mut self, delta: i64, ctx: &ApplyContext) -> i64 {
        self.value += delta;
        self.stamped = ctx.time_ms;
        self.value
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.value
    }
}

/// Another type, to show snapshots refuse a foreign schema.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Other {
    text: String,
}

#[replicated]
impl Other {
    /// Sets the text.
    pub fn set(&mut self, text: String) {
        self.text = text;
    }
}

fn cmd(client: u64, seq: u64, ack_below: u64, time_ms: u64, delta: i64) -> LogCommand {
    let body = postcard::to_stdvec(&CounterCommand::Add { delta }).unwrap();
    LogCommand {
        time_ms,
        command: SessionCommand {
            client,
            seq,
            ack_below,
            body: Bytes::from(body),
        },
    }
}

fn applied(o: CommandOutcome) -> i64 {
    match o {
        CommandOutcome::Applied(b) => match postcard::from_bytes(&b).unwrap() {
            CounterCommandOutput::Add(v) => v,
        },
        other => panic!("not applied: {other:?}"),
    }
}

#[test]
fn a_retried_command_is_applied_once_and_answers_the_same() {
    let mut s = Sessions::<Counter>::new(60_000);
    let i = |n| LogIndex(n);
    assert_eq!(
        applied(s.apply_log_command(i(1), Term(1), cmd(7, 1, 1, 100, 5))),
        5
    );
    // The same (client, seq) again, e.g. through a new leader: same answer,
    // no second application.
    assert_eq!(
        applied(s.apply_log_command(i(2), Term(2), cmd(7, 1, 1, 200, 5))),
        5
    );
    assert_eq!(s.state().get(), 5);
    // The next command, acknowledging the first.
    assert_eq!(
        applied(s.apply_log_command(i(3), Term(2), cmd(7, 2, 2, 300, 1))),
        6
    );
    // The first one again, now closed: not applied.
    assert_eq!(
        s.apply_log_command(i(4), Term(2), cmd(7, 1, 1, 400, 5)),
        CommandOutcome::Abandoned
    );
    assert_eq!(s.state().get(), 6);
}

#[test]
fn an_unknown_session_that_is_not_new_is_reported_expired() {
    let mut s = Sessions::<Counter>::new(60_000);
    let out = s.apply_log_command(LogIndex(1), Term(1), cmd(9, 5, 5, 100, 1));
    assert_eq!(out, CommandOutcome::SessionExpired);
    assert_eq!(s.state().get(), 0);
}

#[test]
fn sessions_expire_by_leader_time_identically_on_every_replica() {
    let log: Vec<LogCommand> = vec![
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
        let mut s = Sessions::<Counter>::new(10_000);
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
    assert_eq!(a[4], CommandOutcome::SessionExpired);
    // Client 1's session is gone; client 2's lives on. (A session's very
    // first command can always open it, so the session timeout, one hour by
    // default, must exceed any client's retry deadline, five seconds by
    // default: a retry of a first command never outlives its session.)
    assert_eq!(n, 1);
}

#[test]
fn snapshots_carry_sessions_and_refuse_another_schema() {
    let mut s = Sessions::<Counter>::new(60_000);
    s.apply_log_command(LogIndex(1), Term(1), cmd(3, 1, 1, 100, 4));
    let snap = s.snapshot().unwrap();
    let mut r = Sessions::<Counter>::restore(&snap, 60_000).unwrap();
    assert_eq!(r.state().get(), 4);
    // The restored table still deduplicates the retry.
    assert_eq!(
        applied(r.apply_log_command(LogIndex(2), Term(2), cmd(3, 1, 1, 200, 4))),
        4
    );
    assert_eq!(r.state().get(), 4);
    let err = Sessions::<Other>::restore(&snap, 60_000)
        .err()
        .expect("refused");
    assert!(err.contains("another version"), "{err}");
    assert_ne!(Counter::SCHEMA_FINGERPRINT, Other::SCHEMA_FINGERPRINT);
}

#[test]
fn the_apply_context_carries_leader_time() {
    let mut s = Sessions::<Counter>::new(60_000);
    s.apply_log_command(LogIndex(1), Term(1), cmd(1, 1, 1, 5_000, 1));
    // Leader time never runs backwards in the state machine.
    s.apply_log_command(LogIndex(2), Term(2), cmd(1, 2, 2, 4_000, 1));
    let snap = s.snapshot().unwrap();
    let restored = Sessions::<Counter>::restore(&snap, 60_000).unwrap();
    assert_eq!(restored.state().stamped, 5_000);
}
