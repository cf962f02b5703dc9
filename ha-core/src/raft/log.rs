//! The core's in-memory view of its log, and the cursors over it.
//!
//! The core keeps every entry after the last snapshot in memory (as etcd's
//! server does with its `MemoryStorage`): reads never block on a disk, and
//! the storage layer is write-only except at start-up. Payloads are
//! `bytes::Bytes`, so holding them costs no copies.
//!
//! Cursors, in order:
//! `applied <= committed`, `applied <= handed_apply`, and `applied` moves
//! only through `Raft::advance` (for an installed snapshot too: a snapshot
//! stepped but not yet restored by the driver raises `handed_apply`, never
//! `applied`),
//! `persisted <= handed_persist <= last_index`.
//!
//! Invariants:
//! 1. `entries[k].index == offset + 1 + k`: the log is contiguous.
//! 2. Committed entries are never truncated (a violation is a safety bug and
//!    panics with the rule's name).
//! 3. `persisted` names the longest prefix the driver has confirmed durable;
//!    truncating below it lowers it, so a re-appended suffix is written again.
//! 4. `handed_persist` is how far entries were handed to the driver in a
//!    `Ready`; it only runs ahead of `persisted` while a Ready is outstanding.
//! 5. `confs` lists every configuration entry in `entries`, in order, and
//!    `base_conf` is the configuration in force at `offset`: the one in
//!    force at any index is the latest of them at or below it
//!    (dissertation §4.1: a node uses the latest configuration in its log,
//!    committed or not), so truncating the log reverts it.

use super::Membership;
use crate::types::{Entry, EntryPayload, LogIndex, Term};

/// The in-memory log (see the module docs).
#[derive(Debug)]
pub struct RaftLog {
    /// Index of the last entry covered by a snapshot (0 if none).
    offset: LogIndex,
    /// Term of the entry at `offset`.
    offset_term: Term,
    /// Entries `offset+1 ..= last_index`. Invariant 1.
    entries: Vec<Entry>,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index the driver reported applied.
    pub applied: LogIndex,
    /// Highest index handed to the driver for applying.
    pub handed_apply: LogIndex,
    /// Highest index confirmed durable. Invariant 3.
    pub persisted: LogIndex,
    /// Highest index handed to the driver for persisting. Invariant 4.
    pub handed_persist: LogIndex,
    /// Sum of `size_bytes` of `entries`: what the log holds since its last
    /// snapshot (kept exact on every change).
    held_bytes: u64,
    /// The configuration in force at `offset` (invariant 5).
    base_conf: Membership,
    /// The configuration entries of `entries`, in index order (invariant 5).
    confs: Vec<(LogIndex, Membership)>,
}

/// The configuration entries among `entries`.
fn confs_of(entries: &[Entry]) -> impl Iterator<Item = (LogIndex, Membership)> + '_ {
    entries.iter().filter_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some((e.index, m.clone())),
        _ => None,
    })
}

fn bytes_of(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.size_bytes() as u64).sum()
}

impl RaftLog {
    /// A log restored from storage: `entries` are durable already.
    pub fn restore(
        offset: LogIndex,
        offset_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) -> Self {
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                offset.plus(k as u64 + 1),
                "log contiguity: restored entries must follow the snapshot without gaps"
            );
        }
        let last = offset.plus(entries.len() as u64);
        let committed = commit.min(last).max(offset);
        RaftLog {
            held_bytes: bytes_of(&entries),
            base_conf: Membership::default(),
            confs: confs_of(&entries).collect(),
            offset,
            offset_term,
            entries,
            committed,
            applied: offset,
            handed_apply: offset,
            persisted: last,
            handed_persist: last,
        }
    }

    /// Sets the configuration in force at the log's offset (a snapshot's,
    /// or the one the cluster was bootstrapped with).
    pub fn set_base_conf(&mut self, conf: Membership) {
        self.base_conf = conf;
    }

    /// The latest configuration in the log (committed or not), with the
    /// index of the entry that holds it (the offset for the base one).
    pub fn conf(&self) -> (LogIndex, &Membership) {
        self.confs
            .last()
            .map_or((self.offset, &self.base_conf), |(i, m)| (*i, m))
    }

    /// The configuration in force at `index` (at or after the offset):
    /// the latest configuration entry at or below it.
    pub fn conf_at(&self, index: LogIndex) -> (LogIndex, &Membership) {
        self.confs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or((self.offset, &self.base_conf), |(i, m)| (*i, m))
    }

    /// Whether a configuration in force at or before `index` (from the
    /// log's offset on) named `id`.
    pub fn was_member_before(&self, id: crate::types::NodeId, index: LogIndex) -> bool {
        self.base_conf.is_member(id)
            || self
                .confs
                .iter()
                .any(|(i, m)| *i <= index && m.is_member(id))
    }

    /// The first configuration entry that is not a valid configuration,
    /// and why (a stored log checked at start).
    pub fn confs_invalid(&self) -> Option<(LogIndex, String)> {
        self.confs
            .iter()
            .find_map(|(i, m)| m.validate().err().map(|e| (*i, e.to_string())))
    }

    /// Index of the last entry (or of the snapshot when the log is empty).
    pub fn last_index(&self) -> LogIndex {
        self.offset.plus(self.entries.len() as u64)
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// Index and term of the last entry a snapshot covers.
    pub fn offset(&self) -> (LogIndex, Term) {
        (self.offset, self.offset_term)
    }

    /// Drops the entries up to `index`, which a durable snapshot of the
    /// applied state now covers. Returns false (changing nothing) unless
    /// `offset < index <= applied`.
    pub fn compact_to(&mut self, index: LogIndex) -> bool {
        if index <= self.offset || index > self.applied {
            return false;
        }
        let term = self.term(index).expect("applied entries are held");
        self.base_conf = self.conf_at(index).1.clone();
        self.confs.retain(|(i, _)| *i > index);
        let drop = (index.0 - self.offset.0) as usize;
        self.held_bytes -= bytes_of(&self.entries[..drop]);
        self.entries.drain(..drop);
        self.offset = index;
        self.offset_term = term;
        true
    }

    /// Bytes of the entries held since the last snapshot (approximate per
    /// entry, exact in sum: see [`Entry::size_bytes`]).
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Bytes of the held entries up to `index`: what a snapshot at `index`
    /// would let the log drop. Walks those entries.
    pub fn held_bytes_through(&self, index: LogIndex) -> u64 {
        let upto = index
            .0
            .saturating_sub(self.offset.0)
            .min(self.entries.len() as u64);
        bytes_of(&self.entries[..upto as usize])
    }

    /// Takes a snapshot ending at `(index, term)` from the leader (above the
    /// commit index). Keeps the entries after it if the log holds that very
    /// entry (dissertation §5.3), else discards the whole log. Returns
    /// whether the suffix was kept. `conf` is the configuration in force
    /// at `index` (the snapshot's).
    pub fn install_snapshot(&mut self, index: LogIndex, term: Term, conf: Membership) -> bool {
        let keep = self.matches(index, term) && index >= self.offset;
        self.install_keeping(index, term, conf, keep)
    }

    /// [`RaftLog::install_snapshot`] with the planted
    /// [`crate::raft::PlantedBug::SnapshotKeepsConflictingSuffix`]: keeps
    /// whatever the log holds after `index`, whether or not its entry at
    /// `index` is the snapshot's.
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn install_snapshot_keeping_any_suffix(
        &mut self,
        index: LogIndex,
        term: Term,
        conf: Membership,
    ) -> bool {
        let keep = index >= self.offset && index <= self.last_index();
        self.install_keeping(index, term, conf, keep)
    }

    fn install_keeping(
        &mut self,
        index: LogIndex,
        term: Term,
        conf: Membership,
        keep: bool,
    ) -> bool {
        if keep {
            let drop = ((index.0 - self.offset.0) as usize).min(self.entries.len());
            self.held_bytes -= bytes_of(&self.entries[..drop]);
            self.entries.drain(..drop);
            self.confs.retain(|(i, _)| *i > index);
        } else {
            self.entries.clear();
            self.held_bytes = 0;
            self.confs.clear();
        }
        self.base_conf = conf;
        self.offset = index;
        self.offset_term = term;
        self.committed = self.committed.max(index);
        // `applied` stays: it moves only when the driver reports (through
        // `Raft::advance`) that the state machine was restored from this
        // snapshot. Until then the applied state is the old one, and
        // nothing may snapshot or serve reads as if it were not.
        self.handed_apply = self.handed_apply.max(index);
        if keep {
            self.persisted = self.persisted.max(index);
            self.handed_persist = self.handed_persist.max(index);
        } else {
            self.persisted = index;
            self.handed_persist = index;
        }
        keep
    }

    /// The term of the entry at `index`, if known (the snapshot's last entry
    /// counts as known).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        if index < self.offset || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index.0 - self.offset.0 - 1) as usize].term)
    }

    /// Whether the log holds an entry `(index, term)`.
    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index.0 - self.offset.0 - 1) as usize])
    }

    /// Entries `lo..=hi`, cut after `max_bytes` (at least one entry is
    /// returned when the range is non-empty).
    pub fn slice(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        if lo > hi || lo <= self.offset {
            return out;
        }
        let hi = hi.min(self.last_index());
        let mut bytes = 0;
        let mut i = lo;
        while i <= hi && out.len() < max_entries {
            let e = &self.entries[(i.0 - self.offset.0 - 1) as usize];
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            i = i.next();
        }
        out
    }

    /// Whether a candidate whose log ends at `(last_index, last_term)` is at
    /// least as up to date as this log (dissertation §3.6.1).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends one entry created by this node as leader.
    pub fn append_own(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "log contiguity: leader appends at the end"
        );
        self.held_bytes += entry.size_bytes() as u64;
        if let EntryPayload::Membership(m) = &entry.payload {
            self.confs.push((entry.index, m.clone()));
        }
        self.entries.push(entry);
    }

    /// Applies an append from the leader whose previous entry is known to
    /// match. Skips entries already present, truncates at the first conflict
    /// and appends the rest. Returns the index of the last new entry.
    ///
    /// Refuses, changing nothing, an append that would replace a committed
    /// entry: no correct leader sends one (Leader Completeness), so it means
    /// a broken or malicious peer, and the node must survive it.
    pub fn append_from_leader(
        &mut self,
        prev: LogIndex,
        entries: &[Entry],
    ) -> Result<LogIndex, String> {
        let last_new = prev.plus(entries.len() as u64);
        if let Some((k, truncate)) = self.find_conflict(entries)? {
            if truncate {
                self.truncate_from(entries[k].index);
            }
            self.held_bytes += bytes_of(&entries[k..]);
            self.confs.extend(confs_of(&entries[k..]));
            self.entries.extend(entries[k..].iter().cloned());
        }
        Ok(last_new)
    }

    /// Checks that appending `entries` (following a matching entry) would
    /// not replace a committed entry.
    pub fn check_append(&self, entries: &[Entry]) -> Result<(), String> {
        self.find_conflict(entries).map(|_| ())
    }

    /// The position in `entries` of the first entry this log lacks, and
    /// whether it replaces a different entry at its index.
    fn find_conflict(&self, entries: &[Entry]) -> Result<Option<(usize, bool)>, String> {
        for (k, e) in entries.iter().enumerate() {
            if e.index <= self.offset {
                continue; // Covered by our snapshot; committed, so it matches.
            }
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(t) if e.index <= self.committed => {
                    return Err(format!(
                        "Leader Completeness: an append would overwrite committed entry {}@{} \
                         with {}@{} (commit index {})",
                        e.index, t, e.index, e.term, self.committed
                    ));
                }
                Some(_) => return Ok(Some((k, true))),
                None => return Ok(Some((k, false))),
            }
        }
        Ok(None)
    }

    fn truncate_from(&mut self, index: LogIndex) {
        let keep = (index.0 - self.offset.0 - 1) as usize;
        self.held_bytes -= bytes_of(&self.entries[keep..]);
        self.entries.truncate(keep);
        self.confs.retain(|(i, _)| *i < index);
        let last = self.last_index();
        self.persisted = self.persisted.min(last);
        self.handed_persist = self.handed_persist.min(last);
    }

    /// Raises the commit index (never lowers it). The caller has checked the
    /// entry is committed.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Fast backtracking (dissertation §3.5, etcd's `findConflictByTerm`):
    /// the largest index `<= index` whose term is `<= term`, with that term.
    /// A follower answers a rejected append with it, so the leader skips a
    /// whole term of conflicting entries per round trip.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term => i = i.prev(),
                Some(t) => return (i, t),
                None => return (i, Term(0)),
            }
        }
    }

    /// Entries not yet handed to the driver for persisting; marks them handed.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let from = self.handed_persist.next();
        let last = self.last_index();
        if from > last {
            return Vec::new();
        }
        let out = self.entries[(from.0 - self.offset.0 - 1) as usize..].to_vec();
        self.handed_persist = last;
        out
    }

    /// The driver made entries up to `(index, term)` durable.
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) {
        if index > self.persisted && self.matches(index, term) {
            self.persisted = index;
        }
    }

    /// Committed entries that are safe to apply and not yet handed out: up to
    /// the commit index, but never past what was handed for persisting (the
    /// driver persists a Ready's entries before applying its committed ones).
    pub fn take_committed(&mut self, max_entries: usize) -> Vec<Entry> {
        let hi = self.committed.min(self.handed_persist);
        let from = self.handed_apply.next();
        if from > hi {
            return Vec::new();
        }
        let out = self.slice(from, hi, max_entries, usize::MAX);
        if let Some(last) = out.last() {
            self.handed_apply = last.index;
        }
        out
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

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, t)| e(k as u64 + 1, *t))
            .collect();
        RaftLog::restore(LogIndex(0), Term(0), entries, LogIndex(0))
    }

    #[test]
    fn append_from_leader_skips_matching_and_truncates_conflicts() {
        let mut log = log_of(&[1, 1, 2, 2]);
        // Duplicate of what we have: nothing changes.
        assert_eq!(
            log.append_from_leader(LogIndex(1), &[e(2, 1), e(3, 2)]),
            Ok(LogIndex(3))
        );
        assert_eq!(log.last_index(), LogIndex(4));
        // Conflict at 3: truncate 3.. and append.
        log.append_from_leader(LogIndex(2), &[e(3, 3)]).unwrap();
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
        assert_eq!(
            log.persisted,
            LogIndex(2),
            "truncation lowers the persisted cursor"
        );
    }

    #[test]
    fn overwriting_a_committed_entry_is_refused_without_change() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit_to(LogIndex(3));
        let err = log
            .append_from_leader(LogIndex(2), &[e(3, 3), e(4, 3)])
            .unwrap_err();
        assert!(err.contains("Leader Completeness"), "{err}");
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)));
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let log = log_of(&[1, 1, 2, 2, 2, 5, 5]);
        assert_eq!(
            log.find_conflict_by_term(LogIndex(7), Term(4)),
            (LogIndex(5), Term(2))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(100), Term(9)),
            (LogIndex(7), Term(5))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(5), Term(1)),
            (LogIndex(2), Term(1))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(3), Term(0)),
            (LogIndex(0), Term(0))
        );
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(LogIndex(3), Term(2)));
        assert!(log.is_up_to_date(LogIndex(1), Term(3)));
        assert!(!log.is_up_to_date(LogIndex(2), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(9), Term(1)));
    }

    #[test]
    fn committed_entries_wait_for_persistence_handoff() {
        let mut log = log_of(&[]);
        log.append_own(e(1, 1));
        log.append_own(e(2, 1));
        log.commit_to(LogIndex(2));
        assert!(
            log.take_committed(10).is_empty(),
            "not handed for persisting yet"
        );
        assert_eq!(log.take_unpersisted().len(), 2);
        assert_eq!(log.take_committed(10).len(), 2);
        log.persisted_to(LogIndex(2), Term(1));
        assert_eq!(log.persisted, LogIndex(2));
    }

    #[test]
    fn held_bytes_follow_every_change() {
        let cmd = |index, term, n: usize| Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: EntryPayload::Command(bytes::Bytes::from(vec![0u8; n])),
        };
        let mut log = log_of(&[]);
        let check = |log: &RaftLog| {
            assert_eq!(log.held_bytes(), bytes_of(&log.entries), "drifted");
        };
        log.append_own(cmd(1, 1, 100));
        log.append_own(cmd(2, 1, 200));
        log.append_own(cmd(3, 1, 300));
        check(&log);
        log.append_from_leader(LogIndex(1), &[cmd(2, 2, 50)])
            .unwrap();
        check(&log);
        log.commit_to(LogIndex(2));
        log.applied = LogIndex(2);
        assert!(log.compact_to(LogIndex(1)));
        check(&log);
        log.install_snapshot(LogIndex(2), Term(2), Membership::default());
        check(&log);
        log.install_snapshot(LogIndex(9), Term(3), Membership::default());
        check(&log);
        assert_eq!(log.held_bytes(), 0);
    }

    #[test]
    fn slice_respects_byte_and_count_limits() {
        let log = log_of(&[1, 1, 1, 1, 1]);
        assert_eq!(log.slice(LogIndex(1), LogIndex(5), 2, usize::MAX).len(), 2);
        assert_eq!(
            log.slice(LogIndex(1), LogIndex(5), 10, 1).len(),
            1,
            "at least one entry"
        );
        assert_eq!(log.slice(LogIndex(4), LogIndex(9), 10, usize::MAX).len(), 2);
    }
}
