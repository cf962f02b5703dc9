//! The log against an in-memory reference, operation by operation
//! (property test).

use super::*;

// ----- property test: the log against the in-memory reference ----------------

#[derive(Clone, Debug)]
pub(super) enum Op {
    /// Append `n` entries starting `back` entries before the end (a conflict).
    Append {
        back: u64,
        n: u64,
    },
    HardState {
        commit: u64,
    },
    Sync,
    Compact {
        back: u64,
    },
    CrashAndReopen,
    /// The batch is written but its fsync fails; then the power goes.
    FailedSyncThenCrash,
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..4, 1u64..6).prop_map(|(back, n)| Op::Append { back, n }),
        1 => (0u64..50).prop_map(|commit| Op::HardState { commit }),
        3 => Just(Op::Sync),
        1 => (0u64..6).prop_map(|back| Op::Compact { back }),
        1 => Just(Op::CrashAndReopen),
        1 => Just(Op::FailedSyncThenCrash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn the_log_behaves_like_the_in_memory_model(ops in proptest::collection::vec(op(), 1..60)) {
        let fs = SimFs::new();
        let mut model = MemLogStore::new();
        let (mut wal, _) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
        let mut term = 1;
        let mut rng = SplitMix64::new(ops.len() as u64);
        for op in ops {
            match op {
                Op::Append { back, n } => {
                    let snap = model.load().unwrap().snapshot_last.0;
                    let from = LogIndex(model.last_index().0.saturating_sub(back) + 1).max(snap.next());
                    term += 1;
                    let es = entries(from.0, from.0 + n - 1, term);
                    model.append(&es).unwrap();
                    wal.append(&es).unwrap();
                }
                Op::HardState { commit } => {
                    let h = hs(term, Some(1), commit);
                    model.save_hard_state(h).unwrap();
                    wal.save_hard_state(h).unwrap();
                }
                Op::Sync => {
                    model.sync().unwrap();
                    wal.sync().unwrap();
                    prop_assert_eq!(wal.load().unwrap(), model.load().unwrap());
                }
                Op::Compact { back } => {
                    let st = model.load().unwrap();
                    let at = model.last_index().0.saturating_sub(back);
                    if at > st.snapshot_last.0.0 {
                        let t = st.entries.iter().find(|e| e.index.0 == at).map_or(Term(0), |e| e.term);
                        model.compact(LogIndex(at), t).unwrap();
                        wal.compact(LogIndex(at), t).unwrap();
                    }
                }
                Op::CrashAndReopen => {
                    drop(wal);
                    fs.crash(&mut rng);
                    model.crash();
                    let (w, state) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
                    wal = w;
                    prop_assert_eq!(state, model.load().unwrap());
                }
                Op::FailedSyncThenCrash => {
                    let mut before = model.clone();
                    before.crash();
                    model.sync().unwrap();
                    fs.set_sync_interrupted(true);
                    let _ = wal.sync();
                    drop(wal);
                    fs.crash(&mut rng);
                    let (w, state) = Wal::open(fs.clone(), &dir(), small_segments()).unwrap();
                    wal = w;
                    // The unsynced batch survives whole or not at all.
                    if state != model.load().unwrap() {
                        prop_assert_eq!(&state, &before.load().unwrap());
                        model = before;
                    }
                }
            }
        }
    }
}
