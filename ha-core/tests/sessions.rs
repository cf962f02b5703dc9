//! Exactly-once commands through the replicated session table, and the
//! determinism of everything in it.

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
use ha_core::schema::Schema;
use std::collections::BTreeMap;

use ha_core::sm::{ApplyContext, DEFAULT_MAX_SESSIONS, PanicPolicy, Sessions};
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
    in_session(
        client,
        seq,
        ack_below,
        time_ms,
        &CounterCommand::Add { delta },
    )
}

/// Command `seq` of session `client` (the tests' secret), encoded.
fn in_session<C: Serialize>(
    client: u64,
    seq: u64,
    ack_below: u64,
    time_ms: u64,
    command: &C,
) -> LogCommand {
    LogCommand {
        time_ms,
        op: LogOp::Command(SessionCommand {
            client,
            secret: SECRET,
            seq,
            ack_below,
            body: Bytes::from(postcard::to_stdvec(command).unwrap()),
        }),
    }
}

/// The secret the tests' sessions are registered with.
const SECRET: u64 = 0x5EC2E7;

fn register(time_ms: u64) -> LogCommand {
    LogCommand {
        time_ms,
        op: LogOp::Register { secret: SECRET },
    }
}

/// Applies a registration at `index`; returns the new session's id.
fn open_session<T: Replicated>(s: &mut Sessions<T>, index: u64, time_ms: u64) -> u64 {
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

/// A client transport that answers from a real session table, in process:
/// every request is "replicated" by applying it at the next index.
struct FakeCluster {
    state: std::sync::Mutex<(Sessions<Counter>, u64)>,
    /// Leader time stamped on the next entry.
    time_ms: std::sync::atomic::AtomicU64,
    /// Command requests still to fail as never sent.
    drop_commands: std::sync::atomic::AtomicU32,
    /// The `ack_below` of the last command request.
    last_ack_below: std::sync::atomic::AtomicU64,
    /// The next command is applied, but its answer is lost after 300 ms.
    lose_next_answer: std::sync::atomic::AtomicBool,
    /// The next command is applied, but its answer never comes.
    stall_next_answer: std::sync::atomic::AtomicBool,
}

impl FakeCluster {
    fn new(timeout_ms: u64) -> std::sync::Arc<FakeCluster> {
        std::sync::Arc::new(FakeCluster {
            state: std::sync::Mutex::new((
                Sessions::new().with_unchecked_settings(timeout_ms, DEFAULT_MAX_SESSIONS),
                0,
            )),
            time_ms: std::sync::atomic::AtomicU64::new(1_000),
            drop_commands: std::sync::atomic::AtomicU32::new(0),
            last_ack_below: std::sync::atomic::AtomicU64::new(0),
            lose_next_answer: std::sync::atomic::AtomicBool::new(false),
            stall_next_answer: std::sync::atomic::AtomicBool::new(false),
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
            ClientRequest::Register { secret, .. } => LogOp::Register { secret },
            ClientRequest::Command { command, .. } => {
                self.last_ack_below
                    .store(command.ack_below, Ordering::SeqCst);
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
        if matches!(out, CommandOutcome::Applied(_))
            && self.stall_next_answer.swap(false, Ordering::SeqCst)
        {
            return Box::pin(std::future::pending());
        }
        if matches!(out, CommandOutcome::Applied(_))
            && self.lose_next_answer.swap(false, Ordering::SeqCst)
        {
            return Box::pin(async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Err(ha_core::client::RequestError::Lost("answer lost".into()))
            });
        }
        Box::pin(async move { Ok(ClientResponse::Applied { index, answer }) })
    }
}

fn fake_client(fake: &std::sync::Arc<FakeCluster>) -> ha_core::Client<Counter> {
    fake_client_with(fake, 300, 100)
}

/// A client of `fake` whose calls take at most `timeout_ms`, each attempt
/// at most `attempt_ms`.
fn fake_client_with(
    fake: &std::sync::Arc<FakeCluster>,
    timeout_ms: u64,
    attempt_ms: u64,
) -> ha_core::Client<Counter> {
    ha_core::Client::new(
        fake.clone(),
        vec!["127.0.0.1:1".parse().unwrap()],
        ha_core::ClientOptions {
            timeout: std::time::Duration::from_millis(timeout_ms),
            attempt_timeout: std::time::Duration::from_millis(attempt_ms),
            ..ha_core::ClientOptions::default()
        },
    )
}

/// The replicas keep at most `MAX_OPEN_RESULTS` results per session. A
/// command whose answer was lost waits for its retry while the same client
/// runs many more: the client keeps its open numbers within that window
/// (later commands wait for room), so the retry is answered from what the
/// replicas kept, not `Abandoned` and reported unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_answered_however_many_commands_the_client_ran_meanwhile() {
    use ha_core::sm::MAX_OPEN_RESULTS;
    let fake = FakeCluster::new(60_000);
    let c = fake_client_with(&fake, 20000, 5000);
    c.command(&CounterCommand::Add { delta: 0 }).await.unwrap(); // registers
    fake.lose_next_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.command(&CounterCommand::Add { delta: 1 }).await })
    };
    // Let the slow command's first attempt be applied before the rest.
    while fake
        .lose_next_answer
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        tokio::task::yield_now().await;
    }
    let many: Vec<_> = (0..MAX_OPEN_RESULTS + 100)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.command(&CounterCommand::Add { delta: 1 }).await })
        })
        .collect();
    for m in many {
        m.await.unwrap().expect("every other command is applied");
    }
    slow.await
        .unwrap()
        .expect("the retry is answered from the kept result");
    assert_eq!(
        fake.state.lock().unwrap().0.state().get(),
        MAX_OPEN_RESULTS as i64 + 101,
        "each applied exactly once"
    );
}

/// A call that is never polled again after its deadline (its future kept
/// alive, its answer never read) must not hold the client's window for
/// good: once its deadline passed, later commands go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_no_longer_holds_the_window() {
    use ha_core::sm::MAX_OPEN_RESULTS;
    let fake = FakeCluster::new(60_000);
    let c = fake_client_with(&fake, 500, 60000);
    c.command(&CounterCommand::Add { delta: 0 }).await.unwrap(); // registers
    fake.stall_next_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let stuck = c.command(&CounterCommand::Add { delta: 1 });
    let mut stuck = std::pin::pin!(stuck);
    // Polled until its request was sent, then never again.
    let polled = tokio::time::timeout(std::time::Duration::from_millis(50), &mut stuck).await;
    assert!(polled.is_err(), "the stalled call answered");
    for _ in 0..MAX_OPEN_RESULTS + 10 {
        c.command(&CounterCommand::Add { delta: 1 })
            .await
            .expect("a command after the stuck call's deadline goes on");
    }
    assert_eq!(
        fake.state.lock().unwrap().0.state().get(),
        MAX_OPEN_RESULTS as i64 + 11
    );
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

/// Session ids are log indexes, easy to guess: a command that names
/// another client's session without its secret is not applied, and the
/// owner's command at the same number still runs.
#[test]
fn a_guessed_session_id_without_its_secret_applies_nothing() {
    let mut s = Sessions::<Counter>::new();
    let victim = open_session(&mut s, 1, 100);
    let mut forged = cmd(victim, 1, u64::MAX, 100, 1000);
    if let LogOp::Command(c) = &mut forged.op {
        c.secret = SECRET ^ 1;
    }
    assert_eq!(
        s.apply_log_command(LogIndex(2), Term(1), forged),
        CommandOutcome::SessionExpired
    );
    assert_eq!(
        applied(s.apply_log_command(LogIndex(3), Term(1), cmd(victim, 1, 1, 100, 5))),
        5,
        "the owner's command runs, with its own result"
    );
}

/// A retry must be the same command: another one at a number that has a
/// result is refused, and the kept result is not handed out for it.
#[test]
fn a_sequence_number_reused_for_another_command_is_refused() {
    let mut s = Sessions::<Counter>::new();
    let c = open_session(&mut s, 1, 100);
    assert_eq!(
        applied(s.apply_log_command(LogIndex(2), Term(1), cmd(c, 1, 1, 100, 5))),
        5
    );
    assert_eq!(
        s.apply_log_command(LogIndex(3), Term(1), cmd(c, 1, 1, 100, 7)),
        CommandOutcome::SeqReused
    );
    assert_eq!(s.state().get(), 5);
}

/// The table is bounded: registering past the cap evicts the least recently
/// active session (deterministically), whose commands are then refused.
#[test]
fn the_session_table_is_bounded_and_evicts_the_idlest() {
    let mut s = Sessions::<Counter>::new().with_unchecked_settings(60_000, 2);
    let a = open_session(&mut s, 1, 100);
    let b = open_session(&mut s, 2, 200);
    applied(s.apply_log_command(LogIndex(3), Term(1), cmd(a, 1, 1, 300, 1)));
    let c = open_session(&mut s, 4, 400);
    assert_eq!(s.session_count(), 2);
    assert_eq!(
        s.apply_log_command(LogIndex(5), Term(1), cmd(b, 1, 1, 500, 1)),
        CommandOutcome::SessionExpired,
        "b was the idlest"
    );
    applied(s.apply_log_command(LogIndex(6), Term(1), cmd(a, 2, 2, 600, 1)));
    applied(s.apply_log_command(LogIndex(7), Term(1), cmd(c, 1, 1, 700, 1)));
}

/// A client that never acknowledges cannot make the replicas keep results
/// without bound: past `MAX_OPEN_RESULTS` a new number closes the oldest,
/// whose retry is then refused (never applied again); newer results stay.
#[test]
fn a_session_keeps_a_bounded_number_of_open_results() {
    use ha_core::sm::MAX_OPEN_RESULTS;
    let mut s = Sessions::<Counter>::new();
    let c = open_session(&mut s, 1, 100);
    let n = MAX_OPEN_RESULTS as u64;
    for seq in 1..=n + 1 {
        applied(s.apply_log_command(LogIndex(1 + seq), Term(1), cmd(c, seq, 1, 200, 1)));
    }
    assert_eq!(s.state().get(), n as i64 + 1);
    assert_eq!(
        s.apply_log_command(LogIndex(n + 3), Term(1), cmd(c, 1, 1, 300, 1)),
        CommandOutcome::Abandoned,
        "the oldest result was closed"
    );
    assert_eq!(
        applied(s.apply_log_command(LogIndex(n + 4), Term(1), cmd(c, 2, 1, 300, 1))),
        2,
        "the next oldest is kept and answered, not applied again"
    );
    assert_eq!(s.state().get(), n as i64 + 1, "no retry applied twice");
}

/// A command whose call was cancelled (its future dropped) must not leave
/// its number open: that would pin `ack_below` and make the replicas keep
/// every later result of the session.
#[tokio::test]
async fn a_cancelled_command_does_not_pin_the_session() {
    let fake = FakeCluster::new(60_000);
    let c = fake_client(&fake);
    c.command(&CounterCommand::Add { delta: 1 }).await.unwrap();
    fake.drop_commands
        .store(1_000, std::sync::atomic::Ordering::SeqCst);
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(30),
        c.command(&CounterCommand::Add { delta: 1 }),
    )
    .await;
    assert!(cancelled.is_err(), "the call was cancelled mid-retry");
    fake.drop_commands
        .store(0, std::sync::atomic::Ordering::SeqCst);
    c.command(&CounterCommand::Add { delta: 1 }).await.unwrap();
    assert_eq!(
        fake.last_ack_below
            .load(std::sync::atomic::Ordering::SeqCst),
        3,
        "numbers 1 and 2 are closed: the cancelled one does not hold the window"
    );
}

/// A type whose commands fail in both ways: a panic, and an output postcard
/// cannot encode (`#[serde(flatten)]` needs a map of unknown length).
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Brittle {
    log: Vec<i64>,
}

/// An output that compiles but cannot be encoded.
#[derive(Serialize, Deserialize)]
pub struct Flattened {
    n: i64,
    #[serde(flatten)]
    extra: BTreeMap<String, i64>,
}

#[replicated]
impl Brittle {
    /// Appends; panics on a negative number, after appending it.
    pub fn push(&mut self, n: i64) -> usize {
        self.log.push(n);
        assert!(n >= 0, "negative {n}");
        self.log.len()
    }
    /// Appends; its result cannot be encoded.
    pub fn flat(&mut self, n: i64) -> Flattened {
        self.log.push(n);
        Flattened {
            n,
            extra: BTreeMap::new(),
        }
    }
    /// Panics when out of range.
    pub fn at(&self, i: u64) -> i64 {
        self.log[i as usize]
    }
}

fn brittle_cmd(client: u64, seq: u64, c: BrittleCommand) -> LogCommand {
    in_session(client, seq, 1, 10, &c)
}

/// Two replicas apply the same log, one failing command among them: both
/// answer the failure alike, keep it for a retry, and end in the same state.
#[test]
fn a_failing_command_is_an_outcome_the_same_on_every_replica() {
    let run = |policy: PanicPolicy| {
        let mut s = Sessions::<Brittle>::new();
        // The policy is replicated state: set by a log entry.
        let set = LogCommand {
            time_ms: 10,
            op: LogOp::SetPanicPolicy { policy, nonce: 1 },
        };
        assert_eq!(
            s.apply_log_command(LogIndex(1), Term(1), set),
            CommandOutcome::PanicPolicy(policy)
        );
        let session = open_session(&mut s, 1, 10);
        let outcomes: Vec<CommandOutcome> = [
            BrittleCommand::Push { n: 1 },
            BrittleCommand::Push { n: -5 },
            BrittleCommand::Flat { n: 7 },
            BrittleCommand::Push { n: 2 },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            s.apply_log_command(
                LogIndex(2 + i as u64),
                Term(1),
                brittle_cmd(session, 1 + i as u64, c),
            )
        })
        .collect();
        // A retry of the panicked command gets the same answer, and does
        // not run it again.
        let retry = s.apply_log_command(
            LogIndex(9),
            Term(1),
            brittle_cmd(session, 2, BrittleCommand::Push { n: -5 }),
        );
        (outcomes, retry, s)
    };
    let (a, retry, s) = run(PanicPolicy::Continue);
    let (b, _, _) = run(PanicPolicy::Continue);
    assert_eq!(a, b);
    assert!(matches!(&a[0], CommandOutcome::Applied(_)));
    assert!(
        matches!(&a[1], CommandOutcome::Failed(w) if w.contains("negative -5")),
        "{a:?}"
    );
    assert!(
        matches!(&a[2], CommandOutcome::Failed(w) if w.contains("could not be encoded")),
        "{a:?}"
    );
    assert!(matches!(&a[3], CommandOutcome::Applied(_)));
    assert_eq!(retry, a[1]);
    assert_eq!(
        s.state().log,
        vec![1, -5, 7, 2],
        "what ran before a failure stays"
    );
    // A panicking query is an error, not the end of the node.
    let q = postcard::to_stdvec(&BrittleQuery::At { i: 99 }).unwrap();
    let err = s.query_bytes(&q).unwrap_err();
    assert!(err.to_string().contains("the query panicked"), "{err}");
    // The output type's problem is also named before any node starts.
    let traced = Schema::of::<Brittle>().unwrap_err().to_string();
    assert!(traced.contains("flatten"), "{traced}");

    // Halt: the failure stops everything after it, the same everywhere.
    let (h, retry, s) = run(PanicPolicy::Halt);
    assert!(matches!(&h[1], CommandOutcome::Failed(_)));
    for o in &h[2..] {
        assert!(
            matches!(o, CommandOutcome::Halted { index: 3, .. }),
            "{h:?}"
        );
    }
    assert_eq!(retry, h[1]);
    assert_eq!(s.state().log, vec![1, -5]);
    assert_eq!(s.halted().map(|(i, _)| i), Some(LogIndex(3)));
    assert!(
        s.query_bytes(&q)
            .unwrap_err()
            .to_string()
            .contains("halted")
    );

    // Resumed at its index: a late duplicate of a refused command stays
    // refused (its client was told "not applied"); new commands run.
    let mut s = s;
    let resume = |at: u64, nonce: u64| LogCommand {
        time_ms: 10,
        op: LogOp::Resume { index: at, nonce },
    };
    assert!(matches!(
        s.apply_log_command(LogIndex(10), Term(1), resume(4, 10)),
        CommandOutcome::Resume(Err(_))
    ));
    assert_eq!(
        s.apply_log_command(LogIndex(11), Term(1), resume(3, 11)),
        CommandOutcome::Resume(Ok(3))
    );
    assert!(s.halted().is_none());
    let dup = s.apply_log_command(
        LogIndex(12),
        Term(1),
        brittle_cmd(1, 4, BrittleCommand::Push { n: 2 }),
    );
    assert!(
        matches!(dup, CommandOutcome::Halted { index: 3, .. }),
        "{dup:?}"
    );
    let fresh = s.apply_log_command(
        LogIndex(13),
        Term(1),
        brittle_cmd(1, 5, BrittleCommand::Push { n: 3 }),
    );
    assert!(matches!(fresh, CommandOutcome::Applied(_)), "{fresh:?}");
    assert_eq!(s.state().log, vec![1, -5, 3]);

    // A second halt; then a late retry of the first resume (its answer
    // was lost) arrives: answered as the first attempt, and the service
    // stays halted at the new index.
    let fails = s.apply_log_command(
        LogIndex(14),
        Term(1),
        brittle_cmd(1, 6, BrittleCommand::Push { n: -1 }),
    );
    assert!(matches!(fails, CommandOutcome::Failed(_)));
    assert_eq!(
        s.apply_log_command(LogIndex(15), Term(1), resume(3, 11)),
        CommandOutcome::Resume(Ok(3))
    );
    assert_eq!(s.halted().map(|(i, _)| i), Some(LogIndex(14)));
}

/// Operator A sets Halt (its answer lost), B sets Continue, A's retry
/// arrives: it is answered, not applied again over B's change.
#[test]
fn a_retried_policy_change_does_not_undo_a_later_one() {
    let mut s = Sessions::<Counter>::new();
    let set = |policy: PanicPolicy, nonce: u64| LogCommand {
        time_ms: 10,
        op: LogOp::SetPanicPolicy { policy, nonce },
    };
    s.apply_log_command(LogIndex(1), Term(1), set(PanicPolicy::Halt, 100));
    s.apply_log_command(LogIndex(2), Term(1), set(PanicPolicy::Continue, 200));
    assert_eq!(
        s.apply_log_command(LogIndex(3), Term(1), set(PanicPolicy::Halt, 100)),
        CommandOutcome::PanicPolicy(PanicPolicy::Halt),
        "the retry gets A's first answer"
    );
    assert_eq!(s.panic_policy(), PanicPolicy::Continue, "B's change stands");
    // A nonce seen with another operation is refused, never answered as it.
    let reused = LogCommand {
        time_ms: 10,
        op: LogOp::Resume {
            index: 7,
            nonce: 100,
        },
    };
    assert!(matches!(
        s.apply_log_command(LogIndex(4), Term(1), reused),
        CommandOutcome::Undecodable(_)
    ));
    // The policy and the kept answers survive a snapshot.
    let r = Sessions::<Counter>::restore(&s.snapshot().unwrap()).unwrap();
    assert_eq!(r.panic_policy(), PanicPolicy::Continue);
}

#[test]
fn resume_is_refused_when_the_service_is_not_halted() {
    let mut s = Sessions::<Counter>::new();
    let c = open_session(&mut s, 1, 10);
    let resume = |s: &mut Sessions<Counter>, at: u64, index: u64| {
        s.apply_log_command(
            LogIndex(index),
            Term(1),
            LogCommand {
                time_ms: 10,
                op: LogOp::Resume {
                    index: at,
                    nonce: index,
                },
            },
        )
    };
    assert!(
        matches!(resume(&mut s, 2, 2), CommandOutcome::Resume(Err(w)) if w.contains("not halted"))
    );
    assert_eq!(
        applied(s.apply_log_command(LogIndex(3), Term(1), cmd(c, 1, 1, 10, 5))),
        5
    );
    assert!(s.halted().is_none());
}

/// Reads a global: the same command gives another answer on every run.
static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A type whose one command is not deterministic.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Leaky {
    last: u64,
}

#[replicated]
impl Leaky {
    /// Not deterministic, and no syntax says so.
    pub fn draw(&mut self) -> u64 {
        self.last = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last
    }
    /// The same, claiming only that an iteration order cannot matter: the
    /// replay still checks it.
    #[replicated(allow(hash_iteration))]
    pub fn draw_claimed(&mut self) -> u64 {
        self.last = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last
    }
    /// The same, with non-determinism allowed: never run twice by the check.
    #[replicated(allow(io))]
    pub fn draw_allowed(&mut self) -> u64 {
        self.last = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last
    }
}

/// Applies `Leaky::draw` as command `seq` of `session`, at index `1 + seq`.
fn draw(s: &mut Sessions<Leaky>, session: u64, seq: u64) -> CommandOutcome {
    let c = in_session(session, seq, seq, 10, &LeakyCommand::Draw {});
    s.apply_log_command(LogIndex(1 + seq), Term(1), c)
}

/// The replay check runs a sampled command again on a copy of the state and
/// reports a command that is not deterministic; a deterministic one passes.
#[test]
fn the_replay_check_reports_a_command_that_is_not_deterministic() {
    let mut s = Sessions::<Leaky>::new().with_determinism_check(1);
    let session = open_session(&mut s, 1, 10);
    for seq in 1..=3 {
        assert!(matches!(
            draw(&mut s, session, seq),
            CommandOutcome::Applied(_)
        ));
    }
    assert_eq!(s.divergences(), 3);

    let mut d = Sessions::<Counter>::new().with_determinism_check(1);
    let c = open_session(&mut d, 1, 10);
    for seq in 1..=3 {
        applied(d.apply_log_command(LogIndex(1 + seq), Term(1), cmd(c, seq, seq, 10, 2)));
    }
    assert_eq!(d.divergences(), 0);
    // Sampling by index: every 2nd index only.
    let mut e = Sessions::<Leaky>::new().with_determinism_check(2);
    let session = open_session(&mut e, 1, 10);
    for seq in 1..=4 {
        draw(&mut e, session, seq);
    }
    assert_eq!(e.divergences(), 2);

    // A method that allowed non-determinism is not replayed (it may do IO).
    let mut f = Sessions::<Leaky>::new().with_determinism_check(1);
    let session = open_session(&mut f, 1, 10);
    let before = DRAWS.load(std::sync::atomic::Ordering::Relaxed);
    let c = in_session(session, 1, 1, 10, &LeakyCommand::DrawAllowed {});
    f.apply_log_command(LogIndex(2), Term(1), c);
    assert_eq!(f.divergences(), 0);
    let c = in_session(session, 2, 2, 10, &LeakyCommand::DrawClaimed {});
    f.apply_log_command(LogIndex(3), Term(1), c);
    assert_eq!(f.divergences(), 1, "allow(hash_iteration) is still checked");
    assert_eq!(
        DRAWS.load(std::sync::atomic::Ordering::Relaxed),
        before + 3,
        "draw_allowed run once, draw_claimed twice"
    );
}

/// A state of hash collections: a copy restored from a snapshot iterates
/// them in another order, which the replay check must not take for a
/// divergence (it compares canonical encodings).
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Indexed {
    by_name: std::collections::HashMap<String, u64>,
    seen: std::collections::HashSet<u64>,
}

#[replicated]
impl Indexed {
    /// Inserts, and answers with a copy of the whole map.
    pub fn put(&mut self, name: String, n: u64) -> std::collections::HashMap<String, u64> {
        self.by_name.insert(name, n);
        self.seen.insert(n);
        self.by_name.clone()
    }
}

#[test]
fn the_replay_check_sees_no_divergence_in_hash_collections() {
    let mut s = Sessions::<Indexed>::new().with_determinism_check(1);
    let session = open_session(&mut s, 1, 10);
    for seq in 1..=40u64 {
        let put = IndexedCommand::Put {
            name: format!("key-{seq}"),
            n: seq,
        };
        let c = in_session(session, seq, seq, 10, &put);
        assert!(matches!(
            s.apply_log_command(LogIndex(1 + seq), Term(1), c),
            CommandOutcome::Applied(_)
        ));
    }
    assert_eq!(s.divergences(), 0);
    // The HashSet shows as differences in order only (said once, counted).
    assert!(s.order_only_differences() > 0);
}
