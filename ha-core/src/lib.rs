//! # ha-core
//!
//! The heart of ha: a deterministic Raft core and the storage it writes to.
//!
//! ## Layout
//! - [`raft`]: the sans-IO consensus core. A plain struct driven by
//!   [`Raft::step`](raft::Raft::step), [`Raft::tick`](raft::Raft::tick),
//!   [`Raft::propose`](raft::Raft::propose) and
//!   [`Raft::read_index`](raft::Raft::read_index); it hands out a
//!   [`Ready`](raft::Ready) and takes [`Raft::advance`](raft::Raft::advance).
//!   No async, no clock, no IO inside. Small pure modules sit beside it:
//!   `membership` (quorums), `progress` (per-follower flow control), `log`
//!   (the in-memory log and its cursors), `read` (ReadIndex rounds).
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
//!
//!
//! ## A one-node cluster in a few lines
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
//!     while raft.has_ready() {
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

pub mod client;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod raft;
pub mod sm;
pub mod storage;
pub mod transport;
pub mod types;

pub use client::{Client, ClientOptions, Error};
pub use ha_macros::{Replicated, replicated};
pub use protocol::Consistency;
pub use sm::{ApplyContext, Replicated, StateMachine};

/// Re-exports for generated code. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use bytes;
    pub use postcard;
    pub use serde;
}
