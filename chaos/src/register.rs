//! The register workload: clients run get, put, cas and del on a few keys
//! through `ha-kv repl` (the shipped client, one process per client), and
//! every call and answer is recorded for the checker, each key checked on
//! its own.
//!
//! Owns: the operations' choice and their lines and answers. Invariant:
//! every value written is distinct (client and sequence number), so a
//! read names the one write it saw.

use ha_core::rng::SplitMix64;
use serde_json::Value;

use crate::lincheck::{self, Kv, KvInput, KvOutput};
use crate::workload::{Op, Workload, not_applied_code, verdict};

/// The register workload over `keys` keys, and [`CANARY_KEYS`] more that
/// only the final phase writes.
#[derive(Clone, Copy, Debug)]
pub struct Register {
    /// Keys the clients share.
    pub keys: u64,
}

/// Keys past the workload's that the final phase writes just before the
/// final restart, each attempt a key of its own: no workload operation,
/// and no other attempt (an unknown one included), touches it, so a
/// restart that loses an acknowledged write cannot be explained away.
pub const CANARY_KEYS: u64 = 16;

/// Canary writes that must be acknowledged before the final restart.
pub const CANARY_WRITES: u64 = 4;

impl Workload for Register {
    type Model = Kv;
    type Client = Client;

    fn client(&self, id: u64, seed: u64) -> Client {
        Client::new(id, seed, self.keys + CANARY_KEYS)
    }

    fn choose(&self, c: &mut Client) -> KvInput {
        c.choose(self.keys)
    }

    fn line(input: &KvInput) -> String {
        line(input)
    }

    fn outcome(input: &KvInput, answer: &Value) -> Result<Option<Option<KvOutput>>, String> {
        outcome(input, answer)
    }

    fn answered(c: &mut Client, input: &KvInput, output: &KvOutput) -> bool {
        match output {
            KvOutput::Value(v) | KvOutput::Cas(Err(v)) => {
                if let Some(seen) = c.last_seen.get_mut(input.key() as usize) {
                    *seen = *v;
                }
                false
            }
            _ => true,
        }
    }

    fn canaries(&self) -> u64 {
        CANARY_WRITES
    }

    fn canary(&self, c: &mut Client, _: u64) -> KvInput {
        // Past the last canary key (sixteen attempts made), the last one
        // again: the run goes on, with a weaker canary.
        let key = self.keys + c.canaries.min(CANARY_KEYS - 1);
        c.canaries += 1;
        KvInput::Put {
            key,
            value: c.next_value(),
        }
    }

    fn final_reads(&self) -> Vec<KvInput> {
        (0..self.keys + CANARY_KEYS)
            .map(|key| KvInput::Get { key })
            .collect()
    }

    fn check(&self, history: &[Op<Self>]) -> Result<(), String> {
        verdict(lincheck::check_partitioned(&Kv, history, |i| i.key()))
    }
}

/// The command line for `input`.
fn line(input: &KvInput) -> String {
    match *input {
        KvInput::Get { key } => format!("get k{key}"),
        KvInput::Put { key, value } => format!("put k{key} {value}"),
        KvInput::Del { key } => format!("del k{key}"),
        KvInput::Cas { key, expected, new } => match expected {
            Some(e) => format!("cas k{key} {e} {new}"),
            None => format!("cas k{key} --absent {new}"),
        },
    }
}

/// A value as the checker knows it: the decimal number written, or a
/// token no write uses (so a value nobody wrote fails the check).
fn value(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.parse().unwrap_or(u64::MAX - 1))),
        other => Err(format!(
            "a value that is neither a string nor null: {other}"
        )),
    }
}

/// What an answer means: `Ok(Some)` an answer for the history, `Ok(None)`
/// certainly not applied, `Err` a broken contract. An unknown outcome is
/// `Ok(Some(None))`.
#[allow(clippy::type_complexity)]
fn outcome(input: &KvInput, answer: &Value) -> Result<Option<Option<KvOutput>>, String> {
    let broken = || {
        format!(
            "an answer outside the contract to {:?}: {answer}",
            line(input)
        )
    };
    // A get's value and a mismatch's current value must be there (null
    // for absent); a missing one is not read as absent.
    let field = |name: &str| answer.get(name).ok_or_else(broken).and_then(value);
    match answer.get("ok") {
        Some(Value::Bool(true)) => Ok(Some(Some(match input {
            KvInput::Get { .. } => KvOutput::Value(field("value")?),
            KvInput::Cas { .. } => KvOutput::Cas(Ok(())),
            KvInput::Put { .. } | KvInput::Del { .. } => KvOutput::Done,
        }))),
        Some(Value::Bool(false)) => match answer.get("error").and_then(Value::as_str) {
            Some("mismatch") if matches!(input, KvInput::Cas { .. }) => {
                Ok(Some(Some(KvOutput::Cas(Err(field("value")?)))))
            }
            Some("usage") => Err(format!("the client refused {:?}: {answer}", line(input))),
            Some(code) if not_applied_code(code) => Ok(None),
            _ => Err(broken()),
        },
        Some(Value::Null) => Ok(Some(None)),
        _ => Err(broken()),
    }
}

/// One client's part of a run.
pub struct Client {
    /// Its id in the history.
    pub id: u64,
    /// Its choices.
    pub rng: SplitMix64,
    /// The values it last saw, per key (cas expects them).
    pub last_seen: Vec<Option<u64>>,
    /// Writes so far (values are `(id + 1) << 32 | n`).
    pub writes: u64,
    /// Canary writes attempted so far (each on a key of its own).
    pub canaries: u64,
}

impl Client {
    /// A client with id `id`, seeded from the run's seed, that remembers
    /// what it saw of `keys` keys.
    pub fn new(id: u64, seed: u64, keys: u64) -> Client {
        Client {
            id,
            rng: crate::workload::client_rng(seed, id, 17),
            last_seen: vec![None; keys as usize],
            writes: 0,
            canaries: 0,
        }
    }

    /// A value no other write of the run uses.
    pub fn next_value(&mut self) -> u64 {
        self.writes += 1;
        ((self.id + 1) << 32) | self.writes
    }

    /// The next operation, on one of the first `keys` keys.
    pub fn choose(&mut self, keys: u64) -> KvInput {
        let key = self.rng.range(0, keys);
        match self.rng.range(0, 10) {
            0..=3 => KvInput::Get { key },
            4..=5 => KvInput::Put {
                key,
                value: self.next_value(),
            },
            6..=8 => KvInput::Cas {
                key,
                expected: self.last_seen[key as usize],
                new: self.next_value(),
            },
            _ => KvInput::Del { key },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_map_to_the_history_as_the_contract_says() {
        let get = KvInput::Get { key: 1 };
        let put = KvInput::Put { key: 1, value: 7 };
        let cas = KvInput::Cas {
            key: 1,
            expected: None,
            new: 8,
        };
        let out = |i: &KvInput, v: Value| outcome(i, &v);
        assert_eq!(
            out(&get, json!({"ok": true, "value": "7"})),
            Ok(Some(Some(KvOutput::Value(Some(7)))))
        );
        assert_eq!(
            out(&get, json!({"ok": true, "value": null})),
            Ok(Some(Some(KvOutput::Value(None))))
        );
        // A value no write wrote cannot pass as any written one.
        assert_eq!(
            out(&get, json!({"ok": true, "value": "x"})),
            Ok(Some(Some(KvOutput::Value(Some(u64::MAX - 1)))))
        );
        assert_eq!(
            out(&put, json!({"ok": true})),
            Ok(Some(Some(KvOutput::Done)))
        );
        assert_eq!(
            out(&cas, json!({"ok": true})),
            Ok(Some(Some(KvOutput::Cas(Ok(())))))
        );
        assert_eq!(
            out(
                &cas,
                json!({"ok": false, "error": "mismatch", "value": "3"})
            ),
            Ok(Some(Some(KvOutput::Cas(Err(Some(3))))))
        );
        // Certainly not applied: out of the history. Unknown: no return.
        assert_eq!(
            out(
                &put,
                json!({"ok": false, "error": "not_applied", "message": "m"})
            ),
            Ok(None)
        );
        assert_eq!(
            out(
                &put,
                json!({"ok": null, "error": "timeout", "message": "m"})
            ),
            Ok(Some(None))
        );
        // A refused line, no "ok", a value of the wrong type, a get or a
        // mismatch without its value, a mismatch of anything but a cas, or
        // a refusal without a code break the contract.
        assert!(out(&put, json!({"ok": false, "error": "usage", "message": "m"})).is_err());
        // A command that ran and failed, or a code nobody knows, is not
        // "certainly not applied".
        assert!(
            out(
                &put,
                json!({"ok": false, "error": "failed", "message": "m"})
            )
            .is_err()
        );
        assert!(out(&put, json!({"ok": false, "error": "gone", "message": "m"})).is_err());
        assert!(out(&put, json!({"value": "1"})).is_err());
        assert!(out(&get, json!({"ok": true, "value": 5})).is_err());
        assert!(out(&get, json!({"ok": true})).is_err());
        assert!(out(&cas, json!({"ok": false, "error": "mismatch"})).is_err());
        assert!(
            out(
                &put,
                json!({"ok": false, "error": "mismatch", "value": "3"})
            )
            .is_err()
        );
        assert!(out(&put, json!({"ok": false, "message": "m"})).is_err());
    }

    #[test]
    fn command_lines_are_the_repl_grammar() {
        assert_eq!(line(&KvInput::Get { key: 3 }), "get k3");
        assert_eq!(line(&KvInput::Put { key: 3, value: 9 }), "put k3 9");
        assert_eq!(line(&KvInput::Del { key: 3 }), "del k3");
        let cas = |expected| KvInput::Cas {
            key: 3,
            expected,
            new: 4,
        };
        assert_eq!(line(&cas(None)), "cas k3 --absent 4");
        assert_eq!(line(&cas(Some(2))), "cas k3 2 4");
    }

    #[test]
    fn clients_write_distinct_values_and_choose_by_seed() {
        let mut a = Client::new(0, 5, 4);
        let mut b = Client::new(1, 5, 4);
        let (va, vb) = (a.next_value(), b.next_value());
        assert_ne!(va, vb);
        assert_ne!(a.next_value(), va);
        let picks = |seed| {
            let mut c = Client::new(3, seed, 4);
            (0..20).map(|_| c.choose(4)).collect::<Vec<_>>()
        };
        assert_eq!(picks(9), picks(9));
        assert_ne!(picks(9), picks(10));
    }
}
