//! The debug-build determinism check: a command run again on a copy of
//! the state it ran on must give the same result and leave the same state
//! (see [`super::Sessions::with_determinism_check`]).
//!
//! Invariant: everything here runs user code (encoding, decoding, the
//! command) under `catch_unwind`; a panic is a finding, never the end of
//! the node.

use super::sessions::{Kept, run_command};
use super::{ApplyContext, Replicated, decode_exact};

/// What the determinism check found for one command, least severe first
/// (the order is how two findings combine: the worse one stands).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Replay {
    /// The same result and state.
    Same,
    /// The same only once every sequence is sorted: a `HashSet`, or a
    /// `Vec` filled in a hash collection's order (then it is a bug).
    OrderOnly(&'static str),
    /// The check could not run (why).
    Unchecked(String),
    /// Another result or state.
    Differs(&'static str),
}

/// Compares two values by their canonical encodings ([`crate::canon`]):
/// in order first, and sorted only if that differs.
fn compare(
    a: impl Fn(bool) -> Result<Vec<u8>, String>,
    b: impl Fn(bool) -> Result<Vec<u8>, String>,
    what: &'static str,
) -> Replay {
    let both = |sorted: bool| -> Result<bool, String> { Ok(a(sorted)? == b(sorted)?) };
    match both(false) {
        Ok(true) => Replay::Same,
        Ok(false) => match both(true) {
            Ok(true) => Replay::OrderOnly(what),
            Ok(false) => Replay::Differs(what),
            Err(e) => Replay::Unchecked(format!("its encoding failed ({e})")),
        },
        Err(e) => Replay::Unchecked(format!("its encoding failed ({e})")),
    }
}

/// Runs `body` again on a copy of the state restored from `before` and
/// compares results and states by canonical encodings (maps sorted, so a
/// `HashMap` rebuilt with other hash keys compares equal; sequences in
/// order, then sorted to tell an order-only difference). Both are always
/// compared, and the worse finding stands. All of it is user code
/// (encoding, decoding, the command), so a panic anywhere is caught and
/// reported as unchecked, never the end of the node.
pub(super) fn replay<T: Replicated>(
    state: &T,
    before: &[u8],
    body: &[u8],
    ctx: &ApplyContext,
    kept: &Kept,
) -> Replay {
    let check = || -> Replay {
        let mut copy = match T::restore_state(before) {
            Ok(c) => c,
            Err(e) => return Replay::Unchecked(format!("its state does not restore ({e})")),
        };
        let Ok(command) = decode_exact::<T::Command>(body) else {
            return Replay::Unchecked("its command does not decode".into());
        };
        let again = run_command(&mut copy, command, ctx);
        let result = match (&again, kept) {
            (a, b) if a == b => Replay::Same,
            (Kept::Output(a), Kept::Output(b)) => {
                let canon = |bytes: &[u8], sorted: bool| -> Result<Vec<u8>, String> {
                    let v = decode_exact::<T::CommandOutput>(bytes)?;
                    let order = if sorted {
                        crate::canon::Order::Sorted
                    } else {
                        crate::canon::Order::Kept
                    };
                    crate::canon::canonical(&v, order)
                };
                compare(|o| canon(a, o), |o| canon(b, o), "gave another result")
            }
            _ => Replay::Differs("gave another result"),
        };
        let state = compare(
            |o| copy.canonical_state(o).map_err(|e| e.to_string()),
            |o| state.canonical_state(o).map_err(|e| e.to_string()),
            "left another state",
        );
        result.max(state)
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
        .unwrap_or_else(|_| Replay::Unchecked("running it again panicked".into()))
}
