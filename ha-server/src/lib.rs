//! # ha-server
//!
//! Runs any replicated type (`#[derive(Replicated)]` with `#[replicated]`)
//! as a real service: one node per process, peers and clients over QUIC
//! with mutual TLS, a durable data directory, Prometheus metrics and
//! health endpoints over HTTP, clean shutdown on SIGINT/SIGTERM, and the
//! operator command line of the `ha-kv` contract.
//!
//! ## In Rust
//!
//! ```no_run
//! # use ha_core::{Replicated, replicated};
//! # #[derive(Default, serde::Serialize, serde::Deserialize, Replicated)]
//! # pub struct Counter { n: u64 }
//! # #[replicated] impl Counter { pub fn add(&mut self) -> u64 { self.n += 1; self.n } }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = ha_server::Server::<Counter>::builder()
//!     .id(1)
//!     .listen("127.0.0.1:7001")
//!     .peers(["1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=127.0.0.1:7003"])
//!     .data_dir("/var/lib/counter")
//!     .tls_dir("/etc/counter/tls")
//!     .http("127.0.0.1:9101")
//!     .start()
//!     .await?;
//! server.run_until_signal().await?;
//! # Ok(()) }
//! ```
//!
//! ## As a program
//!
//! `fn main() { ha_server::cli::main::<Counter>() }` gives `certs`, `serve`,
//! `status`, `panic-policy` and `resume`; a service adds its own client
//! commands beside them (see [`cli`]).
//!
//! ## Layout
//! - [`Server`], [`ServerBuilder`]: start and stop a node from options.
//! - [`ServeError`]: why a start was refused, naming the option to fix.
//! - [`cli`]: the operator command line.
//! - `/metrics`, `/healthz`, `/readyz`, and the live page at `/`:
//!   [`HttpLimits`], [`readiness`].
//! - [`downtime`]: the downtime totals kept over restarts.
#![deny(missing_docs)]

pub mod cli;
pub mod downtime;
mod error;
mod http;
mod metrics;
mod page;
mod peers;
mod server;

pub use error::ServeError;
pub use http::{HttpLimits, NotReady, READY_MAX_APPLY_LAG, readiness};
pub use server::{
    DEFAULT_ELECTION_TIMEOUT, DEFAULT_HEARTBEAT, DEFAULT_SNAPSHOT_EVERY, HandOver, Server,
    ServerBuilder, Stopped,
};
