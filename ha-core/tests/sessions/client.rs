//! The typed client against a real session table in process: secrets,
//! reused sequence numbers, the bounded session table and the bounded
//! window of open results.

use super::*;

/// A client transport that answers from a real session table, in process:
/// every request is "replicated" by applying it at the next index.
pub(super) struct FakeCluster {
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
        _addr: ha_core::client::NodeAddr,
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

pub(super) fn fake_client(fake: &std::sync::Arc<FakeCluster>) -> ha_core::Client<Counter> {
    fake_client_with(fake, 300, 100)
}

/// A client of `fake` whose calls take at most `timeout_ms`, each attempt
/// at most `attempt_ms`.
pub(super) fn fake_client_with(
    fake: &std::sync::Arc<FakeCluster>,
    timeout_ms: u64,
    attempt_ms: u64,
) -> ha_core::Client<Counter> {
    ha_core::Client::new(
        fake.clone(),
        vec!["127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap()],
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
