//! An in-memory [`LogStore`] with a crash model.
//!
//! It keeps two views: `current` (what reads see, including unsynced writes)
//! and `durable` (what survives [`MemLogStore::crash`]). `sync` folds the
//! changes since the last sync into `durable` in time proportional to the
//! change, not the log.
//!
//! Invariants:
//! 1. `durable` equals `current` after `sync`.
//! 2. `dirty_from` is the lowest index `current` changed since the last sync
//!    (or `None`), so `durable` agrees with `current` below it.

use super::{LogStore, MemStoreError, StoredState};
use crate::types::{Entry, HardState, LogIndex, Term};

#[derive(Clone, Debug, Default)]
struct View {
    hard_state: HardState,
    snapshot_last: (LogIndex, Term),
    entries: Vec<Entry>,
}

impl View {
    fn last_index(&self) -> LogIndex {
        self.snapshot_last.0.plus(self.entries.len() as u64)
    }
}

/// The in-memory store (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    current: View,
    durable: View,
    /// Invariant 2.
    dirty_from: Option<LogIndex>,
    /// When set, the next write fails (failure injection).
    fail_next_write: bool,
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    /// Simulates a power loss: every unsynced write is gone.
    pub fn crash(&mut self) {
        self.current = self.durable.clone();
        self.dirty_from = None;
    }

    /// Makes the next write fail with [`MemStoreError::Injected`].
    pub fn fail_next_write(&mut self) {
        self.fail_next_write = true;
    }

    /// The durable entries (for checks in tests).
    pub fn durable_entries(&self) -> &[Entry] {
        &self.durable.entries
    }

    /// The durable hard state (for checks in tests).
    pub fn durable_hard_state(&self) -> HardState {
        self.durable.hard_state
    }

    fn take_injected(&mut self) -> Result<(), MemStoreError> {
        if std::mem::take(&mut self.fail_next_write) {
            Err(MemStoreError::Injected)
        } else {
            Ok(())
        }
    }
}

impl LogStore for MemLogStore {
    type Error = MemStoreError;

    fn load(&self) -> Result<StoredState, MemStoreError> {
        Ok(StoredState {
            hard_state: self.current.hard_state,
            snapshot_last: self.current.snapshot_last,
            entries: self.current.entries.clone(),
        })
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), MemStoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for w in entries.windows(2) {
            if w[1].index != w[0].index.next() {
                return Err(MemStoreError::NotContiguous(w[1].index));
            }
        }
        let last = self.current.last_index();
        let snap = self.current.snapshot_last.0;
        if first.index > last.next() {
            return Err(MemStoreError::Gap {
                got: first.index,
                last,
            });
        }
        if first.index <= snap {
            return Err(MemStoreError::BelowSnapshot {
                got: first.index,
                snapshot: snap,
            });
        }
        self.take_injected()?;
        let keep = (first.index.0 - snap.0 - 1) as usize;
        self.current.entries.truncate(keep);
        self.current.entries.extend_from_slice(entries);
        self.dirty_from = Some(self.dirty_from.map_or(first.index, |d| d.min(first.index)));
        Ok(())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> Result<(), MemStoreError> {
        self.take_injected()?;
        self.current.hard_state = hard_state;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), MemStoreError> {
        self.take_injected()?;
        self.durable.hard_state = self.current.hard_state;
        if self.durable.snapshot_last != self.current.snapshot_last {
            self.durable = self.current.clone();
        } else if let Some(from) = self.dirty_from {
            let snap = self.current.snapshot_last.0;
            let keep = (from.0 - snap.0 - 1) as usize;
            self.durable.entries.truncate(keep);
            self.durable
                .entries
                .extend_from_slice(&self.current.entries[keep.min(self.current.entries.len())..]);
        }
        self.dirty_from = None;
        Ok(())
    }

    fn last_index(&self) -> LogIndex {
        self.current.last_index()
    }

    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        keep_suffix: bool,
    ) -> Result<(), MemStoreError> {
        if !keep_suffix {
            self.current.entries.clear();
            self.current.snapshot_last = (index, term);
            return Ok(());
        }
        self.compact(index, term)
    }

    fn compact(&mut self, index: LogIndex, term: Term) -> Result<(), MemStoreError> {
        let snap = self.current.snapshot_last.0;
        if index <= snap {
            return Ok(());
        }
        let drop = ((index.0 - snap.0) as usize).min(self.current.entries.len());
        self.current.entries.drain(..drop);
        self.current.snapshot_last = (index, term);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes_terms(s: &MemLogStore) -> Vec<(u64, u64)> {
        s.load()
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.index.0, e.term.0))
            .collect()
    }

    #[test]
    fn crash_loses_exactly_the_unsynced_writes() {
        let mut s = MemLogStore::new();
        s.append(&[e(1, 1), e(2, 1), e(3, 1)]).unwrap();
        s.save_hard_state(HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(0),
        })
        .unwrap();
        s.sync().unwrap();
        // Replace the suffix from 2 and add more, then crash before sync.
        s.append(&[e(2, 2), e(3, 2), e(4, 2)]).unwrap();
        s.save_hard_state(HardState {
            term: Term(2),
            vote: None,
            commit: LogIndex(0),
        })
        .unwrap();
        assert_eq!(indexes_terms(&s), vec![(1, 1), (2, 2), (3, 2), (4, 2)]);
        s.crash();
        assert_eq!(indexes_terms(&s), vec![(1, 1), (2, 1), (3, 1)]);
        assert_eq!(s.load().unwrap().hard_state.term, Term(1));
        // The same change, synced this time, survives.
        s.append(&[e(2, 2), e(3, 2), e(4, 2)]).unwrap();
        s.sync().unwrap();
        s.crash();
        assert_eq!(indexes_terms(&s), vec![(1, 1), (2, 2), (3, 2), (4, 2)]);
    }

    #[test]
    fn gaps_and_bad_batches_are_refused_without_change() {
        let mut s = MemLogStore::new();
        s.append(&[e(1, 1)]).unwrap();
        assert!(matches!(
            s.append(&[e(3, 1)]),
            Err(MemStoreError::Gap { .. })
        ));
        assert!(matches!(
            s.append(&[e(2, 1), e(4, 1)]),
            Err(MemStoreError::NotContiguous(_))
        ));
        assert_eq!(indexes_terms(&s), vec![(1, 1)]);
        s.fail_next_write();
        assert!(matches!(s.append(&[e(2, 1)]), Err(MemStoreError::Injected)));
        assert_eq!(s.last_index(), LogIndex(1));
    }

    #[test]
    fn compaction_keeps_the_tail_and_survives_crash_after_sync() {
        let mut s = MemLogStore::new();
        s.append(&[e(1, 1), e(2, 1), e(3, 2)]).unwrap();
        s.compact(LogIndex(2), Term(1)).unwrap();
        s.sync().unwrap();
        s.crash();
        let st = s.load().unwrap();
        assert_eq!(st.snapshot_last, (LogIndex(2), Term(1)));
        assert_eq!(indexes_terms(&s), vec![(3, 2)]);
        assert!(matches!(
            s.append(&[e(2, 3)]),
            Err(MemStoreError::BelowSnapshot { .. })
        ));
    }
}
