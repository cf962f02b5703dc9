//! An exact linearizability check, in `O(n log n)`, for the one shape of
//! counter history the general search finds hardest: every add adds 1 and
//! answers the new value, and every answer carries its value. With one
//! counter there is no key to split on, busy clients leave no quiet point
//! to cut at, and each unknown add may take effect anywhere after its call
//! or never, so the general search's cost climbs steeply with the number of
//! unknown adds (35 in a history of 94,000 operations exhaust its budget).
//! Here they cost a sort.
//!
//! Owns: [`check_adds_of_one`]. The argument, with `0` as the initial
//! value (values counted from it):
//! 1. A linearization makes the counter step through `1, 2, ..., M` where
//!    `M` is the largest value any answer names (later steps, if unknown
//!    adds take effect after every answer, are seen by no one). Call `t_v`
//!    the point where it reaches `v`; `t_1 <= t_2 <= ...` (points at one
//!    instant may take any order: a call at the same time as another
//!    operation's return is concurrent with it).
//! 2. Step `v` is made by exactly one add: the answered add that answered
//!    `v` (two such adds: not linearizable; a value no add may answer,
//!    `< 1`: not linearizable), else an unknown add called at or before
//!    `t_v`, each unknown add making at most one step. Unknown adds that
//!    make no step never took effect.
//! 3. An answered add of `v` called at `c`, returned at `e`: `c <= t_v <=
//!    e`. A read that answered `x`, called at `c`, returned at `e`: the
//!    counter is `x` at some point of `[c, e]`, i.e. `t_x <= e` and
//!    `t_{x+1} >= c` (when they exist).
//!    So every constraint is a lower bound `L_v` or an upper bound `U_v` on
//!    one `t_v`, besides the order of the `t_v` and the unknown adds of
//!    rule 2.
//! 4. Placing each `t_v` at its earliest, `v = 1..=M` in turn, is optimal:
//!    `t_v = max(t_{v-1}, L_v, call of the unknown add used)`, and for an
//!    unmatched step the unknown add with the earliest call among those
//!    left is used (any left whose call is at most `t_v` is as good for
//!    every later step, since later steps come no earlier). Every bound is
//!    met by the earliest placement if it is met by any, so the history is
//!    linearizable iff no `t_v` so placed passes `U_v` and no step lacks
//!    its add.

use super::{CounterInput, Failure, Operation, Verdict};

/// Checks a counter history (initial value `initial`) exactly, if it has
/// the shape this check handles: every add adds 1 and every answer
/// carries its value. `None` if it does not (use the general search).
pub fn check_adds_of_one(
    initial: i64,
    history: &[Operation<CounterInput, Option<i64>>],
) -> Option<Verdict> {
    if history.iter().any(|o| match (&o.input, &o.ret) {
        (CounterInput::Add(d), _) if *d != 1 => true,
        (_, Some((_, None))) => true,
        _ => false,
    }) {
        return None;
    }
    // `placed`: the steps placed before the one that failed.
    let fail = |why: String, at: &Operation<CounterInput, Option<i64>>, window, placed| {
        Verdict::NotLinearizable(Failure {
            partition: String::new(),
            linearized: placed,
            operations: history.len(),
            stuck_at: format!("{at:?}"),
            before: Vec::new(),
            why: Some(why),
            window,
        })
    };
    // The answered steps, each value's add; the values reads saw; the
    // largest value named. Values are counted from `initial`.
    let mut answered: Vec<(u64, usize)> = Vec::new();
    let mut reads: Vec<(u64, usize)> = Vec::new();
    let mut unknown: Vec<u64> = Vec::new();
    let mut top = 0u64;
    for (i, o) in history.iter().enumerate() {
        let Some((ret, Some(value))) = &o.ret else {
            // Unknown: a read constrains nothing, an add may make a step.
            if o.input != CounterInput::Get {
                unknown.push(o.call);
            }
            continue;
        };
        let Some(v) = value
            .checked_sub(initial)
            .and_then(|v| u64::try_from(v).ok())
        else {
            return Some(fail(
                format!("answered a value below the initial {initial}"),
                o,
                (o.call, *ret),
                0,
            ));
        };
        if o.input == CounterInput::Get {
            reads.push((v, i));
        } else if v == 0 {
            return Some(fail(
                "an add answered the initial value".into(),
                o,
                (o.call, *ret),
                0,
            ));
        } else {
            answered.push((v, i));
        }
        top = top.max(v);
    }
    // Values are bounded by the history's length or fail: a value above
    // the number of adds can have no add for every step below it.
    let adds = answered.len() + unknown.len();
    if top > adds as u64 {
        let (_, i) = answered
            .iter()
            .chain(&reads)
            .copied()
            .max_by_key(|(v, _)| *v)
            .expect("top came from an answer");
        let o = &history[i];
        return Some(fail(
            format!(
                "it answered {}, but the history holds only {adds} adds (an add applied twice?)",
                top as i64 + initial
            ),
            o,
            (o.call, o.ret.as_ref().map_or(u64::MAX, |r| r.0)),
            0,
        ));
    }
    let m = top as usize;
    // Bounds on t_1..=t_M (index v-1), each with the operation that set
    // the upper one (for the report), and the answered add of each step.
    let mut lower = vec![0u64; m];
    let mut upper: Vec<(u64, Option<usize>)> = vec![(u64::MAX, None); m];
    let mut owner: Vec<Option<usize>> = vec![None; m];
    let mut tighten = |v: usize, ret: u64, i: usize| {
        if ret < upper[v].0 {
            upper[v] = (ret, Some(i));
        }
    };
    for &(v, i) in &answered {
        let o = &history[i];
        let v = v as usize - 1;
        if let Some(other) = owner[v] {
            return Some(fail(
                format!(
                    "another add answered the same value: {:?} (an add applied twice?)",
                    history[other]
                ),
                o,
                (o.call, o.ret.as_ref().map_or(u64::MAX, |r| r.0)),
                0,
            ));
        }
        owner[v] = Some(i);
        lower[v] = lower[v].max(o.call);
        tighten(v, o.ret.as_ref().map_or(u64::MAX, |r| r.0), i);
    }
    for &(r, i) in &reads {
        let o = &history[i];
        let ret = o.ret.as_ref().map_or(u64::MAX, |r| r.0);
        let r = r as usize;
        if r >= 1 {
            tighten(r - 1, ret, i);
        }
        if r < m {
            lower[r] = lower[r].max(o.call);
        }
    }
    unknown.sort_unstable();
    let mut next_unknown = 0;
    let mut t = 0u64;
    for v in 0..m {
        t = t.max(lower[v]);
        if owner[v].is_none() {
            // Never short after the `top > adds` check (the unanswered
            // steps are at most the unknown adds); kept so that a change
            // there cannot turn into an index out of bounds.
            let Some(&call) = unknown.get(next_unknown) else {
                let (_, i) = upper[v];
                let at = i.map_or(&history[0], |i| &history[i]);
                return Some(fail(
                    format!(
                        "the counter must step from {} to {} with no add left to make the step",
                        v as i64 + initial,
                        v as i64 + 1 + initial
                    ),
                    at,
                    (t, upper[v].0),
                    v,
                ));
            };
            next_unknown += 1;
            t = t.max(call);
        }
        if t > upper[v].0 {
            let i = upper[v].1.expect("a finite bound has its operation");
            return Some(fail(
                format!(
                    "the counter must be {} by {}, but cannot reach it before {}",
                    v as i64 + 1 + initial,
                    upper[v].0,
                    t
                ),
                &history[i],
                (t, upper[v].0),
                v,
            ));
        }
    }
    Some(Verdict::Linearizable)
}
