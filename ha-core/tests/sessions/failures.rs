//! A failing command is an outcome, the same on every replica: the panic
//! policy (continue or halt), resume, and retried operator commands.

use super::*;

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

pub(super) fn brittle_cmd(client: u64, seq: u64, c: BrittleCommand) -> LogCommand {
    in_session(client, seq, 1, 10, &c)
}

/// Applies, under `policy`, four commands of one session (the second
/// panics, the third's output cannot be encoded), then a retry of the
/// panicked one. Returns the outcomes, the retry's and the replica.
pub(super) fn run_brittle(
    policy: PanicPolicy,
) -> (Vec<CommandOutcome>, CommandOutcome, Sessions<Brittle>) {
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
}

/// An operator's resume at `at`, with its retries' `nonce`.
pub(super) fn resume(at: u64, nonce: u64) -> LogCommand {
    LogCommand {
        time_ms: 10,
        op: LogOp::Resume { index: at, nonce },
    }
}

/// Two replicas apply the same log, one failing command among them: both
/// answer the failure alike, keep it for a retry, and end in the same state.
#[test]
fn a_failing_command_is_an_outcome_the_same_on_every_replica() {
    let (a, retry, s) = run_brittle(PanicPolicy::Continue);
    let (b, _, _) = run_brittle(PanicPolicy::Continue);
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

    let mut s = halt_stops_everything_after_the_failure(&q);
    resumes_and_halts_again(&mut s);
}

/// Halt: the failure stops everything after it (queries too), the same
/// everywhere. Returns the halted replica.
pub(super) fn halt_stops_everything_after_the_failure(q: &[u8]) -> Sessions<Brittle> {
    let (h, retry, s) = run_brittle(PanicPolicy::Halt);
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
    assert!(s.query_bytes(q).unwrap_err().to_string().contains("halted"));
    s
}

/// Resumed at its index, then halted again: late duplicates and retries
/// are answered as before, never run again.
pub(super) fn resumes_and_halts_again(s: &mut Sessions<Brittle>) {
    // Resumed at its index: a late duplicate of a refused command stays
    // refused (its client was told "not applied"); new commands run.
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
