//! Sequential specifications for the checker: a counter, a map of
//! registers (ha-kv's get / put / cas / del, checked key by key), and a bank
//! of accounts whose transfers move money and whose reads see every
//! balance at once.
//!
//! Values in the map are `u64` tokens: a workload writes each one at most
//! once, so an unknown write that no one saw can be set aside (see the
//! checker's invariant 2).

use super::Model;

/// A counter: `add(d)` answers the new value, `get` the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counter {
    /// The value before any operation.
    pub initial: i64,
}

/// A counter operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterInput {
    /// Adds `d`; answers the new value.
    Add(i64),
    /// Answers the value.
    Get,
}

impl Model for Counter {
    type State = i64;
    type Input = CounterInput;
    /// The value answered; `None`: answered, the value not recorded (the
    /// operation happened, whatever it saw).
    type Output = Option<i64>;

    fn init(&self) -> i64 {
        self.initial
    }

    fn step(&self, state: &i64, input: &CounterInput, output: Option<&Option<i64>>) -> Option<i64> {
        let next = match input {
            CounterInput::Add(d) => state.checked_add(*d)?,
            CounterInput::Get => *state,
        };
        match output {
            Some(Some(o)) if *o != next => None,
            _ => Some(next),
        }
    }

    fn is_read(&self, input: &CounterInput) -> bool {
        matches!(input, CounterInput::Get)
    }
}

/// A map of registers, as ha-kv serves it; partition by [`KvInput::key`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Kv;

/// An operation on one key of the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// `get(key)`: answers the value.
    Get {
        /// The key.
        key: u64,
    },
    /// `put(key, value)`: answers the value it replaced.
    Put {
        /// The key.
        key: u64,
        /// The value written.
        value: u64,
    },
    /// `cas(key, expected, new)`: writes `new` if the value is `expected`
    /// (`None`: absent); answers success, or the value it saw.
    Cas {
        /// The key.
        key: u64,
        /// The value it must find.
        expected: Option<u64>,
        /// The value it writes.
        new: u64,
    },
    /// `del(key)`: answers whether the key existed.
    Del {
        /// The key.
        key: u64,
    },
}

impl KvInput {
    /// The key the operation is on.
    pub fn key(&self) -> u64 {
        match self {
            KvInput::Get { key }
            | KvInput::Put { key, .. }
            | KvInput::Cas { key, .. }
            | KvInput::Del { key } => *key,
        }
    }
}

/// What a map operation answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// A get's value, or the value a put replaced.
    Value(Option<u64>),
    /// A cas: `Ok` if it wrote, else the value it saw.
    Cas(Result<(), Option<u64>>),
    /// Whether a del found the key.
    Existed(bool),
    /// A put or del acknowledged without an answer (as `ha-kv` reports
    /// them): it took effect, whatever the value was.
    Done,
}

impl Model for Kv {
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<u64>> {
        let (next, answer) = match *input {
            KvInput::Get { .. } => (*state, KvOutput::Value(*state)),
            KvInput::Put { value, .. } => (Some(value), KvOutput::Value(*state)),
            KvInput::Cas { expected, new, .. } => {
                if *state == expected {
                    (Some(new), KvOutput::Cas(Ok(())))
                } else {
                    (*state, KvOutput::Cas(Err(*state)))
                }
            }
            KvInput::Del { .. } => (None, KvOutput::Existed(state.is_some())),
        };
        match output {
            Some(KvOutput::Done) if self.blind(input) => Some(next),
            Some(o) if *o != answer => None,
            _ => Some(next),
        }
    }

    fn is_read(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }

    fn blind(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Put { .. } | KvInput::Del { .. })
    }

    fn written(&self, input: &KvInput) -> Option<u64> {
        match *input {
            KvInput::Put { value, .. } => Some(value),
            KvInput::Cas { new, .. } => Some(new),
            // A del writes no token: an unknown one is always searched.
            KvInput::Get { .. } | KvInput::Del { .. } => None,
        }
    }

    fn rename(&self, input: &KvInput, token: u64) -> Option<KvInput> {
        match *input {
            KvInput::Put { key, .. } => Some(KvInput::Put { key, value: token }),
            KvInput::Cas { key, expected, .. } => Some(KvInput::Cas {
                key,
                expected,
                new: token,
            }),
            KvInput::Get { .. } | KvInput::Del { .. } => None,
        }
    }

    fn needs(&self, input: &KvInput) -> Option<u64> {
        match *input {
            KvInput::Cas {
                expected: Some(v), ..
            } => Some(v),
            _ => None,
        }
    }

    fn holds(&self, state: &Option<u64>, token: u64) -> bool {
        *state == Some(token)
    }

    fn seen(&self, input: &KvInput, output: Option<&KvOutput>, out: &mut Vec<u64>) {
        if let KvInput::Cas {
            expected: Some(v), ..
        } = input
        {
            out.push(*v);
        }
        if let Some(KvOutput::Value(Some(v)) | KvOutput::Cas(Err(Some(v)))) = output {
            out.push(*v);
        }
    }
}

/// A bank: `accounts` balances starting at `initial` each; transfers move
/// money and fail rather than overdraw; a read answers every balance.
#[derive(Clone, Copy, Debug)]
pub struct Bank {
    /// How many accounts.
    pub accounts: usize,
    /// Each account's balance at the start.
    pub initial: i64,
}

/// A bank operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BankInput {
    /// Moves `amount` from `from` to `to` if `from` holds that much.
    Transfer {
        /// The account debited.
        from: usize,
        /// The account credited.
        to: usize,
        /// How much (positive).
        amount: i64,
    },
    /// Reads every balance.
    Read,
}

/// What a bank operation answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankOutput {
    /// Whether the transfer happened (false: not enough money).
    Moved(bool),
    /// Every balance, in account order.
    Balances(Vec<i64>),
}

impl Model for Bank {
    type State = Vec<i64>;
    type Input = BankInput;
    type Output = BankOutput;

    fn init(&self) -> Vec<i64> {
        vec![self.initial; self.accounts]
    }

    fn step(
        &self,
        state: &Vec<i64>,
        input: &BankInput,
        output: Option<&BankOutput>,
    ) -> Option<Vec<i64>> {
        match *input {
            BankInput::Read => match output {
                Some(BankOutput::Balances(b)) if b == state => Some(state.clone()),
                None => Some(state.clone()),
                Some(_) => None,
            },
            BankInput::Transfer { from, to, amount } => {
                let (f, t) = (*state.get(from)?, *state.get(to)?);
                let moved = from != to && amount > 0 && f >= amount;
                match output {
                    Some(BankOutput::Moved(m)) if *m == moved => {}
                    None => {}
                    Some(_) => return None,
                }
                let mut next = state.clone();
                if moved {
                    next[from] = f - amount;
                    next[to] = t.checked_add(amount)?;
                }
                Some(next)
            }
        }
    }

    fn is_read(&self, input: &BankInput) -> bool {
        matches!(input, BankInput::Read)
    }
}
