//! The bank workload: clients move money between a few accounts and read
//! every balance through `ha-bank repl` (one process, so one session, per
//! client). The total never changes: every read must add up to it (told
//! apart from other failures), and the whole history must be
//! linearizable against a bank (each read is a state the transfers reach
//! in an order real time allows).
//!
//! Owns: the operations' choice and their lines and answers. Invariants:
//! the accounts and opening balances are those `ha-bank` starts with; the
//! last two accounts are only the final phase's canary transfers'.

use ha_core::rng::SplitMix64;
use serde_json::Value;

use crate::lincheck::{self, Bank, BankInput, BankOutput};
use crate::workload::{Op, Workload, client_rng, valued_outcome, verdict};

/// The bank workload over `ha-bank`'s accounts (at least four: the
/// workload's transfers use all but the last two).
#[derive(Clone, Copy, Debug)]
pub struct BankLoad {
    /// How many accounts (`ha-bank`'s `ACCOUNTS`).
    pub accounts: usize,
    /// What each opens with (`ha-bank`'s `OPENING`).
    pub opening: i64,
}

/// `ha-bank`'s bank: 8 accounts of 100.
pub const HA_BANK: BankLoad = BankLoad {
    accounts: 8,
    opening: 100,
};

/// A client's state: its seeded choices.
pub struct BankClient {
    rng: SplitMix64,
}

impl Workload for BankLoad {
    type Model = Bank;
    type Client = BankClient;

    fn client(&self, id: u64, seed: u64) -> BankClient {
        BankClient {
            rng: client_rng(seed, id, 41),
        }
    }

    fn choose(&self, c: &mut BankClient) -> BankInput {
        if c.rng.range(0, 10) < 3 {
            return BankInput::Read;
        }
        // The last two accounts are the canaries' own.
        let n = self.accounts.saturating_sub(2).max(2) as u64;
        let from = c.rng.range(0, n);
        // Never to itself: the other accounts in turn.
        let to = (from + c.rng.range(1, n.max(2))) % n;
        BankInput::Transfer {
            from: from as usize,
            to: to as usize,
            amount: c.rng.range(1, 30) as i64,
        }
    }

    fn line(input: &BankInput) -> String {
        match input {
            BankInput::Transfer { from, to, amount } => format!("transfer {from} {to} {amount}"),
            BankInput::Read => "balances".to_string(),
        }
    }

    fn outcome(input: &BankInput, answer: &Value) -> Result<Option<Option<BankOutput>>, String> {
        valued_outcome(&Self::line(input), answer, |v| match input {
            BankInput::Transfer { .. } => v.as_bool().map(BankOutput::Moved),
            BankInput::Read => v
                .as_array()?
                .iter()
                .map(Value::as_i64)
                .collect::<Option<Vec<i64>>>()
                .map(BankOutput::Balances),
        })
    }

    fn answered(_: &mut BankClient, _: &BankInput, output: &BankOutput) -> bool {
        matches!(output, BankOutput::Moved(true))
    }

    fn canaries(&self) -> u64 {
        2
    }

    fn canary(&self, _: &mut BankClient, _: u64) -> BankInput {
        // Between the two accounts no workload transfer touches: 1 moves
        // whenever the first holds money (it opens with plenty), so an
        // acknowledged canary that a restart lost cannot be explained by
        // other transfers.
        BankInput::Transfer {
            from: self.accounts - 2,
            to: self.accounts - 1,
            amount: 1,
        }
    }

    fn final_reads(&self) -> Vec<BankInput> {
        vec![BankInput::Read]
    }

    fn check(&self, history: &[Op<Self>]) -> Result<(), String> {
        let total = i128::from(self.opening) * self.accounts as i128;
        for op in history {
            if let Some((_, BankOutput::Balances(b))) = &op.ret {
                if b.len() != self.accounts {
                    return Err(format!(
                        "client {} read {} balances, not {}: {b:?}",
                        op.client,
                        b.len(),
                        self.accounts
                    ));
                }
                // In i128: values from the wire cannot overflow the sum.
                let sum: i128 = b.iter().map(|&v| i128::from(v)).sum();
                if sum != total {
                    return Err(format!(
                        "the total changed: client {} read {b:?}, which adds up to {sum}, not {total}",
                        op.client
                    ));
                }
            }
        }
        let bank = Bank {
            accounts: self.accounts,
            initial: self.opening,
        };
        verdict(lincheck::check(&bank, history))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_map_to_the_history_as_the_contract_says() {
        let t = BankInput::Transfer {
            from: 1,
            to: 2,
            amount: 5,
        };
        let out = |i: &BankInput, v: Value| BankLoad::outcome(i, &v);
        assert_eq!(
            out(&t, json!({"ok": true, "value": true})),
            Ok(Some(Some(BankOutput::Moved(true))))
        );
        assert_eq!(
            out(&BankInput::Read, json!({"ok": true, "value": [1, 2]})),
            Ok(Some(Some(BankOutput::Balances(vec![1, 2]))))
        );
        assert_eq!(
            out(&t, json!({"ok": null, "error": "unknown"})),
            Ok(Some(None))
        );
        assert_eq!(
            out(
                &t,
                json!({"ok": false, "error": "unavailable", "message": "m"})
            ),
            Ok(None)
        );
        assert!(out(&t, json!({"ok": true})).is_err());
        assert!(out(&t, json!({"ok": true, "value": 3})).is_err());
        assert!(out(&BankInput::Read, json!({"ok": true, "value": [1, "2"]})).is_err());
        assert!(out(&t, json!({"ok": false, "error": "usage", "message": "m"})).is_err());
        assert!(out(&t, json!({"ok": false, "error": "failed", "message": "m"})).is_err());
        assert!(out(&t, json!({"ok": false, "message": "m"})).is_err());
    }

    #[test]
    fn transfers_are_between_two_accounts_and_lines_are_the_repl_grammar() {
        let mut c = HA_BANK.client(1, 9);
        for _ in 0..200 {
            if let BankInput::Transfer { from, to, amount } = HA_BANK.choose(&mut c) {
                assert!(from < 6 && to < 6 && from != to && (1..30).contains(&amount));
            }
        }
        let t = BankInput::Transfer {
            from: 3,
            to: 0,
            amount: 7,
        };
        assert_eq!(BankLoad::line(&t), "transfer 3 0 7");
        assert_eq!(BankLoad::line(&BankInput::Read), "balances");
    }

    #[test]
    fn a_read_that_does_not_add_up_fails_the_check() {
        let read = |b: Vec<i64>| Operation {
            client: 0,
            call: 0,
            ret: Some((1, BankOutput::Balances(b))),
            input: BankInput::Read,
        };
        let small = BankLoad {
            accounts: 2,
            opening: 10,
        };
        assert_eq!(small.check(&[read(vec![10, 10])]), Ok(()));
        let v = small.check(&[read(vec![10, 11])]);
        assert!(
            v.as_ref().is_err_and(|e| e.contains("adds up to 21")),
            "{v:?}"
        );
    }

    use crate::lincheck::Operation;
}
