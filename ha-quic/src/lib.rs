//! # ha-quic
//!
//! The QUIC transport of ha: peer and client traffic on one quinn endpoint
//! per node, mutual TLS against a cluster CA, length-prefixed postcard
//! frames with hard size limits.
//!
//! ## Layout
//! - [`certs`]: create and load the cluster CA and node/client certificates.
//! - [`tls`]: rustls/quinn configuration, ALPN, and the LAN-tuned transport
//!   parameters (their reasons are in that module's docs).
//! - [`frame`]: the wire format of every stream, and reading frames within
//!   a size cap, a memory budget and a deadline.
//! - [`transport`]: the endpoint, peer senders and the accept loop that
//!   checks identities; the resource limits against hostile peers and
//!   clients ([`QuicLimits`]); implements `ha_core::transport::Transport`.
//! - [`client`]: the client protocol and a minimal client.
//! - [`node`]: starting a Raft node on a QUIC endpoint in one call.
//! - [`resolve`]: how names of nodes become addresses to dial.
//! - [`local`]: [`LocalCluster`], an embedded cluster on loopback.
#![deny(missing_docs)]

pub mod certs;
pub mod client;
pub mod frame;
pub mod local;
pub mod node;
pub mod resolve;
pub mod tls;
pub mod transport;

pub use certs::{TlsIdentity, create_cluster_certs, load_client_identity, load_node_identity};
pub use client::{ClientRequest, ClientResponse, QuicClient, QuicClientTransport, connect};
pub use local::{LocalCluster, LocalOptions};
pub use node::QuicNode;
pub use resolve::Resolver;
pub use transport::{QuicConfig, QuicEndpoint, QuicLimits, QuicTransport};
