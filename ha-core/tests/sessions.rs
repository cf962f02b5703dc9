//! Exactly-once commands through the replicated session table, and the
//! determinism of everything in it.

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
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
        op: LogOp::Command(SessionCommand {
            client,
            seq,
            ack_below,
            body: Bytes::from(body),
        }),
    }
}

fn register(time_ms: u64) -> LogCommand {
    LogCommand {
        time_ms,
        op: LogOp::Register,
    }
}

/// Applies a registration at `index`; returns the new session's id.
fn open_session(s: &mut Sessions<Counter>, index: u64, time_ms: u64) -> u64 {
    match s.apply_log_command(LogIndex(index), Term(1), register(time_ms)) {
        CommandOutcome::Registered { session } => session,
        other => panic!("registration answered {other:?}"),
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
fn a_registration_opens_a_session_named_by_its_index() {
    let mut s = Sessions::<Counter>::new(60_000);
    assert_eq!(open_session(&mut s, 7, 100), 7);
    assert_eq!(open_session(&mut s, 8, 100), 8, "every registration is new");
    assert_eq!(s.session_count(), 2);
}

#[test]
fn a_retried_command_is_applied_once_and_answers_the_same() {
    let mut s = Sessions::<Counter>::new(60_000);
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
    let mut s = Sessions::<Counter>::new(60_000);
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
    let mut s = Sessions::<Counter>::new(10_000);
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
    assert_eq!(a[6], CommandOutcome::SessionExpired);
    // Client 1's session is gone; client 2's lives on.
    assert_eq!(n, 1);
}

#[test]
fn snapshots_carry_sessions_and_refuse_another_schema() {
    let mut s = Sessions::<Counter>::new(60_000);
    let c = open_session(&mut s, 1, 100);
    s.apply_log_command(LogIndex(2), Term(1), cmd(c, 1, 1, 100, 4));
    let snap = s.snapshot().unwrap();
    let mut r = Sessions::<Counter>::restore(&snap, 60_000).unwrap();
    assert_eq!(r.state().get(), 4);
    // The restored table still deduplicates the retry.
    assert_eq!(
        applied(r.apply_log_command(LogIndex(3), Term(2), cmd(c, 1, 1, 200, 4))),
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
    let c = open_session(&mut s, 1, 100);
    s.apply_log_command(LogIndex(2), Term(1), cmd(c, 1, 1, 5_000, 1));
    // Leader time never runs backwards in the state machine.
    s.apply_log_command(LogIndex(3), Term(2), cmd(c, 2, 2, 4_000, 1));
    let snap = s.snapshot().unwrap();
    let restored = Sessions::<Counter>::restore(&snap, 60_000).unwrap();
    assert_eq!(restored.state().stamped, 5_000);
}

/// A client transport that answers from a real session table, in process:
/// every request is "replicated" by applying it at the next index.
struct FakeCluster {
    state: std::sync::Mutex<(Sessions<Counter>, u64)>,
    /// Leader time stamped on the next entry.
    time_ms: std::sync::atomic::AtomicU64,
    /// Command requests still to fail as never sent.
    drop_commands: std::sync::atomic::AtomicU32,
}

impl FakeCluster {
    fn new(timeout_ms: u64) -> std::sync::Arc<FakeCluster> {
        std::sync::Arc::new(FakeCluster {
            state: std::sync::Mutex::new((Sessions::new(timeout_ms), 0)),
            time_ms: std::sync::atomic::AtomicU64::new(1_000),
            drop_commands: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

impl ha_core::client::ClientTransport for FakeCluster {
    fn request(
        &self,
        _addr: std::net::SocketAddr,
        req: ha_core::protocol::ClientRequest,
    ) -> ha_core::client::RequestFuture<'_> {
        use ha_core::protocol::{ClientRequest, ClientResponse};
        use std::sync::atomic::Ordering;
        let op = match req {
            ClientRequest::Register { .. } => LogOp::Register,
            ClientRequest::Command { command, .. } => {
                let drop = self
                    .drop_commands
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if drop {
                    return Box::pin(async {
                        Err(ha_core::client::RequestError::NotSent("refused".into()))
                    });
                }
                LogOp::Command(command)
            }
            other => panic!("unexpected request {other:?}"),
        };
        let mut st = self.state.lock().unwrap();
        st.1 += 1;
        let index = st.1;
        let time_ms = self.time_ms.load(Ordering::SeqCst);
        let out =
            st.0.apply_log_command(LogIndex(index), Term(1), LogCommand { time_ms, op });
        let answer = Bytes::from(postcard::to_stdvec(&out).unwrap());
        Box::pin(async move { Ok(ClientResponse::Applied { index, answer }) })
    }
}

fn fake_client(fake: &std::sync::Arc<FakeCluster>) -> ha_core::Client<Counter> {
    ha_core::Client::new(
        fake.clone(),
        vec!["127.0.0.1:1".parse().unwrap()],
        ha_core::ClientOptions {
            timeout: std::time::Duration::from_millis(300),
            attempt_timeout: std::time::Duration::from_millis(100),
            ..ha_core::ClientOptions::default()
        },
    )
}

/// A first command that certainly failed must not poison the session: the
/// next command is applied (before registration entries it came back
/// "session expired", reported unknown).
#[tokio::test]
async fn a_first_command_that_was_not_applied_leaves_the_session_usable() {
    let fake = FakeCluster::new(60_000);
    let c = fake_client(&fake);
    fake.drop_commands
        .store(1_000, std::sync::atomic::Ordering::SeqCst);
    let Err(err) = c.command(&CounterCommand::Add { delta: 1 }).await else {
        panic!("a command nobody took was reported applied");
    };
    assert!(err.is_not_applied(), "{err}");
    fake.drop_commands
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let out = c.command(&CounterCommand::Add { delta: 2 }).await.unwrap();
    assert!(matches!(out, CounterCommandOutput::Add(2)));
    assert_eq!(fake.state.lock().unwrap().0.state().get(), 2);
}

/// A session that expired before a command's first attempt: the command
/// certainly did not run (not unknown), and the next command opens a new
/// session and runs.
#[tokio::test]
async fn an_expired_session_answers_not_applied_then_a_new_one_opens() {
    let fake = FakeCluster::new(10_000);
    let c = fake_client(&fake);
    c.command(&CounterCommand::Add { delta: 1 }).await.unwrap();
    // A leader an hour ahead expires the session on the next entry.
    fake.time_ms
        .store(3_600_000, std::sync::atomic::Ordering::SeqCst);
    let Err(err) = c.command(&CounterCommand::Add { delta: 10 }).await else {
        panic!("a command of an expired session was reported applied");
    };
    assert!(err.is_not_applied(), "{err}");
    assert_eq!(fake.state.lock().unwrap().0.state().get(), 1);
    let out = c.command(&CounterCommand::Add { delta: 5 }).await.unwrap();
    assert!(matches!(out, CounterCommandOutput::Add(6)));
}
