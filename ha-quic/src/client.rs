//! The client protocol on ALPN `ha-client/1`, and a minimal client.
//!
//! Owns: the request and response types, and [`QuicClient`], which sends one
//! request per bidirectional stream to one node. Leader discovery, retries
//! and exactly-once sessions are built on top of this by the generic client.
//!
//! A request gets exactly one response frame, then the stream ends.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::certs::TlsIdentity;
use crate::frame::{self, FrameError, MAX_FRAME_BYTES};
use crate::tls::{self, ALPN_CLIENT, QuicOptions};

/// What a client asks a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Replicate and apply a command.
    Propose(Bytes),
    /// A linearizable read barrier.
    Read,
    /// The node's status.
    Status,
}

/// A node's status, as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Node id.
    pub id: u64,
    /// Role: leader, follower, precandidate, candidate.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: Option<u64>,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_index: u64,
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The command was applied at `index`; `answer` is the state machine's.
    Applied {
        /// Log index of the command.
        index: u64,
        /// The state machine's answer.
        answer: Bytes,
    },
    /// Reads may be served at or after this index.
    ReadIndex {
        /// The index.
        index: u64,
    },
    /// The node's status.
    Status(StatusView),
    /// This node is not the leader (nothing was done).
    NotLeader {
        /// The leader it knows of.
        leader: Option<u64>,
        /// Where to reach that leader.
        leader_addr: Option<SocketAddr>,
    },
    /// The request failed.
    Failed {
        /// Whether the command certainly did not take effect.
        not_applied: bool,
        /// What happened.
        message: String,
    },
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed (including a refused certificate).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The node.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request or its response was lost; its outcome is unknown.
    #[error("request failed: {0}")]
    Request(String),
    /// TLS settings were refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A connection from a client to one node.
pub struct QuicClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl QuicClient {
    /// Connects to the node at `addr` (whose certificate must name
    /// `server_name`, e.g. `node-1` or `localhost`) with `identity`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        identity: &TlsIdentity,
    ) -> Result<QuicClient, ClientError> {
        let cfg = tls::client_config(identity, ALPN_CLIENT, &QuicOptions::default())?;
        QuicClient::connect_with(addr, server_name, cfg).await
    }

    /// Connects with a prepared configuration.
    pub async fn connect_with(
        addr: SocketAddr,
        server_name: &str,
        cfg: quinn::ClientConfig,
    ) -> Result<QuicClient, ClientError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("a valid wildcard address");
        let connect_err = |reason: String| ClientError::Connect { addr, reason };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_err(e.to_string()))?;
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(QuicClient {
            _endpoint: endpoint,
            conn,
        })
    }

    /// Sends one request and waits for its response.
    pub async fn request(&self, req: &ClientRequest) -> Result<ClientResponse, ClientError> {
        let fail = |e: &dyn std::fmt::Display| ClientError::Request(e.to_string());
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| fail(&e))?;
        let mut buf = Vec::new();
        frame::encode(req, &mut buf).map_err(|e| fail(&e))?;
        send.write_all(&buf).await.map_err(|e| fail(&e))?;
        send.finish().map_err(|e| fail(&e))?;
        match frame::read_frame(&mut recv, MAX_FRAME_BYTES).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(ClientError::Request("the node closed the stream".into())),
            Err(e @ FrameError::Stream(_)) | Err(e) => Err(fail(&e)),
        }
    }
}
