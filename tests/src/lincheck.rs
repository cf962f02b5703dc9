//! A linearizability checker for histories of a counter (Wing & Gong's
//! search with memoization, as in Porcupine), with operations whose outcome
//! is unknown.
//!
//! An operation is linearizable next if no other pending operation returned
//! before it was called. Operations with an unknown outcome may take effect
//! at any point after their call, or never. The search memoizes (set of
//! operations taken, counter value) so it stays fast on histories of a few
//! hundred operations.

use std::collections::HashSet;

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `add(delta)`, returning the new value if known.
    Add(i64),
    /// `get()`, returning the value.
    Get,
}

/// One operation of a history.
#[derive(Clone, Copy, Debug)]
pub struct Op {
    /// When it was called (any monotonic unit).
    pub call: u64,
    /// When it returned; `None` if its outcome is unknown.
    pub ret: Option<u64>,
    /// What it was.
    pub kind: OpKind,
    /// The value it returned, if it returned one.
    pub result: Option<i64>,
}

/// Whether `history` is linearizable for a counter starting at `initial`.
/// Operations that certainly did not take effect must be left out.
pub fn check_counter(history: &[Op], initial: i64) -> bool {
    let n = history.len();
    assert!(n <= 4096, "history too long for the checker");
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, i64)> = HashSet::new();
    // Depth-first search over (taken set, value), iteratively.
    let mut stack: Vec<(Vec<u64>, i64)> = vec![(vec![0; words], initial)];
    let taken = |set: &Vec<u64>, i: usize| set[i / 64] >> (i % 64) & 1 == 1;
    while let Some((set, value)) = stack.pop() {
        // Done when every operation with a known outcome is taken.
        if (0..n).all(|i| history[i].ret.is_none() || taken(&set, i)) {
            return true;
        }
        if !seen.insert((set.clone(), value)) {
            continue;
        }
        // The earliest return among pending known operations bounds which
        // operations may go next.
        let horizon = (0..n)
            .filter(|i| !taken(&set, *i))
            .filter_map(|i| history[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..n {
            if taken(&set, i) || history[i].call > horizon {
                continue;
            }
            let op = history[i];
            let next = match op.kind {
                OpKind::Add(d) => {
                    let v = value + d;
                    if op.result.is_some_and(|r| r != v) {
                        continue;
                    }
                    v
                }
                OpKind::Get => {
                    if op.result != Some(value) {
                        continue;
                    }
                    value
                }
            };
            let mut s = set.clone();
            s[i / 64] |= 1 << (i % 64);
            stack.push((s, next));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, kind: OpKind, result: Option<i64>) -> Op {
        Op {
            call,
            ret,
            kind,
            result,
        }
    }

    #[test]
    fn accepts_linearizable_and_rejects_stale_reads() {
        // add(1)->1 [0,10], get->1 [5,15]: fine.
        let h = [
            op(0, Some(10), OpKind::Add(1), Some(1)),
            op(5, Some(15), OpKind::Get, Some(1)),
        ];
        assert!(check_counter(&h, 0));
        // add(1)->1 returns at 10; a get that starts later reads 0: stale.
        let h = [
            op(0, Some(10), OpKind::Add(1), Some(1)),
            op(20, Some(30), OpKind::Get, Some(0)),
        ];
        assert!(!check_counter(&h, 0));
        // An unknown add may have happened: a later get of 1 or 0 is fine.
        for seen in [0, 1] {
            let h = [
                op(0, None, OpKind::Add(1), None),
                op(20, Some(30), OpKind::Get, Some(seen)),
            ];
            assert!(check_counter(&h, 0), "seen {seen}");
        }
        // Two adds cannot both return 1.
        let h = [
            op(0, Some(10), OpKind::Add(1), Some(1)),
            op(0, Some(10), OpKind::Add(1), Some(1)),
        ];
        assert!(!check_counter(&h, 0));
    }
}
