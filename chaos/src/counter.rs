//! The counter workload: clients add small amounts to one counter and
//! read it through `ha-counter repl` (the typed client of the example
//! service; one process, so one session, per client). An add is not
//! idempotent and answers the new value, so an add applied twice (a retry
//! across a leader change that the session failed to recognise) or lost
//! shows in the values answered.
//!
//! Owns: the operations' choice and their lines and answers. Invariant:
//! every answered add and get carries the value it saw, so the checker
//! places each one exactly.

use ha_core::rng::SplitMix64;
use serde_json::Value;

use crate::lincheck::{self, Counter, CounterInput};
use crate::workload::{Op, Workload, client_rng, valued_outcome, verdict};

/// The counter workload (one counter, starting at 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterLoad;

/// A client's state: its seeded choices.
pub struct CounterClient {
    rng: SplitMix64,
}

/// Adds the final phase makes before the whole-cluster restart.
pub const CANARY_ADDS: u64 = 2;

impl Workload for CounterLoad {
    type Model = Counter;
    type Client = CounterClient;

    fn client(&self, id: u64, seed: u64) -> CounterClient {
        CounterClient {
            rng: client_rng(seed, id, 29),
        }
    }

    fn choose(&self, c: &mut CounterClient) -> CounterInput {
        // Every add adds 1: unknown adds are then one class to the checker
        // (any k of them leave the same state), so its search stays small
        // however many there are. Distinct deltas would not catch more:
        // a pending unknown add can always absorb one extra effect, and
        // with many kinds of delta the subsets that do multiply.
        if c.rng.range(0, 10) < 4 {
            CounterInput::Get
        } else {
            CounterInput::Add(1)
        }
    }

    fn line(input: &CounterInput) -> String {
        match input {
            CounterInput::Add(d) => format!("add {d}"),
            CounterInput::Get => "get".to_string(),
        }
    }

    fn outcome(
        input: &CounterInput,
        answer: &Value,
    ) -> Result<Option<Option<Option<i64>>>, String> {
        valued_outcome(&Self::line(input), answer, |v| v.as_i64().map(Some))
    }

    fn answered(_: &mut CounterClient, input: &CounterInput, _: &Option<i64>) -> bool {
        matches!(input, CounterInput::Add(_))
    }

    fn canaries(&self) -> u64 {
        CANARY_ADDS
    }

    fn canary(&self, _: &mut CounterClient, _: u64) -> CounterInput {
        CounterInput::Add(1)
    }

    fn final_reads(&self) -> Vec<CounterInput> {
        vec![CounterInput::Get]
    }

    fn check(&self, history: &[Op<Self>]) -> Result<(), String> {
        // Every add adds 1 and answers its value: the exact check of that
        // shape, whose cost does not climb with unknown adds.
        let v = lincheck::counter::check_adds_of_one(0, history)
            .unwrap_or_else(|| lincheck::check(&Counter { initial: 0 }, history));
        verdict(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_map_to_the_history_as_the_contract_says() {
        let add = CounterInput::Add(2);
        let out = |v: Value| CounterLoad::outcome(&add, &v);
        assert_eq!(
            out(json!({"ok": true, "value": 7})),
            Ok(Some(Some(Some(7))))
        );
        assert_eq!(
            CounterLoad::outcome(&CounterInput::Get, &json!({"ok": true, "value": -3})),
            Ok(Some(Some(Some(-3))))
        );
        assert_eq!(
            out(json!({"ok": null, "error": "unknown", "message": "m"})),
            Ok(Some(None))
        );
        assert_eq!(
            out(json!({"ok": false, "error": "unavailable", "message": "m"})),
            Ok(None)
        );
        // No value, a value that is not a number, a refused line, a
        // mismatch, a refusal without a code: outside the contract.
        assert!(out(json!({"ok": true})).is_err());
        assert!(out(json!({"ok": true, "value": "7"})).is_err());
        assert!(out(json!({"ok": false, "error": "usage", "message": "m"})).is_err());
        assert!(out(json!({"ok": false, "error": "failed", "message": "m"})).is_err());
        assert!(out(json!({"ok": false, "error": "gone", "message": "m"})).is_err());
        assert!(out(json!({"ok": false, "error": "mismatch", "value": 1})).is_err());
        assert!(out(json!({"ok": false, "message": "m"})).is_err());
        assert!(out(json!({"value": 1})).is_err());
    }

    #[test]
    fn lines_are_the_repl_grammar_and_choices_follow_the_seed() {
        assert_eq!(CounterLoad::line(&CounterInput::Add(3)), "add 3");
        assert_eq!(CounterLoad::line(&CounterInput::Get), "get");
        let picks = |seed, id| {
            let mut c = CounterLoad.client(id, seed);
            (0..30)
                .map(|_| CounterLoad.choose(&mut c))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(4, 1), picks(4, 1));
        assert_ne!(picks(4, 1), picks(5, 1));
        assert_ne!(picks(4, 1), picks(4, 2));
        assert!(picks(4, 1).iter().all(|i| match i {
            CounterInput::Add(d) => *d == 1,
            CounterInput::Get => true,
        }));
    }
}
