//! Method shapes the macros once mishandled, now generated correctly: an
//! argument named `ctx` beside the `&ApplyContext` (it shadowed the
//! context), a raw identifier method (`r#type`, which panicked the macro),
//! `Self` as an argument or return type (it named the generated enum, which
//! then contained itself), and a private replicated type (its generated
//! items warned `private_interfaces`; this file denies warnings).

#![deny(warnings)]

use ha_core::sm::{ApplyContext, StateMachine};
use ha_core::types::{LogIndex, Term};
use ha_core::{Replicated, replicated};
use serde::{Deserialize, Serialize};

/// A private type (not `pub`, at the crate's root): its generated items
/// must not warn.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Replicated)]
struct Ledger {
    total: u64,
    last_time_ms: u64,
    kind: String,
}

#[replicated]
impl Ledger {
    /// `ctx` is the argument's own name; the context is another.
    pub fn add(&mut self, ctx: u64, context: &ApplyContext) -> u64 {
        self.total += ctx;
        self.last_time_ms = context.time_ms;
        self.total
    }
    /// A raw identifier, as the method and as an argument.
    pub fn r#type(&mut self, r#type: String) {
        self.kind = r#type;
    }
    /// `Self` as an argument and as the answer.
    pub fn merge(&mut self, other: Self) -> Self {
        self.total += other.total;
        self.clone()
    }
    /// `Self` nested in an argument's type, and an argument that takes the
    /// context's own name.
    pub fn merge_all(
        &mut self,
        others: Vec<Option<Box<Self>>>,
        apply_context: u64,
        context: &ApplyContext,
    ) -> u64 {
        self.total += others.iter().flatten().map(|o| o.total).sum::<u64>() + apply_context;
        self.last_time_ms = context.time_ms;
        self.total
    }
}

fn ctx(time_ms: u64) -> ApplyContext {
    ApplyContext {
        index: LogIndex(1),
        term: Term(1),
        time_ms,
    }
}

#[test]
fn an_argument_named_ctx_does_not_shadow_the_context() {
    let mut l = Ledger::default();
    let out = l.apply_command(LedgerCommand::Add { ctx: 5 }, &ctx(1234));
    assert!(matches!(out, LedgerCommandOutput::Add(5)));
    assert_eq!(l.last_time_ms, 1234, "the context reached the method");
}

#[test]
fn a_raw_identifier_method_becomes_a_plain_variant() {
    let mut l = Ledger::default();
    l.apply_command(
        LedgerCommand::Type {
            r#type: "audit".into(),
        },
        &ctx(1),
    );
    assert_eq!(l.kind, "audit");
}

#[test]
fn self_in_a_signature_names_the_replicated_type() {
    let mut l = Ledger {
        total: 2,
        ..Ledger::default()
    };
    let other = Ledger {
        total: 3,
        ..Ledger::default()
    };
    match l.apply_command(LedgerCommand::Merge { other }, &ctx(1)) {
        LedgerCommandOutput::Merge(merged) => assert_eq!(merged.total, 5),
        _ => panic!("expected the merge's output"),
    }
}

#[test]
fn self_nested_in_an_argument_and_the_contexts_own_name_work() {
    let mut l = Ledger::default();
    let others = vec![
        Some(Box::new(Ledger {
            total: 4,
            ..Ledger::default()
        })),
        None,
    ];
    let out = l.apply_command(
        LedgerCommand::MergeAll {
            others,
            apply_context: 1,
        },
        &ctx(777),
    );
    assert!(matches!(out, LedgerCommandOutput::MergeAll(5)));
    assert_eq!(l.last_time_ms, 777, "the context reached the method");
}

/// A module whose own types take the names `#[replicated]` would generate:
/// `prefix` gives the generated items another stem.
mod taken_names {
    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    /// The module's own type, named as the commands of `Tally` would be.
    pub struct TallyCommand;

    /// The module's own client type.
    pub struct TallyClient;

    /// A counter whose generated items are named `CountCommand`, ...
    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Tally {
        n: u64,
    }

    #[replicated(prefix = "Count")]
    impl Tally {
        /// Adds.
        pub fn add(&mut self, x: u64) -> u64 {
            self.n += x;
            self.n
        }
    }

    /// Names every item, so each must exist.
    pub fn names() -> (TallyCommand, TallyClient, CountCommand, Option<CountClient>) {
        (TallyCommand, TallyClient, CountCommand::Add { x: 1 }, None)
    }
}

#[test]
fn a_prefix_renames_the_generated_items_where_the_names_are_taken() {
    use ha_core::StateMachine;
    let (_, _, cmd, _) = taken_names::names();
    let mut t = taken_names::Tally::default();
    let ctx = ApplyContext {
        index: LogIndex(1),
        term: Term(1),
        time_ms: 0,
    };
    match t.apply_command(cmd, &ctx) {
        taken_names::CountCommandOutput::Add(n) => assert_eq!(n, 1),
    }
}

/// Code the determinism scan must not take for what it looks for: a local
/// named `rand`, a module of one's own named `process`, a type named
/// `File`, iterating ordered collections, and hash collections used only
/// for lookups and inserts, or iterated where allowed.
mod scan_false_alarms {
    use std::collections::{BTreeMap, HashMap};

    use ha_core::{Replicated, replicated};
    use serde::{Deserialize, Serialize};

    /// A module of the user's own.
    mod process {
        /// A step.
        pub fn step(x: u64) -> u64 {
            x + 1
        }
    }

    /// A type of the user's own named `File`.
    #[derive(Default, Serialize, Deserialize)]
    pub struct File {
        size: u64,
    }

    /// A state with ordered and hash collections.
    #[derive(Default, Serialize, Deserialize, Replicated)]
    pub struct Files {
        by_name: BTreeMap<String, File>,
        index: HashMap<String, u64>,
        seed: u64,
    }

    #[replicated]
    impl Files {
        /// Adds a file.
        pub fn add(&mut self, name: String, size: u64, rand: u64) -> u64 {
            self.seed = process::step(rand);
            self.index.insert(name.clone(), size);
            let file = File { size };
            self.by_name.insert(name, file);
            self.by_name.values().map(|f| f.size).sum::<u64>() + self.index.len() as u64
        }
        /// A sum does not depend on the order.
        #[replicated(allow(hash_iteration))]
        pub fn total(&mut self) -> u64 {
            self.index.values().sum()
        }
        /// A nested helper with a `self` of its own, and a seeded
        /// generator's constructor path.
        pub fn helper(&mut self) -> u64 {
            struct Local {
                items: Vec<u64>,
            }
            impl Local {
                fn sum(&self) -> u64 {
                    self.items.iter().sum()
                }
            }
            mod rand {
                pub struct StdRng;
                impl StdRng {
                    pub fn seed_from_u64(s: u64) -> u64 {
                        s
                    }
                }
            }
            Local { items: vec![1, 2] }.sum() + rand::StdRng::seed_from_u64(self.seed)
        }
    }
}
