//! # ha-core
//!
//! Turn a plain Rust struct into a fault-tolerant replicated service: write
//! the struct and its methods, add two attributes, and get a replicated
//! command log (Raft), durable storage with snapshots, exactly-once commands,
//! linearizable queries and a typed async client. Nodes talk over QUIC with
//! mutual TLS (the `ha-quic` crate).
//!
//! The path, step by step: [dependencies](#1-dependencies), [your
//! type](#2-your-replicated-type), [what the client looks
//! like](#3-the-client-it-generates), [a cluster in one
//! process](#4-a-cluster-in-one-process), [what errors
//! mean](#5-three-outcomes), [separate processes](#6-separate-processes),
//! [changing the type later](#7-changing-the-type-later). The raw Raft core
//! comes [last](#the-raw-core-a-one-node-cluster-driven-by-hand).
//!
//! ## 1. Dependencies
//!
//! ```toml
//! [dependencies]
//! ha-core = { path = "../ha/ha-core" }   # this repository's crates
//! ha-quic = { path = "../ha/ha-quic" }   # the QUIC transport, LocalCluster
//! ha-server = { path = "../ha/ha-server" } # separate processes: Server, the CLI
//! serde = { version = "1", features = ["derive"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "signal"] }
//! ```
//!
//! ## 2. Your replicated type
//!
//! `#[derive(Replicated)]` on the struct (its state: snapshots) and
//! `#[replicated]` on its `impl` block (its behaviour). `pub fn` methods
//! taking `&mut self` become **commands**: replicated through the log and
//! applied exactly once on every replica. `pub fn` methods taking `&self`
//! become **queries**: linearizable reads with no log entry.
//!
//! ```
//! use std::collections::BTreeMap;
//! use ha_core::{replicated, ApplyContext, Replicated};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize, Replicated)]
//! pub struct Inventory {
//!     stock: BTreeMap<String, u32>,
//!     last_change_ms: u64,
//! }
//!
//! #[replicated]
//! impl Inventory {
//!     /// Adds `qty` of `item`. `ctx` is optional: the entry's index, term
//!     /// and the leader's clock, the same on every replica.
//!     pub fn receive(&mut self, item: String, qty: u32, ctx: &ApplyContext) {
//!         *self.stock.entry(item).or_default() += qty;
//!         self.last_change_ms = ctx.time_ms;
//!     }
//!     /// Takes `qty` of `item` out; an application error is a value.
//!     pub fn ship(&mut self, item: String, qty: u32) -> Result<u32, String> {
//!         let have = self.stock.get_mut(&item).ok_or("no such item")?;
//!         if *have < qty {
//!             return Err(format!("only {have} in stock"));
//!         }
//!         *have -= qty;
//!         Ok(*have)
//!     }
//!     /// Stock of one item.
//!     pub fn stock(&self, item: String) -> u32 {
//!         self.stock.get(&item).copied().unwrap_or(0)
//!     }
//! }
//! ```
//!
//! The rules, each checked at compile time with an error that says what to
//! write instead: methods are synchronous and not generic; arguments and
//! return values are owned and serializable (`String`, not `&str`); a
//! command may take `&ApplyContext`, a query may not. A command must be
//! **deterministic**: it may depend only on the state, its arguments and its
//! `ApplyContext`, or replicas drift apart. The macro refuses what it can
//! see (clocks, randomness, the environment, IO, and iterating a `HashMap`
//! or `HashSet` field), each with an opt-out,
//! `#[replicated(allow(clock, random, env, io, hash_iteration))]`; debug
//! builds also replay a sample of commands on a copy of the state
//! ([`sm::Sessions::with_determinism_check`]). A command that panics is
//! answered as failed on every replica alike ([`sm::PanicPolicy`]).
//!
//! ## 3. The client it generates
//!
//! The macros generate `InventoryClient` (also `<Inventory as
//! Replicated>::Client`): cheap to clone, `Send + Sync`, one async method
//! per command and query with the same name and arguments, minus the
//! context, and every result wrapped in `Result<_, ha_core::Error>`:
//!
//! | in your `impl` | on the client |
//! |---|---|
//! | `fn receive(&mut self, item: String, qty: u32, ctx: &ApplyContext)` | `async fn receive(&self, item: String, qty: u32) -> Result<(), Error>` |
//! | `fn ship(&mut self, item: String, qty: u32) -> Result<u32, String>` | `async fn ship(&self, item: String, qty: u32) -> Result<Result<u32, String>, Error>` |
//! | `fn stock(&self, item: String) -> u32` | `async fn stock(&self, item: String) -> Result<u32, Error>` |
//!
//! The outer `Result` says whether the cluster ran the call; the inner one
//! is your method's own answer.
//!
//! ## 4. A cluster in one process
//!
//! `ha_quic::LocalCluster` starts nodes on loopback, each with its own
//! runtime, data directory and certificate, over real QUIC: the same code
//! path as separate machines, for tests, demos and trying things out.
//!
//! ```
//! # use std::collections::BTreeMap;
//! # use ha_core::{replicated, ApplyContext, Replicated};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize, Replicated)]
//! # pub struct Inventory { stock: BTreeMap<String, u32> }
//! # #[replicated]
//! # impl Inventory {
//! #     pub fn receive(&mut self, item: String, qty: u32, _ctx: &ApplyContext) {
//! #         *self.stock.entry(item).or_default() += qty;
//! #     }
//! #     pub fn ship(&mut self, item: String, qty: u32) -> Result<u32, String> {
//! #         let have = self.stock.get_mut(&item).ok_or("no such item")?;
//! #         if *have < qty { return Err(format!("only {have} in stock")); }
//! #         *have -= qty;
//! #         Ok(*have)
//! #     }
//! #     pub fn stock(&self, item: String) -> u32 { self.stock.get(&item).copied().unwrap_or(0) }
//! # }
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut cluster = ha_quic::LocalCluster::<Inventory>::start(3).await?;
//!     // Finds the leader itself; waits up to 30 s for an answer (a failover
//!     // on a loaded machine takes a few hundred ms).
//!     let client = cluster.client_with(ha_core::ClientOptions {
//!         timeout: std::time::Duration::from_secs(30),
//!         ..Default::default()
//!     });
//!
//!     client.receive("widget".into(), 10).await?;
//!     assert_eq!(client.ship("widget".into(), 4).await?, Ok(6));
//!     assert_eq!(client.ship("widget".into(), 99).await?, Err("only 6 in stock".into()));
//!
//!     // Kill the leader: the client finds the new one, nothing is lost.
//!     let leader = cluster.leader().await.expect("a leader");
//!     cluster.kill(leader).await;
//!     assert_eq!(client.stock("widget".into()).await?, 6);
//!     cluster.restart(leader).await?;
//!
//!     cluster.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! ## 5. Three outcomes
//!
//! `Ok` means the command was applied (once). An [`Error`] says which of the
//! other two happened: [`Error::is_not_applied`] means it certainly never
//! takes effect (refused before it reached a log: too large, over the
//! storage quota, a session that expired before it was sent);
//! [`Error::is_unknown`] means it may still take effect (a timeout after
//! sending, a leader lost mid-commit). Within one call the client retries
//! by itself (other nodes, new leaders) under one session number, so that
//! call is applied at most once. A call you make again after an error is a
//! *new* command: after `is_unknown`, the first may still have applied, so
//! read the state before repeating a command that is not idempotent. The
//! framework's errors print their explanation with both `{}` and `{:?}`, so
//! `main` returning `Box<dyn Error>` shows it as written.
//!
//! ## 6. Separate processes
//!
//! Each node is a process with a listen address, its peers' addresses, a
//! data directory and a TLS directory. The `ha-server` crate runs any
//! replicated type so: its operator command line (`certs`, `serve`,
//! `status`, `panic-policy`, `resume`, with the flags, JSON lines and exit
//! codes of `ha-kv`) is one line, `fn main() { ha_server::cli::main::<Inventory>() }`,
//! and its builder starts a node from Rust:
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use ha_core::{replicated, Replicated};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize, Replicated)]
//! # pub struct Inventory { stock: BTreeMap<String, u32> }
//! # #[replicated]
//! # impl Inventory {
//! #     pub fn stock(&self, item: String) -> u32 { self.stock.get(&item).copied().unwrap_or(0) }
//! # }
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let server = ha_server::Server::<Inventory>::builder()
//!         .id(1)
//!         .listen("0.0.0.0:7000")
//!         .peers(["1=10.0.0.1:7000", "2=10.0.0.2:7000", "3=10.0.0.3:7000"])
//!         .data_dir("data")
//!         .tls_dir("tls")
//!         .http("127.0.0.1:9100") // /metrics, /healthz, /readyz
//!         .start()
//!         .await?;
//!     server.run_until_signal().await?;
//!     Ok(())
//! }
//! ```
//!
//! Underneath, the node opens its data directory for its type
//! (`DataDir::open_for::<Inventory, _>`, so a directory written by another
//! version of `Inventory` is refused instead of misread) and starts with
//! `ha_quic::QuicNode::start_replicated::<Inventory>`, which keeps the
//! directory (and its lock) until it is dropped. Clients connect with
//! `ha_quic::connect::<Inventory>(addrs, &client_identity, options)`.
//!
//! ## 7. Changing the type later
//!
//! Commands, their results and the state travel and are stored by position
//! (postcard). Every node and client computes fingerprints of their shapes
//! by tracing the types through serde, recursively
//! ([`schema::Schema::of`]); a node refuses a data directory, a snapshot, a
//! peer or a client of another fingerprint, with an error naming both,
//! rather than misread old data. Renaming an argument, adding a query or
//! respelling a type changes nothing stored and keeps the stored
//! fingerprint; the README's "Writing and evolving a replicated type" lists
//! what changes it and why.
//!
//! ## Layout
//! - [`raft`]: the sans-IO consensus core. A plain struct driven by
//!   [`Raft::step`](raft::Raft::step), [`Raft::tick`](raft::Raft::tick),
//!   [`Raft::propose`](raft::Raft::propose) and
//!   [`Raft::read_index`](raft::Raft::read_index); it hands out a
//!   [`Ready`](raft::Ready) and takes [`Raft::advance`](raft::Raft::advance).
//!   No async, no clock, no IO inside. Small private modules sit beside it:
//!   `membership` (quorums), `progress` (per-follower flow control), `log`
//!   (the in-memory log and its cursors), `read` (ReadIndex rounds), and its
//!   duties split by file (`inputs`, `election`, `replication`,
//!   `following`, `repair`, `ready`).
//! - [`storage`]: the [`LogStore`](storage::LogStore) trait; the durable
//!   segmented write-ahead log with group commit; snapshot files; the locked
//!   data directory; the file layer (real, or simulated with crashes).
//! - [`node`]: the async node (one tokio task driving a core) and the
//!   driver's duties for one `Ready`, in the one safe order.
//! - [`transport`]: the `Transport` trait and an in-memory network.
//! - [`sm`]: the traits the macros implement, the apply context, and the
//!   session table that makes commands exactly-once.
//! - [`client`]: the generic client (leader discovery, retries, outcomes).
//! - [`protocol`]: what clients and nodes say to each other.
//! - [`types`]: node ids, terms, indexes, entries, hard state.
//! - [`serving`]: what a node answers its clients (whatever carries bytes).
//! - [`schema`]: the structural fingerprints of a replicated type.
//! - [`metrics`]: a node's histograms and availability accounting.
//! - [`rng`]: the seeded generator every layer shares.
//!
//! ## Public API
//! What a user of a replicated type needs is at the root:
//! [`Replicated`](macro@Replicated) and [`replicated`] (the macros),
//! [`ApplyContext`], [`Client`] and [`ClientOptions`], [`Consistency`], and
//! [`ClientError`] (also named [`Error`]). Running processes is
//! `ha-server`'s (`Server`, the operator command line); a cluster in one
//! process is `ha_quic::LocalCluster`.
//!
//! Layers below are public for drivers and transports of one's own: the
//! core ([`raft::Raft`], its messages, [`raft::Ready`]), storage
//! ([`storage::Wal`], [`storage::DataDir`], [`storage::SnapshotStore`], the
//! [`storage::Vfs`] file layer), the node ([`node::start_node`], and
//! [`node::start_checked_node`] for a replicated type on a checked data
//! directory,
//! [`node::NodeHandle`], [`node::Pipeline`]) and the state-machine traits
//! ([`sm::Applier`]). Their internals are private: the in-memory log and its
//! cursors, per-follower progress, ReadIndex rounds, group commit's thread
//! and the node task itself are reachable only through those types, so no
//! caller can break the invariants their modules state. Items under
//! `__private` serve the macros' generated code and are not API.
//!
//! ## The raw core: a one-node cluster driven by hand
//!
//! Under the replicated type and the node sits a deterministic, sans-IO
//! Raft core ([`raft::Raft`]). You drive it yourself only to embed Raft in a
//! runtime of your own (or to test it): tick it, step messages into it, and
//! handle each [`Ready`](raft::Ready) in the order [`node::Pipeline`]
//! documents.
//!
//! ```
//! use bytes::Bytes;
//! use ha_core::raft::{Config, InitialState, Membership, Raft};
//! use ha_core::storage::{LogStore, MemLogStore};
//! use ha_core::types::NodeId;
//!
//! let mut store = MemLogStore::new();
//! let init = InitialState {
//!     membership: Membership::new_voters([NodeId(1)]),
//!     ..InitialState::default()
//! };
//! let mut raft = Raft::new(Config::new(NodeId(1)), init).unwrap();
//! let mut applied = Vec::new();
//! let mut drive = |raft: &mut Raft, store: &mut MemLogStore, applied: &mut Vec<_>| {
//!     while raft.prepare_ready() {
//!         let rd = raft.ready();
//!         store.append(&rd.entries).unwrap();
//!         if let Some(hs) = rd.hard_state { store.save_hard_state(hs).unwrap(); }
//!         store.sync().unwrap();
//!         applied.extend(rd.committed_entries.iter().cloned());
//!         raft.advance(rd.token());
//!     }
//! };
//! while !raft.is_leader() {
//!     raft.tick();
//!     drive(&mut raft, &mut store, &mut applied);
//! }
//! let (index, _term) = raft.propose(Bytes::from_static(b"hello")).unwrap();
//! drive(&mut raft, &mut store, &mut applied);
//! assert_eq!(applied.last().unwrap().index, index);
//! ```
#![deny(missing_docs)]

/// Makes an error type's `Debug` its `Display` text: a `main` returning
/// `Result<(), Box<dyn Error>>` prints errors with `Debug`, and the message
/// written for people is the one to show. Used on every public error type.
#[doc(hidden)]
#[macro_export]
macro_rules! debug_as_display {
    ($t:ty) => {
        impl ::core::fmt::Debug for $t {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(self, f)
            }
        }
    };
}

mod canon;
pub mod client;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod raft;
pub mod rng;
pub mod schema;
pub mod serving;
pub mod sm;
pub mod storage;
pub mod transport;
pub mod types;

pub use client::{Client, ClientError, ClientOptions, Error, Member, MemberRole, Members};
pub use ha_macros::{Replicated, replicated};
pub use protocol::Consistency;
pub use sm::{ApplyContext, Replicated, StateMachine};

/// Re-exports for generated code. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use bytes;
    pub use postcard;
    pub use serde;

    /// The probes `#[replicated]` generates where a command iterates a
    /// field of `self`: they compile for every type but `HashMap` and
    /// `HashSet`, whose iteration order differs between replicas
    /// (autoref specialization: the `HashMap` impl is found first).
    pub mod determinism {
        use std::collections::{HashMap, HashSet};

        /// A field under test.
        pub struct Probe<'a, T: ?Sized>(pub &'a T);

        /// What a probe of a `HashMap` or `HashSet` gives.
        pub struct Unordered;
        impl Unordered {
            /// Named by the probe; deprecated, so that under the probe's
            /// `deny(deprecated)` naming it is an error with this note.
            #[deprecated(
                note = "iterating a `HashMap` or `HashSet` inside a command visits its entries in \
                        an order that differs between replicas, so the replicas drift apart: use \
                        a `BTreeMap` or `BTreeSet`, or sort the entries first (lookups and \
                        inserts are fine). If the order cannot matter, add \
                        `#[replicated(allow(hash_iteration))]` to the method"
            )]
            pub fn __ha_iteration_order(self) {}
        }

        /// What a probe of any other type gives.
        pub struct Ordered;
        impl Ordered {
            /// Named by the probe: fine.
            pub fn __ha_iteration_order(self) {}
        }

        /// Found first, for the two unordered collections.
        pub trait IsUnordered {
            /// The probe.
            fn __ha_check(&self) -> Unordered {
                Unordered
            }
        }
        impl<K, V, S> IsUnordered for Probe<'_, HashMap<K, V, S>> {}
        impl<K, S> IsUnordered for Probe<'_, HashSet<K, S>> {}
        impl<K, V, S> IsUnordered for Probe<'_, Box<HashMap<K, V, S>>> {}
        impl<K, S> IsUnordered for Probe<'_, Box<HashSet<K, S>>> {}
        impl<K, V, S> IsUnordered for Probe<'_, std::sync::Arc<HashMap<K, V, S>>> {}
        impl<K, S> IsUnordered for Probe<'_, std::sync::Arc<HashSet<K, S>>> {}
        impl<K, V, S> IsUnordered for Probe<'_, std::rc::Rc<HashMap<K, V, S>>> {}
        impl<K, S> IsUnordered for Probe<'_, std::rc::Rc<HashSet<K, S>>> {}

        /// Found one autoref later, for everything else.
        pub trait IsOrdered {
            /// The probe.
            fn __ha_check(&self) -> Ordered {
                Ordered
            }
        }
        impl<T: ?Sized> IsOrdered for &Probe<'_, T> {}
    }

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// [`ReplicatedValue`](crate::sm::ReplicatedValue) with serde's traits
    /// as supertraits, for `where` clauses: `#[replicated]` makes the items
    /// it generates hold only where every argument and return type is one,
    /// so a type that is not gives one error (its check), not a cascade of
    /// serde errors.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be sent to other replicas: arguments and return values of \
                   replicated methods must implement serde's `Serialize` and `Deserialize`",
        label = "not serializable",
        note = "derive them (`#[derive(Serialize, Deserialize)]`), or use an owned type that \
                implements them"
    )]
    pub trait ValueBound: Serialize + DeserializeOwned {}

    // `do_not_recommend`: an error names this trait (and its message), not
    // the serde bound behind it.
    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned> ValueBound for T {}

    /// Snapshot encoding of a replicated state, for `#[derive(Replicated)]`:
    /// a state that is not serializable gives this one error, not serde's.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a replicated state: its snapshots need serde's \
                   `Serialize` and `Deserialize`",
        label = "not serializable",
        note = "add `#[derive(Serialize, Deserialize)]` to the struct (its fields' types \
                need them too)"
    )]
    pub trait StateCodec: Sized {
        /// Encodes the state.
        fn encode(&self) -> Result<Vec<u8>, crate::sm::StateError>;
        /// Decodes a state.
        fn decode(bytes: &[u8]) -> Result<Self, crate::sm::StateError>;
        /// The state's canonical wire shape.
        fn shape() -> Result<String, crate::schema::SchemaError>;
        /// The state's canonical encoding, for comparisons.
        fn canonical(&self, sorted: bool) -> Result<Vec<u8>, crate::sm::StateError>;
    }

    #[diagnostic::do_not_recommend]
    impl<T: Serialize + DeserializeOwned> StateCodec for T {
        fn encode(&self) -> Result<Vec<u8>, crate::sm::StateError> {
            postcard::to_stdvec(self).map_err(|e| crate::sm::StateError::Encode(e.to_string()))
        }
        fn decode(bytes: &[u8]) -> Result<Self, crate::sm::StateError> {
            crate::sm::decode_exact(bytes).map_err(crate::sm::StateError::Decode)
        }
        fn shape() -> Result<String, crate::schema::SchemaError> {
            crate::schema::shape_of::<T>()
        }
        fn canonical(&self, sorted: bool) -> Result<Vec<u8>, crate::sm::StateError> {
            let order = if sorted {
                crate::canon::Order::Sorted
            } else {
                crate::canon::Order::Kept
            };
            crate::canon::canonical(self, order).map_err(crate::sm::StateError::Encode)
        }
    }
}
