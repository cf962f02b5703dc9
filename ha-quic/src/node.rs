//! A Raft node on a QUIC endpoint, started in one call.
//!
//! Owns: the order of start-up (bind the endpoint, start the node with the
//! endpoint's transport, then accept connections for it) and of shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use ha_core::node::{
    NodeHandle, NodeOptions, NodeStorage, recover, start_checked_node, start_node,
};
use ha_core::raft::InitialState;
use ha_core::sm::Applier;
use ha_core::sm::{Replicated, Sessions};
use ha_core::storage::{DataDir, SnapshotStore, StdFs, Vfs, Wal, WalOptions};

use crate::transport::{QuicConfig, QuicEndpoint, QuicError, QuicTransport};

/// What can go wrong starting a node.
#[derive(thiserror::Error)]
pub enum StartError {
    /// The endpoint could not start.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// The data directory does not hold data of this replicated type.
    #[error(transparent)]
    DataDir(#[from] ha_core::storage::DataDirError),
    /// The node's settings and the transport's disagree (ids, addresses).
    #[error("cannot start the node: {0}")]
    Config(String),
    /// The node refused its settings or stored state.
    #[error("cannot start the node: {0}")]
    Node(#[from] ha_core::node::StartNodeError),
    /// The write-ahead log could not be opened.
    #[error("cannot start the node: {0}")]
    Log(ha_core::storage::WalError),
    /// The write-ahead log of a single-node cluster is damaged: there is no
    /// peer to repair it from.
    #[error(
        "cannot start the node: {source}; a single-node cluster has no peer to repair from: \
         restore {} from a backup",
        dir.display()
    )]
    SingleNodeLog {
        /// The log's directory.
        dir: std::path::PathBuf,
        /// Why.
        source: ha_core::storage::WalError,
    },
    /// The snapshot directory could not be opened.
    #[error("cannot start the node: {0}")]
    Snapshots(#[from] ha_core::storage::SnapshotError),
    /// The node could not start from what its storage holds.
    #[error("cannot start the node: {0}")]
    Recover(#[from] ha_core::node::RecoverError),
    /// The replicated type cannot be fingerprinted.
    #[error("cannot start the node: {0}")]
    Schema(#[from] ha_core::schema::SchemaError),
}

ha_core::debug_as_display!(StartError);

/// The node and its transport agree on who it is, and every other member
/// has an address to be reached at: in `QuicConfig::peers`, or recorded in
/// the configuration (resolved once the node takes it on).
fn check_addresses(opts: &NodeOptions, quic: &QuicConfig) -> Result<(), StartError> {
    let id = opts.raft.id;
    if quic.id != id {
        return Err(StartError::Config(format!(
            "NodeOptions names node {id} but QuicConfig names node {}",
            quic.id
        )));
    }
    // A node started to be added (an empty configuration) waits; any
    // other node must be in the configuration it starts with.
    if !(opts.membership.is_member(id) || opts.joining && opts.membership.is_empty()) {
        return Err(StartError::Config(format!(
            "node {id} is not a member of the configuration it starts with ({:?})",
            opts.membership
        )));
    }
    let missing: Vec<String> = opts
        .membership
        .replication_targets()
        .into_iter()
        .filter(|p| {
            *p != id && !quic.peers.contains_key(p) && !opts.membership.addrs.contains_key(p)
        })
        .map(|p| p.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(StartError::Config(format!(
            "member(s) {} of the configuration have no address in QuicConfig::peers: \
             give every other member's HOST:PORT",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// A running node and its endpoint (and, when started on one, its locked
/// data directory, released only after the node stopped writing).
pub struct QuicNode {
    handle: NodeHandle,
    endpoint: QuicEndpoint,
    dir: Option<DataDir>,
}

impl QuicNode {
    /// Binds, starts the node, and serves. Must run inside a tokio runtime.
    pub fn start<V: Vfs>(
        opts: NodeOptions,
        quic: QuicConfig,
        init: InitialState,
        storage: NodeStorage<V>,
        applier: impl Applier,
    ) -> Result<QuicNode, StartError> {
        QuicNode::start_on(opts, quic, None, init, storage, applier)
    }

    /// Like [`QuicNode::start`], on a socket bound already when given.
    ///
    /// For raw appliers (schema 0) only: a node of a replicated type starts
    /// with [`QuicNode::start_replicated`], which checks its data directory
    /// against the type's schema before reading it.
    pub fn start_on<V: Vfs>(
        opts: NodeOptions,
        quic: QuicConfig,
        socket: Option<std::net::UdpSocket>,
        init: InitialState,
        storage: NodeStorage<V>,
        applier: impl Applier,
    ) -> Result<QuicNode, StartError> {
        if applier.is_replicated_type() {
            return Err(StartError::Config(
                "an applier of a replicated type starts with QuicNode::start_replicated, which \
                 checks the data directory's schema"
                    .into(),
            ));
        }
        QuicNode::start_checked(None, opts, quic, socket, init, storage, applier)
    }

    fn start_checked<V: Vfs>(
        checked: Option<ha_core::storage::SchemaChecked>,
        mut opts: NodeOptions,
        mut quic: QuicConfig,
        socket: Option<std::net::UdpSocket>,
        init: InitialState,
        storage: NodeStorage<V>,
        applier: impl Applier,
    ) -> Result<QuicNode, StartError> {
        check_addresses(&opts, &quic)?;
        // The transport sizes its replication frames for the core's largest
        // append: they must agree.
        quic.limits.max_append_bytes = opts.raft.max_append_bytes;
        // And no entry may be larger than a replication frame carries.
        opts.max_command_bytes = opts.max_command_bytes.min(quic.limits.max_request_bytes);
        let endpoint = match socket {
            Some(s) => QuicEndpoint::with_socket(quic, s)?,
            None => QuicEndpoint::bind(quic)?,
        };
        let transport = Arc::new(endpoint.transport());
        let handle = match checked {
            Some(c) => start_checked_node(c, opts, init, storage, transport, applier)?,
            None => start_node(opts, init, storage, transport, applier)?,
        };
        endpoint.serve(handle.clone());
        Ok(QuicNode {
            handle,
            endpoint,
            dir: None,
        })
    }

    /// Starts a node of replicated type `T` on its (open, locked) data
    /// directory: opens the log and the snapshots there, restores the newest
    /// snapshot, and starts with the rest of the log. Peers and clients of
    /// another schema are refused.
    ///
    /// The directory must have been opened for `T`
    /// ([`DataDir::open_for`]): one opened for raw data or another schema is
    /// refused with [`StartError::DataDir`] before anything is read, so a
    /// changed type never misreads an old log; so is one of another node or
    /// cluster than the settings name. The node keeps the directory (and
    /// its lock) until it has stopped writing.
    pub fn start_replicated<T: Replicated>(
        opts: NodeOptions,
        mut quic: QuicConfig,
        socket: Option<std::net::UdpSocket>,
        dir: DataDir,
        wal_opts: WalOptions,
    ) -> Result<QuicNode, StartError> {
        let checked = dir.check_schema::<T>()?;
        if dir.node() != opts.raft.id {
            return Err(ha_core::storage::DataDirError::NodeMismatch {
                dir: dir.root().to_path_buf(),
                found: dir.node(),
                expected: opts.raft.id,
            }
            .into());
        }
        if dir.cluster_id() != quic.identity.cluster_id() {
            return Err(ha_core::storage::DataDirError::ClusterMismatch {
                dir: dir.root().to_path_buf(),
                found: dir.cluster_id().to_string(),
                expected: quic.identity.cluster_id(),
            }
            .into());
        }
        // Before anything in the directory is opened or written.
        check_addresses(&opts, &quic)?;
        // Damage to acknowledged data is repaired from the peers, not
        // refused (see `Wal::open_repairing`), unless there is no peer to
        // repair from: then it is refused, and nothing is moved.
        // Only voters can answer for the terms a damaged node may have
        // forgotten: learners do not count. The voters are those of the
        // bootstrap configuration and of the newest snapshot's (the log's
        // own configuration entries are what may be damaged); a node that
        // joined a running cluster (`joining`) was added by one with other
        // voters.
        let snapshots = SnapshotStore::open(StdFs, &dir.snapshot_dir())?;
        let snapshot_conf = snapshots
            .open_latest_file()?
            .map(|(meta, _, _)| meta.membership)
            .unwrap_or_default();
        let me = opts.raft.id;
        let peers = [&opts.membership, &snapshot_conf]
            .into_iter()
            .flat_map(|m| m.other_voters(me))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            + usize::from(opts.joining);
        let (mut wal, state) = if peers == 0 {
            Wal::open(StdFs, &dir.wal_dir(), wal_opts).map_err(|source| {
                StartError::SingleNodeLog {
                    dir: dir.wal_dir(),
                    source,
                }
            })?
        } else {
            Wal::open_repairing(StdFs, &dir.wal_dir(), wal_opts).map_err(StartError::Log)?
        };
        if let Some(r) = wal.repaired() {
            tracing::warn!("{r}");
        }
        let mut applier = Sessions::<T>::new().with_determinism_check(opts.determinism_check_every);
        let init = recover(&mut wal, state, &snapshots, &mut applier, peers > 0)?;
        let schema = ha_core::schema::Schema::of::<T>()?;
        quic.schema = schema.stored();
        quic.query_schema = schema.query();
        let mut node = QuicNode::start_checked(
            Some(checked),
            opts,
            quic,
            socket,
            init,
            NodeStorage::<StdFs>::Durable {
                wal,
                snapshots: Arc::new(snapshots),
            },
            applier,
        )?;
        node.dir = Some(dir);
        Ok(node)
    }

    /// The node.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// The endpoint's transport (connection state, counters).
    pub fn transport(&self) -> QuicTransport {
        self.endpoint.transport()
    }

    /// Where the node listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// Stops the node and closes the endpoint.
    pub async fn shutdown(&self) {
        self.handle.shutdown().await;
        self.endpoint.close();
    }
}

/// A node dropped while it still runs (a `?` after its start, a caller that
/// forgot [`QuicNode::shutdown`]) must not let go of its data directory
/// while it still writes there: another node could then open the same
/// directory beside it. So the endpoint is closed, the node is shut down in
/// the background, and the directory's lock is released only once it has
/// stopped. Without a runtime to do that on, the lock is kept until the
/// process exits.
impl Drop for QuicNode {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        // No more connections either way: an endpoint left open would
        // still accept snapshot streams into the directory.
        self.endpoint.close();
        if !self.handle.is_running() {
            return; // Stopped: its writers are gone, the lock may go.
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let handle = self.handle.clone();
                rt.spawn(async move {
                    handle.shutdown().await;
                    drop(dir);
                });
            }
            Err(_) => {
                tracing::error!(
                    dir = %dir.root().display(),
                    "a running node was dropped outside a runtime: its data directory stays \
                     locked until the process exits"
                );
                std::mem::forget(dir);
            }
        }
    }
}
