//! The synchronous driver (`handle_ready`) with a snapshot a leader sends:
//! the state machine is restored before any later entry is applied, and a
//! restore that fails stops the driver with nothing more applied.

use ha_core::node::{HandleReadyError, ReadyIo, handle_ready};
use ha_core::raft::{Body, Config, InitialState, Membership, Message, Raft, ReadState};
use ha_core::storage::MemLogStore;
use ha_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};

/// Records what the driver asked, in order.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    refuse_restore: bool,
}

impl ReadyIo for Recorder {
    fn send(&mut self, _msg: Message) {}
    fn apply(&mut self, entry: &Entry) {
        self.events.push(format!("apply {}", entry.index.0));
    }
    fn read_ready(&mut self, _read: ReadState) {}
    fn read_dropped(&mut self, _ctx: u64) {}
    fn restore_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
    ) -> Result<(), ha_core::node::RestoreError> {
        self.events.push(format!("restore {}@{}", index.0, term.0));
        if self.refuse_restore {
            return Err("no such snapshot here".into());
        }
        Ok(())
    }
}

/// Follower 2 of {1, 2, 3}, given a snapshot up to 10 by leader 1 of term
/// 1, then entry 11 committed.
fn follower_given_a_snapshot() -> Raft {
    let mut config = Config::new(NodeId(2));
    config.rng_seed = 2;
    let init = InitialState {
        hard_state: HardState::default(),
        membership: Membership::new_voters([NodeId(1), NodeId(2), NodeId(3)]),
        snapshot_last: (LogIndex(0), Term(0)),
        entries: Vec::new(),
        repairing: false,
        repair_nonce: 0,
        joined: false,
    };
    let mut raft = Raft::new(config, init).expect("valid state");
    let from_leader = |body| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body,
    };
    raft.step(from_leader(Body::InstallSnapshot {
        index: LogIndex(10),
        term: Term(1),
        membership: Default::default(),
    }))
    .expect("install");
    raft.step(from_leader(Body::Append {
        prev_index: LogIndex(10),
        prev_term: Term(1),
        entries: vec![Entry {
            index: LogIndex(11),
            term: Term(1),
            payload: EntryPayload::Blank,
        }],
        commit: LogIndex(11),
    }))
    .expect("append");
    raft
}

#[test]
fn an_installed_snapshot_is_restored_before_any_later_entry_is_applied() {
    let mut raft = follower_given_a_snapshot();
    let mut store = MemLogStore::default();
    let mut io = Recorder::default();
    handle_ready(&mut raft, &mut store, &mut io).expect("handled");
    assert_eq!(io.events, ["restore 10@1", "apply 11"]);
    assert_eq!(raft.applied_index(), LogIndex(11));
}

#[test]
fn a_snapshot_that_cannot_be_restored_stops_the_driver_with_nothing_applied() {
    let mut raft = follower_given_a_snapshot();
    let mut store = MemLogStore::default();
    let mut io = Recorder {
        refuse_restore: true,
        ..Recorder::default()
    };
    match handle_ready(&mut raft, &mut store, &mut io) {
        Err(e @ HandleReadyError::Restore { .. }) => {
            let HandleReadyError::Restore { index, source } = &e else {
                unreachable!()
            };
            assert_eq!(*index, LogIndex(10));
            // The implementation's own error is the chain's last link, and
            // each link is said once.
            let ha_core::node::PipelineError::Restore(inner) = source else {
                panic!("expected the restore's own error, got {source:?}");
            };
            assert_eq!(inner.to_string(), "no such snapshot here");
            let mut chain = vec![e.to_string()];
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                chain.push(c.to_string());
                cause = c.source();
            }
            assert_eq!(
                chain,
                [
                    "restoring the snapshot at 10",
                    "cannot restore the installed snapshot",
                    "no such snapshot here"
                ]
            );
        }
        other => panic!("expected a restore error, got {other:?}"),
    }
    assert_eq!(io.events, ["restore 10@1"], "nothing applied after it");
    assert!(
        raft.applied_index() < LogIndex(10),
        "the core's applied index did not move: {:?}",
        raft.applied_index()
    );
}
