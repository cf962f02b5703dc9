//! A linearizability checker for histories of real or simulated clients:
//! the Wing & Gong search as Lowe improved it ("just-in-time
//! linearization" over a linked list of call and return events, with a
//! cache of visited configurations; the algorithm Porcupine implements),
//! split by partition when the model allows it (P-compositionality: a
//! history of a map is linearizable iff each key's sub-history is).
//!
//! Owns: [`Model`] (a sequential specification), [`Operation`] (one
//! client's call with its outcome, if known), [`check`] and
//! [`check_partitioned`], and the models in [`models`].
//!
//! Operations whose outcome is unknown (a timeout, a lost connection) may
//! take effect at any moment after their call, or never. Their return is
//! placed after every known one: linearizing them at the very end is the
//! same as "never", since nothing observes the state after the last known
//! return. Operations that certainly did not take effect (refused, not
//! applied) must be left out by the caller.
//!
//! Invariants of the search:
//! 1. A configuration is (the set of operations linearized, the model's
//!    state). The set of known operations is kept as a 128-bit Zobrist hash
//!    (each operation XORs a random 128-bit word in or out, the words drawn
//!    afresh for every search so no history can be built to collide), so
//!    the cache costs a few words per configuration however long the
//!    history is. Two different sets share a hash with probability about
//!    2^-128 per pair; a collision could only prune a branch, i.e. report a
//!    linearizable history as not, never the reverse.
//! 2. Unknown-outcome operations the model calls reads (no effect on the
//!    state) are dropped: they constrain nothing. Unknown writes that no
//!    operation can have observed ([`Model::written`] is a token not among
//!    any [`Model::seen`], which also counts what unknown operations compare
//!    with) are first assumed never to have taken
//!    effect; if that history is linearizable, so is the real one (never is
//!    one of the allowed outcomes). Only if it is not does the search run
//!    again with every unknown operation kept, and those unobserved writes
//!    all writing one token no operation writes or sees
//!    ([`Model::rename`]): states that differ only in which unobserved
//!    token a register holds answer every operation of the history alike
//!    (no answer names such a token and no comparison, even an unknown
//!    one's, mentions it), so the search need not tell them apart, and
//!    invariant 6 makes the writes interchangeable. A report from this
//!    second search shows those writes with that token.
//! 3. Only known operations enter the hash. A configuration is skipped if
//!    the cache holds one with the same known operations and state and a
//!    subset of its unknown operations: whatever completes the larger one
//!    completes the smaller (an unknown operation may also never take
//!    effect), which was searched already or is being searched. Without
//!    this, unknown operations (whose returns never come) make the search
//!    exponential in their number whenever it must backtrack past them.
//!    Candidates are tried known operations first (a matter of order:
//!    backtracking still places unknown ones anywhere they can go).
//! 4. The search has a step budget: past it the answer is
//!    [`Verdict::Unknown`], never a guess.
//! 5. A partition's history is cut into segments wherever no known
//!    operation is in flight (each one before the cut returned before any
//!    after it was called). Every known operation before a cut is
//!    linearized before every one after it, so the search of a segment
//!    starts from the frontier: every configuration (state, unknown
//!    operations linearized) the previous segment can end in, less those
//!    another dominates (invariant 3). Unknown operations called earlier
//!    and not yet linearized are candidates from the segment's start. A
//!    history that is not linearizable then costs what one that is costs
//!    (no search ever backtracks past a cut), and the report names the
//!    segment where the frontier ran out.
//! 6. Unknown operations pending at a cut (called before it, not
//!    linearized in every configuration) with equal inputs are
//!    interchangeable from then on: none has a return, and all are
//!    candidates from the next segment's start. A configuration that
//!    linearized one of them is the same as one that linearized another,
//!    so the frontier keeps one of each. Without this, every unknown
//!    delete that may have been the one that emptied a key doubles the
//!    frontier for the rest of the history.
//! 7. An unknown operation whose effect does not depend on the state
//!    ([`Model::blind`], its answer being unknown) is never linearized
//!    right after another unknown one: the configuration the pair leads to
//!    is dominated by the one the second alone leads to from the same
//!    point, where it is also a candidate (the first took no return out
//!    of the event list, so the candidates there are the same). Without
//!    this, `k` pending unknown puts are tried in all `2^k` subsets.
//! 8. A pending unknown operation that can change the state only where it
//!    holds a token ([`Model::needs`]: a compare-and-set's expected value)
//!    is dropped at a cut where no configuration's state holds the token,
//!    no pending operation writes it and no later segment has an
//!    operation that does: from then on it can only leave the state as it
//!    is, which is what never taking effect does. Without this, every
//!    unknown compare-and-set of a long history stays a candidate to its
//!    end, and each cut costs time in proportion to the history so far.
//! 9. Eager reads: in a configuration where a known read is a candidate
//!    and its answer is the state now, the search takes it and tries
//!    nothing else there. Any way through that configuration can take the
//!    read first instead: nothing un-linearized returned before its call
//!    (else it would not be a candidate), it leaves the state as it is, so
//!    every later operation sees what it saw, and its answer holds now.
//!    Segments that want every end lose none that matters: an end may now
//!    come before unknown operations that used to be placed ahead of the
//!    read, but those stay pending, and the next segment can place them
//!    first. This needs [`Model::is_read`] to hold only of operations whose
//!    step, when it succeeds, leaves the state as it was and depends on
//!    nothing else. Without this, every read concurrent with a few writes has the
//!    search try the orders of those writes before it (a bank's reads see
//!    every balance, so only the right subset passes).

pub mod counter;
pub mod models;
#[cfg(test)]
mod tests;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::fmt::Debug;
use std::hash::Hash;

pub use models::{Bank, BankInput, BankOutput, Counter, CounterInput, Kv, KvInput, KvOutput};

/// A sequential specification: the state an object starts in, and what
/// each operation does to it.
pub trait Model {
    /// The object's state (of one partition, with [`check_partitioned`]).
    type State: Clone + Eq + Hash + Debug;
    /// An operation's call, with its arguments.
    type Input: Clone + Debug + PartialEq;
    /// An operation's answer.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` runs in `state`, if it may answer `output`;
    /// `None` if it may not. An unknown answer (`output` is `None`) is
    /// always possible: the model must then return the state the operation
    /// leaves.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether `input` never changes the state (a read): its step, when
    /// it succeeds, returns the state it was given and depends on nothing
    /// but that state and the answer (invariant 9 takes such operations
    /// eagerly).
    fn is_read(&self, _input: &Self::Input) -> bool {
        false
    }

    /// Whether, its answer unknown, `input` leaves a state that does not
    /// depend on the state before (a put or a delete of a register). The
    /// search then never linearizes it right after another unknown
    /// operation (invariant 7). `false` (the default) is always sound.
    fn blind(&self, _input: &Self::Input) -> bool {
        false
    }

    /// A token naming the value `input` writes, if every write in the
    /// history writes a distinct one (see the module's invariant 2).
    /// `None` (the default) keeps every unknown write in the search.
    fn written(&self, _input: &Self::Input) -> Option<u64> {
        None
    }

    /// `input` writing `token` instead of its own token, if it writes one
    /// (see the module's invariant 2). `None` (the default) keeps it as it
    /// is.
    fn rename(&self, _input: &Self::Input, _token: u64) -> Option<Self::Input> {
        None
    }

    /// The tokens an operation saw or may have seen: values it read, was
    /// told were replaced, or compared with (whether or not its answer,
    /// `output`, is known).
    fn seen(&self, _input: &Self::Input, _output: Option<&Self::Output>, _out: &mut Vec<u64>) {}

    /// A token the state must hold for `input` to change it (a
    /// compare-and-set's expected value), where a state comes to hold a
    /// token only through an operation [`Model::written`] says writes it
    /// (see the module's invariant 8). `None` (the default) is always
    /// sound.
    fn needs(&self, _input: &Self::Input) -> Option<u64> {
        None
    }

    /// Whether `state` holds `token` (see [`Model::needs`]).
    fn holds(&self, _state: &Self::State, _token: u64) -> bool {
        false
    }
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// The client that ran it (for reports only; a client's operations do
    /// not overlap).
    pub client: u64,
    /// When it was called (any clock shared by all clients, e.g.
    /// nanoseconds since the run began). A call at the same time as
    /// another operation's return counts as concurrent with it.
    pub call: u64,
    /// When it returned and what it answered, or `None` if the outcome is
    /// unknown.
    pub ret: Option<(u64, O)>,
    /// What it was.
    pub input: I,
}

/// The checker's answer.
#[derive(Debug)]
pub enum Verdict {
    /// Every partition is linearizable.
    Linearizable,
    /// A partition is not (the first found).
    NotLinearizable(Failure),
    /// The step budget ran out before an answer (the partition named).
    Unknown(String),
}

impl Verdict {
    /// Whether the history was found linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Where the search got stuck.
#[derive(Debug)]
pub struct Failure {
    /// The partition (its key's debug form; empty when not partitioned).
    pub partition: String,
    /// The most operations of the partition any linearization took.
    pub linearized: usize,
    /// The operations of the partition.
    pub operations: usize,
    /// The operation whose return no linearization could reach, with the
    /// last operations linearized before it (up to 16, oldest first),
    /// each in its debug form.
    pub stuck_at: String,
    /// See `stuck_at`.
    pub before: Vec<String>,
    /// Why `stuck_at` cannot be placed, when a check knows (the exact
    /// counter check does; the search only knows that it found no way).
    pub why: Option<String>,
    /// The segment (invariant 5) no configuration could get through: its
    /// first known call and last known return.
    pub window: (u64, u64),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(why) = &self.why {
            return writeln!(
                f,
                "not linearizable (partition {:?}, between {} and {}): {}: {why}",
                self.partition, self.window.0, self.window.1, self.stuck_at
            );
        }
        writeln!(
            f,
            "not linearizable (partition {:?}, between {} and {}): at best {} of {} \
             operations linearized; none could take {} in time. Linearized just before, oldest \
             first:",
            self.partition,
            self.window.0,
            self.window.1,
            self.linearized,
            self.operations,
            self.stuck_at
        )?;
        for b in &self.before {
            writeln!(f, "  {b}")?;
        }
        Ok(())
    }
}

/// Steps (entries looked at) allowed per partition by [`check`] and
/// [`check_partitioned`]: far above what a passing history of millions of
/// operations takes.
pub const DEFAULT_BUDGET: u64 = 2_000_000_000;

/// Whether `history` is linearizable with respect to `model`, as one
/// object.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    check_partitioned(model, history, |_| ())
}

/// Whether `history` is linearizable with respect to `model`, each
/// partition (`part` of an operation's input) checked on its own from
/// `model.init()`. Sound only for models whose partitions are independent
/// objects (the keys of a map).
pub fn check_partitioned<M: Model, K: Ord + Debug>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    part: impl Fn(&M::Input) -> K,
) -> Verdict {
    check_with_budget(model, history, part, DEFAULT_BUDGET)
}

/// [`check_partitioned`] with a step budget per partition.
pub fn check_with_budget<M: Model, K: Ord + Debug>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    part: impl Fn(&M::Input) -> K,
    budget: u64,
) -> Verdict {
    let mut parts: std::collections::BTreeMap<K, Vec<usize>> = Default::default();
    for (i, op) in history.iter().enumerate() {
        // Invariant 2: an unknown read constrains nothing.
        if op.ret.is_none() && model.is_read(&op.input) {
            continue;
        }
        parts.entry(part(&op.input)).or_default().push(i);
    }
    for (key, ops) in parts {
        let name = if std::mem::size_of::<K>() == 0 {
            String::new()
        } else {
            format!("{key:?}")
        };
        let mut seen = HashSet::default();
        let mut tokens = Vec::new();
        for &i in &ops {
            tokens.clear();
            let out = history[i].ret.as_ref().map(|(_, o)| o);
            model.seen(&history[i].input, out, &mut tokens);
            seen.extend(tokens.iter().copied());
        }
        let unobserved = |i: &usize| {
            let op = &history[*i];
            op.ret.is_none() && model.written(&op.input).is_some_and(|t| !seen.contains(&t))
        };
        let pruned: Vec<usize> = ops.iter().copied().filter(|i| !unobserved(i)).collect();
        let first = search(model, history, &pruned, &name, budget);
        let verdict = if pruned.len() < ops.len() && !first.is_ok() {
            // Invariant 2: again with the unobserved writes kept, all
            // writing one token no operation sees or writes.
            let mut taken = seen.clone();
            taken.extend(ops.iter().filter_map(|&i| model.written(&history[i].input)));
            let free = (0..=u64::MAX)
                .rev()
                .find(|t| !taken.contains(t))
                .unwrap_or(0);
            let renamed: Vec<Operation<M::Input, M::Output>> = ops
                .iter()
                .map(|i| {
                    let mut op = history[*i].clone();
                    if unobserved(i) {
                        op.input = model.rename(&op.input, free).unwrap_or(op.input);
                    }
                    op
                })
                .collect();
            let all: Vec<usize> = (0..renamed.len()).collect();
            search(model, &renamed, &all, &name, budget)
        } else {
            first
        };
        if !verdict.is_ok() {
            return verdict;
        }
    }
    Verdict::Linearizable
}

/// The empty set of unknown operations.
const NO_SET: u32 = u32::MAX;

/// 128 random bits naming operation `i` in the Zobrist hash, from
/// `seed`, which each search draws afresh: keys fixed in advance would let
/// a crafted history XOR some of them to zero (invariant 1).
fn zobrist(seed: u64, i: usize) -> u128 {
    let mut r =
        ha_core::rng::SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (u128::from(r.next_u64()) << 64) | u128::from(r.next_u64())
}

/// A seed no history can anticipate (the standard library's per-process
/// hash keys).
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

/// A configuration at a cut between segments: the model's state and the
/// unknown operations (indexes into the partition's operations, sorted)
/// linearized so far.
type Config<S> = (S, Vec<u32>);

/// The search of one partition, segment by segment (invariant 5).
fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    ops: &[usize],
    partition: &str,
    budget: u64,
) -> Verdict {
    let n = ops.len();
    let ret = |k: usize| history[ops[k]].ret.as_ref().map(|(t, _)| *t);
    let call = |k: usize| history[ops[k]].call;
    let mut known: Vec<usize> = (0..n).filter(|&k| ret(k).is_some()).collect();
    if known.is_empty() {
        return Verdict::Linearizable;
    }
    known.sort_by_key(|&k| (call(k), k));
    // Cut where no known operation is in flight: every one before the
    // cut returned before the next one was called.
    let mut segments: Vec<Segment> = Vec::new();
    let mut max_ret = 0u64;
    for &k in &known {
        if segments.is_empty() || call(k) > max_ret {
            segments.push(Segment {
                start: call(k),
                end: 0,
                known: 0,
                ops: Vec::new(),
            });
        }
        let seg = segments.last_mut().expect("pushed above");
        seg.ops.push(k as u32);
        seg.known += 1;
        max_ret = max_ret.max(ret(k).expect("known"));
        seg.end = max_ret;
    }
    // An unknown operation joins the segment in which it was called (or
    // the first); one called after the last known return can take effect
    // only when nothing can observe it, which is the same as never.
    for k in (0..n).filter(|&k| ret(k).is_none()) {
        if call(k) > max_ret {
            continue;
        }
        let i = segments
            .partition_point(|s| s.start <= call(k))
            .saturating_sub(1);
        segments[i].ops.push(k as u32);
    }
    // Invariant 8: the last segment in which each token is written.
    let mut last_write: HashMap<u64, usize> = HashMap::default();
    for (i, seg) in segments.iter().enumerate() {
        for &k in &seg.ops {
            if let Some(t) = model.written(&history[ops[k as usize]].input) {
                last_write.insert(t, i);
            }
        }
    }
    let mut frontier: Vec<Config<M::State>> = vec![(model.init(), Vec::new())];
    let mut pending = Pending::default();
    let mut in_set = vec![false; n];
    let (mut next, mut prev) = (Vec::new(), Vec::new());
    let mut steps = 0u64;
    let mut linearized = 0usize;
    let input = |u: u32| &history[ops[u as usize]].input;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let search = SegmentSearch {
            model,
            history,
            ops,
            seg,
            pending: &pending,
            want_all: !last,
        };
        let lists = (&mut next, &mut prev);
        match search.run(&frontier, &mut in_set, lists, &mut steps, budget) {
            Ok(ends) => frontier = minimal(ends),
            Err(None) => {
                return Verdict::Unknown(format!(
                    "partition {partition:?}: no answer within {budget} steps ({n} operations)"
                ));
            }
            Err(Some(stuck)) => {
                let show = |k: usize| format!("{:?}", history[ops[k]]);
                return Verdict::NotLinearizable(Failure {
                    partition: partition.to_string(),
                    linearized: linearized + stuck.depth,
                    operations: n,
                    stuck_at: stuck
                        .at
                        .map_or_else(|| "the end of the history".into(), show),
                    before: stuck.before.into_iter().map(show).collect(),
                    why: None,
                    window: (seg.start, seg.end),
                });
            }
        }
        linearized += seg.known;
        let before = pending.ops.len();
        let called = seg
            .ops
            .iter()
            .copied()
            .filter(|&k| ret(k as usize).is_none());
        pending.ops.extend(called);
        let added = pending.ops.len() > before;
        if added {
            // In index order, the order [`interchange`] gives each class.
            pending.ops.sort_unstable();
            pending.group(|u| input(u), |u| model.needs(input(u)).is_some());
        }
        // An unknown operation every configuration has linearized is
        // nobody's candidate any more, nor (invariant 8) one that needs a
        // token no state holds and nothing still to come writes: drop
        // them from the sets and the pending list, which keeps both short.
        let mut gone: Vec<u32> = frontier.first().map_or_else(Vec::new, |(_, first)| {
            first
                .iter()
                .copied()
                .filter(|u| frontier.iter().all(|(_, s)| s.binary_search(u).is_ok()))
                .collect()
        });
        for &j in &pending.needy {
            let u = pending.ops[j];
            let Some(t) = model.needs(input(u)) else {
                continue;
            };
            let dead = last_write.get(&t).is_none_or(|&w| w <= i)
                && !frontier.iter().any(|(state, _)| model.holds(state, t))
                && !pending
                    .ops
                    .iter()
                    .any(|&w| model.written(input(w)) == Some(t));
            if dead && gone.binary_search(&u).is_err() {
                gone.push(u);
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            pending.ops.retain(|u| gone.binary_search(u).is_err());
            for (_, s) in &mut frontier {
                s.retain(|u| gone.binary_search(u).is_err());
            }
            frontier = minimal(frontier);
            pending.group(|u| input(u), |u| model.needs(input(u)).is_some());
        }
        // The search linearizes the pending operations of a class in
        // order, so sets stay canonical until new ones join a class.
        if added {
            frontier = interchange(&pending, frontier);
        }
    }
    Verdict::Linearizable
}

/// The configurations of `ends` no other one dominates: per state, the
/// sets of unknown operations with no proper subset among them (fewer
/// linearized leaves more possible; invariant 3).
fn minimal<S: Clone + Eq + Hash>(ends: Vec<Config<S>>) -> Vec<Config<S>> {
    let mut by_state: HashMap<S, Vec<Vec<u32>>> = HashMap::default();
    for (s, set) in ends {
        by_state.entry(s).or_default().push(set);
    }
    let mut out = Vec::new();
    for (s, mut sets) in by_state {
        sets.sort_by_key(Vec::len);
        sets.dedup();
        let mut kept: Vec<Vec<u32>> = Vec::new();
        for set in sets {
            let dominated = kept
                .iter()
                .any(|k| k.iter().all(|u| set.binary_search(u).is_ok()));
            if !dominated {
                kept.push(set);
            }
        }
        out.extend(kept.into_iter().map(|set| (s.clone(), set)));
    }
    out
}

/// The frontier with pending operations of equal inputs made one
/// (invariant 6): in each configuration, the `c` operations of a class it
/// has linearized become the class's first `c`; then dominated and equal
/// configurations go.
fn interchange<S: Clone + Eq + Hash>(
    pending: &Pending,
    frontier: Vec<Config<S>>,
) -> Vec<Config<S>> {
    let classes: Vec<Vec<u32>> = pending
        .heads
        .iter()
        .filter(|&&h| pending.heir[h].is_some())
        .map(|&h| {
            let mut class = Vec::new();
            let mut j = Some(h);
            while let Some(i) = j {
                class.push(pending.ops[i]);
                j = pending.heir[i];
            }
            class
        })
        .collect();
    if classes.is_empty() {
        return frontier;
    }
    let canonical = frontier
        .into_iter()
        .map(|(state, mut set)| {
            for c in &classes {
                let before = set.len();
                set.retain(|u| c.binary_search(u).is_err());
                let taken = before - set.len();
                set.extend_from_slice(&c[..taken]);
            }
            set.sort_unstable();
            (state, set)
        })
        .collect();
    minimal(canonical)
}

/// The unknown operations called before a cut and not yet linearized in
/// every configuration, grouped by input (invariant 6).
#[derive(Default)]
struct Pending {
    /// Indexes into the partition's operations, in increasing order.
    ops: Vec<u32>,
    /// Each class's first member (positions in `ops`).
    heads: Vec<usize>,
    /// The next member of each one's class.
    heir: Vec<Option<usize>>,
    /// The members with a [`Model::needs`] token (invariant 8).
    needy: Vec<usize>,
}

impl Pending {
    /// Regroups `ops` (after it changed) by `input`.
    fn group<'i, I: PartialEq + 'i>(
        &mut self,
        input: impl Fn(u32) -> &'i I,
        needy: impl Fn(u32) -> bool,
    ) {
        self.heads.clear();
        self.heir.clear();
        self.heir.resize(self.ops.len(), None);
        let mut last_of_class: Vec<usize> = Vec::new();
        for (j, &u) in self.ops.iter().enumerate() {
            match last_of_class
                .iter_mut()
                .find(|i| input(self.ops[**i]) == input(u))
            {
                Some(i) => {
                    self.heir[*i] = Some(j);
                    *i = j;
                }
                None => {
                    self.heads.push(j);
                    last_of_class.push(j);
                }
            }
        }
        self.needy = (0..self.ops.len())
            .filter(|&j| needy(self.ops[j]))
            .collect();
    }
}

/// Operations between two cuts.
struct Segment {
    /// The first known call.
    start: u64,
    /// The last known return.
    end: u64,
    /// How many of `ops` are known.
    known: usize,
    /// Indexes into the partition's operations: its known ones, and the
    /// unknown ones called during it.
    ops: Vec<u32>,
}

/// Where a segment's search got stuck.
struct Stuck {
    /// The most of the segment's operations any linearization took.
    depth: usize,
    /// The operation whose return none could reach (`None`: the end).
    at: Option<usize>,
    /// The last operations linearized before it, oldest first.
    before: Vec<usize>,
}

/// Lowe's search over one segment, from each configuration of the
/// frontier.
struct SegmentSearch<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    ops: &'a [usize],
    seg: &'a Segment,
    /// Unknown operations called in earlier segments.
    pending: &'a Pending,
    /// Whether every configuration the segment can end in is wanted (or
    /// only whether there is one).
    want_all: bool,
}

impl<M: Model> SegmentSearch<'_, M> {
    /// The configurations the segment can end in (all, or one if not
    /// `want_all`); `Err(None)` if the budget ran out, `Err(Some)` if
    /// there are none.
    fn run(
        &self,
        frontier: &[Config<M::State>],
        in_set: &mut [bool],
        lists: (&mut Vec<usize>, &mut Vec<usize>),
        steps: &mut u64,
        budget: u64,
    ) -> Result<Vec<Config<M::State>>, Option<Stuck>> {
        let (history, ops) = (self.history, self.ops);
        // Entry j: pending operations first (called before the segment),
        // then the segment's own. Event 2j is j's call, 2j+1 its return.
        let pending = self.pending;
        let from = pending.ops.len();
        let m = from + self.seg.ops.len();
        let item = |j: usize| {
            if j < from {
                pending.ops[j] as usize
            } else {
                self.seg.ops[j - from] as usize
            }
        };
        let op = |j: usize| &history[ops[item(j)]];
        let unknown_op = |e: usize| op(e / 2).ret.is_none();
        // The segment's events, sorted by time; a call sorts before a
        // return at the same time (the two count as concurrent); unknown
        // returns go last. Pending operations are candidates everywhere
        // and have no return: their calls form a list of their own, so
        // the scans for known candidates never walk past them.
        let time = |e: usize| -> (u64, u8) {
            let o = op(e / 2);
            if e.is_multiple_of(2) {
                (o.call, 0)
            } else {
                o.ret.as_ref().map_or((u64::MAX, 1), |(t, _)| (*t, 1))
            }
        };
        let mut order: Vec<usize> = (2 * from..2 * m).collect();
        order.sort_by_key(|&e| (time(e), e));
        let (head, tail) = (2 * m, 2 * m + 1);
        let (pending_head, pending_tail) = (2 * m + 2, 2 * m + 3);
        // Every node is written when it is linked, before it is read.
        let (next, prev) = lists;
        next.resize(2 * m + 4, 0);
        prev.resize(2 * m + 4, 0);
        // Invariant 6 inside the search: of pending operations with equal
        // inputs, only the first not yet linearized is a candidate (every
        // start linearized a prefix of each class, and so does every
        // step), so the pending list holds one operation per class: when
        // one is linearized the next of its class takes its place.
        let heir = &pending.heir;
        let unlink = |next: &mut [usize], prev: &mut [usize], e: usize| {
            let (p, q) = (prev[e], next[e]);
            next[p] = q;
            prev[q] = p;
        };
        // Relinking in the reverse order of unlinking restores the list
        // exactly (the removed node still points at its old neighbours).
        let relink = |next: &mut [usize], prev: &mut [usize], e: usize| {
            let (p, q) = (prev[e], next[e]);
            next[p] = e;
            prev[q] = e;
        };
        let seed = fresh_seed();
        let keys: Vec<u128> = (0..m - from).map(|j| zobrist(seed, j)).collect();
        // The cache: for each (hash of the segment's known operations
        // linearized, state), the sets of unknown operations linearized
        // with them, each a node of `sets` (a list shared by its prefixes:
        // (operation, parent)). Shared by every start: they differ only in
        // their unknown operations.
        let mut cache: HashMap<(u128, M::State), Vec<u32>> = HashMap::default();
        let mut sets: Vec<(u32, u32)> = Vec::new();
        let mut ends: Vec<Config<M::State>> = Vec::new();
        let mut best: Option<Stuck> = None;
        for (start_state, start_set) in frontier {
            let mut set = NO_SET;
            for &u in start_set {
                in_set[u as usize] = true;
                sets.push((u, set));
                set = u32::try_from(sets.len() - 1).map_err(|_| None)?;
            }
            cache.entry((0, start_state.clone())).or_default().push(set);
            // Link the events of the operations this start has not
            // linearized.
            let mut link = |list: &mut dyn Iterator<Item = usize>, first: usize, end: usize| {
                let mut last = first;
                for e in list {
                    if !in_set[item(e / 2)] {
                        next[last] = e;
                        prev[e] = last;
                        last = e;
                    }
                }
                next[last] = end;
                prev[end] = last;
            };
            link(&mut order.iter().copied(), head, tail);
            // Each class's first operation this start has not linearized.
            let first_left = |&h: &usize| {
                let mut j = Some(h);
                while let Some(i) = j.filter(|&i| in_set[item(i)]) {
                    j = heir[i];
                }
                j.map(|i| 2 * i)
            };
            link(
                &mut pending.heads.iter().filter_map(first_left),
                pending_head,
                pending_tail,
            );
            // Each step: its entry, the state before it, the set before it,
            // and whether it was an eager read (invariant 9).
            let mut stack: Vec<(usize, M::State, u32, bool)> = Vec::new();
            let mut state = start_state.clone();
            let mut hash = 0u128;
            let mut entry = next[head];
            // A configuration not looked at yet, and whether `entry` is its
            // eager read.
            let (mut fresh, mut eager) = (true, false);
            // Candidates are tried in three phases (invariant 3): the
            // segment's known operations, then its unknown ones, then the
            // pending ones; an unknown write that took effect late is not
            // first placed at its call and carried through the whole
            // segment before the contradiction shows.
            let mut phase = 0u8;
            let mut known_left = self.seg.known;
            'search: loop {
                *steps += 1;
                if *steps > budget {
                    return Err(None);
                }
                if std::mem::take(&mut fresh) && known_left > 0 {
                    // Invariant 9: a known read that may answer what the
                    // state is now is taken now, and nothing else here.
                    let mut e = next[head];
                    while e != tail && e.is_multiple_of(2) {
                        let o = op(e / 2);
                        if let Some((_, out)) = &o.ret
                            && self.model.is_read(&o.input)
                            && self.model.step(&state, &o.input, Some(out)).is_some()
                        {
                            (entry, eager) = (e, true);
                            break;
                        }
                        e = next[e];
                    }
                }
                let candidate = match phase {
                    0 | 1 => entry != tail && entry.is_multiple_of(2),
                    _ => entry != pending_tail,
                };
                if known_left == 0 {
                    // Every known operation is linearized: a way through.
                    let mut end: Vec<u32> = Vec::new();
                    let mut node = set;
                    while node != NO_SET {
                        end.push(sets[node as usize].0);
                        node = sets[node as usize].1;
                    }
                    end.sort_unstable();
                    ends.push((state.clone(), end));
                    if !self.want_all {
                        return Ok(ends);
                    }
                } else if candidate {
                    let j = entry / 2;
                    let unknown = unknown_op(entry);
                    if (phase == 0 && unknown) || (phase == 1 && !unknown) {
                        entry = next[entry];
                        continue;
                    }
                    let o = op(j);
                    let out = o.ret.as_ref().map(|(_, o)| o);
                    let was_eager = std::mem::take(&mut eager);
                    // Invariant 7: an unknown blind write right after an
                    // unknown operation hides it; the sibling branch
                    // without that one dominates.
                    let hidden = unknown
                        && self.model.blind(&o.input)
                        && stack.last().is_some_and(|(e, ..)| unknown_op(*e));
                    if hidden {
                        entry = next[entry];
                        continue;
                    }
                    if let Some(s) = self.model.step(&state, &o.input, out) {
                        let k = item(j);
                        let h = if unknown { hash } else { hash ^ keys[j - from] };
                        // Invariant 3: skip a configuration one already
                        // seen dominates (the same known operations and
                        // state, a subset of these unknown ones).
                        let seen = cache.entry((h, s.clone())).or_default();
                        let dominated = seen.iter().any(|&old| {
                            let mut node = old;
                            while node != NO_SET {
                                let (o, parent) = sets[node as usize];
                                if !(in_set[o as usize] || (unknown && o as usize == k)) {
                                    return false;
                                }
                                node = parent;
                            }
                            true
                        });
                        if !dominated {
                            let previous = set;
                            fresh = true;
                            if unknown {
                                sets.push((k as u32, set));
                                set = u32::try_from(sets.len() - 1).map_err(|_| None)?;
                                in_set[k] = true;
                            } else {
                                known_left -= 1;
                            }
                            seen.push(set);
                            let before = std::mem::replace(&mut state, s);
                            stack.push((entry, before, previous, was_eager));
                            hash = h;
                            unlink(next, prev, entry);
                            if j >= from {
                                unlink(next, prev, entry + 1);
                            } else if let Some(h) = heir[j] {
                                // The heir takes the place `entry` left.
                                let (p, q) = (prev[entry], next[entry]);
                                (next[p], prev[2 * h], next[2 * h], prev[q]) = (2 * h, p, q, 2 * h);
                            }
                            entry = next[head];
                            phase = 0;
                            continue;
                        }
                    }
                    if !was_eager {
                        entry = next[entry];
                        continue;
                    }
                    // An eager read whose configuration the cache holds one
                    // that dominates: what this configuration can reach
                    // (all through the read) was searched from there.
                } else if phase < 2 {
                    // A return (or the end): the candidates of this phase
                    // end here. Then those of the next.
                    phase += 1;
                    entry = if phase == 1 {
                        next[head]
                    } else {
                        next[pending_head]
                    };
                    continue;
                } else if best.as_ref().is_none_or(|b| stack.len() > b.depth) {
                    // The first return's operation cannot be linearized on
                    // this path: note the deepest point reached.
                    let mut first_return = next[head];
                    while first_return != tail && first_return.is_multiple_of(2) {
                        first_return = next[first_return];
                    }
                    let from_stack = stack[stack.len().saturating_sub(16)..].iter();
                    best = Some(Stuck {
                        depth: stack.len(),
                        at: (first_return < 2 * m).then(|| item(first_return / 2)),
                        before: from_stack.map(|(e, ..)| item(e / 2)).collect(),
                    });
                }
                // Backtrack (past every eager read: the configuration it was
                // taken in has nothing else to try).
                let Some((e, s, previous, was_eager)) = stack.pop() else {
                    break 'search;
                };
                let j = e / 2;
                if j >= from {
                    relink(next, prev, e + 1);
                } else if let Some(h) = heir[j] {
                    unlink(next, prev, 2 * h);
                }
                relink(next, prev, e);
                if unknown_op(e) {
                    in_set[item(j)] = false;
                } else {
                    hash ^= keys[j - from];
                    known_left += 1;
                }
                set = previous;
                state = s;
                entry = next[e];
                phase = if j < from { 2 } else { u8::from(unknown_op(e)) };
                if was_eager {
                    // Straight on to the next backtrack: no candidate is
                    // left to try here.
                    (entry, phase) = (pending_tail, 2);
                }
            }
            for &u in start_set {
                in_set[u as usize] = false;
            }
        }
        if ends.is_empty() {
            Err(Some(best.unwrap_or(Stuck {
                depth: 0,
                at: None,
                before: Vec::new(),
            })))
        } else {
            Ok(ends)
        }
    }
}

// The counter form the earlier tests use, kept as a thin layer over the
// general checker.

/// What a counter operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// `add(delta)`, returning the new value if known.
    Add(i64),
    /// `get()`, returning the value.
    Get,
}

/// One operation of a counter history.
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
    let ops: Vec<Operation<CounterInput, Option<i64>>> = history
        .iter()
        .map(|op| Operation {
            client: 0,
            call: op.call,
            // Returned without a recorded value: it happened, before its
            // return, whatever it answered.
            ret: op.ret.map(|t| (t, op.result)),
            input: match op.kind {
                OpKind::Add(d) => CounterInput::Add(d),
                OpKind::Get => CounterInput::Get,
            },
        })
        .collect();
    check(&Counter { initial }, &ops).is_ok()
}
