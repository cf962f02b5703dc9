//! The session bug that registration entries removed, planted back: an
//! unknown session re-created by a command that could be its first. The
//! fast-leader-clock scenario must then apply one command twice, which is
//! what the scenario test in `ha-core/tests/sessions.rs` guards against.

use bytes::Bytes;
use ha_core::protocol::{CommandOutcome, LogCommand, LogOp, SessionCommand};
use ha_core::sm::Sessions;
use ha_core::types::{LogIndex, Term};
use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// A counter.
#[derive(Default, Serialize, Deserialize, Replicated)]
pub struct Tally {
    value: u64,
}

#[replicated]
impl Tally {
    /// Adds one.
    pub fn bump(&mut self) -> u64 {
        self.value += 1;
        self.value
    }
}

fn run_scenario(planted: bool) -> u64 {
    let mut s =
        Sessions::<Tally>::new().with_unchecked_settings(10_000, ha_core::sm::DEFAULT_MAX_SESSIONS);
    if planted {
        s = s.with_planted_recreate();
    }
    let at = |time_ms, op| LogCommand { time_ms, op };
    let CommandOutcome::Registered { session } = s.apply_log_command(
        LogIndex(1),
        Term(1),
        at(1_000, LogOp::Register { secret: 9 }),
    ) else {
        panic!("registration refused");
    };
    let bump = || {
        LogOp::Command(SessionCommand {
            client: session,
            secret: 9,
            seq: 1,
            ack_below: 1,
            body: Bytes::from(
                ha_core::__private::postcard::to_stdvec(&TallyCommand::Bump {}).unwrap(),
            ),
        })
    };
    s.apply_log_command(LogIndex(2), Term(1), at(1_000, bump()));
    // A leader an hour ahead stamps another client's registration; then the
    // retry of (session, 1) arrives.
    s.apply_log_command(
        LogIndex(3),
        Term(2),
        at(3_601_000, LogOp::Register { secret: 9 }),
    );
    s.apply_log_command(LogIndex(4), Term(2), at(3_601_001, bump()));
    s.state().value
}

#[test]
fn the_planted_session_bug_applies_a_retry_twice_and_the_fix_does_not() {
    assert_eq!(
        run_scenario(false),
        1,
        "with registration entries: applied once"
    );
    assert_eq!(
        run_scenario(true),
        2,
        "the planted bug must apply the retry again"
    );
}
